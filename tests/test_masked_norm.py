"""LayerNorm / RMSNorm over channels (ViT and ConvNeXt residual streams) prune, with masked statistics.

The masked model computes each such norm's mean and variance over the kept channels only, so it
equals the physically pruned model; SMART's soft mask weighs the statistics by f, DPM by the share
of a decaying unit's norm left, and AC/DC's dense phases see every channel again.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archgen import CNBlock, LayerNorm2d, max_err, random_keep
from npu_compress.graph import apply_masks, build, norm_weights, remove_pruned
from npu_compress.graph import masked_norm
from npu_compress.hardware.profile import load_profile
from npu_compress.pruners import SmartPruner
from npu_compress.pruners.acdc import AcdcPruner
from npu_compress.pruners.dpm import DecayPruning

PROFILE = load_profile("generic-4tops")


class TinyConvNeXt(nn.Module):
    """Stem conv + LayerNorm2d, two ConvNeXt blocks on one stream, a final LayerNorm, a classifier."""

    def __init__(self, norm: str = "ln", c: int = 16):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, c, 2, stride=2), LayerNorm2d(c)
        self.blocks = nn.Sequential(CNBlock(c, norm), CNBlock(c, norm))
        self.norm, self.head = nn.LayerNorm(c), nn.Linear(c, 5)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                    m.weight.uniform_(0.5, 1.5)
                    if getattr(m, "bias", None) is not None:
                        m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.head(self.norm(x.mean((2, 3))))


def _net(norm="ln"):
    torch.manual_seed(0)
    return TinyConvNeXt(norm).eval(), torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("norm", ["ln", "ln2d", "rms"])
def test_norm_over_the_stream_prunes_and_masked_equals_pruned(norm):
    model, x = _net(norm)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert not graph._channel.frozen[1:], graph.report()  # only the classifier's output is frozen
    normed = {path for path, *_ in graph._channel.norms}
    assert {"stem_norm", "blocks.0.norm", "blocks.1.norm", "norm"} <= normed
    touched = {s.param for u in graph.units for s in u.slices}
    assert {"stem_norm.weight", "blocks.0.norm.weight", "norm.bias"} <= touched
    for seed in range(3):
        keep = random_keep(graph, 0.5, torch.Generator().manual_seed(seed))
        small = remove_pruned(model, graph, keep)
        kept = graph.kept_channels(keep)["conv2d"]  # the stem's output: the stream's width
        assert small.stem.out_channels == kept < 16
        assert small.norm.normalized_shape == (kept,) and small.blocks[1].norm.normalized_shape == (kept,)
        assert masked_norm.weights_of(small.norm) is None  # the pruned copy is a plain model
        masked = apply_masks(copy.deepcopy(model), graph, keep)
        with torch.no_grad():
            assert max_err(masked(x), small(x)) <= 1e-5
            plain = apply_masks(copy.deepcopy(model), graph, keep)
            for path, *_ in graph._channel.norms:  # zeroing alone is not enough: the statistics differ
                masked_norm.clear(plain.get_submodule(path))
            assert max_err(plain(x), small(x)) > 1e-3


def test_masked_statistics_are_those_of_the_kept_channels():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 8), torch.randn(8), torch.randn(8)
    keep = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    got = masked_norm.masked_layer_norm(x, (8,), keep.float(), weight * keep, bias * keep, 1e-5)
    want = F.layer_norm(x[..., keep], (int(keep.sum()),), weight[keep], bias[keep], 1e-5)
    assert torch.allclose(got[..., keep], want, atol=1e-6) and bool((got[..., ~keep] == 0).all())
    got = masked_norm.masked_rms_norm(x, (8,), keep.float(), weight * keep, 1e-6)
    assert torch.allclose(got[..., keep], F.rms_norm(x[..., keep], (int(keep.sum()),), weight[keep], 1e-6), atol=1e-6)
    ones = masked_norm.masked_layer_norm(x, (8,), torch.ones(8), weight, bias, 1e-5)
    assert torch.allclose(ones, F.layer_norm(x, (8,), weight, bias, 1e-5), atol=1e-6)
    soft = torch.full((8,), 0.5, requires_grad=True)  # soft weights: differentiable, scale-free
    y = masked_norm.masked_layer_norm(x, (8,), soft, weight, bias, 1e-5)
    assert torch.allclose(y, ones, atol=1e-5)
    (y * torch.randn_like(y)).sum().backward()
    assert soft.grad is not None and bool(torch.isfinite(soft.grad).all())


def test_a_norm_the_analysis_cannot_mask_stays_frozen_with_the_reason():
    class FunctionalNorm(nn.Module):  # layer_norm over channels with no nn.LayerNorm running it
        def __init__(self):
            super().__init__()
            self.conv, self.w, self.fc = nn.Conv2d(3, 8, 3), nn.Parameter(torch.ones(8)), nn.Linear(8, 4)
            self.conv2 = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = F.layer_norm(self.conv(x).permute(0, 2, 3, 1), (8,), self.w).permute(0, 3, 1, 2)
            return self.fc(self.conv2(y).mean((2, 3)))

    model, x = FunctionalNorm().eval(), torch.randn(2, 3, 8, 8)
    graph = build(model, (x,), PROFILE, group_size=1)
    assert "normalizes over the channel dim and no LayerNorm module runs it" in graph.report()
    assert not any(s.param == "conv.weight" for u in graph.units for s in u.slices)
    assert any(s.param == "conv2.weight" for u in graph.units for s in u.slices)


def test_hooks_survive_copies_leave_no_mode_behind_and_clear():
    model, x = _net()
    graph = build(model, (x,), PROFILE, group_size=1)
    keep = random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    twin = copy.deepcopy(masked)
    with torch.no_grad():
        assert torch.equal(masked(x), twin(x))
        with pytest.raises(RuntimeError):
            masked(torch.randn(2, 4, 8, 8))  # a forward that fails inside the stem
        with pytest.raises(RuntimeError):
            masked.norm(torch.randn(2, 3))  # ... and one that fails inside a masked norm
    assert torch._C._len_torch_function_stack() == 0
    apply_masks(masked, graph, torch.ones(graph.num_units, dtype=torch.bool))  # all kept: plain norms
    assert masked_norm.weights_of(masked.norm) is None and not masked.norm._forward_pre_hooks
    assert masked_norm.weights_of(twin.norm) is not None  # the copy is its own
    with pytest.raises(TypeError, match="nn.LayerNorm"):
        masked_norm.set_weights(nn.BatchNorm2d(4), torch.ones(4))


def test_smart_weighs_the_statistics_by_its_soft_mask_and_finalizes_exactly():
    model, x = _net()
    p = SmartPruner(model, (x,), PROFILE, "memory=70%", group_size=1, mask_steps=4)
    source = masked_norm.weights_of(model.blocks[0].norm)
    assert callable(source)
    with torch.no_grad():
        model(x)
        want = norm_weights(p.graph, p.soft_keep())["blocks.0.norm"]
        assert torch.allclose(source(), want)
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    for _ in range(4):
        model.train()
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        assert p.logits.grad is not None
        opt.step()
        p.step()
    result = p.finalize()
    assert not torch.is_tensor(source) and torch.is_tensor(masked_norm.weights_of(model.blocks[0].norm))
    small = remove_pruned(model, p.graph, result.keep)
    with torch.no_grad():
        assert max_err(model.eval()(x), small(x)) <= 1e-5


def test_acdc_dense_phases_see_every_channel():
    model, x = _net()
    p = AcdcPruner(model, (x,), PROFILE, "memory=70%", group_size=1, mask_steps=12, interval=3)
    seen = []
    for _ in range(12):
        seen.append((p.keep is not None, masked_norm.weights_of(model.norm) is not None))
        p.step()
    assert {s for s, _ in seen} == {True, False}
    assert all(sparse == masked for sparse, masked in seen)


def test_dpm_fades_decaying_channels_out_of_the_statistics():
    model, x = _net()
    p = DecayPruning(model, (x,), PROFILE, "memory=70%", group_size=1, mask_steps=8, base="magnitude", steps=4,
                     t_rate=float("inf"))
    for _ in range(6):
        p.step()
    assert p.decided and p.k == 2
    w = masked_norm.weights_of(model.norm)
    decaying = p.status == 1
    expect = norm_weights(p.graph, torch.where(decaying, 0.5, 1.0))["norm"]
    assert torch.is_tensor(w) and torch.allclose(w, expect)
    with pytest.warns(UserWarning, match="after 2 of 4 decay steps"):
        result = p.finalize()
    small = remove_pruned(model, p.graph, result.keep)
    with torch.no_grad():
        assert max_err(model.eval()(x), small(x)) <= 1e-5
