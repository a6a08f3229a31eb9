"""Soft top-k (npu_compress/pruners/topk.py): constraint, gradients, tau -> 0 limit, errors."""
import itertools
import math

import pytest
import torch
from torch.autograd import forward_ad

from npu_compress.errors import BudgetError
from npu_compress.pruners.topk import (RESIDUAL_RTOL, soft_topk, soft_topk_groups,
                                       soft_topk_solve, solve_threshold)


def _problem(n: int, seed: int, spread: float = 3.0, cost_decades: float = 2.0,
             dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = (torch.randn(n, generator=g, dtype=torch.float64) * spread).to(dtype)
    c = torch.pow(10.0, torch.rand(n, generator=g, dtype=torch.float64) * cost_decades)
    return m, c  # (n,), (n,) with costs in [1, 10**cost_decades)


def _residual(f: torch.Tensor, c: torch.Tensor, B: float) -> float:
    return abs(float(torch.dot(c.double(), f.double())) - B) / B


# ----------------------------------------------------------------------------- the constraint


@pytest.mark.parametrize("tau", [1e-4, 1e-2, 1.0, 1e2])
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 20000])
def test_constraint_met_across_tau_and_sizes(n, tau):
    for seed, frac, spread in itertools.product(range(2), [1e-4, 0.3, 0.97], [1e-2, 3.0, 1e3]):
        m, c = _problem(n, seed, spread=spread, cost_decades=4.0)
        B = frac * float(c.sum())
        f, info = soft_topk_solve(m, c, B, tau)
        assert _residual(f, c, B) <= RESIDUAL_RTOL, (n, tau, seed, frac, spread, info)
        assert abs(info.residual) <= RESIDUAL_RTOL * B
        assert info.evaluations <= 60
        assert ((f >= 0) & (f <= 1)).all()


def test_constraint_met_at_one_million_float32_units():
    m, c = _problem(10**6, seed=3, cost_decades=3.0, dtype=torch.float32)
    c = c.float()
    for tau, frac in [(1e-3, 0.2), (0.3, 0.5), (30.0, 0.9)]:
        B = frac * float(c.double().sum())
        f, info = soft_topk_solve(m, c, B, tau)
        assert f.dtype == torch.float32 and f.shape == m.shape
        assert _residual(f, c, B) <= RESIDUAL_RTOL, (tau, info)
        assert info.passes < 8, info  # a few sweeps over the units, not tens


def test_mask_is_the_sigmoid_at_the_returned_threshold():
    m, c = _problem(500, seed=4)
    B, tau = 0.25 * float(c.sum()), 0.2
    f, info = soft_topk_solve(m, c, B, tau)
    t = solve_threshold(m, c, B, tau)
    assert t == pytest.approx(info.t, abs=1e-12)
    torch.testing.assert_close(f, torch.sigmoid((m + t) / tau), rtol=0, atol=1e-12)


def test_solve_is_deterministic_on_the_sampled_path():
    m, c = _problem(300_000, seed=5, dtype=torch.float32)
    B = 0.4 * float(c.sum())
    f1, f2 = soft_topk(m, c.float(), B, 0.05), soft_topk(m, c.float(), B, 0.05)
    assert torch.equal(f1, f2)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("tau", [0.05, 0.5, 5.0])
def test_gradcheck_soft_topk(tau):
    m, c = _problem(12, seed=6, spread=1.0, cost_decades=1.0)
    m.requires_grad_(True)
    B = 0.4 * float(c.sum())
    assert torch.autograd.gradcheck(lambda x: soft_topk(x, c, B, tau), (m,),
                                    check_forward_ad=True, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("tau,shape,n_keep",
                         [(0.05, (3, 4), 2), (0.5, (5, 8), 3), (5.0, (2, 4), 1)])
def test_gradcheck_soft_topk_groups(tau, shape, n_keep):
    m = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    m.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_topk_groups(x, n_keep, tau), (m,),
                                    check_forward_ad=True, atol=1e-7, rtol=1e-5)


def _jvp(fn, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(fn(forward_ad.make_dual(m, v))).tangent


@pytest.mark.parametrize("tau", [0.01, 0.3, 10.0])
def test_jvp_keeps_the_cost_constant(tau):
    m, c = _problem(200, seed=8)
    B = 0.3 * float(c.sum())
    fn = lambda x: soft_topk(x, c, B, tau)  # noqa: E731
    for seed in range(3):
        v = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        jv = _jvp(fn, m, v)  # (n,) = (df/dm) v
        assert abs(float(torch.dot(c, jv))) <= 1e-10 * float(c @ jv.abs()) + 1e-300
        fd = (fn(m + 1e-6 * v) - fn(m - 1e-6 * v)) / 2e-6  # central difference
        torch.testing.assert_close(jv, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [0.01, 0.3, 10.0])
def test_vjp_is_orthogonal_to_cost_and_shift_invariant(tau):
    m, c = _problem(200, seed=9)
    m.requires_grad_(True)
    B = 0.6 * float(c.sum())
    f = soft_topk(m, c, B, tau)
    (grad_c,) = torch.autograd.grad(f, m, grad_outputs=c, retain_graph=True)
    scale = float((f * (1 - f)).detach().sum() / tau * c.max())
    assert float(grad_c.abs().max()) <= 1e-12 * scale  # J^T c = 0: moving along c cannot cost
    g = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad_g,) = torch.autograd.grad(f, m, grad_outputs=g)
    assert abs(float(grad_g.sum())) <= 1e-12 * float(grad_g.abs().sum())  # t absorbs a shift
    v = torch.randn(200, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    jv = _jvp(lambda x: soft_topk(x, c, B, tau), m.detach(), v)
    assert float(g @ jv) == pytest.approx(float(grad_g @ v), rel=1e-10)  # <g, Jv> = <J^T g, v>


def test_uniform_cost_gradient_sums_to_zero_per_group():
    m = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    m.requires_grad_(True)
    f = soft_topk_groups(m, 2, 0.3)
    g = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    (grad,) = torch.autograd.grad(f, m, grad_outputs=g)
    torch.testing.assert_close(grad.sum(1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-13)
    (grad_ones,) = torch.autograd.grad(soft_topk_groups(m, 2, 0.3), m, torch.ones_like(m))
    assert float(grad_ones.abs().max()) <= 1e-13


def test_saturated_mask_has_zero_not_nan_gradient():
    m = torch.tensor([0.0, 1000.0, -1000.0], dtype=torch.float64, requires_grad=True)
    f = soft_topk(m, torch.ones(3, dtype=torch.float64), 1.0, 1e-4)
    torch.testing.assert_close(f.detach(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    (grad,) = torch.autograd.grad(f, m, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(grad, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("tau", [0.01, 1.0])
def test_float32_logits_match_the_float64_mask_and_gradient(tau):
    m64, c = _problem(1000, seed=10)
    B = 0.5 * float(c.sum())
    g = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for dtype in (torch.float64, torch.float32):
        m = m64.to(dtype).detach().requires_grad_(True)
        f = soft_topk(m, c, B, tau)  # float64 costs with float32 logits too
        f.backward(g.to(dtype))
        assert f.dtype == m.grad.dtype == dtype
        grads.append((f.detach().double(), m.grad.double()))
    (f64, g64), (f32, g32) = grads
    torch.testing.assert_close(f32, f64, rtol=0, atol=1e-6)
    torch.testing.assert_close(g32, g64, rtol=1e-4, atol=1e-4 * float(g64.abs().max()))


# ----------------------------------------------------------------------------- tau -> 0


@pytest.mark.parametrize("n,k", [(5, 2), (1000, 300), (1000, 999)])
def test_small_tau_gives_the_hard_top_k(n, k):
    g = torch.Generator().manual_seed(n + k)
    m = torch.randperm(n, generator=g).double() * 0.01  # distinct, gaps >= 0.01
    f = soft_topk(m, torch.ones(n, dtype=torch.float64), float(k), 1e-4)
    hard = torch.zeros(n, dtype=torch.float64)
    hard[torch.topk(m, k).indices] = 1.0
    assert float((f - hard).abs().max()) <= 1e-12


def test_small_tau_gives_the_hard_n_of_m():
    m = torch.randperm(64, generator=torch.Generator().manual_seed(0)).double().view(16, 4)
    f = soft_topk_groups(m * 0.01, 2, 1e-4)
    hard = torch.zeros_like(m).scatter_(1, torch.topk(m, 2, dim=1).indices, 1.0)
    assert float((f - hard).abs().max()) <= 1e-12


@pytest.mark.parametrize("tau", [1e-4, 0.1, 100.0])
def test_groups_meet_each_row_constraint(tau):
    m = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1)) * 30.0  # float32
    f = soft_topk_groups(m, 3, tau)
    assert f.dtype == torch.float32 and f.shape == (1000, 8)
    err = (f.double().sum(1) - 3.0).abs().max()
    assert float(err) <= RESIDUAL_RTOL * 3.0


# ----------------------------------------------------------------------------- errors


_ONES = torch.ones(4)


@pytest.mark.parametrize("logits,costs,budget,tau", [
    (torch.zeros(4), _ONES, 0.0, 1.0),  # B = 0
    (torch.zeros(4), _ONES, -1.0, 1.0),  # B < 0
    (torch.zeros(4), _ONES, 4.0, 1.0),  # B = sum c
    (torch.zeros(4), _ONES, 5.5, 1.0),  # B > sum c
    (torch.zeros(4), _ONES, math.nan, 1.0),
    (torch.zeros(4), _ONES, math.inf, 1.0),
    (torch.zeros(4), _ONES, 2.0, 0.0),  # tau = 0
    (torch.zeros(4), _ONES, 2.0, -0.5),
    (torch.zeros(4), _ONES, 2.0, math.nan),
    (torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]), 2.0, 1.0),  # a zero cost
    (torch.zeros(4), torch.tensor([1.0, -1.0, 3.0, 1.0]), 2.0, 1.0),  # a negative cost
    (torch.zeros(4), torch.tensor([1.0, math.nan, 1.0, 1.0]), 2.0, 1.0),
    (torch.zeros(4), torch.tensor([1.0, math.inf, 1.0, 1.0]), 2.0, 1.0),
    (torch.tensor([0.0, math.nan, 0.0, 0.0]), _ONES, 2.0, 1.0),  # non-finite logits
    (torch.tensor([0.0, -math.inf, 0.0, 0.0]), _ONES, 2.0, 1.0),
    (torch.zeros(5), _ONES, 2.0, 1.0),  # shape mismatch
    (torch.zeros(2, 2), _ONES, 2.0, 1.0),  # logits not 1-D
    (torch.zeros(0), torch.ones(0), 0.5, 1.0),  # no units
])
def test_infeasible_or_bad_input_raises_budget_error(logits, costs, budget, tau):
    with pytest.raises(BudgetError) as err:
        soft_topk(logits, costs, budget, tau)
    assert f"B={float(budget)!r}" in str(err.value) and "(0, " in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(BudgetError):
        solve_threshold(logits, costs, budget, tau)


def test_budget_error_names_the_feasible_interval():
    with pytest.raises(BudgetError, match=r"B=7\.5.*\(0, sum\(costs\)=6\.0\)"):
        soft_topk(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]), 7.5, 1.0)


@pytest.mark.parametrize("logits,n_keep,tau", [
    (torch.zeros(3, 4), 0, 1.0),
    (torch.zeros(3, 4), 4, 1.0),
    (torch.zeros(3, 4), 5, 1.0),
    (torch.zeros(3, 4), 1.5, 1.0),
    (torch.zeros(3, 4), 2, 0.0),
    (torch.zeros(12), 2, 1.0),  # not (G, M)
    (torch.full((3, 4), math.nan), 2, 1.0),
])
def test_groups_bad_input_raises_budget_error(logits, n_keep, tau):
    with pytest.raises(BudgetError) as err:
        soft_topk_groups(logits, n_keep, tau)
    assert f"B={float(n_keep)!r}" in str(err.value) and "(0, " in str(err.value)
