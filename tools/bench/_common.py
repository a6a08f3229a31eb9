"""Shared bits of the benchmarks: machine description, median timing, JSON output, resumable cells."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d")}


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_json(path: str, payload: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)


def cached_cells(jobs: Sequence[Any], cells_dir: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """(rows of the jobs already finished without error under ``cells_dir/<job.key>.json``, jobs to run)."""
    rows, todo = [], []
    for job in jobs:
        f = cells_dir / f"{job.key}.json"
        row = json.loads(f.read_text()) if f.is_file() else None
        if row is not None and "error" not in row:
            rows.append(row)
        else:
            todo.append(job)
    return rows, todo


def run_cells(run: Callable[[Any, Any], dict[str, Any]], setup: Any, todo: Sequence[Any], cells_dir: Path,
              workers: int, status: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """``run(setup, job)`` for every job in a pool of ``workers`` spawned processes; each row is written to
    ``cells_dir/<row key>.json`` as it finishes (a re-run skips it) and a progress line printed."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    rows = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run, setup, job) for job in todo]
        for n, fut in enumerate(as_completed(futures), 1):
            row = fut.result()
            write_json(str(cells_dir / f"{row['key']}.json"), row)
            rows.append(row)
            print(f"[{n}/{len(todo)} {time.perf_counter() - t0:.0f}s] {row['key']}: {row.get('error') or status(row)}",
                  flush=True)
    return rows
