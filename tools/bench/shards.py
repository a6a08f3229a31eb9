"""Split a dataset .npz into shards small enough to carry to the device machine, and join them there.

    python tools/bench/shards.py split ../shared/data/cifar10.npz bench_results/shards [--max-mib 60]
    python tools/bench/shards.py join bench_results/shards bench_results/cifar10.npz

A device run carries at most 64 MiB of ignored files, and files it leaves stay while the machine is
warm: carry one shard per run, then ``join`` (which checks every shard's SHA-256 against the
manifest ``split`` wrote) and run ``fair_accuracy.py --tier full --data bench_results/cifar10.npz``.
Each shard is itself an .npz holding a row range of every array; ``join`` concatenates them in order.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from npu_compress.io import write_atomic  # noqa: E402


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomic(path, write)


def split(src: Path, out: Path, max_mib: float) -> list[dict]:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    rows = {k: len(v) for k, v in arrays.items()}
    per_row = {k: v.nbytes / max(len(v), 1) for k, v in arrays.items()}
    budget = max_mib * 2 ** 20
    out.mkdir(parents=True, exist_ok=True)
    shards, part = [], 0
    for key in sorted(arrays):
        step = max(1, int(budget // max(per_row[key], 1)))
        for start in range(0, rows[key], step):
            path = out / f"part{part:03d}.npz"
            piece = {key: arrays[key][start:start + step]}
            _savez(path, piece)
            shards.append({"file": path.name, "key": key, "start": start, "rows": len(piece[key]),
                           "sha256": _sha256(path)})
            part += 1
    manifest = {"source": src.name, "source_sha256": _sha256(src), "rows": rows, "shards": shards}
    write_atomic(out / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return shards


def join(src: Path, dest: Path) -> None:
    manifest = json.loads((src / "manifest.json").read_text())
    parts: dict[str, list[np.ndarray]] = {}
    for s in manifest["shards"]:
        path = src / s["file"]
        if not path.is_file():
            sys.exit(f"shards.py: missing shard {path} (carry it to this machine first)")
        if _sha256(path) != s["sha256"]:
            sys.exit(f"shards.py: shard {path} does not match the manifest's SHA-256 (corrupt or partial copy)")
        with np.load(path, allow_pickle=False) as z:
            parts.setdefault(s["key"], []).append(z[s["key"]])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for k, n in manifest["rows"].items():
        if len(arrays.get(k, ())) != n:
            sys.exit(f"shards.py: array {k} has {len(arrays.get(k, ()))} rows after joining, manifest says {n}")
    _savez(dest, arrays)
    if _sha256(dest) != manifest["source_sha256"]:
        print(f"note: {dest} holds the same arrays as {manifest['source']} but is not byte-identical "
              "(zip metadata differs)", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--max-mib", type=float, default=60.0)
    j = sub.add_parser("join")
    j.add_argument("src", type=Path)
    j.add_argument("dest", type=Path)
    args = ap.parse_args()
    if args.cmd == "split":
        shards = split(args.src, args.out, args.max_mib)
        print(f"{len(shards)} shards in {args.out}")
    else:
        join(args.src, args.dest)
        print(f"joined into {args.dest}")


if __name__ == "__main__":
    main()
