"""Exact resume and reproducibility, measured: what they cost and whether they hold on a real run.

    python tools/bench/resume.py [--model resnet20] [--data ../shared/data/cifar10.npz] [--train 2000]
        [--epochs 1,1,1] [--method smart] [--json bench_results/resume.json]

Three runs of ``npu-compress prune`` as subprocesses, same seed:
1. uninterrupted, twice: are the checkpoints byte-identical (reproducibility)?
2. killed with SIGKILL as soon as its progress file records the first epoch, then ``--resume``d:
   does the result equal the uninterrupted run (keep-set, every tensor, file bytes)?
Also measured, in-process: the progress file's size and the CPU time (``time.process_time``) of
writing it, against the CPU time of one training epoch — the price of exact resume.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402

CLI = [sys.executable, "-m", "npu_compress.cli"]


def _prune(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    return [*CLI, "prune", "--model", args.model, "--data", args.data, "--profile", args.profile, "--budget",
            args.budget, "--method", args.method, "--epochs", args.epochs, "--seed", "0", "--no-progress",
            "-o", str(out), *extra]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: Path, b: Path) -> dict:
    x, y = _load(a), _load(b)
    tensors = all(torch.equal(x["state_dict"][k], y["state_dict"][k]) for k in x["state_dict"])
    return {"bytes_identical": a.read_bytes() == b.read_bytes(), "keep_identical": torch.equal(x["keep"], y["keep"]),
            "tensors_identical": tensors and set(x["state_dict"]) == set(y["state_dict"])}


def _progress_epoch(path: Path) -> int:
    try:
        return int(_load(path).get("epoch", -1))
    except Exception:  # noqa: BLE001 - being written
        return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/cifar10.npz"))
    ap.add_argument("--train", type=int, default=2000, help="training images used (a subset, for time)")
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--budget", default="latency=50%")
    ap.add_argument("--method", default="smart")
    ap.add_argument("--epochs", default="1,1,1")
    ap.add_argument("--json", default="bench_results/resume.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    subset = work / "data.npz"
    import numpy as np

    d = np.load(args.data)
    np.savez(subset, x_train=d["x_train"][:args.train], y_train=d["y_train"][:args.train],
             x_test=d["x_test"][:500], y_test=d["y_test"][:500])
    args.data = str(subset)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name in ("a", "b"):
        t0 = time.perf_counter()
        subprocess.run(_prune(args, work / f"{name}.ckpt"), check=True, env=env, capture_output=True)
        runs[name] = time.perf_counter() - t0
    killed = work / "k.ckpt"
    proc = subprocess.Popen(_prune(args, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed.with_name(killed.name + ".progress")
    while proc.poll() is None and _progress_epoch(progress) < 0:
        time.sleep(0.2)
    killed_at = _progress_epoch(progress)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_prune(args, killed, "--resume"), check=True, env=env, capture_output=True)
    result = {"reproducible (a vs b)": _same(work / "a.ckpt", work / "b.ckpt"),
              f"killed after epoch {killed_at + 1}, resumed, vs uninterrupted": _same(work / "a.ckpt", killed),
              "uninterrupted_run_s": runs, "progress_file_bytes": None}
    # the price of exact resume: writing the progress file vs one epoch (CPU time, in-process)
    import npu_compress.training as training

    spent: list[float] = []
    save = training._save_progress

    def timed(*a, **k):
        t = time.process_time()
        save(*a, **k)
        spent.append(time.process_time() - t)

    training._save_progress = timed
    from npu_compress.pruning import prune
    from npu_compress.training import Epochs, TrainConfig

    torch.set_num_threads(1)
    w, m, f = (int(v) for v in args.epochs.split(","))
    t = time.process_time()
    prune(args.model, args.data, args.profile, args.budget, method=args.method,
          config=TrainConfig(Epochs(w, m, f), progress=False, checkpoint=work / "p.progress"),
          output=work / "p.ckpt")
    total = time.process_time() - t
    result.update(progress_file_bytes=(work / "p.progress").stat().st_size if (work / "p.progress").exists() else
                  None, progress_write_cpu_s=spent, run_cpu_s=total,
                  progress_share=sum(spent) / total if total else None)
    for k, v in result.items():
        print(f"{k}: {v}")
    write_json(args.json, {"machine": machine(), "args": vars(args), **{k: v for k, v in result.items()}})


if __name__ == "__main__":
    main()
