"""``npu-compress``: a thin command line over the library's verbs.

Every bad input (arguments, files, data, a training that diverges) ends as one line on stderr and
exit code 2, before any work where it can be known up front (output paths included); an
unexpected failure is one line and exit code 1 (``--debug`` shows its traceback); SIGINT / SIGTERM
exit 130 / 143. Nothing is half-written: outputs appear whole or not at all.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from pathlib import Path
import logging
import signal
import sys
import traceback
from typing import Callable, Iterator, Sequence

from . import __version__
from .distributed import check_launch, init_from_env, is_rank0
from .errors import NpuCompressError
from .export.agreement import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT
from .export.quantize import CalibrationMethod, Precision
from .hardware import DEFAULT_PROFILE, estimate, list_profiles, load_profile
from .pruners import PRUNERS, get_pruner
from .pruners.problem import config_from_text, describe
from .training import LrSchedule, OptimizerKind
from .choices import Choice, NMPattern
from .graph.types import Structure
from .pruning import Judge

EXIT_BAD_INPUT = 2  # the user can fix it: the message says what
EXIT_INTERNAL = 1  # anything else (a bug, or a library failing): one line, the traceback with --debug
DEMO_MODEL = "digits-cnn"


def _cmd_calibrate_vela(args: argparse.Namespace) -> int:
    from .hardware.calibrate_vela import calibrate_vela, refit_vela, with_efficiency
    from .hardware.profile import profile_path

    source = profile_path(args.vela)
    if args.refit:
        profile, report = refit_vela(load_profile(source), Path(args.refit))
    else:
        profile, report = calibrate_vela(load_profile(source), quick=args.quick, progress=_progress)
    return _write_calibrated(args, profile, with_efficiency(source.read_text(encoding="utf-8"), report), report)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .hardware.calibrate import calibrate_ort_cpu, profile_toml

    if not args.output:
        raise NpuCompressError("'profiles calibrate' needs -o/--output, e.g. -o hw_profiles/ort-cpu.toml")
    # -o may be the --vela profile itself: recalibrating a profile in place is a documented workflow
    _check_outputs({"-o/--output": args.output, "--json": args.json}, [])
    if args.vela:
        return _cmd_calibrate_vela(args)
    if args.refit:
        raise NpuCompressError("--refit re-fits a Vela calibration: give it with --vela PROFILE")
    if args.provider != "cpu":
        raise NpuCompressError(f"'profiles calibrate' supports --provider cpu only (got '{args.provider}')")
    if args.threads < 1:
        raise NpuCompressError(f"--threads must be >= 1 (got {args.threads})")
    profile, report = calibrate_ort_cpu(threads=args.threads, quick=args.quick, progress=_progress)
    return _write_calibrated(args, profile, profile_toml(profile, report), report)


def _progress(i: int, n: int, label: str) -> None:
    logging.getLogger(__name__).info("[%d/%d] %s", i + 1, n, label)


def _write_calibrated(args: argparse.Namespace, profile, text: str, report) -> int:
    """Check the fitted profile's TOML reads back equal, then write it (and the fit report) atomically."""
    from .hardware.profile import profile_from_dict, tomllib
    from .io import write_atomic

    if profile_from_dict(tomllib.loads(text), where=str(args.output)) != profile:
        raise NpuCompressError(f"{args.output}: the fitted profile does not read back equal; please report this")
    write_atomic(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if args.json:
        payload = json.dumps(report.to_dict(), indent=2)
        write_atomic(args.json, lambda tmp: tmp.write_text(payload, encoding="utf-8"))
    print(report.table())
    print(f"wrote {args.output}")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    if args.action == "calibrate":
        return _cmd_calibrate(args)
    if args.action == "show":
        if not args.name:
            raise NpuCompressError("'profiles show' needs a profile name; shipped: " + ", ".join(list_profiles()))
        print(load_profile(args.name).to_toml(), end="")
        return 0
    if args.name:
        raise NpuCompressError(f"'profiles list' takes no name (got '{args.name}'); did you mean 'profiles show "
                               f"{args.name}'?")
    for name in list_profiles():
        p = load_profile(name)
        default = " (default)" if name == DEFAULT_PROFILE else ""
        print(f"{name:<16} {p.description}{default}")
    return 0


def _load(spec: str, input_shape: str | None):
    from .modelspec import load_model, parse_input_shape

    return load_model(spec, parse_input_shape(input_shape) if input_shape else None)


def _cmd_cost(args: argparse.Namespace) -> int:
    import torch

    loaded = _load(args.model, args.input_shape)
    report = estimate(loaded.module, torch.randn(*loaded.input_shape), load_profile(args.profile))
    print(report.to_json() if args.json else report.table(show_fused=args.all))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from .io import write_atomic
    from .pruning import prune
    from .training import Epochs, TrainConfig

    method_config = config_from_text(get_pruner(args.method).Config, args.method, args.method_arg)
    if args.distributed:
        check_launch()
    output = Path(args.output)
    if not args.distributed or _rank_from_env() == 0:  # only rank 0 writes: it checks, before any work
        _check_outputs({"-o/--output": output, "--json": args.json,
                        "the progress file": output.with_name(output.name + ".progress") if output.name else None},
                       _input_files(args.model, args.data, args.profile, args.task))
    if args.distributed:
        init_from_env()  # rank / world size / master address from torchrun's environment
    config = TrainConfig(Epochs.parse(args.epochs), optimizer=args.optimizer, lr=args.lr, mask_lr=args.mask_lr,
                         lr_schedule=args.lr_schedule, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                         checkpoint=output.with_name(output.name + ".progress"), resume=args.resume)
    rank0 = is_rank0()  # only rank 0 writes files and prints
    try:
        outcome = prune(args.model, args.data, args.profile, args.budget, structure=args.structure,
                        method=args.method, config=config, method_config=method_config, input_shape=_shape(args.input_shape),
                        nm=_nm(args.nm), output=output if rank0 else None, judge=args.judge, task=args.task)
    finally:
        if args.distributed:
            dist.destroy_process_group()
    report = outcome.checkpoint.report
    if rank0:
        config.checkpoint.unlink(missing_ok=True)  # the run finished: the resume file has served
        if args.json:
            write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
        print(_prune_table(report, output))
    return 0


def _rank_from_env() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), known before the group is joined."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _input_files(*specs: str | None) -> list[Path]:
    """The files among the inputs named on the command line: a .npz / .toml / .pt2 / checkpoint path,
    or the file of a 'file.py:factory' model spec (zoo names, 'digits' and modules are not files)."""
    files = []
    for spec in specs:
        if not spec:
            continue
        for candidate in (spec, spec.rsplit(":", 1)[0]):
            if os.path.isfile(candidate):
                files.append(Path(candidate))
                break
    return files


def _check_outputs(outputs: dict[str, str | Path | None], inputs: Sequence[Path]) -> None:
    """Before any work: every output writable and none of them an input, nor two of them one file."""
    from .io import OutputError, check_output, same_file

    given = [(flag, Path(path)) for flag, path in outputs.items() if path is not None]
    for i, (flag, path) in enumerate(given):
        check_output(path, inputs, flag)
        for other_flag, other in given[:i]:
            if same_file(path, other):
                raise OutputError(f"{flag} '{path}' and {other_flag} '{other}' are the same file; give two paths")


def _shape(text: str | None):
    from .modelspec import parse_input_shape

    return parse_input_shape(text) if text else None


def _nm(text: str) -> NMPattern:
    return NMPattern.parse(text, "--nm", NpuCompressError)


class Target(Choice):
    """What ``export`` writes: ONNX (float or QDQ int8), or an Ethos-U program through Vela."""

    ONNX = "onnx"
    ETHOS_U = "ethos-u"


def _choice(cls: type[Choice]) -> dict:
    """argparse keywords for a closed choice: parsed to the enum member at the edge, choices listed in --help."""
    def parse(text: str) -> Choice:
        try:
            return cls(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(cls.values())})") from None

    parse.__name__ = cls.__name__
    return {"type": parse, "choices": list(cls)}


def _prune_table(r: dict, output: Path) -> str:
    d, p = r["dense"], r["pruned"]
    acc = lambda a: "-" if a is None else f"{100 * a:.2f}%"  # noqa: E731
    rows = [f"pruned with {r['method']} to {r['budget']} on {r['profile']} -> {output}",
            f"{'':<22}{'dense':>14}{'pruned':>14}",
            f"{'latency (ms)':<22}{d['latency_s'] * 1e3:>14.4f}{p['latency_s'] * 1e3:>14.4f}",
            f"{'memory (bytes)':<22}{d['memory_bytes']:>14,}{p['memory_bytes']:>14,}",
            f"{'MACs':<22}{d['macs']:>14,}{p['macs']:>14,}",
            f"{'params':<22}{d['params']:>14,}{p['params']:>14,}",
            f"{r.get('metric', 'accuracy'):<22}{acc(r['dense_accuracy']):>14}{acc(r['accuracy']):>14}",
            f"achieved / budget: {r['achieved_ratio']:.4f}; units kept {r['units_kept']}/{r['units']}"]
    if "judge" in r:
        j = r["judge"]
        rows.append(f"judged by Vela: our cost model was given {j['internal']} so that Vela's latency meets "
                    f"{j['budget']} (magnitude candidate at {j['ratio']:.3f} of it; export --target ethos-u reports "
                    "the final model's)")
    return "\n".join(rows)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import Calibration, IntGate
    from .io import write_atomic

    calibration = Calibration(args.calibrate, args.calibration)
    gate = IntGate(args.min_agreement, args.max_drop, args.verify_samples)
    _check_outputs({"-o/--output": args.output, "--json": args.json}, _input_files(args.checkpoint, args.data))
    if args.target is Target.ETHOS_U:
        from .export.ethos_u import export_ethos_u

        if args.precision not in (None, Precision.INT8):
            raise NpuCompressError(f"--target ethos-u writes int8 only (got --precision {args.precision})")
        report = export_ethos_u(args.checkpoint, args.output, data=args.data, calibration=calibration, gate=gate,
                                verify=not args.no_verify, require_npu=args.require_npu)
    else:
        from .export import export_onnx

        if args.require_npu:
            raise NpuCompressError("--require-npu applies to --target ethos-u only")
        report = export_onnx(args.checkpoint, args.output, opset=args.opset, verify=not args.no_verify,
                             tolerance=args.tolerance, data=args.data, precision=args.precision,
                             calibration=calibration, gate=gate)
    if args.json:
        write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=2)))
    print(report.table())
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Rewrite a trusted old checkpoint (pickled objects) in the safe form: unpickling it runs its code."""
    from .checkpoint import convert_checkpoint

    if not args.trust:
        raise NpuCompressError(f"converting unpickles '{args.old}', which runs any code it holds; pass --trust "
                               "only for a file you wrote or whose source you trust")
    _check_outputs({"NEW": args.new}, [])  # NEW == OLD: convert_checkpoint's own message
    convert_checkpoint(args.old, args.new)
    print(f"wrote {args.new}: '{args.old}' in the safe format (loads without running code)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The whole path on the bundled digits: train, SMART to latency=50%, fine-tune, export, verify."""
    import torch

    from .export import export_onnx
    from .io import check_writable
    from .pruning import prune
    from .training import Epochs, TrainConfig

    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise NpuCompressError(f"--output-dir '{out}' exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NpuCompressError(f"--output-dir '{out}': cannot create it ({e.strerror})") from None
    for suffix in (".ckpt", ".onnx"):
        check_writable(out / f"{DEMO_MODEL}{suffix}")
    profile = load_profile(args.profile)
    print(f"npu-compress {__version__} demo: '{DEMO_MODEL}' on the bundled 8x8 digits, SMART to {args.budget} "
          f"on '{profile.name}' (torch {torch.__version__})\n")
    ckpt = out / f"{DEMO_MODEL}.ckpt"
    outcome = prune(DEMO_MODEL, "digits", profile, args.budget, method="smart",
                    config=TrainConfig(Epochs.parse(args.epochs), progress=not args.no_progress), output=ckpt)
    print(_prune_table(outcome.checkpoint.report, ckpt) + "\n")
    report = export_onnx(ckpt, out / f"{DEMO_MODEL}.onnx", data="digits")  # the profile's precision (int8)
    print(report.table())
    return 0


class UsageError(NpuCompressError, ValueError):
    """A command-line argument is missing or invalid (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised as :class:`UsageError` (one line, exit code 2, no usage block);
    subcommands inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')")


def _positive_float(text: str) -> float:
    value = _float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got '{text}'")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got '{text}'")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


def _prune_epochs(text: str) -> str:
    """W,M,F with at least one epoch for the pruner (mask learning or fine-tune); kept as text."""
    from .training import Epochs

    try:
        epochs = Epochs.parse(text)
    except NpuCompressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if epochs.mask + epochs.finetune < 1:
        raise argparse.ArgumentTypeError(f"'{text}' leaves the pruner no epoch: mask learning + fine-tune (M + F "
                                         "of W,M,F) must be at least 1, e.g. 2,6,2")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="npu-compress", description="Prune PyTorch models to an NPU's latency or memory budget and "
                "export verified ONNX.", epilog="Exit codes: 0 done; 2 bad input (one line on stderr says what); "
                "1 unexpected failure (--debug shows the traceback); 130/143 interrupted / terminated.")
    p.add_argument("--version", action="version", version=f"npu-compress {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("profiles", help="list the shipped hardware profiles, show one, or calibrate ort-cpu")
    sp.add_argument("action", nargs="?", choices=["list", "show", "calibrate"], default="list")
    sp.add_argument("name", nargs="?", help="profile name or path to a .toml (for 'show')")
    sp.add_argument("--provider", default="cpu", help="calibrate: onnxruntime provider to time (only 'cpu')")
    sp.add_argument("--vela", metavar="PROFILE", help="calibrate: fit this Ethos-U profile's [efficiency] to Arm "
                    "Vela's cycle estimates (needs the ethos-u extra), e.g. --vela ethos-u55-128")
    sp.add_argument("--refit", metavar="JSON", help="calibrate --vela: fit again from the samples of an earlier "
                    "run's --json report instead of compiling the probes with Vela")
    sp.add_argument("-o", "--output", help="calibrate: profile TOML to write (atomically)")
    sp.add_argument("--threads", type=int, default=1, help="calibrate: onnxruntime intra-op threads (default 1)")
    sp.add_argument("--quick", action="store_true", help="calibrate: reduced grid (seconds, noisier)")
    sp.add_argument("--json", help="calibrate: also write the fit report as JSON here")
    sp.set_defaults(func=_cmd_profiles)

    sc = sub.add_parser("cost", help="per-layer latency/memory table of a model on a profile")
    sc.add_argument("--model", required=True, help="zoo name, package.module:factory, file.py:factory, or .pt2")
    sc.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or .toml path (default {DEFAULT_PROFILE})")
    sc.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32 (when the model has no default)")
    sc.add_argument("--json", action="store_true", help="print the report as JSON")
    sc.add_argument("--all", action="store_true", help="also list layers fused into their producer")
    sc.set_defaults(func=_cmd_cost)

    sp = sub.add_parser("prune", help="train, prune to a budget on a profile, fine-tune; write a checkpoint")
    sp.add_argument("--model", required=True, help="zoo name, package.module:factory, file.py:factory, or .pt2")
    sp.add_argument("--data", required=True, help="'digits' (bundled), a .npz with x_train,y_train,x_test,y_test, "
                    "or file.py:factory / package.module:factory returning a Dataset or those four tensors "
                    "(per-pixel labels for segmentation)")
    sp.add_argument("--task", help="file.py:factory / package.module:factory returning an npu_compress.Task: the "
                    "loss trained on and the metric reported (default: cross-entropy, top-1 accuracy)")
    sp.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or .toml (default {DEFAULT_PROFILE})")
    sp.add_argument("--budget", required=True, help="latency=2.5ms | latency=50%% | memory=1.5MiB | memory=40%%")
    sp.add_argument("--structure", default=Structure.CHANNEL, **_choice(Structure))
    sp.add_argument("--nm", default="2:4", help="N:M pattern for --structure nm (default 2:4)")
    sp.add_argument("--method", default="smart", choices=sorted(PRUNERS), help="the pruning method (default smart)")
    sp.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a knob of the method's config, repeatable; typed and checked. Knobs (default): " +
                    "; ".join(f"{name}: {describe(PRUNERS[name].Config)}" for name in sorted(PRUNERS))
                    .replace("%", "%%"))
    sp.add_argument("--epochs", default="2,6,2", type=_prune_epochs, help="warm-up,mask,fine-tune epochs "
                    "(default 2,6,2; mask + fine-tune >= 1)")
    sp.add_argument("--optimizer", default=OptimizerKind.SGD, **_choice(OptimizerKind))
    sp.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate, > 0 (default 0.05)")
    sp.add_argument("--mask-lr", type=_positive_float, default=0.002,
                    help="learning rate of the method's own parameters (SMART's logits), > 0 (default 0.002)")
    sp.add_argument("--lr-schedule", default=LrSchedule.RUN, **_choice(LrSchedule),
                    help="one cosine over the whole run, or one per phase (default run)")
    sp.add_argument("--batch-size", type=_positive_int, default=64)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32 (when the model has no default)")
    sp.add_argument("-o", "--output", required=True, help="checkpoint to write (atomically)")
    sp.add_argument("--json", help="also write the report as JSON here")
    sp.add_argument("--resume", action="store_true", help="continue from OUTPUT.progress after an interruption")
    sp.add_argument("--judge", **_choice(Judge), help="meet a latency budget in the chip compiler's own terms: "
                    "Vela (Ethos-U profiles, the ethos-u extra) judges magnitude-pruned candidates before training "
                    "and sets the budget our cost model must meet")
    sp.add_argument("--distributed", action="store_true", help="run under torchrun (DDP, gloo backend)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=_cmd_prune)

    se = sub.add_parser("export", help="checkpoint -> verified ONNX (float or int8 QDQ), or an Ethos-U program; "
                        "and a report")
    se.add_argument("checkpoint", help="a checkpoint written by 'npu-compress prune'")
    se.add_argument("-o", "--output", required=True, help="the .onnx (or .pte) to write (atomically, only if verified)")
    se.add_argument("--target", default=Target.ONNX, **_choice(Target),
                    help="onnx (default) | ethos-u: ExecuTorch program compiled by Arm Vela (extra: .[ethos-u])")
    se.add_argument("--precision", **_choice(Precision),
                    help="fp32 | int8 (QDQ); default: the profile's compute.dtype (an int8 chip gets int8)")
    se.add_argument("--data", help="'digits' or an .npz: int8 calibration (training split) and checks on its test "
                    "split; without it int8 is calibrated and checked on random inputs only")
    se.add_argument("--calibration", type=int, default=256, help="int8: calibration samples (default 256)")
    se.add_argument("--calibrate", default=CalibrationMethod.MINMAX, **_choice(CalibrationMethod),
                    help="int8: how activation ranges are chosen (default minmax)")
    se.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                    help=f"int8: least top-1 agreement with the float model, 0..1 (default {DEFAULT_MIN_AGREEMENT})")
    se.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                    help=f"int8: most accuracy points lost vs float (default {DEFAULT_MAX_DROP:g})")
    se.add_argument("--verify-samples", type=int, help="int8: test samples to check (default: the whole test split)")
    se.add_argument("--require-npu", action="store_true", help="ethos-u: fail if any operator is left on the CPU")
    se.add_argument("--json", help="also write the report as JSON here")
    se.add_argument("--no-verify", action="store_true", help="skip the onnxruntime / int8 checks")
    se.add_argument("--tolerance", type=_non_negative_float, default=1e-4,
                    help="float check: max abs error allowed, >= 0 (default 1e-4)")
    se.add_argument("--opset", type=int, default=17)
    se.set_defaults(func=_cmd_export)

    sd = sub.add_parser("demo", help="the whole path on bundled data: train, prune, fine-tune, export, verify")
    sd.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile (default {DEFAULT_PROFILE})")
    sd.add_argument("--budget", default="latency=50%", help="budget (default latency=50%%)")
    sd.add_argument("--epochs", default="3,4,2", type=_prune_epochs, help="warm-up,mask,fine-tune epochs "
                    "(default 3,4,2)")
    sd.add_argument("--output-dir", default="demo_out", help="where the checkpoint and ONNX go (default demo_out)")
    sd.add_argument("--no-progress", action="store_true", help="no progress bars")
    sd.set_defaults(func=_cmd_demo)

    sv = sub.add_parser("convert-checkpoint", help="rewrite a trusted checkpoint that holds pickled Python objects "
                        "(older npu_compress) in the safe format")
    sv.add_argument("old", help="the checkpoint to convert; it is unpickled, which runs any code it holds")
    sv.add_argument("new", help="the checkpoint to write (atomically; not OLD itself)")
    sv.add_argument("--trust", action="store_true", help="required: you trust OLD (converting runs its code)")
    sv.set_defaults(func=_cmd_convert)
    return p


def _ours_or_errors(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] == "npu_compress" or record.levelno >= logging.ERROR


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: unwinds like Ctrl-C, so open writes delete their temp files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM / SIGHUP raise :class:`Terminated` while the command runs (main thread only)."""
    wanted = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        old = {s: signal.signal(s, _terminate) for s in wanted}
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _one_line(text: object) -> str:
    """An error message on one line (some carry a report over several)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()] or ["(no message)"]
    return "".join(line if i == 0 else (" " if lines[i - 1].endswith(":") else "; ") + line
                   for i, line in enumerate(lines))


def _say(line: str) -> None:
    """One line on stderr in one write: print() writes the text and its newline separately (stderr is
    write-through), so ranks under torchrun sharing one pipe would splice their lines together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        _say(str(e))
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:  # third-party import-time chatter (torchao, onnxruntime.quantization) only with -v
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ours_or_errors)
    logging.getLogger("npu_compress.modelspec").setLevel(logging.INFO)  # always say which user code is imported
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with _signals_unwind():
            return func(args)
    except NpuCompressError as e:
        if args.debug:
            traceback.print_exc()
        _say(f"npu-compress: error: {_one_line(e)}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("npu-compress: interrupted")
        return 128 + signal.SIGINT
    except Terminated as e:
        _say(f"npu-compress: terminated by {signal.Signals(e.signum).name}")
        return 128 + e.signum
    except Exception as e:  # noqa: BLE001 - the top-level guard: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (re-run with --debug for the traceback)"
        _say(f"npu-compress: error: {type(e).__name__}: {_one_line(e)}{hint}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
