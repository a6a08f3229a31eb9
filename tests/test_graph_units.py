"""Hand-checked channel units: which slices go together, and what surgery does to modules."""
import copy
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archgen import Attention, CascadedAttention, CrossStage, Mixed, PartialResidual, SepAttention, max_err
from npu_compress.graph import ParamSlice, apply_masks, build, remove_pruned, unit_masks
from npu_compress.hardware.profile import load_profile

PROFILE = load_profile("generic-4tops")


def slices_of(graph, unit):
    return {(s.param, s.dim): s.indices().tolist() for s in graph.units[unit].slices}


def check_equal(model, graph, keep, x):
    small = remove_pruned(model, graph, keep)
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    with torch.no_grad():
        assert max_err(masked(x), small(x)) <= 1e-5
    return small


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.b, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.a(x))) + self.b(x))


def test_residual_add_couples_producers():
    graph = build(Residual().eval(), (torch.randn(1, 3, 4, 4),), PROFILE, group_size=2)
    assert len(graph.groups) == 1 and graph.num_units == 4
    s = slices_of(graph, 1)
    for key in [("a.weight", 0), ("a.bias", 0), ("b.weight", 0), ("bn.weight", 0), ("bn.running_mean", 0),
                ("bn.running_var", 0), ("out.weight", 1)]:
        assert s[key] == [2, 3], key
    assert all(graph.units[u].group == 0 for u in range(4))
    assert isinstance(graph.units[0].slices[0], ParamSlice)


class CatChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(12, 6, 1)
        self.d = nn.Conv2d(3, 8, 1)
        self.e, self.f = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], 1))
        p, q = self.d(x).chunk(2, 1)
        return y, self.e(p) + self.f(q)


def test_cat_offsets_and_chunk_coupling():
    model, x = CatChunk().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    by_producer = {}
    for u in range(graph.num_units):
        s = slices_of(graph, u)
        for p in ("a.weight", "b.weight", "d.weight"):
            if (p, 0) in s:
                by_producer.setdefault(p, []).append(s)
    assert [s[("c.weight", 1)] for s in by_producer["b.weight"]] == [[8], [9], [10], [11]]  # cat offset
    assert [s[("d.weight", 0)] for s in by_producer["d.weight"]] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert by_producer["d.weight"][1][("e.weight", 1)] == [1] == by_producer["d.weight"][1][("f.weight", 1)]
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[::3] = False
    small = check_equal(model, graph, keep, x)
    assert small.e.in_channels == small.d.out_channels // 2


class DepthGroup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # channel multiplier 2
        self.g = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.h = nn.Conv2d(8, 8, 1)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = F.relu(self.g(F.relu(self.dw(self.a(x)))))
        return self.head(self.gn(self.h(y)).flatten(1))


def group_owning(graph, param):
    return next(g for g in graph.groups if (param, 0) in slices_of(graph, g.start))


def test_depthwise_grouped_groupnorm_flatten():
    model, x = DepthGroup().eval(), torch.randn(2, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert sorted(len(g) for g in graph.groups) == [4, 4, 4]
    a, g, h = (group_owning(graph, p) for p in ("a.weight", "g.weight", "h.weight"))
    s = slices_of(graph, a.start + 1)  # a's channels 1 and 5 go together: g takes 8 inputs per group
    assert s[("a.weight", 0)] == [1, 5] and s[("dw.weight", 0)] == [2, 3, 10, 11] and s[("g.weight", 1)] == [2, 3]
    assert slices_of(graph, g.start)[("g.weight", 0)] == [0, 4]  # same offset in both groups
    s = slices_of(graph, h.start)  # a whole GroupNorm group, and its 2 x 16 features of the head
    assert s[("gn.weight", 0)] == [0, 1] and s[("head.weight", 1)] == list(range(32))
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[[a.start + 1, g.start, h.start + 2]] = False
    small = check_equal(model, graph, keep, x)
    assert (small.a.out_channels, small.dw.groups, small.dw.out_channels, small.g.in_channels) == (6, 6, 12, 12)
    assert (small.g.out_channels, small.g.groups, small.h.in_channels) == (6, 2, 6)
    assert (small.gn.num_groups, small.gn.num_channels, small.head.in_features) == (3, 6, 96)
    kept = graph.kept_channels(keep)
    assert kept["conv2d_1"] == 12 and kept["group_norm"] == 6 and kept["flatten"] == 96


class TwoAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.attn = SepAttention(8, 4, 2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.attn(self.stem(x)))


def test_separate_qkv_heads():
    model, x = TwoAttn().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    head_group = next(g for g in graph.groups if len(g) == 4)
    s = slices_of(graph, head_group.start + 1)
    for p in ("attn.q.weight", "attn.k.weight", "attn.v.weight"):
        assert s[(p, 0)] == [2, 3]
    assert s[("attn.proj.weight", 1)] == [2, 3]
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[head_group.start + 1] = False
    small = check_equal(model, graph, keep, x)
    assert small.attn.num_heads == 3 and small.attn.q.out_features == 6
    dims = graph.channel_dims
    heads_nodes = [n for n, d in dims.items() if n.startswith("scaled_dot")]
    assert heads_nodes and all(dims[n] == 1 for n in heads_nodes)
    assert graph.kept_channels(keep)[heads_nodes[0]] == 3


class DerivedWidthAttn(nn.Module):
    """timm's Attention: ``attn_dim = num_heads * head_dim`` stored at construction, used in forward."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.attn = Attention(8, 4, 3, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.attn(self.stem(x)))


def test_attention_width_stored_at_construction_follows_the_kept_heads():
    model, x = DerivedWidthAttn().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    fixed = sorted(attr for path, attr, _ in graph._channel.attr_fixes if path == "attn")
    assert fixed == ["attn_dim", "num_heads"]
    head_group = next(g for g in graph.groups if len(g) == 4)
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[[head_group.start, head_group.start + 2]] = False
    small = check_equal(model, graph, keep, x)
    assert (small.attn.num_heads, small.attn.attn_dim, small.attn.head_dim) == (2, 6, 3)
    assert (small.attn.qkv.out_features, small.attn.proj.in_features) == (18, 6)


def test_unit_masks_soft_and_hard():
    model, x = Residual().eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=2)
    f = torch.tensor([1.0, 0.5, 0.0, 1.0], requires_grad=True)
    masks = unit_masks(graph, f)
    assert masks["a.weight"].shape == (8, 1, 1, 1) and masks["out.weight"].shape == (1, 8, 1, 1)
    assert masks["a.weight"].flatten().tolist() == [1, 1, 0.5, 0.5, 0, 0, 1, 1]
    masks["out.weight"].sum().backward()
    assert f.grad.tolist() == [2.0, 2.0, 2.0, 2.0]
    keep = f.detach() > 0.7
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    hard = unit_masks(graph, keep)
    for name, p in masked.state_dict().items():
        if name in hard:
            assert torch.equal(p == 0, (hard[name].expand_as(p) == 0) | (model.state_dict()[name] == 0)), name


def test_kept_channels_is_fast():
    from npu_compress import models
    model = models.create("mobilenetv2").eval()
    graph = build(model, (models.example_input("mobilenetv2"),), PROFILE, group_size=8)
    keep = torch.rand(graph.num_units) > 0.5
    t = time.perf_counter()
    for _ in range(20):
        graph.kept_channels(keep)
    assert (time.perf_counter() - t) / 20 < 0.02
    assert len(graph.channel_dims) > 100


class MultiIO(nn.Module):
    """Two inputs, layer-scale and positional parameters, SE gating, a class token, an embedding."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(5, 8, 1)
        self.gamma = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.c = nn.Conv2d(8, 12, 1)
        self.pos, self.cls = nn.Parameter(torch.randn(1, 16, 12)), nn.Parameter(torch.randn(1, 1, 12))
        self.lin, self.emb, self.out = nn.Linear(12, 6), nn.Embedding(10, 6), nn.Linear(6, 3)

    def forward(self, x, z, idx):
        y = self.a(x) * self.gamma + self.b(z) / 2
        y = y * torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))[:, :, None, None]
        t = self.c(y).flatten(2).transpose(1, 2) + self.pos  # (B, 16, 12)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        return self.out(self.lin(t)[:, 0] + self.emb(idx)), y.sum((1, 2, 3))


def test_multiple_inputs_outputs_and_parameters_in_the_graph():
    torch.manual_seed(0)
    model = MultiIO().eval()
    inputs = (torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), torch.tensor([1, 2]))
    graph = build(model, inputs, PROFILE, group_size=1)
    owners = {frozenset(p for p, _ in slices_of(graph, g.start)) for g in graph.groups}
    assert frozenset({"fc1.weight", "fc1.bias", "fc2.weight"}) in owners
    assert frozenset({"c.weight", "c.bias", "pos", "cls", "lin.weight"}) in owners
    assert frozenset({"lin.weight", "lin.bias", "emb.weight", "out.weight"}) in owners
    assert "sum" in graph.report()  # y.sum over channels freezes a, b, gamma
    for seed in range(3):
        keep = torch.rand(graph.num_units, generator=torch.Generator().manual_seed(seed)) > 0.5
        for g in graph.groups:
            keep[g.start] = True
        small = remove_pruned(model, graph, keep)
        masked = apply_masks(copy.deepcopy(model), graph, keep)
        with torch.no_grad():
            assert max_err(masked(*inputs), small(*inputs)) <= 1e-5
    assert small.emb.embedding_dim == small.lin.out_features == small.out.in_features


class CatIntoGroupedConv(nn.Module):
    """A 2-channel and a 6-channel producer concatenated into a 2-group conv: group 0 of the grouped
    conv holds a's 2 channels and b's first 2, so "one unit per group" alone could empty a."""

    def __init__(self, a=2, b=6, groups=2):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, a, 1), nn.Conv2d(3, b, 1)
        self.g = nn.Conv2d(a + b, 2 * groups, 3, groups=groups, padding=1)
        self.o = nn.Conv2d(2 * groups, 2, 1)

    def forward(self, x):
        return self.o(self.g(torch.cat([self.a(x), self.b(x)], 1)))


def test_every_producer_keeps_a_channel():
    import itertools

    from npu_compress.graph import PruningGraphError
    from npu_compress.pruners.select import mandatory_keep

    for a, b, groups in [(2, 6, 2), (1, 3, 2)]:
        model, x = CatIntoGroupedConv(a, b, groups).eval(), torch.randn(1, 3, 6, 6)
        graph = build(model, (x,), PROFILE, group_size=1)
        assert graph.covers, "a producer's channels lie in units that do not cover a whole group"
        accepted = 0
        for bits in itertools.product([False, True], repeat=graph.num_units):
            keep = torch.tensor(bits)
            try:
                graph.check_keep(keep)
            except PruningGraphError:
                assert any(not keep[c].any() for c in graph.covers) or \
                    any(not keep[list(g)].any() for g in graph.groups)
                continue
            accepted += 1
            small = check_equal(model, graph, keep, x)
            assert small.a.out_channels >= 1 and small.b.out_channels >= 1
        assert accepted >= 4
        for scores in (None, torch.rand(graph.num_units, generator=torch.Generator().manual_seed(0))):
            graph.check_keep(mandatory_keep(graph, scores))  # the minimum model keeps every producer
        for order in (list(range(graph.num_units)), list(reversed(range(graph.num_units)))):
            keep = torch.ones(graph.num_units, dtype=torch.bool)
            dropped = graph.droppable(keep, order)  # as many as can go, in this order
            keep[dropped] = False
            graph.check_keep(keep)
            assert all(not graph.droppable(keep, [u]) for u in keep.nonzero().flatten().tolist())


class Shuffled(nn.Module):
    def __init__(self, spelling, groups=2):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.groups, self.spelling, self.shuffle = groups, spelling, nn.ChannelShuffle(groups)

    def forward(self, x):
        y = self.a(x)
        if self.spelling == "module":
            return self.b(self.shuffle(y))
        b, c, h, w = y.shape
        return self.b(y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w))


@pytest.mark.parametrize("spelling", ["module", "view"])
@pytest.mark.parametrize("groups", [2, 4])
def test_channel_shuffle_prunes_in_multiples_of_its_groups(spelling, groups):
    model, x = Shuffled(spelling, groups).eval(), torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert graph.num_units == 8 // groups and "several dims" not in graph.report()
    for u in graph.units:  # one channel of every shuffle group: a's rows r, r + 8/g, ...
        rows = next(s for s in u.slices if s.param == "a.weight" and s.dim == 0).indices().tolist()
        assert len(rows) == groups and len({r % (8 // groups) for r in rows}) == 1
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    keep[1] = False
    small = check_equal(model, graph, keep, x)
    assert (small.a.out_channels, small.b.in_channels) == (8 - groups, 8 - groups)


class MixNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw, self.mix, self.out = nn.Conv2d(3, 16, 1), Mixed(), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.out(self.mix(self.pw(x)))


def test_split_sizes_held_by_the_module_are_pruned_per_segment():
    model, x = MixNetBlock().eval(), torch.randn(1, 3, 8, 8)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert graph.num_units == 16 and "split sizes" not in graph.report()
    assert len(graph.covers) == 3  # every segment keeps a channel
    keep = torch.ones(16, dtype=torch.bool)
    keep[[0, 1, 6, 12, 13, 14]] = False  # 2 of segment 0, 1 of segment 1, 3 of segment 2
    small = check_equal(model, graph, keep, x)
    assert small.mix.splits == [4, 4, 2] and small.pw.out_channels == 10
    assert [c.out_channels for c in small.mix.values()] == [4, 4, 2]
    keep[11:16] = False  # all of segment 2: refused, one must stay
    with pytest.raises(Exception, match="keep a channel"):
        graph.check_keep(keep)


class HardcodedWidth(nn.Module):
    """``a``'s 8 channels flow into a reshape to a literal width (a Python int, no attribute to update);
    ``b``'s channels are free to go."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8 * 16, 4)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        n = x.shape[0]
        return self.head(self.a(x).reshape(n, 8 * 16)), self.out(self.b(x))


def test_groups_the_models_own_code_does_not_survive_are_frozen_with_the_reason():
    model, x = HardcodedWidth().eval(), torch.randn(2, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert "breaks the model" in graph.report()
    pruned_params = {s.param for u in graph.units for s in u.slices}
    assert "b.weight" in pruned_params and "a.weight" not in pruned_params
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # any keep-set now gives a model that runs and equals the masked one
        keep = torch.rand(graph.num_units, generator=gen) > 0.5
        keep[0] = True
        check_equal(model, graph, keep, x)


@pytest.mark.parametrize("val_dim", [6, 4])  # 4: key_dim == val_dim, one value held by two attributes
def test_split_sizes_held_by_scalar_attributes_and_contracted_key_channels(val_dim):
    model, x = CascadedAttention(8, 2, 4, val_dim).eval(), torch.randn(1, 8, 3, 3)
    graph = build(model, (x,), PROFILE, group_size=1)
    report = graph.report()
    assert "split sizes" not in report and "matmul" not in report and "breaks the model" not in report
    # key_dim units (q_j with k_j, tied across heads) and val_dim value units when the sizes differ;
    # one tied class per position when key_dim == val_dim (proj's outputs are the model's output)
    assert graph.num_units == (4 + val_dim if val_dim != 4 else 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        keep = torch.rand(graph.num_units, generator=gen) > 0.4
        for cover in graph.covers:
            keep[cover[0]] = True
        keep = graph.check_keep(keep)
        small = check_equal(model, graph, keep, x)
        rows = small.qkvs[0].out_channels
        assert rows == 2 * small.key_dim + small.val_dim and small.qkvs[1].out_channels == rows
        assert small.proj.in_channels == 2 * small.val_dim
        assert (small.key_dim, small.val_dim) != (4, val_dim) or bool(keep.all())


def test_split_sizes_as_the_total_held_by_an_attribute():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), CrossStage(12), nn.Conv2d(12, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert "split sizes" not in graph.report() and "breaks the model" not in graph.report()
    # the stem's 12, and the halves of exp's 12 shrink together (position by position); blk's 6 outputs
    assert graph.num_units == 12 + 6 + 6
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    half = next(u for u in range(graph.num_units)
                if any((s.param, s.dim) == ("1.exp.weight", 0) for s in graph.units[u].slices))
    keep[half] = False
    small = check_equal(model, graph, keep, x)[1]
    assert small.expand_chs == 10 and small.exp.out_channels == 10 and small.blk.in_channels == 5


def test_slice_at_an_attribute_is_a_split_point():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), PartialResidual(6, 4), nn.Conv2d(10, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert "slice" not in graph.report() and "breaks the model" not in graph.report()
    assert graph.num_units == 6 + 4  # the first 6 tied to the residual's input, the 4 extra on their own
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for u in range(graph.num_units):  # one of the residual's channels and one of the extra ones
        rows = [s.indices().tolist() for s in graph.units[u].slices if (s.param, s.dim) == ("1.conv.weight", 0)]
        if rows and rows[0][0] in (1, 7):
            keep[u] = False
    small = check_equal(model, graph, keep, x)
    assert small[1].in_channels == 5 and small[1].conv.out_channels == 8 and small[2].in_channels == 8
