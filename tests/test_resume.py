"""Reproducible runs: the same seed gives a byte-identical checkpoint; a run killed (SIGKILL, for real) and
resumed ends with the same keep-set and weights as an uninterrupted one; a progress file from another run
is refused in one line."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from npu_compress import NpuCompressError, load_dataset, training
from npu_compress.checkpoint import CheckpointError, PruneCheckpoint
from npu_compress.cli import main
from npu_compress.pruning import prune
from npu_compress.training import Epochs, TrainConfig

CLI = [sys.executable, "-c", "import sys; from npu_compress.cli import main; sys.exit(main())"]
PLAN = Epochs(1, 2, 2)  # kill points: 0 end of warm-up, 1 mid-mask, 2 end of mask, 3 mid-fine-tune


class _Killed(Exception):
    """Stands in for a kill right after a progress file was written (the subprocess test kills for real)."""


def _prune(data, output, *, seed=3, method="smart", progress=None, resume=False, kill_after=None, monkeypatch=None):
    if kill_after is not None:
        save = training._save_progress

        def save_then_die(cfg, epoch, *args):
            save(cfg, epoch, *args)
            if epoch == kill_after:
                raise _Killed

        monkeypatch.setattr(training, "_save_progress", save_then_die)
    config = TrainConfig(PLAN, progress=False, seed=seed, checkpoint=progress, resume=resume)
    try:
        return prune("digits-cnn", data, "generic-4tops", "latency=60%", method=method, config=config, output=output)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


def _assert_same(a: PruneCheckpoint, b: PruneCheckpoint) -> None:
    assert torch.equal(a.keep, b.keep)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), \
        [k for k in a.state_dict if not torch.equal(a.state_dict[k], b.state_dict[k])]
    assert a.report == b.report


# ---------------------------------------------------------------- same seed, same bits

def test_same_seed_gives_byte_identical_checkpoints(tmp_path, digits_small):
    for i, noise in enumerate((11, 12)):
        torch.manual_seed(noise), np.random.seed(noise), random.seed(noise)  # what ran before must not matter
        _prune(digits_small, tmp_path / f"{i}.ckpt")
    a, b = PruneCheckpoint.load(tmp_path / "0.ckpt"), PruneCheckpoint.load(tmp_path / "1.ckpt")
    _assert_same(a, b)
    assert (tmp_path / "0.ckpt").read_bytes() == (tmp_path / "1.ckpt").read_bytes()
    other = PruneCheckpoint.load(_prune(digits_small, tmp_path / "2.ckpt", seed=4) and tmp_path / "2.ckpt")
    assert not torch.equal(other.state_dict["fc.weight"], a.state_dict["fc.weight"])  # the seed is what decides


def test_bad_seed_is_one_line(tmp_path, capsys, digits_small):
    with pytest.raises(NpuCompressError, match="--seed -1 must be an integer from 0"):
        _prune(digits_small, None, seed=-1)
    code = main(["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%", "--seed",
                 str(2**64), "-o", str(tmp_path / "x.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--seed" in err and not (tmp_path / "x.ckpt").exists()


# ---------------------------------------------------------------- resume equals uninterrupted

def _resume_equals_uninterrupted(tmp_path, data, method, kill_after, monkeypatch):
    reference = _prune(data, None, method=method).checkpoint
    progress = tmp_path / "run.progress"
    with pytest.raises(_Killed):
        _prune(data, None, method=method, progress=progress, kill_after=kill_after, monkeypatch=monkeypatch)
    assert torch.load(progress, weights_only=True)["epoch"] == kill_after
    resumed = _prune(data, None, method=method, progress=progress, resume=True)
    assert [h["epoch"] for h in resumed.train.history] == list(range(PLAN.total))
    _assert_same(resumed.checkpoint, reference)


@pytest.mark.parametrize("kill_after", [0, 1, 2, 3])
def test_smart_resumed_after_any_epoch_equals_uninterrupted(tmp_path, digits_small, monkeypatch, kill_after):
    _resume_equals_uninterrupted(tmp_path, digits_small, "smart", kill_after, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "taylor", "random", "pdp", "acdc", "dpm", "hbgs", "hbgts"])
@pytest.mark.parametrize("kill_after", [1, 3])
def test_every_method_resumes_exactly(tmp_path, digits_small, monkeypatch, method, kill_after):
    _resume_equals_uninterrupted(tmp_path, digits_small, method, kill_after, monkeypatch)


# ---------------------------------------------------------------- a real kill -9

@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    d = load_dataset("digits").subset(512, 128)
    path = tmp_path_factory.mktemp("data") / "digits512.npz"
    np.savez(path, x_train=d.x_train.numpy(), y_train=d.y_train.numpy(), x_test=d.x_test.numpy(),
             y_test=d.y_test.numpy())
    return path


def _prune_args(data, *extra):
    return ["prune", "--model", "digits-cnn", "--data", str(data), "--budget", "latency=60%", "--epochs", "1,2,2",
            "--batch-size", "32", "--seed", "5", "--no-progress", *extra]


def _kill_after_epoch(proc: subprocess.Popen, progress, epoch: int, timeout: float = 300) -> int:
    """SIGKILL ``proc`` as soon as its progress file records ``epoch`` (or later); the recorded epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
        if progress.exists():
            seen = torch.load(progress, weights_only=True)["epoch"]  # written atomically: always whole
            if seen >= epoch:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return seen
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no progress file within the timeout")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, small_npz, capsys):
    out, progress = tmp_path / "run.ckpt", tmp_path / "run.ckpt.progress"
    proc = subprocess.Popen(CLI + _prune_args(small_npz, "-o", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = _kill_after_epoch(proc, progress, epoch=1)
    assert proc.returncode == -signal.SIGKILL and not out.exists() and seen < 4
    assert main(_prune_args(small_npz, "-o", str(out), "--resume")) == 0  # this process: torch has 1 thread too
    assert main(_prune_args(small_npz, "-o", str(tmp_path / "ref.ckpt"))) == 0
    capsys.readouterr()
    _assert_same(PruneCheckpoint.load(out), PruneCheckpoint.load(tmp_path / "ref.ckpt"))
    assert out.read_bytes() == (tmp_path / "ref.ckpt").read_bytes()
    assert not progress.exists()  # served, removed


# ---------------------------------------------------------------- another run's progress file

@pytest.fixture
def progress_of_a_smart_run(tmp_path, small_npz):
    """``x.ckpt.progress`` as a 1,1,1 SMART run with -o x.ckpt leaves it (the library keeps it; the CLI deletes it)."""
    out = tmp_path / "x.ckpt"
    config = TrainConfig(Epochs(1, 1, 1), progress=False, seed=5, batch_size=32,
                         checkpoint=tmp_path / "x.ckpt.progress")
    prune("digits-cnn", str(small_npz), "generic-4tops", "latency=60%", method="smart", config=config)
    return out


@pytest.mark.parametrize("change, written, now", [
    (["--method", "magnitude"], "--method smart", "--method magnitude"),
    (["--epochs", "1,1,2"], "--epochs 1,1,1", "--epochs 1,1,2"),
    (["--seed", "6"], "--seed 5", "--seed 6"),
    (["--budget", "latency=70%"], "--budget latency=60%", "--budget latency=70%"),
])
def test_progress_file_of_another_run_is_refused(progress_of_a_smart_run, small_npz, capsys, change, written, now):
    out = progress_of_a_smart_run
    before = out.with_name("x.ckpt.progress").read_bytes()
    args = ["prune", "--model", "digits-cnn", "--data", str(small_npz), "--budget", "latency=60%", "--epochs", "1,1,1",
            "--batch-size", "32", "--seed", "5", "--method", "smart", "--no-progress", "-o", str(out), "--resume"]
    for flag, value in zip(change[::2], change[1::2]):
        args[args.index(flag) + 1] = value
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"was written for {written}, this run is {now}" in err and "delete it to start fresh" in err
    assert not out.exists() and out.with_name("x.ckpt.progress").read_bytes() == before  # left as it was


def test_other_data_and_old_progress_files_are_refused(tmp_path, digits_small):
    progress = tmp_path / "p.progress"
    _prune(digits_small, None, progress=progress)
    other = digits_small.subset(255, 64)
    with pytest.raises(CheckpointError, match=r"written for --data .*256 train.*this run is --data .*255 train"):
        _prune(other, None, progress=progress, resume=True)
    torch.save({"epoch": 0, "model": {}, "history": [], "pruner": None}, progress)  # the format before
    with pytest.raises(CheckpointError, match="older npu_compress.*optimiser, scheduler and RNG"):
        _prune(digits_small, None, progress=progress, resume=True)
    torch.save({"format": "npu_compress.progress", "version": 2, "settings": {}, "epoch": 0}, progress)
    with pytest.raises(CheckpointError, match=r"incomplete \(no model, phase, pruner, history, dense_accuracy, rng"):
        _prune(digits_small, None, progress=progress, resume=True)


def test_resume_without_progress_file_starts_fresh(tmp_path, digits_small, caplog):
    progress = tmp_path / "none.progress"
    with caplog.at_level("WARNING", logger="npu_compress"):
        run = _prune(digits_small, None, progress=progress, resume=True)
    assert f"no progress file '{progress}'; starting fresh" in caplog.text
    assert len(run.train.history) == PLAN.total and progress.is_file()
    caplog.clear()
    with caplog.at_level("WARNING", logger="npu_compress"):
        _prune(digits_small, None, progress=progress)
    assert "exists and will be overwritten (resume from it with --resume)" in caplog.text
