"""Safe formats: checkpoints and progress files load with weights_only=True, a file that would run code
is refused (and runs nothing), trusted old files convert, and the CLI says which user file it imports."""
import dataclasses
import enum
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from npu_compress.checkpoint import FORMAT, VERSION, CheckpointError, PruneCheckpoint, safe_load, to_plain
from npu_compress.cli import main
from npu_compress.hardware import load_profile
from npu_compress.progress import load_progress

CLI = [sys.executable, "-c", "import sys; from npu_compress.cli import main; sys.exit(main())"]


class _Boom:
    """Unpickling this creates the folder ``marker``: stands in for any code a crafted file runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _checkpoint(**change) -> PruneCheckpoint:
    ckpt = PruneCheckpoint(model_spec="digits-cnn", input_shape=(1, 1, 8, 8),
                           profile_toml=load_profile("generic-4tops").to_toml(), budget="latency=60%",
                           structure="channel", method="smart", keep=torch.ones(20, dtype=torch.bool),
                           state_dict={"fc.weight": torch.randn(10, 4)}, report={"accuracy": 0.5})
    return dataclasses.replace(ckpt, **change)


def _crafted(path: Path, marker: Path, **fields) -> Path:
    """A torch file shaped like an npu_compress checkpoint whose pickle would create ``marker``."""
    torch.save({"format": FORMAT, "version": VERSION, "model_spec": _Boom(marker), **fields}, path)
    return path


# ---------------------------------------------------------------- code in files is refused

def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=r"holds Python objects \((posix|nt).mkdir\).*run as code") as info:
        PruneCheckpoint.load(path)
    assert "\n" not in str(info.value) and "convert-checkpoint" in str(info.value)
    code, _, err = _run(capsys, "export", str(path), "-o", str(tmp_path / "x.onnx"))
    assert code == 2 and err.count("\n") == 1 and "run as code" in err
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
    torch.load(path, weights_only=False)  # the control: the crafted file really does run code when unpickled
    assert marker.is_dir()


def test_progress_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    out = tmp_path / "run.ckpt"
    torch.save({"format": "npu_compress.progress", "version": 2, "epoch": _Boom(marker)}, f"{out}.progress")
    with pytest.raises(CheckpointError, match="run as code.*delete it to start fresh"):
        load_progress(f"{out}.progress", {})
    code, _, err = _run(capsys, "prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%",
                        "--epochs", "0,1,0", "--no-progress", "--resume", "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "progress file" in err and "run as code" in err
    assert not marker.exists() and not out.exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="not readable") as info:
        safe_load(tmp_path / "junk")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "missing")


# ---------------------------------------------------------------- what is written is plain

class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int
    y: tuple


def test_to_plain_turns_objects_into_what_weights_only_loads(tmp_path):
    value = {"array": np.arange(3, dtype=np.int32), "scalar": np.float64(0.25), "enum": _Color.RED,
             "point": _Point(1, (2, 3)), "size": torch.Size([1, 8]), "set": {3, 1}, "path": Path("a/b"),
             "param": torch.nn.Parameter(torch.ones(2)), "nested": [(1, None, True, "s")]}
    plain = to_plain(value)
    torch.save(plain, tmp_path / "p.pt")
    back = torch.load(tmp_path / "p.pt", weights_only=True)
    assert torch.equal(back["array"], torch.tensor([0, 1, 2], dtype=torch.int32))
    assert back["scalar"] == 0.25 and type(back["scalar"]) is float and back["enum"] == "red"
    assert back["point"] == {"x": 1, "y": (2, 3)} and back["size"] == (1, 8) and type(back["size"]) is tuple
    assert back["set"] == [1, 3] and back["path"] == "a/b" and back["nested"] == [(1, None, True, "s")]
    assert type(back["param"]) is torch.Tensor and not back["param"].requires_grad
    with pytest.raises(CheckpointError, match=r"cannot store x\['bad'\]: a builtins.object"):
        to_plain({"bad": object()}, "x")


def test_checkpoint_round_trip_is_plain_and_byte_stable(tmp_path):
    ckpt = _checkpoint(report={"ratio": np.float32(0.5), "units": np.int64(7)})
    ckpt.save(tmp_path / "a.ckpt")
    ckpt.save(tmp_path / "b.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes() == (tmp_path / "b.ckpt").read_bytes()  # not named after the file
    torch.load(tmp_path / "a.ckpt", weights_only=True)
    back = PruneCheckpoint.load(tmp_path / "a.ckpt")
    assert back.report == {"ratio": 0.5, "units": 7} and back.input_shape == (1, 1, 8, 8) and back.nm == (2, 4)
    assert torch.equal(back.keep, ckpt.keep) and torch.equal(back.state_dict["fc.weight"], ckpt.state_dict["fc.weight"])


# ---------------------------------------------------------------- trusted old files convert

def _old_checkpoint(path: Path) -> Path:
    """A checkpoint as the previous npu_compress could write it from the API: pickled numpy objects inside."""
    payload = {"format": FORMAT, "version": 1, "npu_compress": "0.1.0",
               **dataclasses.asdict(_checkpoint(report={"accuracy": np.float64(0.75)}))}
    torch.save(payload, path)
    return path


def test_old_checkpoint_with_objects_converts_only_with_trust(tmp_path, capsys):
    old, new = _old_checkpoint(tmp_path / "old.ckpt"), tmp_path / "new.ckpt"
    with pytest.raises(CheckpointError, match=r"numpy.*convert it: npu-compress convert-checkpoint .*old.ckpt "
                                              r"NEW.ckpt --trust"):
        PruneCheckpoint.load(old)
    code, _, err = _run(capsys, "convert-checkpoint", str(old), str(new))
    assert code == 2 and err.count("\n") == 1 and "--trust" in err and not new.exists()
    code, _, err = _run(capsys, "convert-checkpoint", str(old), str(old), "--trust")
    assert code == 2 and "must differ" in err
    code, out, _ = _run(capsys, "convert-checkpoint", str(old), str(new), "--trust")
    assert code == 0 and f"wrote {new}" in out
    back = PruneCheckpoint.load(new)
    assert back.report == {"accuracy": 0.75} and type(back.report["accuracy"]) is float
    assert back.model_spec == "digits-cnn" and torch.equal(back.keep, torch.ones(20, dtype=torch.bool))


def test_convert_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    torch.save({"something": np.float64(1)}, tmp_path / "other.pt")
    code, _, err = _run(capsys, "convert-checkpoint", str(tmp_path / "other.pt"), str(tmp_path / "n.ckpt"), "--trust")
    assert code == 2 and "not an npu_compress checkpoint" in err and not (tmp_path / "n.ckpt").exists()


# ---------------------------------------------------------------- the CLI says which file it imports

def test_cli_prints_the_user_file_it_imports(tmp_path):
    net = tmp_path / "net.py"
    net.write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        make.input_shape = (1, 1, 8, 8)
    """))
    done = subprocess.run(CLI + ["cost", "--model", f"{net}:make"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "importing" in line]
    assert len(lines) == 1 and f"'{net.resolve()}'" in lines[0] and "runs its code" in lines[0]
