"""tools/bench/ground_truth.py's model preparation: batch norms settled as training leaves them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from npu_compress import models

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench"


def _ground_truth():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("ground_truth_under_test", BENCH / "ground_truth.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _bn_output_stats(model, x):
    """(mean, variance) over each batch norm's output channels in eval mode, by forward hooks."""
    stats = []

    def hook(_, __, out):
        stats.append((out.mean((0, 2, 3)).abs().max().item(), out.var((0, 2, 3)).mean().item()))
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return stats


def test_settled_norms_normalise_what_they_see_and_initial_ones_do_not():
    gt = _ground_truth()
    torch.manual_seed(0)
    model, x = models.create("mobilenetv2").eval(), models.example_input("mobilenetv2")
    probe = torch.randn((16, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
    before = _bn_output_stats(model, probe)
    settled = gt.settle_norms(model, x)
    assert settled is model and not model.training
    after = _bn_output_stats(model, probe)
    assert len(after) == len(before) == 52
    # settled: every norm's output has about zero mean and unit variance on fresh inputs
    assert max(m for m, _ in after) < 0.35
    assert all(0.6 < v < 1.4 for _, v in after)
    # at its initial statistics (mean 0, variance 1) a random MobileNetV2's deep norms see activations
    # far from that: their outputs' variance drifts by orders of magnitude
    assert max(v for _, v in before) > 100 * max(v for _, v in after) or min(v for _, v in before) < 0.01


def test_a_model_without_batch_norms_is_left_as_it_is():
    gt = _ground_truth()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert gt.settle_norms(model, torch.randn(1, 3, 8, 8)) is model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
