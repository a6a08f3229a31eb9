"""Cost-weighted differentiable top-k: the soft mask of the SMART pruner (docs/METHODS.md).

For logits m (n,), positive costs c (n,), a budget B and a temperature tau > 0::

    f_u = sigmoid((m_u + t) / tau),   t the scalar with   sum_u c_u f_u = B.

The sum is increasing in t, from 0 (t -> -inf) to C = sum_u c (t -> +inf), so t exists and is
unique exactly when 0 < B < C. Backward by implicit differentiation, O(n): with
s_u = f_u (1 - f_u) / tau,  dt/dm_j = -c_j s_j / sum_k c_k s_k,  so for an upstream gradient g::

    grad_m_j = s_j g_j - c_j s_j (sum_i s_i g_i) / (sum_k c_k s_k).

With all c = 1 and tau -> 0, f tends to the hard top-B indicator (distinct logits, integer B).
`soft_topk_groups` is the N:M form: one constraint sum_j f_gj = N per row of a (G, M) tensor.

Example::

    >>> m = torch.tensor([3.0, 1.0, 2.0, 0.0])
    >>> soft_topk(m, torch.ones(4), 2.0, tau=0.01).round()
    tensor([1., 0., 1., 0.])

The solve (`solve_threshold`) works in z = m / tau units on float64 copies, all sums in float64:
safeguarded Newton (rtsafe, on log S so exponential tails take one step) in a shrinking bracket,
started from the tau -> 0 threshold (a sort for n <= 65536; for larger n, the exact solve on a
fixed pseudo-random sample of 16384 units, so every DDP rank gets the same t). Units saturated
(|z| > log(C/B) + 40) over the whole bracket are dropped, so a small tau, whose iterations are
mostly bracketing, costs about as little as a large one: typically 3-5 sweeps over the units.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import BudgetError

__all__ = [
    "RESIDUAL_RTOL", "ThresholdInfo", "soft_topk", "soft_topk_solve", "solve_threshold",
    "soft_topk_groups", "SoftTopK", "SoftTopKGroups",
]

RESIDUAL_RTOL = 1e-6  # promised |sum c f - B| / B (f in float64); a solve that misses it warns
_TARGET_RTOL = 1e-11  # what the solver aims for; Newton gets there one step after 1e-6
_MAX_EVALS = 60  # evaluations of sum c f per solve (Newton needs ~3-8, pure bisection ~55)
_MARGIN = 40.0  # a unit with |z| > log(C/B) + _MARGIN changes the sum by < e^-40 * B
_START_SAMPLE = 16384  # units in the sample that gives the starting threshold


class ThresholdInfo(NamedTuple):
    """What one solve did: the threshold and how hard it worked."""

    t: float  # the solved threshold, in logit units
    evaluations: int  # evaluations of sum c f (on the full set or the still-active units)
    passes: float  # work, in sweeps over all n units (start sample and compaction included)
    residual: float  # sum c f - B at t, in float64


# ----------------------------------------------------------------------------- validation


def _as_float(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _budget_error(budget: float, total: float, why: str, total_name: str = "sum(costs)"
                  ) -> BudgetError:
    return BudgetError(
        f"budget B={budget!r} cannot be met: {why}; "
        f"feasible budgets lie in the open interval (0, {total_name}={total!r})")


def _validate(logits: object, costs: object, budget: object,
              tau: object) -> tuple[Tensor, Tensor, float, float, float]:
    """Checks the inputs; returns (a, c64, B, C, tau): a = logits / tau and costs in float64."""
    B, tau_f = _as_float(budget), _as_float(tau)
    c_ok = isinstance(costs, Tensor) and costs.is_floating_point()
    c64 = costs.detach().to(torch.float64) if c_ok else None  # type: ignore[union-attr]
    C = float(c64.sum()) if c64 is not None else math.nan
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim != 1:
        raise _budget_error(B, C, "logits must be a 1-D floating-point tensor (n,)")
    if logits.numel() == 0:
        raise _budget_error(B, C, "there are no units (logits is empty)")
    if c64 is None or c64.shape != logits.shape:
        shape = tuple(costs.shape) if isinstance(costs, Tensor) else type(costs).__name__
        raise _budget_error(B, C, f"costs must be a floating-point tensor of the logits' shape "
                                  f"{tuple(logits.shape)}, got {shape}")
    _check_tau_budget(B, C, tau_f)
    if not math.isfinite(C) or not float(c64.min()) > 0.0:
        raise _budget_error(B, C, "every cost must be finite and > 0")
    if not all(math.isfinite(v) for v in torch.stack(torch.aminmax(logits.detach())).tolist()):
        raise _budget_error(B, C, "logits must be finite")
    if not 0.0 < B < C:
        raise _budget_error(B, C, "B must be strictly between 0 and the total cost")
    a = logits.detach().to(torch.float64, copy=True).div_(tau_f)  # (n,) z = a + t / tau
    return a, c64.to(a.device), B, C, tau_f


def _check_tau_budget(B: float, C: float, tau: float) -> None:
    if not math.isfinite(tau) or tau <= 0.0:
        raise _budget_error(B, C, f"temperature tau must be finite and > 0, got {tau!r}")
    if not math.isfinite(B):
        raise _budget_error(B, C, "B must be a finite number")


# ----------------------------------------------------------------------------- scalar solve


@dataclass
class _Active:
    """Units whose mask can still move while t stays in the bracket; z = m / tau units."""

    a: Tensor  # (k,) float64 logits / tau
    c: Tensor  # (k,) float64 costs
    on_cost: float  # cost of dropped units that are saturated at f = 1 over the bracket
    a_min: float
    a_max: float
    f: Tensor  # (k,) scratch: sigmoid(a + x) after evaluate()
    cf: Tensor  # (k,) scratch: c * f

    @classmethod
    def of(cls, a: Tensor, c: Tensor, on_cost: float = 0.0) -> _Active:
        a_min, a_max = torch.stack(torch.aminmax(a)).tolist() if a.numel() else (0.0, 0.0)
        return cls(a, c, on_cost, a_min, a_max, torch.empty_like(a), torch.empty_like(a))

    def evaluate(self, x: float) -> tuple[float, float]:
        """Returns (sum c f, d/dx sum c f = sum c f (1 - f)) at f = sigmoid(a + x)."""
        torch.add(self.a, x, out=self.f).sigmoid_()
        torch.mul(self.c, self.f, out=self.cf)
        s, s2 = torch.stack([self.cf.sum(), torch.dot(self.cf, self.f)]).tolist()
        return self.on_cost + s, s - s2

    def compact(self, lo: float, hi: float, margin: float) -> _Active:
        """Drops units with a + x > margin (on) or < -margin (off) for every x in [lo, hi]."""
        on = self.a >= margin - lo  # (k,) bool
        keep = (self.a > -margin - hi).logical_and_(on.logical_not())
        on_cost = self.on_cost + float(torch.dot(self.c, on.to(self.c.dtype)))
        idx = keep.nonzero().squeeze(1)
        return _Active.of(self.a.index_select(0, idx), self.c.index_select(0, idx), on_cost)


class _Start(NamedTuple):
    x: float  # first iterate, z units
    reach: float  # cap on a step while one end of the bracket is still the a-priori bound
    passes: float  # work spent finding it, in sweeps over the n units


def _start(a: Tensor, c: Tensor, B: float, C: float) -> _Start:
    """Small n: the hard cost-weighted quantile. Large n: the exact solve on a fixed
    pseudo-random sample (budget scaled), with reach from the quantile's rank uncertainty."""
    n = a.numel()
    if n <= 4 * _START_SAMPLE:
        x, a_desc, k = _hard_threshold(a, c, B)
        return _Start(x, _rank_gap(a_desc, k, 2), 1.0)
    gen = torch.Generator().manual_seed(0)  # fixed: every DDP rank starts (and ends) alike
    idx = torch.randint(n, (_START_SAMPLE,), generator=gen).to(a.device)
    a_s, c_s = a.index_select(0, idx), c.index_select(0, idx)  # (k,)
    C_s = float(c_s.sum())
    x, a_desc, k = _hard_threshold(a_s, c_s, B * C_s / C)
    info = _solve(a_s, c_s, B * C_s / C, C_s, _Start(x, _rank_gap(a_desc, k, 2), 1.0))[0]
    p = (k + 0.5) / _START_SAMPLE
    spread = math.ceil(4.0 * math.sqrt(_START_SAMPLE * p * (1.0 - p))) + 2  # ~4 sigma in ranks
    return _Start(info.t, _rank_gap(a_desc, k, spread), info.passes * _START_SAMPLE / n)


def _hard_threshold(a: Tensor, c: Tensor, B: float) -> tuple[float, Tensor, int]:
    """x where the tau -> 0 mask meets B: returns (x, a sorted descending (n,), rank k).

    Unit k (in descending order) is where the cumulative cost crosses B; it takes the fraction
    phi of its cost, so x = logit(phi) - a_k, kept between the midpoints to its neighbours.
    """
    a_desc, order = torch.sort(a, descending=True)
    cum = torch.cumsum(c[order], 0)  # (n,)
    n = a.numel()
    k = min(int(torch.searchsorted(cum, torch.tensor([B], dtype=cum.dtype, device=cum.device))),
            n - 1)
    prev = float(cum[k - 1]) if k else 0.0
    phi = min(max((B - prev) / (float(cum[k]) - prev), 1e-300), 1.0)
    x = math.log(phi) - math.log1p(-phi) - float(a_desc[k]) if phi < 1.0 else math.inf
    lo = -0.5 * float(a_desc[k] + a_desc[k - 1]) if k else -math.inf
    hi = -0.5 * float(a_desc[k] + a_desc[k + 1]) if k + 1 < n else math.inf
    x = min(max(x, lo), hi)
    return (x if math.isfinite(x) else -float(a_desc[k])), a_desc, k


def _rank_gap(a_desc: Tensor, k: int, r: int) -> float:
    """z-distance from rank k - r to rank k + r, at least 1 (the sigmoid's own width)."""
    n = a_desc.numel()
    return max(float(a_desc[max(k - r, 0)] - a_desc[min(k + r, n - 1)]), 1.0)


def _newton_step(S: float, D: float, B: float, C: float) -> float:
    """Newton step for log S = log B (B <= C/2) or log(C - S) = log(C - B): the same step near
    the root, but one step, not ~log(C/B), across an exponential tail of the sigmoids."""
    if D <= 0.0:
        return -math.copysign(math.inf, S - B)
    if B <= 0.5 * C:
        return -math.log(S / B) * S / D if S > 0.0 else math.inf
    rest = C - S  # sum c (1 - f)
    return math.log(rest / (C - B)) * rest / D if rest > 0.0 else -math.inf


def _newton_or_bisect(x: float, dx: float, lo: float, hi: float, last_step: float) -> float:
    """Both ends evaluated (rtsafe): Newton if it stays inside and halves the step, else bisect."""
    if lo < x + dx < hi and abs(dx) <= 0.5 * abs(last_step):
        return x + dx
    return 0.5 * (lo + hi)


def _capped_newton(x: float, dx: float, lo: float, hi: float, reach: float,
                   last_step: float) -> tuple[float, float]:
    """One end still the far a-priori bound: the Newton step dx, at least doubled if it does
    not halve the last step, capped at reach; a capped step grows reach 4x, so flat stretches
    (small tau, few units) are crossed in O(log) steps. Returns (next x, reach)."""
    if abs(dx) > 0.5 * abs(last_step):
        dx = math.copysign(max(abs(dx), 2.0 * abs(last_step)), dx)
    if abs(dx) > reach:
        dx, reach = math.copysign(reach, dx), 4.0 * reach
    return (x + dx if lo < x + dx < hi else 0.5 * (lo + hi)), reach


def _resolution(x: float, S: float, D: float) -> float:
    """How well float64 can hit B near x: S moves by D per unit of x, z = a + x rounds at
    ulp(x), and summing n terms rounds at ~eps * S."""
    return 8.0 * D * math.ulp(abs(x)) + 1e-15 * S


def _solve(a: Tensor, c: Tensor, B: float, C: float,
           start: _Start | None = None) -> tuple[ThresholdInfo, _Active, float]:
    """Solves sum c sigmoid(a + x) = B for x (z units); returns (info, final active set, D).

    If the active set still holds all n units, its f is the mask at x (and cf free scratch).
    D is sum c f (1 - f) at x. info.t is x (in z units: multiply by tau for logit units).
    """
    n, act = a.numel(), _Active.of(a, c)
    margin = max(math.log(C / B), math.log(C / (C - B))) + _MARGIN
    lo, hi = -act.a_max - margin, -act.a_min + margin  # S(lo) < B e^-40, S(hi) > C - (C-B) e^-40
    x, reach, passes = start or _start(a, c, B, C)
    x, step = min(max(x, lo), hi), hi - lo
    lo_seen = hi_seen = False  # bracket ends that are evaluated points, not a-priori bounds
    for it in range(1, _MAX_EVALS + 1):
        S, D = act.evaluate(x)
        passes, F = passes + act.a.numel() / n, S - B
        if abs(F) <= max(_TARGET_RTOL * B, _resolution(x, S, D)):
            break
        if F < 0:
            lo, lo_seen = x, True
        else:
            hi, hi_seen = x, True
        dx = _newton_step(S, D, B, C)
        if lo_seen and hi_seen:
            x_new = _newton_or_bisect(x, dx, lo, hi, step)
        else:
            x_new, reach = _capped_newton(x, dx, lo, hi, reach, step)
        if it == _MAX_EVALS or x_new == x or hi - lo <= 4 * math.ulp(max(abs(lo), abs(hi))):
            break  # x stays the evaluated point: f, F and D below belong to it
        step, x = x_new - x, x_new
        if (hi - lo) + 2 * margin < 0.5 * (act.a_max - act.a_min):
            passes += act.a.numel() / n
            act = act.compact(lo, hi, margin)
    return ThresholdInfo(x, it, passes, F), act, D


# ----------------------------------------------------------------------------- autograd


def _mask_and_slope(a: Tensor, act: _Active, x: float, tau: float,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """f = sigmoid(a + x) and s = f (1 - f) / tau (n,) in dtype, reusing the solver's buffers
    (a fresh 8n-byte tensor costs page faults that dominate at n = 1e7)."""
    if act.a.numel() == a.numel():  # the last evaluation covered every unit: f is ready
        f64, scratch = act.f, act.cf
    else:  # it ended on the active subset: one more sweep, in a's storage
        f64, scratch = a.add_(x).sigmoid_(), torch.empty_like(a)
    s64 = torch.sub(f64, torch.mul(f64, f64, out=scratch), out=scratch).div_(tau)
    return f64.to(dtype), s64.to(dtype)


class SoftTopK(torch.autograd.Function):
    """(f, stats) for `soft_topk`; stats (4,) float64 = [t, evaluations, passes, residual] and is
    not differentiable. Implements backward (vjp) and jvp (forward-mode AD)."""

    @staticmethod
    def forward(ctx, logits: Tensor, costs: Tensor, budget: float,  # type: ignore[override]
                tau: float) -> tuple[Tensor, Tensor]:
        a, c64, B, C, tau = _validate(logits, costs, budget, tau)
        info, act, D = _solve(a, c64, B, C)
        f, s = _mask_and_slope(a, act, info.t, tau, logits.dtype)  # (n,), (n,)
        c = costs.detach().to(s.dtype)  # (n,) no copy when the dtypes agree
        ctx.save_for_backward(s, c)
        ctx.save_for_forward(s, c)
        ctx.denom = D / tau  # sum c s; D is exact up to e^-40 even when it came from a subset
        stats = torch.tensor([info.t * tau, info.evaluations, info.passes, info.residual],
                             dtype=torch.float64)
        ctx.mark_non_differentiable(stats)
        return f, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor, _g_stats: Tensor):  # type: ignore[override]
        s, c = ctx.saved_tensors  # vjp: s g - c s (s . g) / sum(c s)
        out = s * g  # (n,)
        if ctx.denom > 0.0:  # else every unit is saturated: s = 0 and so is the gradient
            out.addcmul_(c, s, value=-float(out.sum()) / ctx.denom)
        return out, None, None, None

    @staticmethod
    def jvp(ctx, v: Tensor, *_):  # type: ignore[override]
        s, c = ctx.saved_tensors  # jvp: s v - s (c s . v) / sum(c s)
        out = s * v  # (n,)
        if ctx.denom > 0.0:
            out.add_(s, alpha=-float(torch.dot(c, out)) / ctx.denom)
        return out, None


def soft_topk_solve(logits: Tensor, costs: Tensor, budget: float,
                    tau: float) -> tuple[Tensor, ThresholdInfo]:
    """Soft mask f (n,) in the logits' dtype, differentiable in logits, and the solve's info."""
    f, stats = SoftTopK.apply(logits, costs, budget, tau)
    t, evaluations, passes, residual = stats.tolist()
    if abs(residual) > RESIDUAL_RTOL * float(budget):  # not seen in tests; say so if it happens
        warnings.warn(f"soft_topk: |sum c f - B| = {abs(residual):.3g} exceeds "
                      f"{RESIDUAL_RTOL:g} * B (B={float(budget)!r})", RuntimeWarning, stacklevel=2)
    return f, ThresholdInfo(t, int(evaluations), passes, residual)


def soft_topk(logits: Tensor, costs: Tensor, budget: float, tau: float) -> Tensor:
    """f = sigmoid((logits + t) / tau) (n,) with sum costs * f = budget; see the module doc.

    logits (n,) floating; costs (n,) > 0 (no gradient flows to them); 0 < budget < sum(costs);
    tau > 0. Raises BudgetError otherwise. f has the logits' dtype.
    """
    return soft_topk_solve(logits, costs, budget, tau)[0]


def solve_threshold(logits: Tensor, costs: Tensor, budget: float, tau: float) -> float:
    """The t of `soft_topk` (logit units), without building the mask or a graph."""
    with torch.no_grad():
        a, c64, B, C, tau = _validate(logits, costs, budget, tau)
        return _solve(a, c64, B, C)[0].t * tau


# ----------------------------------------------------------------------------- N:M groups


def _validate_groups(logits: object, n_keep: object, tau: object) -> tuple[Tensor, int, float]:
    """Checks the N:M inputs; returns (a, N, tau) with a = logits / tau (G, M) in float64."""
    N, tau_f = _as_float(n_keep), _as_float(tau)
    M = logits.shape[-1] if isinstance(logits, Tensor) and logits.ndim == 2 else math.nan
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim != 2:
        raise _budget_error(N, M, "logits must be a 2-D floating-point tensor (G, M)", "M")
    if isinstance(n_keep, bool) or not N.is_integer() or not 0 < N < M:
        raise _budget_error(N, M, "N (units kept per group) must be an integer with 0 < N < M",
                            "M")
    if not math.isfinite(tau_f) or tau_f <= 0.0:
        raise _budget_error(N, M, f"temperature tau must be finite and > 0, got {tau!r}", "M")
    m = logits.detach()
    if m.numel() and not all(math.isfinite(v) for v in torch.stack(torch.aminmax(m)).tolist()):
        raise _budget_error(N, M, "logits must be finite", "M")
    return m.to(torch.float64, copy=True).div_(tau_f), int(N), tau_f


def _solve_groups(a: Tensor, N: int) -> tuple[Tensor, Tensor]:
    """Per row g of a (G, M): x_g with sum_j sigmoid(a_gj + x_g) = N. Returns (x (G,), f (G, M)).

    Batched rtsafe: each row takes its Newton step when it stays in the row's bracket and halves
    the row's last step, else bisects. Rows that converge (or stop moving at float64 resolution)
    are written out and dropped, so later iterations touch only the rows still moving.
    """
    M = a.shape[1]
    margin = max(math.log(M / N), math.log(M / (M - N))) + _MARGIN
    desc = torch.sort(a, dim=1, descending=True).values  # (G, M); faster than topk here
    x = -0.5 * (desc[:, N - 1] + desc[:, N])  # (G,) hard top-N threshold: exact as tau -> 0
    lo, hi = -desc[:, 0] - margin, -desc[:, -1] + margin  # (G,)
    rows = [torch.arange(a.shape[0], device=a.device), a, x, lo, hi, hi - lo]  # still moving
    x_out, f_out = torch.empty_like(x), torch.empty_like(a)
    for it in range(_MAX_EVALS):
        idx, a_r, x, lo, hi, step = rows  # (k,), (k, M), then (k,) each
        f = torch.sigmoid(a_r + x[:, None])  # (k, M)
        S = f.sum(1)
        F, D = S - N, S - (f * f).sum(1)  # (k,) residual and d/dx
        lo, hi = torch.where(F < 0, x, lo), torch.where(F > 0, x, hi)
        newton = x - F / D
        ok = (D > 0) & (newton > lo) & (newton < hi) & ((newton - x).abs() <= 0.5 * step.abs())
        x_new = torch.where(ok, newton, 0.5 * (lo + hi))
        done = (F.abs() <= _TARGET_RTOL * N) | (x_new == x) | (it == _MAX_EVALS - 1)
        x_out[idx[done]], f_out[idx[done]] = x[done], f[done]
        keep = done.logical_not_().nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        rows = [t.index_select(0, keep) for t in (idx, a_r, x_new, lo, hi, x_new - x)]
    return x_out, f_out


class SoftTopKGroups(torch.autograd.Function):
    """f (G, M) for `soft_topk_groups`; backward and jvp per row with c = 1."""

    @staticmethod
    def forward(ctx, logits: Tensor, n_keep: int, tau: float):  # type: ignore[override]
        a, N, tau = _validate_groups(logits, n_keep, tau)
        _, f64 = _solve_groups(a, N)
        s64 = torch.sub(f64, torch.mul(f64, f64, out=a), out=a).div_(tau)  # (G, M) f(1-f)/tau
        s = s64.to(logits.dtype)
        ctx.save_for_backward(s)
        ctx.save_for_forward(s)
        ctx.denom = s64.sum(1, keepdim=True)  # (G, 1) float64
        return f64.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return _implicit_rows(ctx.saved_tensors[0], g, ctx.denom), None, None

    @staticmethod
    def jvp(ctx, v: Tensor, *_):  # type: ignore[override]
        return _implicit_rows(ctx.saved_tensors[0], v, ctx.denom)


def _implicit_rows(s: Tensor, g: Tensor, denom: Tensor) -> Tensor:
    """Per row: s*g - s * sum(s*g) / sum(s), with 0 for rows whose units are all saturated."""
    sg = s * g  # (G, M)
    k = sg.sum(1, keepdim=True, dtype=torch.float64) / denom  # (G, 1)
    k = torch.where(denom > 0, k, 0.0).to(sg.dtype)
    return sg.sub_(s * k)


def soft_topk_groups(logits: Tensor, n_keep: int, tau: float) -> Tensor:
    """N:M soft mask: f_gj = sigmoid((logits_gj + t_g) / tau) with sum_j f_gj = n_keep per row.

    logits (G, M) floating; 0 < n_keep < M an integer; tau > 0. Raises BudgetError otherwise.
    """
    return SoftTopKGroups.apply(logits, n_keep, tau)
