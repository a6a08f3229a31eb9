"""One op vocabulary: the pruning graph's cost (torch.export) equals estimate() (dispatch trace) on
third-party code patterns, with data movement free by default and priced when a profile says so."""
import dataclasses

import pytest
import torch
from archgen import random_keep
import torch.nn.functional as F
from torch import nn

from npu_compress import estimate, graph, load_profile
from npu_compress.graph_cost import predict
from npu_compress.hardware import ops
from npu_compress.hardware.ops import OpKind, OpRecord, TensorMeta
from npu_compress.hardware.profile import ClassEfficiency, Efficiency


class AutocastOff(nn.Module):
    """A region run in float32 whatever the outer autocast (detection heads, losses do this)."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        with torch.autocast("cpu", enabled=False):
            x = x.float() * torch.sigmoid(x)
            x = self.c2(x)
        return self.head(x.mean((2, 3)))


class LayerScaleAfterPermute(nn.Module):
    """A channels-last MLP with a layer-scale multiply, back to channels-first, residual."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc, self.head = nn.Conv2d(3, 32, 3, padding=1), nn.Linear(32, 32), nn.Linear(32, 10)
        self.gamma = nn.Parameter(torch.full((32,), 0.1))

    def forward(self, x):
        x = self.c1(x)
        y = x.permute(0, 2, 3, 1)
        y = (self.fc(y) * self.gamma).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, d, 4, stride=4), nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm, self.pw1, self.act, self.pw2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        self.gamma, self.head = nn.Parameter(torch.full((d,), 1e-6)), nn.Linear(d, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return self.head((x + (self.gamma * y).permute(0, 3, 1, 2)).mean((2, 3)))


class LinearAttention(nn.Module):
    """EfficientViT-style ReLU linear attention: (v k^T) q with a padded ones row as normaliser."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.stem, self.qkv, self.proj = nn.Conv2d(3, d, 3, padding=1, stride=2), nn.Conv2d(d, 3 * d, 1), nn.Conv2d(d, d, 1)
        self.dim, self.head = d // heads, nn.Linear(d, 10)

    def forward(self, x):
        x = self.stem(x)
        b, _, h, w = x.shape
        qkv = self.qkv(x).reshape(b, -1, 3 * self.dim, h * w)
        q, k, v = qkv[:, :, :self.dim], qkv[:, :, self.dim:2 * self.dim], qkv[:, :, 2 * self.dim:]
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
        out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
        out = out[:, :, :-1] / (out[:, :, -1:] + 1e-15)
        return self.head((x + self.proj(out.reshape(b, -1, h, w))).mean((2, 3)))


class HandWrittenLinear(nn.Module):
    """A linear layer spelled with matmul and a bias add on a channels-last view."""

    def __init__(self):
        super().__init__()
        self.c1, self.head = nn.Conv2d(3, 32, 3, padding=1), nn.Linear(32, 10)
        self.w, self.b = nn.Parameter(torch.randn(32, 32) * 0.1), nn.Parameter(torch.zeros(32))

    def forward(self, x):
        y = self.c1(x).permute(0, 2, 3, 1)
        y = y @ self.w.t() + self.b
        return self.head(y.permute(0, 3, 1, 2).mean((2, 3)))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, half go through convs, a concat (which copies: the
    passed half is a split of the input) and a channel shuffle; then a LayerNorm2d-style norm."""

    def __init__(self, c=32):
        super().__init__()
        self.stem, self.pw = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c // 2, c // 2, 1)
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        y = torch.cat((a, torch.relu(self.pw(b))), dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(y.mean((2, 3)))


class FireInPlace(nn.Module):
    """SqueezeNet's Fire module as torchvision writes it: in-place ReLUs (the dispatch trace sees one tensor
    rewritten, torch.export two), two expand convs into a concat, then a residual add kept in bricks."""

    def __init__(self, c=32):
        super().__init__()
        self.stem, self.squeeze = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c // 4, 1)
        self.e1, self.e3 = nn.Conv2d(c // 4, c // 2, 1), nn.Conv2d(c // 4, c // 2, 3, padding=1)
        self.relu, self.tail = nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        x = self.relu(self.stem(x))
        s = self.relu(self.squeeze(x))
        y = torch.cat((self.relu(self.e1(s)), self.relu(self.e3(s))), dim=1)
        return self.tail(y + x)


class BasicBlockInPlace(nn.Module):
    """torchvision's ResNet block: ``out += identity`` and an in-place ReLU, then a downsampling stage
    (a strided 1x1 conv reads the block's output, which is then NHWC on Ethos-U, not bricks)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.down, self.conv_s2 = nn.Conv2d(c, 2 * c, 1, stride=2), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.head = nn.Conv2d(2 * c, 4, 1)

    def forward(self, x):
        x = self.relu(self.stem(x))
        out = self.conv(x)
        out += x
        out = self.relu(out)
        return self.head(self.down(out) + self.conv_s2(out))


PATTERNS = [AutocastOff, LayerScaleAfterPermute, ConvNeXtBlock, LinearAttention, HandWrittenLinear, ShuffleUnit,
            FireInPlace, BasicBlockInPlace]


def _priced_moves(name="ethos-u55-128", priced=True):
    """A profile that prices data movement and unfused elementwise ops (as a CPU runtime does); or
    (``priced=False``) prices no data movement at all, the layout permutations included."""
    p = load_profile(name)
    classes = {k: v for k, v in p.efficiency.classes if k != "permute"}
    if priced:
        classes["move"] = ClassEfficiency(compute_scale=0.0, elem_cycles=1.0, overhead_cycles=100.0)
    return dataclasses.replace(p, efficiency=Efficiency(tuple(classes.items())))


@pytest.mark.parametrize("priced", [False, True], ids=["moves-free", "moves-priced"])
@pytest.mark.parametrize("cls", PATTERNS, ids=lambda c: c.__name__)
def test_predict_equals_estimate_on_third_party_patterns(cls, priced):
    torch.manual_seed(0)
    profile = _priced_moves(priced=priced)
    model, x = cls().eval(), torch.randn(1, 3, 32, 32)
    g = graph.build(model, (x,), profile)
    # something is prunable in each pattern (the autocast region too); a hand-written matmul with
    # a transposed weight is frozen by the channel analysis, so only its dense cost is compared
    assert len(g.units) >= (0 if cls is HandWrittenLinear else 4)
    for keep in (torch.ones(len(g.units), dtype=torch.bool), random_keep(g, 0.4, torch.Generator().manual_seed(1))):
        pruned = graph.remove_pruned(model, g, keep)
        actual, predicted = estimate(pruned, x, profile), predict(g, keep, profile)
        assert predicted.latency_s == pytest.approx(actual.latency_s, rel=1e-9, abs=0)
        assert (predicted.memory_bytes, predicted.macs) == (actual.memory_bytes, actual.macs)


def test_autocast_region_is_analysed_op_by_op():
    model, x = AutocastOff().eval(), torch.randn(1, 3, 32, 32)
    g = graph.build(model, (x,), load_profile("ethos-u55-128"))
    names = {n.target.__name__ for n in g.exported.graph.nodes if n.op == "call_function"
             and hasattr(n.target, "__name__")}
    assert "wrap_with_autocast" not in names
    assert len(g.units) == 4  # c1 and c2 outputs, 16 channels each in units of 8
    # the region's own ops are costed: the sigmoid * mul inside it is an elementwise layer
    kinds = [c.kind for c in estimate(model, x, "ethos-u55-128").layers]
    assert kinds.count("conv") == 2


def test_moves_are_free_by_default_and_priced_by_the_profile():
    model, x = ConvNeXtBlock().eval(), torch.randn(1, 3, 32, 32)
    free = estimate(model, x, _priced_moves(priced=False))
    moves = [c for c in free.layers if c.kind == "move"]
    assert [c.op for c in moves] == ["permute", "permute"]
    assert all(c.latency_s == 0 and c.bound == "free" for c in moves)
    priced = estimate(model, x, _priced_moves())
    clock = load_profile("ethos-u55-128").compute.clock_hz
    for c in (c for c in priced.layers if c.kind == "move"):  # 8x8 positions x 32 channels, + 100 cycles
        assert c.latency_s == pytest.approx((1.0 * 8 * 8 * 32 + 100.0) / clock, rel=1e-12)
    assert priced.latency_s - free.latency_s == pytest.approx(2 * (2048 + 100) / clock, rel=1e-9)


def test_a_linear_layer_has_one_spelling_in_both_tracers():
    for cls in (LayerScaleAfterPermute, HandWrittenLinear):
        model, x = cls().eval(), torch.randn(1, 3, 8, 8)
        rep = estimate(model, x, "ethos-u55-128")
        linear = [c for c in rep.layers if c.kind == "linear"]
        assert len(linear) == 2  # the channels-last one and the head; no separate bias add
        assert linear[0].weight_bytes == 32 * 32 + 32 * 4  # int8 weights, int32 bias
        assert not [c for c in rep.layers if c.op == "add" and c.out_shape == (1, 8, 8, 32)]


def test_one_vocabulary_and_one_normaliser():
    assert ops.base_name(torch.ops.aten.relu_.default) == "relu"
    assert ops.base_name("aten.mul_.Tensor") == "mul"
    assert ops.base_name(torch.ops.aten.__and__.Tensor) == "__and__"
    from npu_compress.graph import channel_ops
    assert channel_ops.BINARY is ops.BINARY and channel_ops.PERMUTE is ops.PERMUTE
    t = TensorMeta("a", (1, 8, 4, 4))
    w = TensorMeta("w", (8, 8), "fc.weight")
    assert OpRecord("cat", "", (t, t), (TensorMeta("b", (1, 16, 4, 4)),)).kind == OpKind.MOVE
    assert OpRecord("t", "", (w,), (TensorMeta("c", (8, 8)),)).kind == OpKind.VIEW  # folded: weights only
    assert OpRecord("clone", "", (t,), (TensorMeta("d", t.shape),)).kind == OpKind.VIEW


def test_a_permutation_of_size_1_dims_moves_nothing_and_costs_nothing():
    """``transpose(1, 2)`` of (B, N, 1, D) (one attention head) is a reshape: no element changes
    place, so no profile prices it; with 3 heads it is a real transpose. Both tracers agree."""

    class Heads(nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.heads, self.fc = heads, nn.Linear(32 * heads, 32 * heads)

        def forward(self, x):  # (1, N, heads * 32)
            b, n, c = x.shape
            q = self.fc(x).view(b, n, self.heads, 32).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(b, n, c)

    profile = _priced_moves()
    for heads, moved in ((1, 0), (3, 2)):
        model, x = Heads(heads).eval(), torch.randn(1, 16, 32 * heads)
        rep = estimate(model, x, profile)
        assert len([c for c in rep.layers if c.kind == "move"]) == moved
        g = graph.build(model, (x,), profile)
        assert predict(g, torch.ones(g.num_units, dtype=torch.bool), profile).latency_s == pytest.approx(
            rep.latency_s, rel=1e-9)
    rec = ops.OpRecord("permute", "", (TensorMeta("a", (1, 1, 8, 4)),), (TensorMeta("b", (1, 8, 1, 4)),),
                       {"dims": (0, 2, 1, 3)})
    assert not ops.moves_data(rec) and ops.classify(rec) is OpKind.VIEW
    rec = ops.OpRecord("transpose", "", (TensorMeta("a", (1, 2, 8, 4)),), (TensorMeta("b", (1, 8, 2, 4)),),
                       {"dim0": 1, "dim1": -2})
    assert ops.moves_data(rec) and ops.classify(rec) is OpKind.MOVE
