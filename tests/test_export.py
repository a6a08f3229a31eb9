"""Export: every zoo model x structure x two sparsities -> checked, verified ONNX whose cost matches."""
import functools
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from npu_compress import Budget, VerificationError, estimate, graph, load_profile, models
from npu_compress.checkpoint import CheckpointError, PruneCheckpoint
from npu_compress.export import export_onnx, verify_onnx

# this file tests the float32 path; int8 (the default on int8 profiles) is tests/test_int8.py
export_fp32 = functools.partial(export_onnx, precision="fp32")
from npu_compress.graph_cost import predict
from npu_compress.io import OutputError
from npu_compress.pruners import PruneResult

PROFILE = "ethos-u55-128"


def _random_keep(g, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    if g.structure.value == "nm":  # N of every M, chosen at random, in every weight
        n, m = g.nm
        scores = torch.rand(g.num_units, generator=gen)
        keep = torch.zeros(g.num_units, dtype=torch.bool)
        for _, first, count in g.param_unit_ranges():
            block = scores[first:first + count].view(-1, m)
            keep[first:first + count] = torch.zeros_like(block, dtype=torch.bool).scatter_(
                1, block.topk(n, dim=1).indices, True).flatten()
        return keep
    keep = torch.rand(g.num_units, generator=gen) > frac
    for group in g.groups:
        if g.structure.value == "channel" and not keep[list(group)].any():
            keep[group[0]] = True
    return keep


def _pruned(name, structure, frac, seed=0):
    p = load_profile(PROFILE)
    model, x = models.create(name).eval(), models.example_input(name)
    nm = (2, 4) if frac < 0.6 else (1, 4)
    g = graph.build(model, (x,), p, structure, nm=nm)
    keep = _random_keep(g, frac, seed)
    graph.apply_masks(model, g, keep)
    dense = predict(g, torch.ones(g.num_units, dtype=torch.bool), p)
    result = PruneResult(g, keep, predict(g, keep, p), dense, Budget.parse("latency=100%"), dense.latency_s, p)
    return model, x, result


def _conv_out_channels(path):
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return sorted(int(inits[n.input[1]].dims[0]) for n in proto.graph.node
                  if n.op_type == "Conv" and n.input[1] in inits)


CASES = [(n, s, f) for n in models.names() for s in ("channel", "block", "nm") for f in (0.3, 0.7)]
SLOW = {"vgg16", "resnet56", "mobilenetv2"}  # the largest: same code paths, run with -m slow


@pytest.mark.parametrize("name,structure,frac", [
    pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW else c for c in CASES])
def test_export_verifies_and_costs_match(name, structure, frac, tmp_path):
    model, x, result = _pruned(name, structure, frac)
    path = tmp_path / "m.onnx"
    report = export_fp32(model, path, example_inputs=(x,), result=result)
    onnx.checker.check_model(str(path))
    v = report.verification
    assert v.passed and v.max_abs_error <= 1e-4 * max(1.0, v.scale)
    assert report.pruned.latency_s == pytest.approx(result.predicted.latency_s, rel=1e-12)
    assert report.pruned.memory_bytes == result.predicted.memory_bytes
    # dynamic batch: a batch of 3 runs too
    from npu_compress.export.verify import run_onnx
    assert run_onnx(path, torch.randn(3, *x.shape[1:]))[0].shape[0] == 3
    if structure == "channel":
        small = graph.remove_pruned(model, result.graph, result.keep)
        expect = sorted(m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d))
        assert _conv_out_channels(path) == expect
        assert report.pruned.params == sum(p.numel() for p in small.parameters())


def _weight_bytes(path, packed_only=False):
    proto = onnx.load(str(path))
    return sum(numpy_helper.to_array(i).nbytes for i in proto.graph.initializer
               if not packed_only or "__packed" in i.name)


@pytest.mark.parametrize("structure", ["block", "nm"])
def test_packed_file_holds_about_half_the_weight_bytes(structure, tmp_path):
    p = load_profile(PROFILE)
    model, x = models.create("resnet20").eval(), models.example_input("resnet20")
    g = graph.build(model, (x,), p, structure)
    keep = _random_keep(g, 0.5, 0)
    graph.apply_masks(model, g, keep)
    dense_path = tmp_path / "dense.onnx"
    export_fp32(models.create("resnet20").eval(), dense_path, example_inputs=(x,))
    dense = predict(g, torch.ones(g.num_units, dtype=torch.bool), p)
    result = PruneResult(g, keep, predict(g, keep, p), dense, Budget.parse("memory=100%"), 1.0, p)
    report = export_fp32(model, tmp_path / "packed.onnx", example_inputs=(x,), result=result)
    assert report.packed, "nothing was packed"
    index_bytes = sum(pw.index_bytes for pw in report.packed)
    packed_dense = sum(pw.dense_bytes for pw in report.packed)
    packed_values = sum(pw.value_bytes for pw in report.packed)
    assert packed_values <= 0.55 * packed_dense  # values of the packed weights: about half
    assert _weight_bytes(tmp_path / "packed.onnx") <= 0.55 * _weight_bytes(dense_path) + index_bytes + 4096
    meta = {e.key: e.value for e in onnx.load(str(tmp_path / "packed.onnx")).metadata_props}
    assert structure in meta["npu_compress.sparse_layout"]


def test_verification_failure_leaves_nothing_and_keeps_existing_file(tmp_path):
    model, x, result = _pruned("digits-cnn", "channel", 0.3)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    perturbed = models.create("digits-cnn").eval()
    perturbed.load_state_dict(model.state_dict())
    with torch.no_grad():
        perturbed.fc.bias[0] += 1.0  # a weight column could feed from a pruned (zero) channel
    with pytest.raises(VerificationError, match="nothing written"):
        export_fp32(model, path, example_inputs=(x,), reference=perturbed, result=result)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp file left
    export_fp32(model, path, example_inputs=(x,), result=result)
    with pytest.raises(VerificationError, match="max abs error"):
        verify_onnx(path, perturbed, torch.randn(2, 1, 8, 8))


def test_unwritable_path_and_wrong_structure(tmp_path):
    model, x, result = _pruned("digits-cnn", "channel", 0.3)
    from npu_compress import NpuCompressError
    with pytest.raises(NpuCompressError, match="pruned with structure 'channel'"):
        export_fp32(model, tmp_path / "m.onnx", example_inputs=(x,), structure="block", result=result)
    with pytest.raises(OutputError, match="does not exist"):
        export_fp32(model, tmp_path / "no" / "such" / "m.onnx", example_inputs=(x,), result=result)
    assert not any(name.startswith("_npu") for name in vars(model))  # nothing rides on the user's module
    with pytest.raises(NpuCompressError, match="a checkpoint carries its own result"):
        export_fp32(tmp_path / "c.ckpt", tmp_path / "m.onnx", result=result)


def _checkpoint(tmp_path, **change):
    model, x, result = _pruned("digits-cnn", "channel", 0.3)
    ckpt = PruneCheckpoint(model_spec="digits-cnn", input_shape=(1, 1, 8, 8),
                           profile_toml=load_profile(PROFILE).to_toml(), budget="latency=100%",
                           structure="channel", method="smart", keep=result.keep, state_dict=model.state_dict())
    for k, v in change.items():
        setattr(ckpt, k, v)
    path = tmp_path / "c.ckpt"
    ckpt.save(path)
    return path, model


def test_export_from_checkpoint_matches_model(tmp_path):
    path, model = _checkpoint(tmp_path)
    report = export_fp32(path, tmp_path / "c.onnx")
    assert report.verification.passed and report.structure == "channel"
    assert report.pruned.params < report.dense.params


def test_bad_checkpoints(tmp_path):
    path, _ = _checkpoint(tmp_path, model_spec="resnet20", input_shape=(1, 3, 32, 32))
    with pytest.raises(CheckpointError, match="another model"):
        export_fp32(path, tmp_path / "x.onnx")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="not readable"):
        export_fp32(bad, tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_fp32(tmp_path / "missing.ckpt", tmp_path / "x.onnx")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an npu_compress checkpoint"):
        export_fp32(tmp_path / "other.pt", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_dense_model_exports_and_verifies(tmp_path):
    model, x = models.create("unet-small").eval(), models.example_input("unet-small")
    report = export_fp32(model, tmp_path / "d.onnx", example_inputs=(x,), samples=torch.randn(2, 3, 32, 32))
    assert report.structure == "dense" and report.verification.samples == 6
    assert math.isclose(report.pruned.latency_s, estimate(model, x, "generic-4tops").latency_s)
    assert np.isfinite(report.verification.max_rel_error)


@pytest.mark.parametrize("name", ["resnet20", "unet-small", "vit-tiny"])
def test_dense_weight_bytes_without_a_second_export(name, tmp_path, monkeypatch):
    """The report's unpruned weight bytes come from the pruned file's initializers sized by their
    modules, not from exporting the dense model again; they equal what that export would hold (trained
    norms, so no two initializers coincide and onnxsim merges none; vit-tiny's LayerNorms are all ones)."""
    from npu_compress.export import onnx_export

    model, x, result = _pruned(name, "channel", 0.4)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    exports = []
    real = onnx_export._to_onnx
    monkeypatch.setattr(onnx_export, "_to_onnx", lambda *a: exports.append(a) or real(*a))
    report = export_fp32(model, tmp_path / "m.onnx", example_inputs=(x,), result=result)
    assert len(exports) == 1
    dense_file = sum(numpy_helper.to_array(i).nbytes for i in real(model, x, report.opset).graph.initializer)
    assert report.onnx_weight_bytes < 0.8 * report.onnx_dense_weight_bytes
    assert report.onnx_dense_weight_bytes == pytest.approx(dense_file, rel=1e-4 if name == "vit-tiny" else 0)
