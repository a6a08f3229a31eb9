"""The within-group math of HBGS: which units to drop, and the least-squares weights that replace them.

One consumer (a conv / linear reading the group's channels) gives ``X``, its input on the
calibration batch at the group's kept columns, as rows (conv: N·H·W samples) by columns. Its
Gram ``G = XᵀX`` (float64) is all the selection needs. Keeping the columns S, the dropped
columns R are rebuilt as ``X_R ≈ X_S B`` with ``B = (G_SS + λI)⁻¹ G_SR``, and the residual over
all columns is ``E(S) = tr G − tr((G_SS + λI)⁻¹ (G²)_SS)``. A unit owns several columns and they
move together. Several consumers (a residual stream read by several convs) each keep their own
``G``; the objective is the sum of their residuals, each relative to its ``tr G``.

    >>> fit = Fit(gram(x), col_unit)          # x: (samples, c), col_unit: (c,) unit of each column
    >>> removal_order([fit], units=[0, 1, 2], p=1, method="backward")   # e.g. [2]
    >>> B = ls_coefficients(fit.gram, keep_pos, drop_pos)          # (|S|, |R|)
    >>> fold(conv.weight.data, 1, keep_cols, drop_cols, B)         # W_S += W_R Bᵀ, per kernel tap

Backward elimination uses the closed-form increase of removing the block T of regressors from
S (multi-output OLS): ``ΔE(T) = tr(P_TT⁻¹ K_TT)`` with ``P = (G_SS + λI)⁻¹`` and ``K = P (G²)_SS P``,
then downdates ``P`` by the Schur complement. OMP-style forward selection adds the unit with the
largest decrease ``tr(G̃_TT⁻¹ (G̃²)_TT)``, ``G̃`` the Gram of the columns' residuals after projecting
out the chosen ones. λ (ridge) is ``ridge · mean(diag G)``: dead or duplicate channels stay finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Fit:
    """One consumer's view of a group: Gram of its kept input columns and the unit of each column."""

    gram: torch.Tensor  # (c, c) float64
    col_unit: torch.Tensor  # (c,) long

    @property
    def norm(self) -> float:
        return max(float(self.gram.diagonal().sum()), 1e-300)


def gram(x: torch.Tensor) -> torch.Tensor:
    """(rows, c) -> (c, c) float64 Gram matrix."""
    x = x.detach().double()
    return x.T @ x


def ridge_of(g: torch.Tensor, ridge: float) -> float:
    c = g.shape[0]
    return ridge * max(float(g.diagonal().sum()) / max(c, 1), 1e-12)


def _cols(fit: Fit, alive: torch.Tensor, u: int) -> torch.Tensor:
    """Positions, within the alive columns, of unit u's columns."""
    return (fit.col_unit[alive] == u).nonzero().flatten()


class _Backward:
    """State of backward elimination for one consumer: alive columns, P and K over them."""

    def __init__(self, fit: Fit, ridge: float):
        self.fit = fit
        g = fit.gram
        self.m = g @ g  # (c, c): (G²), targets = every kept column at the start
        self.alive = torch.arange(g.shape[0])
        self.lam = ridge_of(g, ridge)
        eye = torch.eye(g.shape[0], dtype=g.dtype)
        self.p = torch.cholesky_inverse(torch.linalg.cholesky(g + self.lam * eye))
        self._refresh()

    def _refresh(self) -> None:
        a = self.alive
        self.k = self.p @ self.m[a][:, a] @ self.p

    def increase(self, u: int) -> float:
        t = _cols(self.fit, self.alive, u)
        if t.numel() == 0:
            return 0.0
        p_tt, k_tt = self.p[t][:, t], self.k[t][:, t]
        return float(torch.linalg.solve(p_tt, k_tt).diagonal().sum()) / self.fit.norm

    def drop(self, u: int) -> None:
        t = _cols(self.fit, self.alive, u)
        if t.numel() == 0:
            return
        rest = torch.ones(len(self.alive), dtype=torch.bool)
        rest[t] = False
        s = rest.nonzero().flatten()
        p = self.p
        self.p = p[s][:, s] - p[s][:, t] @ torch.linalg.solve(p[t][:, t], p[t][:, s])
        self.alive = self.alive[s]
        self._refresh()


def backward_order(fits: list[Fit], units: list[int], p: int, ridge: float = 1e-6) -> list[int]:
    """The p units to drop, in the order backward elimination drops them (least residual increase first)."""
    states = [_Backward(f, ridge) for f in fits]
    alive, order = list(units), []
    for _ in range(min(p, len(units))):
        inc = [sum(s.increase(u) for s in states) for u in alive]
        u = alive[min(range(len(alive)), key=inc.__getitem__)]
        order.append(u)
        alive.remove(u)
        for s in states:
            s.drop(u)
    return order


def _gain(fit: Fit, chosen: list[int], candidates: list[int], ridge: float) -> list[float]:
    """Decrease of the residual of every column when each candidate unit joins ``chosen``."""
    g = fit.gram
    lam = ridge_of(g, ridge)
    sel = torch.isin(fit.col_unit, torch.as_tensor(chosen, dtype=torch.long)).nonzero().flatten()
    if sel.numel():
        g_ss = g[sel][:, sel] + lam * torch.eye(len(sel), dtype=g.dtype)
        resid = g - g[:, sel] @ torch.linalg.solve(g_ss, g[sel])  # G̃ (c, c)
    else:
        resid = g
    resid2 = resid @ resid
    out = []
    for u in candidates:
        t = (fit.col_unit == u).nonzero().flatten()
        if t.numel() == 0:
            out.append(0.0)
            continue
        r_tt = resid[t][:, t] + lam * torch.eye(len(t), dtype=g.dtype)
        out.append(float(torch.linalg.solve(r_tt, resid2[t][:, t]).diagonal().sum()) / fit.norm)
    return out


def forward_order(fits: list[Fit], units: list[int], p: int, ridge: float = 1e-6) -> list[int]:
    """OMP-style: choose units one at a time by largest residual decrease; drop the last p chosen, last first."""
    chosen: list[int] = []
    rest = list(units)
    while len(rest) > 1:
        gains = [sum(vals) for vals in zip(*(_gain(f, chosen, rest, ridge) for f in fits))]
        u = rest[max(range(len(rest)), key=gains.__getitem__)]
        chosen.append(u)
        rest.remove(u)
    chosen += rest
    return list(reversed(chosen))[:min(p, len(units))]


def removal_order(fits: list[Fit], units: list[int], p: int, method: str = "backward",
                  ridge: float = 1e-6) -> list[int]:
    """Units of ``units`` to drop (at most p), best first, by ``method`` ('backward' or 'omp')."""
    if method == "omp":
        return forward_order(fits, units, p, ridge)
    return backward_order(fits, units, p, ridge)


def ls_coefficients(g: torch.Tensor, keep: torch.Tensor, drop: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """(|S|, |R|) float64 B with X_R ≈ X_S B, from the Gram ``g`` (positions ``keep`` = S, ``drop`` = R)."""
    lam = ridge_of(g, ridge)
    g_ss = g[keep][:, keep] + lam * torch.eye(len(keep), dtype=g.dtype)
    return torch.linalg.solve(g_ss, g[keep][:, drop])


def weight_delta(w: torch.Tensor, dim: int, keep: torch.Tensor, drop: torch.Tensor,
                 b: torch.Tensor | None) -> torch.Tensor:
    """What dropping columns ``drop`` (and folding B into ``keep``) adds to ``w``: same shape as ``w``."""
    wm = w.detach().movedim(dim, -1)  # (..., C): the input columns last, so W[..., R] @ Bᵀ works per tap
    delta = torch.zeros_like(wm)
    delta[..., drop] = -wm[..., drop]
    if b is not None and len(keep):
        delta[..., keep] = (wm[..., drop].double() @ b.T).to(wm.dtype)
    return delta.movedim(-1, dim)


@torch.no_grad()
def fold(w: torch.Tensor, dim: int, keep: torch.Tensor, drop: torch.Tensor, b: torch.Tensor | None) -> None:
    """In place: ``W[..., S] += W[..., R] Bᵀ`` along ``dim`` and ``W[..., R] = 0`` (B None: only zero R)."""
    w.add_(weight_delta(w, dim, keep, drop, b))
