import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from npu_compress import Budget, BudgetError, WeightFormat, estimate, graph, layer_cost, list_profiles, load_profile

from npu_compress.hardware.layers import LayerSpec
from npu_compress.hardware.ops import OpKind


def _conv_report(c_out, profile, c_in=16, hw=32):
    model = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return estimate(model, torch.randn(1, c_in, hw, hw), profile)


def test_conv_17_channels_costs_as_32_on_16_tile():
    p = load_profile("generic-4tops")
    assert p.tiling.tile_out == 16
    r17, r32, r16 = (_conv_report(c, p) for c in (17, 32, 16))  # 16 fits one tile: cheaper
    (l17,), (l32,) = r17.layers, r32.layers
    assert l17.macs_padded == l32.macs_padded == 32 * 16 * 9 * 32 * 32
    assert l17.bound == "compute"
    assert r17.latency_s == pytest.approx(r32.latency_s, rel=1e-12)
    assert r16.latency_s < r17.latency_s
    assert l17.macs == 17 * 16 * 9 * 32 * 32


@pytest.mark.parametrize("name", ["generic-4tops", "ethos-u55-256"])  # without and with [efficiency]
def test_conv_latency_matches_formula(name):
    p = load_profile(name)
    r = _conv_report(20, p, c_in=12, hw=16)
    to, ti = p.tiling.tile_out, p.tiling.tile_in
    macs_pad = math.ceil(20 / to) * to * math.ceil(12 / ti) * ti * 9 * 16 * 16
    eff = p.efficiency.of("conv")
    t_ideal = macs_pad / (p.compute.macs_per_cycle * p.compute.clock_hz)
    t_compute = max(eff.compute_scale * t_ideal, eff.elem_cycles * 20 * 16 * 16 / p.compute.clock_hz)
    wbytes = 20 * 12 * 9 * p.compute.dtype.bytes
    act = (12 + 20) * 16 * 16 * p.compute.dtype.bytes
    spill = act if act > p.memory.sram_bytes else 0
    t_memory = (wbytes + spill) / p.memory.dram_bandwidth_bytes_per_s
    overhead = p.overhead.layer_cycles if eff.overhead_cycles is None else eff.overhead_cycles
    expect = max(t_compute, t_memory) + overhead / p.compute.clock_hz
    assert r.latency_s == pytest.approx(expect, rel=1e-12)
    assert r.memory_bytes == r.weight_bytes == wbytes
    if name == "generic-4tops":
        assert p.efficiency.of("conv") == type(eff)()  # the peak-rate model, as docs/ARCHITECTURE.md writes it


@pytest.mark.parametrize("profile", sorted(list_profiles()))
@pytest.mark.parametrize("kind", [OpKind.CONV, OpKind.LINEAR])
def test_layer_latency_monotone_in_channels(profile, kind):
    p = load_profile(profile)
    spec = LayerSpec(name="l", op="x", kind=kind, in_shape=(1, 96, 16, 16), out_shape=(1, 80, 16, 16), c_in=96,
                     c_out=80, kernel=9 if kind == OpKind.CONV else 1, spatial=256, weight_param="w", has_bias=True,
                     in_elems=96 * 256, out_elems=80 * 256)
    prev_out = math.inf
    for co in range(80, 0, -1):
        lat = layer_cost(spec.resized(c_out=co), p).latency_s
        assert lat <= prev_out + 1e-18
        prev_out = lat
        prev_in = math.inf
        for ci in range(96, 0, -7):
            lat_in = layer_cost(spec.resized(c_in=ci, c_out=co), p).latency_s
            assert lat_in <= prev_in + 1e-18
            prev_in = lat_in


def _chain(widths):
    layers, c = [], 3
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


@pytest.mark.parametrize("profile", sorted(list_profiles()))
def test_model_latency_monotone_as_channels_removed(profile):
    p = load_profile(profile)
    x = torch.randn(1, 3, 32, 32)
    widths = [64, 96, 128]
    prev = estimate(_chain(widths), x, p)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        i = int(torch.randint(0, len(widths), (1,), generator=gen))
        widths[i] = max(1, widths[i] - int(torch.randint(1, 24, (1,), generator=gen)))
        cur = estimate(_chain(widths), x, p)
        assert cur.latency_s <= prev.latency_s + 1e-15
        assert cur.memory_bytes <= prev.memory_bytes
        prev = cur


def test_bn_and_relu_fuse_into_conv_and_residual_add():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    r = estimate(Block(), torch.randn(1, 8, 8, 8), "generic-4tops")
    bounds = {c.kind if c.kind in ("conv", "norm") else c.op: c.bound for c in r.layers}
    assert bounds["conv"] in ("compute", "memory")
    assert bounds["norm"] == "fused"
    assert bounds["add"] != "fused" and bounds["relu"] == "fused"
    assert sum(c.latency_s for c in r.layers if c.bound == "fused") == 0.0
    p = load_profile("generic-4tops")
    assert r.weight_bytes == 8 * 8 * 9 * 1 + 8 * p.compute.dtype.bias_bytes  # BN folded: no bytes


def test_block_and_nm_formats_shrink_weights():
    p = load_profile("generic-4tops")
    model = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(1, 64, 16, 16)
    dense = estimate(model, x, p)
    half = estimate(model, x, p, formats={"weight": WeightFormat("block", density=0.5)})
    bo, bi = p.tiling.block
    blocks = math.ceil(64 / bo) * math.ceil(64 * 9 / bi)
    assert half.weight_bytes == blocks // 2 * (bo * bi + p.sparsity.index_bytes)
    assert half.weight_bytes <= 0.55 * dense.weight_bytes + blocks * p.sparsity.index_bytes
    assert half.layers[0].macs_padded == dense.layers[0].macs_padded // 2  # block_skip = true
    nm = estimate(model, x, p, formats={"weight": WeightFormat("nm", density=0.5, n=2, m=4)})
    assert nm.weight_bytes == 64 * 64 * 9 // 2 + 64 * 64 * 9 // 2 * 2 // 8


def test_attention_and_linear_are_costed():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(64, 192), nn.Linear(64, 64)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 2, 32).permute(2, 0, 3, 1, 4).unbind(0)
            y = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(b, n, 64))

    r = estimate(Attn(), torch.randn(1, 17, 64), "generic-4tops")
    kinds = [c.kind for c in r.layers]
    assert kinds.count("linear") == 2 and kinds.count("attention") == 1
    attn = next(c for c in r.layers if c.kind == "attention")
    assert attn.macs == 2 * 17 * 17 * (32 + 32)
    assert r.macs == 17 * 64 * 192 + 17 * 64 * 64 + attn.macs


def test_peak_activation_of_a_chain():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    r = estimate(model, torch.randn(1, 3, 8, 8), "generic-4tops")  # int8: 1 byte per element
    # peak at the second conv: its input (relu fused in place into conv1's output) + its output;
    # the network input (3 x 64) is dead by then
    assert r.peak_activation_bytes == (8 + 4) * 64


def test_report_json_names():
    r = _conv_report(8, load_profile("generic-4tops"), c_in=8, hw=8)
    d = json.loads(r.to_json())
    for key in ("latency_s", "memory_bytes", "weight_bytes", "peak_activation_bytes", "layers"):
        assert key in d
    layer = d["layers"][0]
    for key in ("op", "in_shape", "out_shape", "macs_padded", "t_compute_s", "t_memory_s", "bound"):
        assert key in layer
    assert "latency" in r.table()


def test_estimate_restores_training_mode_and_does_not_touch_bn_stats():
    model = _chain([8])
    model.train()
    before = model[1].running_mean.clone()
    estimate(model, torch.randn(2, 3, 8, 8), "generic-4tops")
    assert model.training and model[1].training
    assert torch.equal(before, model[1].running_mean)


def test_budget_target_and_infeasible_message():
    r = _conv_report(16, load_profile("generic-4tops"))
    assert Budget.parse("latency=50%").target(r) == pytest.approx(0.5 * r.latency_s)
    assert Budget.parse("memory=1KiB").target(r) == 1024
    with pytest.raises(BudgetError, match="infeasible.*at least"):
        Budget.parse("latency=10%").require_feasible(r, minimum=0.2 * r.latency_s)


def test_trace_error_names_input_shape():
    from npu_compress import TraceError

    with pytest.raises(TraceError, match=r"\(1, 5, 8, 8\)"):
        estimate(nn.Conv2d(3, 8, 3), torch.randn(1, 5, 8, 8), "generic-4tops")


def test_linear_over_rows_is_gemm_attention_its_own_class_both_fall_back_to_matmul():
    import torch.nn.functional as F

    from npu_compress.hardware.cost import op_class, trace_layers
    from npu_compress.hardware.profile import ClassEfficiency, Efficiency

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):  # (1, 8, 16)
            q = self.tokens(x).view(1, 8, 2, 8).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(1, 8, 16)
            return self.head(y.mean(1))

    x = torch.randn(1, 8, 16)
    classes = {s.name: op_class(s) for s in trace_layers(Block(), (x,)) if s.kind.uses_mac_array}
    assert sorted(classes.values()) == ["attention", "gemm", "matmul"]
    assert classes["tokens"] == "gemm" and classes["head"] == "matmul"
    matmul = ClassEfficiency(3.0, 0.5, 10.0)
    eff = Efficiency((("matmul", matmul),))
    assert eff.of("gemm") == eff.of("attention") == matmul  # a profile that did not measure them apart
    split = Efficiency((("matmul", matmul), ("gemm", ClassEfficiency(1.1, 1.2, 800.0))))
    assert split.of("gemm").compute_scale == 1.1 and split.of("attention") == matmul


def test_channel_shuffle_both_spellings_priced_as_one_permute_and_a_concat_stays_free():
    """Every layout permutation is the op family "permute": nn.ChannelShuffle and the
    view -> transpose -> reshape spelling cost the same, from the profile's ``permute_*`` entry
    (Vela runs a transpose as an operator of its own), while a concat keeps the free ``move`` default."""
    from npu_compress.hardware.profile import ClassEfficiency, Efficiency

    class Spelled(nn.Module):
        def forward(self, x):
            b, c, h, w = x.shape
            return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)

    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 1)

    shipped = load_profile("ethos-u55-128")
    base = dataclasses.replace(shipped, efficiency=Efficiency(tuple(
        (k, v) for k, v in shipped.efficiency.classes if k != "permute")))
    permute = ClassEfficiency(0.001, 1.5, 200.0)
    p = dataclasses.replace(base, efficiency=Efficiency(base.efficiency.classes + (("permute", permute),)))
    x = torch.randn(1, 16, 16, 16)
    costs = [estimate(nn.Sequential(nn.Conv2d(16, 16, 1), m), x, p).layers[1] for m in (Spelled(), nn.ChannelShuffle(2))]
    assert [c.kind for c in costs] == [OpKind.MOVE] * 2
    assert costs[0].latency_s == pytest.approx(costs[1].latency_s, rel=1e-12)
    cycles = costs[0].latency_s * p.compute.clock_hz
    assert cycles == pytest.approx(1.5 * 16 * 16 * 16 + 200.0, rel=0.02)  # elem_cycles x elements + overhead
    without = estimate(nn.Sequential(nn.Conv2d(16, 16, 1), Spelled()), x, base).layers[1].latency_s
    assert without < 0.1 * costs[0].latency_s  # before the entry a permute was priced as the free move class
    (cat,) = [c for c in estimate(Cat(), x, p).layers]
    assert cat.latency_s == estimate(Cat(), x, base).layers[0].latency_s


def test_a_conv_strided_beyond_the_chip_limit_runs_once_per_output_position():
    """Ethos-U (ExecuTorch's U55 lowering) runs a conv with stride > 3 as one operator per output
    position, each reading all the weights: a ViT's 16x16/16 patch embedding on a 96 px image is 36
    operators. The cost follows the kept channels in both pricing paths."""
    from npu_compress.graph_cost import predict

    shipped = load_profile("ethos-u55-128")
    assert shipped.compute.max_conv_stride == 3
    unlimited = dataclasses.replace(shipped, compute=dataclasses.replace(shipped.compute, max_conv_stride=0))
    model = nn.Sequential(nn.Conv2d(3, 64, 16, stride=16), nn.ReLU(), nn.Conv2d(64, 32, 3, stride=2)).eval()
    x = torch.randn(1, 3, 96, 96)
    split, whole = estimate(model, x, shipped).layers, estimate(model, x, unlimited).layers
    clock, bw = shipped.compute.clock_hz, shipped.memory.dram_bandwidth_bytes_per_s
    overhead = shipped.efficiency.of("conv").overhead_cycles
    wbytes = split[0].weight_bytes
    assert split[0].t_memory_s == pytest.approx(36 * wbytes / bw, rel=1e-12)
    assert split[0].latency_s == pytest.approx(max(split[0].t_compute_s, 36 * wbytes / bw) + 36 * overhead / clock,
                                               rel=1e-12)
    assert split[0].latency_s > 20 * whole[0].latency_s
    assert split[1].latency_s == whole[1].latency_s  # stride 2: one operator
    g = graph.build(model, (x,), shipped)
    keep = torch.ones(g.num_units, dtype=torch.bool)
    keep[: g.num_units // 2] = False
    small = graph.remove_pruned(model, g, keep)
    assert predict(g, keep, shipped).latency_s == pytest.approx(estimate(small, x, shipped).latency_s, rel=1e-9)
