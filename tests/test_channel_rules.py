"""The public extension point: channel rules registered by op name or module type, from user code."""
import copy

import pytest
import torch
from torch import nn

from archgen import max_err
from npu_compress.graph import (Info, PruningGraphError, apply_masks, build, register_channel_rule, remove_pruned,
                                unregister_channel_rule)
from npu_compress.hardware.profile import load_profile

PROFILE = load_profile("generic-4tops")


class Reverse(nn.Module):
    """Channels in reverse order, then a 1x1 conv: torch.flip is not understood by default."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.mix(x.flip(1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.rev, self.b = nn.Conv2d(3, 8, 1), Reverse(), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.rev(self.a(x)))


def reverse_rule(walk, node):
    """Inside a Reverse: the flip reverses channel positions; every other op as usual."""
    if node.target is not torch.ops.aten.flip.default:
        return NotImplemented
    x = walk.val(node.args[0])
    if not isinstance(x, Info) or x.dims != (1,) or list(node.args[1]) not in ([1], [-3]):
        return walk.unknown(node)
    return Info((1,), x.ids[::-1].copy())


def _pruned_equals_masked(model, graph, keep, x):
    small = remove_pruned(model, graph, keep)
    with torch.no_grad():
        assert max_err(apply_masks(copy.deepcopy(model), graph, keep)(x), small(x)) <= 1e-5
    return small


@pytest.mark.parametrize("target", [Reverse, "flip"])
def test_a_registered_rule_makes_channels_prunable(target):
    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    frozen = build(model, (x,), PROFILE, group_size=1)
    assert "flip" in frozen.report() and frozen.num_units == 8  # only rev.mix's outputs prunable
    register_channel_rule(target, reverse_rule)
    try:
        graph = build(model, (x,), PROFILE, group_size=1)
    finally:
        unregister_channel_rule(target)
    assert "flip" not in graph.report() and graph.num_units == 16
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[[0, 3, 9]] = False
    small = _pruned_equals_masked(model, graph, keep, x)
    assert (small.a.out_channels, small.rev.mix.in_channels, small.rev.mix.out_channels) == (6, 6, 7)
    assert "flip" in build(model, (x,), PROFILE, group_size=1).report()  # unregistered: frozen again


def test_bad_registrations_are_refused():
    with pytest.raises(ValueError, match="base name"):
        register_channel_rule("aten.flip.default", reverse_rule)
    with pytest.raises(TypeError, match="op name or an nn.Module subclass"):
        register_channel_rule(42, reverse_rule)
    with pytest.raises(TypeError, match="callable"):
        register_channel_rule("flip", None)


def test_a_rule_that_ties_everything_keeps_the_graph_valid():
    """The docs' example: a rule may also freeze or tie; the analysis stays exact."""
    def tie_all(walk, node):
        x = walk.val(node.args[0])
        if not isinstance(x, Info):
            return walk.unknown(node)
        walk.tie(x.ids)
        return Info(x.dims, x.ids[::-1].copy())

    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    register_channel_rule("flip", tie_all)
    try:
        graph = build(model, (x,), PROFILE, group_size=1)
    finally:
        unregister_channel_rule("flip")
    assert graph.num_units == 8  # a's channels are one class now: one unit, never removed; mix's stay
    assert all(not s.param.startswith("a.") for u in graph.units for s in u.slices)
    with pytest.raises(PruningGraphError):
        graph.check_keep(torch.zeros(graph.num_units, dtype=torch.bool))
