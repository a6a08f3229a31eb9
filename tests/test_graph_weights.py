"""Block and N:M units: counts, layout, and masks that zero exactly the right entries."""
import copy
import math

import pytest
import torch
from torch import nn

from npu_compress.graph import ParamBlock, apply_masks, build, unit_masks
from npu_compress.hardware.profile import load_profile

PROFILE = load_profile("generic-4tops")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 20, 3, padding=1)  # (20, 27)
        self.dw = nn.Conv2d(20, 20, 3, padding=1, groups=20)  # (20, 9): depthwise
        self.fc = nn.Linear(20, 10)  # (10, 20)

    def forward(self, x):
        return self.fc(self.dw(self.conv(x)).mean((2, 3)))


def test_block_units_cover_each_weight_once():
    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, structure="block")
    bo, bi = PROFILE.tiling.block
    expect = {"conv.weight": (20, 27), "fc.weight": (10, 20)}
    assert graph.params == list(expect)
    assert graph.num_units == sum(math.ceil(r / bo) * math.ceil(c / bi) for r, c in expect.values())
    assert "dw.weight" in graph.report() and "depthwise" in graph.report()
    assert len(graph.groups) == 2 and graph.unit_param.tolist().count(0) == len(graph.groups[0])
    seen = {p: torch.zeros(shape, dtype=torch.long) for p, shape in expect.items()}
    for u in graph.units:
        (blk,) = u.slices
        assert isinstance(blk, ParamBlock) and u.size == (blk.rows.stop - blk.rows.start) * (
            blk.cols.stop - blk.cols.start)
        seen[blk.param][blk.rows, blk.cols] += 1
    assert all(bool((s == 1).all()) for s in seen.values())


def test_block_masks_zero_exactly_the_pruned_blocks():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, structure="block")
    keep = torch.rand(graph.num_units) > 0.5
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    for u in graph.units:
        (blk,) = u.slices
        w = masked.get_parameter(blk.param).reshape(graph.param_shapes[blk.param][0], -1)
        assert bool((w[blk.rows, blk.cols] == 0).all()) == (not keep[u.index])
    assert torch.equal(masked.dw.weight, model.dw.weight) and torch.equal(masked.conv.bias, model.conv.bias)
    frac = graph.kept_fraction(keep)
    n0 = len(graph.groups[0])
    assert frac["conv.weight"] == pytest.approx(keep[:n0].float().mean().item())


def test_nm_units_and_groups():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, structure="nm", nm=(2, 4))
    assert graph.params == ["fc.weight"]  # conv: 27 and dw: 9 inputs are not multiples of 4
    assert "conv.weight" in graph.report() and "dw.weight" in graph.report()
    assert graph.num_units == 200 and len(graph.groups) == 50
    assert all(len(g) == 4 for g in graph.groups)
    u = graph.units[4 * 7 + 2]  # group 7 = row 1, cols 8..11
    assert u.group == 7 and u.slices == (ParamBlock("fc.weight", slice(1, 2), slice(10, 11)),)
    # keep the 2 largest of every 4
    w = model.fc.weight.detach().reshape(-1, 4)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.abs().topk(2, dim=1).indices, True).flatten()
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    mw = masked.fc.weight.reshape(-1, 4)
    assert bool(((mw != 0).sum(1) == 2).all())
    assert torch.equal(mw[mw != 0], w[keep.reshape(-1, 4)])
    assert graph.kept_fraction(keep) == {"fc.weight": 0.5}
    soft = unit_masks(graph, torch.full((graph.num_units,), 0.5))
    assert soft["fc.weight"].shape == model.fc.weight.shape


def test_vgg_nm_is_fast_enough():
    from npu_compress import models
    model = models.create("vgg11").eval()
    graph = build(model, (models.example_input("vgg11"),), PROFILE, structure="nm")
    assert graph.num_units > 9_000_000 and len(graph.units) == graph.num_units
    assert graph.units[graph.num_units - 1].group == len(graph.groups) - 1
