"""Property: on random architectures, the masked model equals the physically pruned model.

For each seeded architecture (tests/archgen.py) and a random keep-set: outputs agree to 1e-5,
the pruned parameter count equals the count implied by the units' slices, and
``kept_channels`` equals the channel counts of the pruned model's own export. 40 seeds run by
default, 200 (a fifth of them with unsupported ops mixed in) under ``-m slow``.
"""
import copy

import pytest
import torch

from archgen import expected_param_count, max_err, random_arch, random_keep
from npu_compress.graph import apply_masks, build, remove_pruned
from npu_compress.hardware.profile import load_profile

FAST = 40
SEEDS = [pytest.param(s, marks=pytest.mark.slow) if s >= FAST else s for s in range(200)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs are far slower multi-threaded on a busy machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def profile():
    return load_profile("generic-4tops")


def node_shapes(model, x):
    ep = torch.export.export(model, (x,), strict=False)
    return {n.name: tuple(n.meta["val"].shape) for n in ep.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_equals_pruned(seed, profile):
    model, x = random_arch(seed, unsupported=seed % 5 == 4)
    graph = build(model, (x,), profile, group_size=seed % 3 + 1)
    gen = torch.Generator().manual_seed(seed)
    keep = random_keep(graph, float(torch.rand(1, generator=gen)) * 0.8, gen)

    small = remove_pruned(model, graph, keep)
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    with torch.no_grad():
        assert max_err(masked(x), small(x)) <= 1e-5
    assert sum(p.numel() for p in small.parameters()) == expected_param_count(model, graph, keep)

    shapes = node_shapes(small, x)
    kept = graph.kept_channels(keep)
    assert set(kept) == set(graph.channel_dims)
    for node, dim in graph.channel_dims.items():
        assert shapes[node][dim] == kept[node], node


def test_generator_covers_the_op_mix():
    kinds = set()
    for seed in range(FAST):
        model, _ = random_arch(seed, unsupported=seed % 5 == 4)
        kinds |= {op[0] for op in model.program}
    assert {"conv", "add", "cat", "dw", "gconv", "glu", "swap", "gate", "pool", "up", "attn", "gn", "convT",
            "head", "gap", "shuffle", "mix", "ln",
            "cnblock"} <= kinds


def test_most_cases_have_prunable_units(profile):
    counts = []
    for seed in range(10):
        model, x = random_arch(seed)
        counts.append(build(model, (x,), profile, group_size=1).num_units)
    assert sum(c > 0 for c in counts) >= 8
