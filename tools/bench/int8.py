"""INT8 at a latency budget: float vs QDQ int8 (onnxruntime) vs Ethos-U int8 (ExecuTorch PT2E + Vela).

    python tools/bench/int8.py [--data ../shared/data/cifar10.npz] [--model resnet20]
        [--train 10000] [--test 10000] [--pretrain-epochs 15] [--epochs 1,2] [--budget 50]
        [--profile ethos-u55-128] [--calibrate minmax percentile entropy] [--calibration 256]
        [--work bench_results/int8] [--json bench_results/int8.json]

Protocol (one run):
1. **Dense**: the accuracy benchmark's CPU-sized pretraining (``--pretrain-epochs`` of SGD on the
   first ``--train`` images, no augmentation), cached in ``--work`` (shared recipe:
   ``tools/bench/accuracy.py``).
2. **Pruned**: from that checkpoint, magnitude pruning to ``latency=--budget%`` of the dense model
   on ``--profile`` (``--epochs M,F``: M mask epochs, F fine-tune epochs), saved as an
   ``npu-compress prune`` checkpoint (cached) and exported from it, as a user would.
3. For each model: float accuracy in torch; **QDQ int8** by ``export_onnx(precision="int8")`` per
   ``--calibrate`` method (calibration: the first ``--calibration`` training images), accuracy
   and top-1 agreement in onnxruntime on the first ``--test`` test images; **Ethos-U int8** by
   ``export_ethos_u`` (the quantized torch model's accuracy and agreement on the same images) with
   Vela's cycles, SRAM, flash and CPU-operator count beside our predicted latency. Gates are
   opened (min_agreement 0, max_drop 100) so every number is reported; whether the default gate
   would pass is a column.

Writes a markdown table to stdout and everything to ``--json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402
from accuracy import Setup, load_data, pretrained  # noqa: E402

from npu_compress import models  # noqa: E402
from npu_compress.checkpoint import PruneCheckpoint  # noqa: E402
from npu_compress.data import Dataset  # noqa: E402
from npu_compress.export import Calibration, IntGate, export_ethos_u, export_onnx  # noqa: E402
from npu_compress.export.agreement import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT  # noqa: E402
from npu_compress.hardware.budget import Budget  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402
from npu_compress.pruners import get_pruner  # noqa: E402
from npu_compress.training import Epochs, TrainConfig, clean_state_dict, evaluate, train  # noqa: E402

OPEN_GATE = IntGate(min_agreement=0.0, max_drop=100.0)


def pruned_checkpoint(setup: Setup, data: Dataset, profile: str, budget: float, method: str) -> Path:
    """Magnitude-prune the cached dense model to the budget; an ``npu-compress prune`` checkpoint (cached)."""
    m_ep, f_ep = setup.epochs
    path = Path(setup.work) / f"{setup.model}_{profile}_{budget:g}_{method}_e{m_ep}-{f_ep}.ckpt"
    if path.is_file():
        return path
    torch.manual_seed(setup.seed)
    model = models.create(setup.model, num_classes=data.num_classes)
    model.load_state_dict(pretrained(setup, data)["state_dict"])
    ex = torch.zeros(1, *data.input_shape)
    prof = load_profile(profile)
    bud = Budget.parse(f"latency={budget:g}%")
    cls = get_pruner(method)
    cfg = TrainConfig(Epochs(0, m_ep, f_ep), lr=setup.lr, batch_size=setup.batch, seed=setup.seed, progress=False)
    run = train(model, data, cfg, make_pruner=lambda m: cls(m, (ex,), prof, bud, "channel"))
    res = run.prune_result
    PruneCheckpoint(model_spec=setup.model, input_shape=(1, *data.input_shape), profile_toml=prof.to_toml(),
                    budget=str(bud), structure="channel", method=method, keep=res.keep.clone(),
                    state_dict=clean_state_dict(model), report={"accuracy": run.accuracy,
                                                                "achieved_ratio": res.achieved_ratio}).save(path)
    return path


def _gate_passes(check) -> bool:
    return check.agreement >= DEFAULT_MIN_AGREEMENT and (check.drop is None or check.drop <= DEFAULT_MAX_DROP)


def measure(label: str, source: Any, data: Dataset, profile: str, calibrate: list[str], samples: int,
            work: Path, float_model: torch.nn.Module) -> dict[str, Any]:
    ex = torch.zeros(1, *data.input_shape)
    kw = {} if isinstance(source, (str, Path)) else {"example_inputs": (ex,), "profile": profile}
    row: dict[str, Any] = {"model": label}
    slug = label.replace(" ", "_").replace("%", "pct")
    loader = data.loaders(256)[1]
    row["float_accuracy"] = evaluate(float_model, loader)
    row["qdq"] = {}
    for method in calibrate:
        t0 = time.perf_counter()
        r = export_onnx(source, work / f"{slug}_{method}.onnx", precision="int8", data=data,
                        calibration=Calibration(method, samples), gate=OPEN_GATE, **kw)
        row["qdq"][method] = {"accuracy": r.int8.int_accuracy, "float_accuracy": r.int8.float_accuracy,
                              "agreement": r.int8.agreement, "drop_points": r.int8.drop, "sqnr_db": r.int8.sqnr_db,
                              "default_gate_passes": _gate_passes(r.int8), "file_bytes": r.file_bytes,
                              "onnx_weight_bytes": r.onnx_weight_bytes, "cost_memory_bytes": r.pruned.memory_bytes,
                              "weight_bytes_ratio": r.weight_bytes_ratio, "seconds": time.perf_counter() - t0}
        print(f"  {label} QDQ {method}: int8 {100 * r.int8.int_accuracy:.2f}% (float "
              f"{100 * r.int8.float_accuracy:.2f}%), agreement {100 * r.int8.agreement:.2f}%", flush=True)
    t0 = time.perf_counter()
    e = export_ethos_u(source, work / f"{slug}.pte", data=data, calibration=Calibration("minmax", samples),
                       gate=OPEN_GATE, **kw)
    row["ethos_u"] = {"accuracy": e.check.int_accuracy, "agreement": e.check.agreement, "drop_points": e.check.drop,
                      "sqnr_db": e.check.sqnr_db, "default_gate_passes": _gate_passes(e.check),
                      "pte_bytes": e.file_bytes, "vela": e.vela.to_dict(), "vela_latency_s": e.vela_latency_s,
                      "predicted_latency_s": e.predicted_latency_s, "ratio_predicted_over_vela": e.latency_ratio,
                      "cpu_operators": e.cpu_operators, "seconds": time.perf_counter() - t0}
    print(f"  {label} Ethos-U: int8 {100 * e.check.int_accuracy:.2f}%, agreement {100 * e.check.agreement:.2f}%, "
          f"Vela {e.vela_latency_s * 1e3:.3f} ms vs ours {e.predicted_latency_s * 1e3:.3f} ms", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | path | calibration | accuracy | drop (points) | top-1 agreement | SQNR (dB) | default gate | "
           "file bytes | weight bytes / cost model |",
           "|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | float (torch) | - | {100 * r['float_accuracy']:.2f}% | - | - | - | - | - | - |")
        for method, q in r["qdq"].items():
            out.append(f"| {r['model']} | QDQ int8 (onnxruntime) | {method} | {100 * q['accuracy']:.2f}% | "
                       f"{q['drop_points']:.2f} | {100 * q['agreement']:.2f}% | {q['sqnr_db']:.1f} | "
                       f"{'pass' if q['default_gate_passes'] else 'FAIL'} | {q['file_bytes']:,} | "
                       f"{q['weight_bytes_ratio']:.3f} |")
        e = r["ethos_u"]
        out.append(f"| {r['model']} | Ethos-U int8 (PT2E, torch) | minmax | {100 * e['accuracy']:.2f}% | "
                   f"{e['drop_points']:.2f} | {100 * e['agreement']:.2f}% | {e['sqnr_db']:.1f} | "
                   f"{'pass' if e['default_gate_passes'] else 'FAIL'} | {e['pte_bytes']:,} (.pte) | - |")
    out += ["", "| model | ours (ms) | Vela (ms) | ours / Vela | Vela cycles | SRAM (bytes) | flash (bytes) | "
            "CPU operators |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        e = r["ethos_u"]
        v = e["vela"]
        out.append(f"| {r['model']} | {e['predicted_latency_s'] * 1e3:.4f} | {e['vela_latency_s'] * 1e3:.4f} | "
                   f"{e['ratio_predicted_over_vela']:.3f} | {v['total_cycles']:,} | {v['sram_bytes']:,} | "
                   f"{v['flash_bytes']:,} | {len(e['cpu_operators'])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/cifar10.npz"))
    ap.add_argument("--model", default="resnet20", choices=models.names())
    ap.add_argument("--train", type=int, default=10000, help="first N training images (pretraining, calibration)")
    ap.add_argument("--test", type=int, default=10000, help="first N test images (accuracy, agreement)")
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--epochs", default="1,2", help="M,F: mask then fine-tune epochs of the pruned model")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--budget", type=float, default=50, help="latency budget, percent of dense")
    ap.add_argument("--method", default="magnitude")
    ap.add_argument("--calibrate", nargs="+", default=["minmax", "percentile", "entropy"])
    ap.add_argument("--calibration", type=int, default=256, help="calibration samples (training split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="bench_results/int8")
    ap.add_argument("--json", default="bench_results/int8.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    epochs = Epochs.parse(f"0,{args.epochs}")
    setup = Setup(args.data, args.model, args.train, args.test, args.pretrain_epochs, (epochs.mask, epochs.finetune),
                  args.lr, args.batch, args.seed, args.work)
    data = load_data(setup)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dense_state = pretrained(setup, data)
    dense = models.create(args.model, num_classes=data.num_classes).eval()
    dense.load_state_dict(dense_state["state_dict"])
    print(f"data: {data.name} {len(data.x_train)} train / {len(data.x_test)} test; dense "
          f"{100 * dense_state['accuracy']:.2f}% after {args.pretrain_epochs} epochs", flush=True)
    ckpt = pruned_checkpoint(setup, data, args.profile, args.budget, args.method)
    pruned_ckpt = PruneCheckpoint.load(ckpt)
    pruned = models.create(args.model, num_classes=data.num_classes).eval()
    pruned.load_state_dict(pruned_ckpt.state_dict)
    print(f"pruned: {ckpt} ({args.method}, latency={args.budget:g}% of dense on {args.profile})", flush=True)
    rows = [measure("dense", dense, data, args.profile, args.calibrate, args.calibration, work, dense),
            measure(f"pruned {args.budget:g}%", ckpt, data, args.profile, args.calibrate, args.calibration, work,
                    pruned)]
    text = table(rows)
    print(text)
    write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows, "table": text,
                           "seconds": time.perf_counter() - t0,
                           "protocol": f"{args.model} on the first {args.train} CIFAR-10 training images "
                                       f"({args.pretrain_epochs} epochs dense; pruned with {args.method}, epochs "
                                       f"{args.epochs}), evaluated on the first {args.test} test images"})


if __name__ == "__main__":
    main()
