"""Every zoo model: prune 30% and 70% of the channel units at random, then check the result.

The pruned copy runs, equals the masked model, exports with torch.export, round-trips its
state_dict into a fresh copy made the same way, trains one step, and has exactly the channel
counts ``kept_channels`` predicted.
"""
import copy

import pytest
import torch

from archgen import expected_param_count, max_err, random_keep
from npu_compress import models
from npu_compress.graph import apply_masks, build, remove_pruned
from npu_compress.hardware.profile import load_profile


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_GRAPHS = {}


def zoo_graph(name):
    if name not in _GRAPHS:
        torch.manual_seed(0)
        model = models.create(name).eval()
        x = models.example_input(name)
        _GRAPHS[name] = (model, x, build(model, (x,), load_profile("generic-4tops"), group_size=8))
    return _GRAPHS[name]


@pytest.mark.parametrize("frac", [0.3, 0.7])
@pytest.mark.parametrize("name", models.names())
def test_zoo_prune(name, frac):
    model, x, graph = zoo_graph(name)
    assert graph.num_units > 0, graph.report()
    keep = random_keep(graph, frac, torch.Generator().manual_seed(int(frac * 10)))
    small = remove_pruned(model, graph, keep)
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    with torch.no_grad():
        assert max_err(masked(x), small(x)) <= 1e-5
    assert sum(p.numel() for p in small.parameters()) == expected_param_count(model, graph, keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())

    ep = torch.export.export(small, (x,), strict=False)
    shapes = {n.name: tuple(n.meta["val"].shape) for n in ep.graph.nodes
              if isinstance(n.meta.get("val"), torch.Tensor)}
    kept = graph.kept_channels(keep)
    for node, dim in graph.channel_dims.items():
        assert shapes[node][dim] == kept[node], node

    fresh = remove_pruned(model, graph, keep)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert max_err(fresh(x), small(x)) == 0.0

    small.train()
    loss = small(torch.cat([x, x])).float().square().mean()
    loss.backward()
    assert all(p.grad is not None for p in small.parameters() if p.requires_grad)


def test_vit_heads_are_units():
    model, x, graph = zoo_graph("vit-tiny")
    heads = [g for g in graph.groups if len(g) == 3]
    assert len(heads) == 6  # one group of 3 heads per block
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[heads[0].start] = False
    small = remove_pruned(model, graph, keep)
    attn = small.blocks[0].attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 64 and attn.proj.in_features == 128
    assert graph.units[heads[0].start].size == 3 * 64
