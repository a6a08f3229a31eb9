"""Every user error is one line on stderr and exit code 2, names the argument or file at fault, and
leaves nothing behind; an unexpected failure is one line and exit code 1, its traceback with --debug."""
import math

import numpy as np
import pytest
import torch

import npu_compress.cli as cli
from npu_compress.data import Dataset
from npu_compress.errors import TrainingError
from npu_compress.training import Epochs, TrainConfig, train

PRUNE = ["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=50%", "--no-progress"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code, err, *names):
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


def _npz(path, *, labels_up_to=9, side=8, channels=1, poison=None):
    rng = np.random.default_rng(0)
    x = rng.random((64, channels, side, side)).astype(np.float32)
    y = np.arange(64) % (labels_up_to + 1)
    x_test = x[:16].copy()
    if poison is not None:
        key, value = poison
        (x if key == "x_train" else x_test)[5, 0, 1, 1] = value
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y[:16])
    return path


def _profile(tmp_path, key, value):
    from npu_compress.hardware import load_profile

    text = load_profile("ethos-u55-128").to_toml()
    lines = [f"{key} = {value}" if line.startswith(f"{key} =") else line for line in text.splitlines()]
    assert lines != text.splitlines()
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


FACTORY = '''
from torch import nn
def four():
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
four.input_shape = (1, 1, 8, 8)
'''


def _factory(tmp_path):
    (tmp_path / "four.py").write_text(FACTORY)
    return f"{tmp_path / 'four.py'}:four"


# (id, argv builder (tmp_path -> argv), what the message must name)
CASES = [
    ("epochs-zero", lambda t: [*PRUNE, "--epochs", "0,0,0", "-o", t / "o.ckpt"], ["--epochs", "0,0,0"]),
    ("epochs-warmup-only", lambda t: [*PRUNE, "--epochs", "3,0,0", "-o", t / "o.ckpt"], ["--epochs", "3,0,0"]),
    ("epochs-malformed", lambda t: [*PRUNE, "--epochs", "1,x,1", "-o", t / "o.ckpt"], ["--epochs", "W,M,F"]),
    ("lr-nan", lambda t: [*PRUNE, "--lr", "nan", "-o", t / "o.ckpt"], ["--lr", "nan"]),
    ("lr-negative", lambda t: [*PRUNE, "--lr", "-0.1", "-o", t / "o.ckpt"], ["--lr", "-0.1"]),
    ("lr-zero", lambda t: [*PRUNE, "--lr", "0", "-o", t / "o.ckpt"], ["--lr"]),
    ("lr-inf", lambda t: [*PRUNE, "--lr", "inf", "-o", t / "o.ckpt"], ["--lr"]),
    ("batch-size-zero", lambda t: [*PRUNE, "--batch-size", "0", "-o", t / "o.ckpt"], ["--batch-size"]),
    ("tolerance-negative", lambda t: ["export", t / "in.ckpt", "-o", t / "o.onnx", "--tolerance", "-1"],
     ["--tolerance", "-1"]),
    ("tolerance-nan", lambda t: ["export", t / "in.ckpt", "-o", t / "o.onnx", "--tolerance", "nan"],
     ["--tolerance", "nan"]),
    ("distributed-without-torchrun", lambda t: [*PRUNE, "--distributed", "-o", t / "o.ckpt"],
     ["--distributed", "torchrun", "RANK"]),
    ("budget-overflow", lambda t: ["prune", "--model", "digits-cnn", "--data", "digits", "--budget",
                                   "latency=1e400ms", "-o", t / "o.ckpt"], ["latency=1e400ms", "too large"]),
    ("budget-overflow-after-unit", lambda t: ["prune", "--model", "digits-cnn", "--data", "digits", "--budget",
                                              "memory=1e308GiB", "-o", t / "o.ckpt"], ["memory=1e308GiB"]),
    ("profile-inf", lambda t: ["cost", "--model", "digits-cnn", "--profile", _profile(t, "clock_hz", "inf")],
     ["bad.toml", "compute.clock_hz", "finite"]),
    ("profile-nan", lambda t: ["cost", "--model", "digits-cnn", "--profile",
                               _profile(t, "dram_bandwidth_bytes_per_s", "nan")],
     ["bad.toml", "memory.dram_bandwidth_bytes_per_s"]),
    ("profile-1e400", lambda t: ["cost", "--model", "digits-cnn", "--profile", _profile(t, "clock_hz", "1e400")],
     ["bad.toml", "compute.clock_hz"]),
    ("labels-beyond-outputs", lambda t: [*PRUNE[:4], _npz(t / "wide.npz", labels_up_to=15), *PRUNE[5:],
                                         "-o", t / "o.ckpt"], ["wide", "labels up to 15", "outputs 10"]),
    ("labels-beyond-factory-outputs", lambda t: ["prune", "--model", _factory(t), "--data", "digits", "--budget",
                                                 "latency=90%", "-o", t / "o.ckpt"], ["four", "outputs 4"]),
    ("shape-mismatch", lambda t: [*PRUNE[:4], _npz(t / "big.npz", side=12), *PRUNE[5:], "-o", t / "o.ckpt"],
     ["big", "(1, 12, 12)", "(1, 8, 8)"]),
    ("channels-mismatch", lambda t: [*PRUNE[:4], _npz(t / "rgb.npz", channels=3), *PRUNE[5:], "-o", t / "o.ckpt"],
     ["rgb", "(3, 8, 8)"]),
    ("nan-in-train", lambda t: [*PRUNE[:4], _npz(t / "n.npz", poison=("x_train", np.nan)), *PRUNE[5:],
                                "-o", t / "o.ckpt"], ["n.npz", "x_train", "NaN", "index 5"]),
    ("inf-in-test", lambda t: [*PRUNE[:4], _npz(t / "i.npz", poison=("x_test", -np.inf)), *PRUNE[5:],
                               "-o", t / "o.ckpt"], ["i.npz", "x_test", "Inf"]),
]


@pytest.mark.parametrize("argv, names", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_user_error_is_one_line_exit_2(argv, names, capsys, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    args = argv(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(capsys, *args)
    assert_one_line(code, err, *names)
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp files


def test_nan_loss_stops_with_epoch_step_and_cause(capsys, tmp_path):
    code, _, err = run(capsys, *PRUNE, "--lr", "1e6", "--epochs", "1,1,1", "-o", tmp_path / "o.ckpt")
    assert_one_line(code, err, "training stopped", "loss is nan", "warmup 1/3", "step", "lower --lr")
    assert not (tmp_path / "o.ckpt").exists()


def test_nan_inputs_are_named_as_the_cause(digits_small):
    """A Dataset built in code (not read from a file, so not checked on load) with a NaN image."""
    from npu_compress import models

    x = digits_small.x_train.clone()
    x[3, 0, 2, 2] = math.nan
    data = Dataset(x, digits_small.y_train, digits_small.x_test, digits_small.y_test, num_classes=10,
                   input_shape=(1, 8, 8), name="poisoned", mean=(0.0,), std=(1.0,))  # marked normalised: no check
    with pytest.raises(TrainingError, match=r"epoch warmup 1/1, step 1/\d+; this batch's inputs hold NaN"):
        train(models.create("digits-cnn"), data, TrainConfig(Epochs(1, 0, 0), progress=False, batch_size=256))


def test_dataset_in_code_with_nan_is_refused_before_training(digits_small):
    from npu_compress.errors import DataError

    x = digits_small.x_test.clone()
    x[7] = math.inf
    data = Dataset(digits_small.x_train, digits_small.y_train, x, digits_small.y_test, 10, (1, 8, 8), "mine")
    with pytest.raises(DataError, match=r"data 'mine': x_test holds Inf values in 1 sample\(s\) \(the first at "
                                        r"index 7\)"):
        data.normalized()


@pytest.mark.parametrize("field, value", [("lr", math.nan), ("lr", -1.0), ("lr", 0.0), ("mask_lr", math.inf),
                                          ("momentum", -0.5), ("weight_decay", math.nan)])
def test_train_config_names_the_bad_setting(field, value):
    with pytest.raises(TrainingError, match=field):
        TrainConfig(Epochs(1, 1, 1), **{field: value})


@pytest.mark.parametrize("argv, name", [(["prune", "--model", "digits-cnn"], "--data"),  # required missing
                                        (["cost", "--model", "digits-cnn", "--bogus"], "--bogus"),
                                        (["export", "x.ckpt", "-o", "y.onnx", "--target", "tpu"], "--target"),
                                        (["nonsense"], "nonsense")])
def test_argument_errors_are_one_line(argv, name, capsys):
    code, _, err = run(capsys, *argv)
    assert_one_line(code, err, name, "--help")
    assert "usage" not in err


def test_unexpected_exception_is_one_line_exit_1(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something deep\nbroke")

    monkeypatch.setattr(cli, "_cmd_cost", broken)
    code, _, err = run(capsys, "cost", "--model", "digits-cnn")
    assert code == cli.EXIT_INTERNAL == 1
    assert err == ("npu-compress: error: RuntimeError: something deep; broke "
                   "(re-run with --debug for the traceback)\n")
    code, _, err = run(capsys, "--debug", "cost", "--model", "digits-cnn")
    assert code == 1 and "Traceback (most recent call last)" in err and 'raise RuntimeError("something deep' in err
    assert err.splitlines()[-1] == "npu-compress: error: RuntimeError: something deep; broke"


def test_debug_shows_the_traceback_of_a_user_error_too(capsys):
    code, _, err = run(capsys, "--debug", "cost", "--model", "resnet21")
    assert code == 2 and "Traceback" in err and err.splitlines()[-1].startswith("npu-compress: error:")


def test_multi_line_messages_are_joined(capsys, monkeypatch):
    from npu_compress.errors import NpuCompressError

    def report(args):
        raise NpuCompressError("nothing can be pruned:\n  graph: 0 units\n  - output (4 channels)")

    monkeypatch.setattr(cli, "_cmd_cost", report)
    code, _, err = run(capsys, "cost", "--model", "digits-cnn")
    assert code == 2 and err == "npu-compress: error: nothing can be pruned: graph: 0 units; - output (4 channels)\n"


def test_budget_parse_keeps_exact_values():
    from npu_compress.hardware.budget import Budget

    assert Budget.parse("latency=2.5e-3s").value == 0.0025
    assert Budget.parse("latency=1e308s").value == 1e308
    assert Budget.parse("memory=5e1%").value == 0.5
    assert torch.tensor(Budget.parse("latency=.5e1ms").value).item() == pytest.approx(5e-3)
