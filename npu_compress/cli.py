"""``npu-compress``: a thin command line over the library's verbs.

Every bad input ends as one line on stderr and exit code 2; nothing is half-written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from . import __version__
from .errors import NpuCompressError
from .hardware import DEFAULT_PROFILE, estimate, list_profiles, load_profile

EXIT_BAD_INPUT = 2
DEMO_MODEL = "digits-cnn"


def _cmd_profiles(args: argparse.Namespace) -> int:
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


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from . import models

    profile = load_profile(args.profile)
    model = models.create(DEMO_MODEL)
    report = estimate(model, models.example_input(DEMO_MODEL), profile)
    print(f"npu-compress {__version__} demo: cost of the built-in '{DEMO_MODEL}' model on profile "
          f"'{profile.name}' (torch {torch.__version__})\n")
    print(report.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npu-compress", description="Prune PyTorch models to an NPU's latency or "
                                "memory budget and export verified ONNX.")
    p.add_argument("--version", action="version", version=f"npu-compress {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("profiles", help="list the shipped hardware profiles, or show one")
    sp.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    sp.add_argument("name", nargs="?", help="profile name or path to a .toml (for 'show')")
    sp.set_defaults(func=_cmd_profiles)

    sc = sub.add_parser("cost", help="per-layer latency/memory table of a model on a profile")
    sc.add_argument("--model", required=True, help="zoo name, package.module:factory, file.py:factory, or .pt2")
    sc.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile name or .toml path (default {DEFAULT_PROFILE})")
    sc.add_argument("--input-shape", help="example input shape, e.g. 1,3,32,32 (when the model has no default)")
    sc.add_argument("--json", action="store_true", help="print the report as JSON")
    sc.add_argument("--all", action="store_true", help="also list layers fused into their producer")
    sc.set_defaults(func=_cmd_cost)

    sd = sub.add_parser("demo", help="run the built-in demo")
    sd.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile (default {DEFAULT_PROFILE})")
    sd.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except NpuCompressError as e:
        print(f"npu-compress: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("npu-compress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
