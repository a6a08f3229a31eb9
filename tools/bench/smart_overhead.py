"""SMART training-step time / plain training-step time, measured side by side (interleaved).

    python tools/bench/smart_overhead.py [--model resnet20] [--batch 128] [--steps 20] [--structure channel]
    python tools/bench/smart_overhead.py --model resnet50 --batch 16 --steps 10    # ImageNet ResNet-50, 224 px

A SMART step = forward with soft masks (soft top-k solve + per-parameter masks) + backward +
SGD step + a step of the pruner's own mask optimiser on the logits + pruner.step(). A plain step = the same without the pruner.
Times are CPU seconds of the process (``time.process_time``, one torch thread: the machine is
shared) of each step. A re-linearisation (every ``relinearize_every`` SMART steps: the unit costs at the current hard
guess) is timed on its own and amortised: ratio incl. = (SMART + re-linearisation / every) / plain.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import models_large  # noqa: E402
from _common import machine, write_json  # noqa: E402

from npu_compress import SmartPruner, models  # noqa: E402


def _stepper(model, pruner=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # the pruner's own mask optimiser, as the training driver builds it (SMART: SGD with momentum)
    mask_opt = pruner.mask_optimizer(pruner.parameters(), 0.002) if pruner and pruner.parameters() else None

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if mask_opt:
            mask_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mask_opt:
            mask_opt.step()
        if pruner:
            pruner.step()
    return step


def interleaved(name: str, batch: int, steps: int, profile, budget: str, structure: str = "channel"
                ) -> tuple[float, float, int]:
    """(plain step s, SMART step s, units): medians of ``steps`` steps each, interleaved so that
    drift in machine load hits both alike, after 3 warm-up pairs."""
    torch.manual_seed(0)
    create, shape = (models_large.resnet50, models_large.INPUT_SHAPE) if name == "resnet50" else \
        (lambda: models.create(name), models.example_input(name).shape)
    x = torch.randn(batch, *shape[1:])
    y = torch.randint(0, 10, (batch,))
    plain_model, smart_model = create(), create()
    smart_model.load_state_dict(plain_model.state_dict())
    pruner = SmartPruner(smart_model, (x[:1],), profile, budget, structure, mask_steps=10 * steps)
    plain, smart = _stepper(plain_model), _stepper(smart_model, pruner)
    for _ in range(3):
        plain(x, y)
        smart(x, y)
    t_plain, t_smart = [], []
    for _ in range(steps):
        for fn, acc in ((plain, t_plain), (smart, t_smart)):
            t0 = time.process_time()
            fn(x, y)
            acc.append(time.process_time() - t0)
    relin = []
    for _ in range(3):
        t0 = time.process_time()
        pruner._linearize(pruner._hard_guess())
        relin.append(time.process_time() - t0)
    return (statistics.median(t_plain), statistics.median(t_smart), pruner.graph.num_units,
            statistics.median(relin), pruner.relinearize_every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", choices=models.names() + ["resnet50"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--budget", default="latency=50%")
    ap.add_argument("--structure", default="channel", choices=["channel", "block", "nm"])
    ap.add_argument("--out", default="bench_results/smart_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p, s, units, relin, every = interleaved(args.model, args.batch, args.steps, args.profile, args.budget,
                                            args.structure)
    amortised = (s + relin / every) / p if every else s / p
    row = {"model": args.model, "batch": args.batch, "structure": args.structure, "units": units,
           "plain_step_s": p, "smart_step_s": s, "ratio": s / p, "relinearize_s": relin,
           "relinearize_every": every, "ratio_incl_relinearize": amortised}
    print(f"SMART step vs plain step, {args.model} batch {args.batch}, {args.structure} structure "
          f"({units} units), median of {args.steps} interleaved steps, CPU time, 1 thread")
    print(f"{'plain ms':>10} {'smart ms':>10} {'ratio':>7} {'relin ms':>9} {'every':>6} {'ratio incl.':>11}")
    print(f"{p * 1e3:>10.1f} {s * 1e3:>10.1f} {s / p:>7.3f} {relin * 1e3:>9.1f} {every:>6} {amortised:>11.3f}")
    write_json(args.out, {"benchmark": "smart_overhead", "machine": machine(), "row": row})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
