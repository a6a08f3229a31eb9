"""Output paths: checked before any work, never an input, written whole with the umask's mode, OS errors
as one line, no temp file left by a failure, Ctrl-C or SIGTERM, and those of a kill -9 swept later."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import npu_compress.cli as cli
from npu_compress.io import OutputError, atomic_path, check_output, check_writable, write_atomic, write_torch

ROOT = Path(__file__).resolve().parents[1]
PRUNE = ["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=50%", "--epochs", "1,1,1",
         "--no-progress"]


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: use /sys)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.path.isdir("/sys") and _cannot_create("/sys"):
        return Path("/sys")
    pytest.skip("running as root with no read-only folder to try")


def _cannot_create(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".npu_compress_probe"), os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return True
    os.close(fd)
    os.unlink(os.path.join(folder, ".npu_compress_probe"))
    return False


# ---------------------------------------------------------------- the checks themselves

def test_check_writable_path_classes(tmp_path):
    assert check_writable(tmp_path / "x.onnx") == tmp_path
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError, match="'.*sub': it is a folder"):
        check_writable(tmp_path / "sub")
    with pytest.raises(OutputError, match="folder '.*missing' does not exist"):
        check_writable(tmp_path / "missing" / "x.onnx")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="'.*file' is not a folder"):
        check_writable(tmp_path / "file" / "x.onnx")
    with pytest.raises(OutputError, match="is not writable"):
        check_writable(_unwritable_folder(tmp_path) / "x.onnx")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="not a regular file"):
        check_writable(tmp_path / "fifo")
    assert temps(tmp_path) == []  # the writability probe cleans up


def test_check_output_refuses_an_input_by_any_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "model.ckpt"
    source.write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.ckpt").symlink_to(source)
    os.link(source, tmp_path / "hard.ckpt")
    for spelling in ("model.ckpt", "./model.ckpt", "sub/../model.ckpt", str(source), "link.ckpt", "hard.ckpt"):
        with pytest.raises(OutputError, match="refusing to overwrite an input"):
            check_output(spelling, [source], "-o")
    assert check_output("other.onnx", [source]) == Path(".")
    assert source.read_bytes() == b"weights"


# ---------------------------------------------------------------- CLI: before any work

@pytest.fixture
def no_work(monkeypatch):
    """Training, export and calibration all fail the test if they start."""
    import npu_compress.export as export
    import npu_compress.hardware.calibrate as calibrate
    import npu_compress.pruning as pruning

    def started(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(pruning, "prune", started)
    monkeypatch.setattr(export, "export_onnx", started)
    monkeypatch.setattr(calibrate, "calibrate_ort_cpu", started)


def _bad_paths(tmp_path):
    (tmp_path / "dir").mkdir(exist_ok=True)
    return {"folder": (tmp_path / "dir", "it is a folder"),
            "missing-folder": (tmp_path / "nope" / "x", "does not exist"),
            "unwritable": (_unwritable_folder(tmp_path) / "x", "not writable")}


COMMANDS = {  # command -> (argv before the output flags, the output flags it has)
    "prune": (PRUNE, ["-o", "--json"]),
    "export": (["export", "{ckpt}", "--data", "digits"], ["-o", "--json"]),
    "calibrate": (["profiles", "calibrate", "--quick"], ["-o", "--json"]),
}


@pytest.mark.parametrize("kind", ["folder", "missing-folder", "unwritable"])
@pytest.mark.parametrize("command, flag", [(c, f) for c, (_, flags) in COMMANDS.items() for f in flags])
def test_bad_output_fails_before_any_work(command, flag, kind, tmp_path, capsys, no_work):
    bad, reason = _bad_paths(tmp_path)[kind]
    ckpt = tmp_path / "in.ckpt"
    ckpt.write_bytes(b"not read: the paths are checked first")
    argv, _ = COMMANDS[command]
    argv = [a.format(ckpt=ckpt) for a in argv]
    good = {"-o": tmp_path / "out.bin", "--json": tmp_path / "out.json"}
    good[flag] = bad
    code, out, err = run(capsys, *argv, *[x for f, p in good.items() for x in (f, p)])
    assert code == 2 and err.count("\n") == 1 and reason in err and str(bad) in err, err
    assert {p.name for p in tmp_path.iterdir()} <= {"in.ckpt", "dir", "ro"}  # nothing written, no temp file


def test_prune_progress_file_path_is_checked(tmp_path, capsys, no_work):
    (tmp_path / "out.ckpt.progress").mkdir()
    code, _, err = run(capsys, *PRUNE, "-o", tmp_path / "out.ckpt")
    assert code == 2 and "out.ckpt.progress" in err and "it is a folder" in err


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_export_refuses_to_overwrite_its_checkpoint(spelling, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"precious")
    (tmp_path / "alias.ckpt").symlink_to(ckpt)
    target = {"same": "x.ckpt", "dotdot": "sub/../x.ckpt", "symlink": "alias.ckpt"}[spelling]
    code, _, err = run(capsys, "export", "x.ckpt", "-o", target)
    assert code == 2 and err.count("\n") == 1 and "refusing to overwrite an input" in err and "x.ckpt" in err
    code, _, err = run(capsys, "export", "x.ckpt", "-o", "y.onnx", "--json", target)
    assert code == 2 and "--json" in err and "refusing" in err
    assert ckpt.read_bytes() == b"precious"


def test_prune_refuses_to_overwrite_its_data_or_model_file(tmp_path, capsys, no_work, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 1, 8, 8), np.float32), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 1, 8, 8), np.float32), y_test=np.zeros(2, int))
    (tmp_path / "m.py").write_text("")
    for argv in (["--data", "d.npz", "--model", "digits-cnn", "-o", "./d.npz"],
                 ["--data", "digits", "--model", "m.py:make", "-o", "m.py"],
                 ["--data", "d.npz", "--model", "digits-cnn", "-o", "x.ckpt", "--json", "d.npz"]):
        code, _, err = run(capsys, "prune", "--budget", "latency=50%", *argv)
        assert code == 2 and err.count("\n") == 1 and "refusing to overwrite an input" in err, err


def test_two_outputs_on_one_file_are_refused(tmp_path, capsys, no_work):
    code, _, err = run(capsys, *PRUNE, "-o", tmp_path / "r", "--json", tmp_path / "r")
    assert code == 2 and "same file" in err and "--json" in err and "-o/--output" in err
    code, _, err = run(capsys, *PRUNE, "-o", tmp_path / "r", "--json", tmp_path / "r.progress")
    assert code == 2 and "progress file" in err


def test_library_export_checks_its_path_before_exporting(tmp_path, monkeypatch):
    import npu_compress.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "job_from", lambda *a, **k: pytest.fail("exported before checking"))
    with pytest.raises(OutputError, match="it is a folder"):
        onnx_export.export_onnx(torch.nn.Linear(2, 2), tmp_path)
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(OutputError, match="refusing to overwrite an input"):
        onnx_export.export_onnx(ckpt, tmp_path / "." / "a.ckpt")


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
        write_torch(tmp_path / "b.pt", {"w": torch.ones(2)})
        with atomic_path(tmp_path / "c.bin") as tmp:
            torch.save({"w": torch.ones(2)}, tmp)
    finally:
        os.umask(old)
    for name in ("a.json", "b.pt", "c.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"),
                                        (errno.EDQUOT, "quota"), (errno.EROFS, "Read-only file system")])
def test_os_errors_while_writing_are_one_line(err, words, tmp_path):
    target = tmp_path / "out.onnx"
    target.write_text("old")

    def fails(tmp):
        tmp.write_text("half")
        raise OSError(err, os.strerror(err))

    with pytest.raises(OutputError) as info:
        write_atomic(target, fails)
    message = str(info.value)
    assert "\n" not in message and str(target) in message and words.lower() in message.lower()
    assert target.read_text() == "old" and temps(tmp_path) == []


def test_cli_reports_a_write_failure_as_one_line(tmp_path, capsys, monkeypatch):
    """The disk fills up during the run (every move into tmp_path fails with ENOSPC)."""
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    code, _, err = run(capsys, *PRUNE[:-3], "--epochs", "0,0,1", "--no-progress", "-o", tmp_path / "d.ckpt")
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err and "d.ckpt" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tiny_fs):
    big = {"w": torch.zeros(100_000)}  # 400 kB into 64 kB
    with pytest.raises(OutputError, match=r"cannot write '.*a\.pt': No space left on device"):
        write_torch(tiny_fs / "a.pt", big)
    with pytest.raises(OutputError, match="no space left on device"):  # torch.save's own writer: found by statvfs
        write_atomic(tiny_fs / "b.pt", lambda tmp: torch.save(big, tmp))
    assert list(tiny_fs.iterdir()) == []


# ---------------------------------------------------------------- signals and stale temp files

WRITER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    import npu_compress.cli as cli
    from npu_compress.io import write_atomic

    def slow(args):  # stands in for 'profiles calibrate': writes part of the file, then takes its time
        def write(tmp):
            tmp.write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
        write_atomic(args.output, write)
        return 0

    cli._cmd_calibrate = slow
    sys.exit(cli.main(["profiles", "calibrate", "-o", sys.argv[1]]))
''')


def _start_writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(Path(__file__).resolve().parents[1])))
    # SIGINT as a terminal would deliver it, even when this test run is a background job (its shell
    # then ignores SIGINT, the child inherits that, and Python never raises KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out.toml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "writing\n", proc.stderr.read()
    assert len(temps(tmp_path)) == 1  # the write is under way
    return proc


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated by SIGTERM"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_signal_during_a_write_removes_the_temp_file(sig, code, word, tmp_path):
    proc = _start_writer(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code and err == f"npu-compress: {word}\n"
    assert temps(tmp_path) == [] and not (tmp_path / "out.toml").exists()


def test_sigterm_during_training_exits_cleanly(tmp_path, digits_small):
    """The real CLI, SIGTERMed while it trains: exit 143, one line, no temp file, no checkpoint."""
    import numpy as np

    data = tmp_path / "small.npz"
    np.savez(data, x_train=digits_small.x_train.numpy(), y_train=digits_small.y_train.numpy(),
             x_test=digits_small.x_test.numpy(), y_test=digits_small.y_test.numpy())
    out = tmp_path / "d.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "npu_compress.cli", "prune", "--model", "digits-cnn", "--data",
                             str(data), "--budget", "latency=50%", "--epochs", "1,30,1", "--no-progress", "-o",
                             str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "d.ckpt.progress").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch is done: training is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == "npu-compress: terminated by SIGTERM"
    assert temps(tmp_path) == [] and not out.exists()


def test_kill_9_leftovers_are_swept_by_the_next_write(tmp_path):
    proc = _start_writer(tmp_path)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.communicate(timeout=30)
    [left] = temps(tmp_path)
    assert left.startswith(f".out.toml.{proc.pid}.")
    alive = tmp_path / f".out.toml.{os.getpid()}.abcdefgh.tmp"  # a live writer's: kept
    alive.write_text("mine")
    legacy_old = tmp_path / ".out.toml.zzzzzzzz.tmp"  # untagged (older versions), older than this process
    legacy_old.write_text("old")
    os.utime(legacy_old, (0, 0))
    legacy_new = tmp_path / ".out.toml.yyyyyyyy.tmp"  # untagged but recent: may be live, kept
    legacy_new.write_text("new")
    other = tmp_path / f".other.toml.{proc.pid}.abcdefgh.tmp"  # another target's: not ours to judge
    other.write_text("x")
    write_atomic(tmp_path / "out.toml", lambda tmp: tmp.write_text("done"))
    assert (tmp_path / "out.toml").read_text() == "done"
    assert temps(tmp_path) == sorted([alive.name, legacy_new.name, other.name])


def test_convert_checkpoint_checks_new_before_unpickling(tmp_path, capsys, monkeypatch):
    import npu_compress.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "convert_checkpoint", lambda *a: pytest.fail("converted before checking"))
    old = tmp_path / "old.ckpt"
    old.write_bytes(b"pickled")
    (tmp_path / "dir").mkdir()
    for new, words in (("dir", "it is a folder"), ("nope/new.ckpt", "does not exist")):
        code, _, err = run(capsys, "convert-checkpoint", old, tmp_path / new, "--trust")
        assert code == 2 and err.count("\n") == 1 and words in err, err
