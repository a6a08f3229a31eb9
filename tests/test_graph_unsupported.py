"""Ops the analysis does not understand freeze the channels they touch; the rest still prunes."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archgen import max_err, random_keep
from npu_compress.errors import NpuCompressError
from npu_compress.graph import PruningGraphError, apply_masks, build, remove_pruned
from npu_compress.hardware.profile import load_profile

PROFILE = load_profile("generic-4tops")


class Middle(nn.Module):
    """conv1 -> (unsupported op on channels) -> conv2 -> conv3 -> pool -> fc."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.conv3 = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)
        self.register_buffer("perm", torch.randperm(16), persistent=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        if self.op == "roll":
            y = torch.roll(y, 1, dims=1)
        elif self.op == "flip":
            y = y.flip(1)
        elif self.op == "index":
            y = y[:, self.perm]
        elif self.op == "softmax":
            y = y.softmax(1)
        y = F.relu(self.conv3(F.relu(self.conv2(y))))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("op,name", [("roll", "aten.roll"), ("flip", "aten.flip"), ("index", "aten.index"),
                                     ("softmax", "aten.softmax")])
def test_unsupported_op_freezes_touched_channels(op, name):
    torch.manual_seed(0)
    model, x = Middle(op).eval(), torch.randn(2, 3, 8, 8)
    graph = build(model, (x,), PROFILE, group_size=2)
    report = graph.report()
    assert name in report, report
    touched = {s.param for u in graph.units for s in u.slices}
    assert "conv1.weight" not in touched and "bn1.running_var" not in touched  # frozen
    assert {"conv2.weight", "conv3.weight"} <= touched  # the rest still prunes
    keep = random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = remove_pruned(model, graph, keep)
    assert small.conv1.out_channels == 16 and small.conv2.out_channels < 16
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    with torch.no_grad():
        assert max_err(masked(x), small(x)) <= 1e-5


class Hardcoded(nn.Module):
    """Slices the channel dim with constants: the sliced channels must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        z = torch.split(self.b(x), [3, 5], dim=1)[1]
        return self.c(y[:, 2:6]), z


def test_constant_slices_freeze():
    model, x = Hardcoded().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    report = graph.report()
    assert "slice" in report and "split" in report
    assert graph.num_units == 0  # a and b frozen, c is a model output


def test_bad_inputs():
    model, x = Middle("none").eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(PruningGraphError, match="structure"):
        build(model, (x,), PROFILE, structure="filters")
    with pytest.raises(ValueError, match="N < M"):
        build(model, (x,), PROFILE, structure="nm", nm=(4, 4))
    with pytest.raises(NpuCompressError, match="group_size"):
        build(model, (x,), PROFILE, group_size=0)
    graph = build(model, (x,), PROFILE, group_size=4)
    with pytest.raises(PruningGraphError, match="one entry per unit"):
        apply_masks(model, graph, [True] * (graph.num_units + 1))
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[list(graph.groups[0])] = False
    with pytest.raises(PruningGraphError, match="at least one unit"):
        remove_pruned(model, graph, keep)
    with pytest.raises(PruningGraphError, match="channel units"):
        remove_pruned(model, build(model, (x,), PROFILE, structure="block"), [True])


class ShapeInCode(nn.Module):
    """view with a hardcoded channel count: the pruned copy could not run -> frozen, with the reason."""

    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8 * 16, 4)

    def forward(self, x):
        return self.fc(self.a(x).view(x.shape[0], 8, 16).flatten(1))


def test_hardcoded_shape_is_frozen_not_a_wrong_model():
    """The build proves surgery by running it: the channels the code hardcodes are frozen up front
    (not an error after training), and the report says why."""
    model, x = ShapeInCode().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert graph.num_units == 0
    report = graph.report()
    assert "breaks the model" in report and "does not run" in report
