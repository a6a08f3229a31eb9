"""``export_ethos_u``: a pruned model -> an ExecuTorch program for Arm Ethos-U, compiled by Arm's Vela.

The official path (ExecuTorch's Arm backend, optional extra ``pip install -e '.[ethos-u]'``):

    float model --torch.export--> PT2E + EthosUQuantizer (calibrated on the training split)
      --convert--> int8 torch model (checked against the float one: top-1 agreement, accuracy)
      --EthosUPartitioner--> TOSA --Vela--> command stream in a .pte (written atomically)

The accelerator, system configuration and memory mode come from the profile's ``[toolchain]``.
The report puts Vela's own figures (cycles per operator and in total, SRAM and flash used,
operators left on the CPU) beside our cost model's prediction.

    report = export_ethos_u("resnet20.ckpt", "resnet20.pte", data="cifar10.npz")
    report.vela.total_cycles, report.vela_latency_s, report.predicted_latency_s, report.cpu_operators
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Dataset
from ..errors import NpuCompressError, VerificationError
from ..graph import remove_pruned
from ..hardware.cost import CostReport, estimate
from ..graph_cost import weight_formats
from ..hardware.profile import HardwareProfile
from ..io import check_output, write_atomic
from .agreement import AgreementResult, IntGate, check_agreement
from .job import RANDOM_CHECK_SAMPLES, as_dataset, job_from, random_inputs
from .quantize import Calibration
from .vela_report import VelaReport, merge_reports, read_vela_output

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install -e '.[ethos-u]' (ExecuTorch's Arm backend with Vela and tosa-tools)"
# ExecuTorch ops that stay outside the delegate by design: the float <-> int8 conversions of the
# program's input and output, and memory planning.
_IO_OPS = ("quantize_per_tensor", "dequantize_per_tensor", "alloc", "executorch_call_delegate", "getitem")


class EthosUError(NpuCompressError, RuntimeError):
    """The Ethos-U toolchain is missing, or could not compile the model."""


def require_executorch() -> None:
    """Raise a one-line error saying how to install the extra when ExecuTorch's Arm backend is missing."""
    for module in ("executorch", "ethosu", "tosa_serializer"):
        if importlib.util.find_spec(module) is None:
            raise EthosUError(f"--target ethos-u needs the optional extra: {INSTALL_HINT}; '{module}' is not installed")
    # torchao's pytree registrations (at import) log deprecations through torch's own handler
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@dataclass
class EthosUReport:
    path: str
    profile: str
    structure: str
    file_bytes: int
    vela: VelaReport
    predicted: CostReport  # our cost model, for the model that was compiled
    clock_hz: float  # the profile's clock, at which Vela's cycles are turned into latency
    check: AgreementResult | None  # int8 torch model vs the float model
    calibrated_on: str
    delegate_outside_ops: list[str] = field(default_factory=list)  # compute ops ExecuTorch kept off the delegate

    @property
    def vela_latency_s(self) -> float:
        return self.vela.latency_s(self.clock_hz)

    @property
    def predicted_latency_s(self) -> float:
        return self.predicted.latency_s

    @property
    def latency_ratio(self) -> float:
        """Our predicted latency / Vela's (1.0: the cost model agrees with the compiler)."""
        return self.predicted_latency_s / self.vela_latency_s

    @property
    def cpu_operators(self) -> list[str]:
        return self.delegate_outside_ops + self.vela.cpu_operators

    def to_dict(self) -> dict[str, Any]:
        c = self.check
        return {"path": self.path, "profile": self.profile, "structure": self.structure,
                "file_bytes": self.file_bytes, "target": "ethos-u", "precision": "int8",
                "vela": self.vela.to_dict(), "clock_hz": self.clock_hz, "vela_latency_s": self.vela_latency_s,
                "predicted_latency_s": self.predicted_latency_s, "predicted_memory_bytes": self.predicted.memory_bytes,
                "latency_ratio_predicted_over_vela": self.latency_ratio, "cpu_operators": self.cpu_operators,
                "calibrated_on": self.calibrated_on,
                "int8": None if c is None else {**c.__dict__, "drop_points": c.drop, "passed": c.passed}}

    def table(self) -> str:
        v = self.vela
        rows = [f"compiled {self.structure} int8 model for {v.accelerator} ({v.system_config}, {v.memory_mode}) -> "
                f"{self.path} ({self.file_bytes:,} bytes)",
                f"{'on ' + self.profile:<28}{'ours':>14}{'Vela':>14}{'ours/Vela':>11}",
                f"{'latency (ms)':<28}{self.predicted_latency_s * 1e3:>14.4f}{self.vela_latency_s * 1e3:>14.4f}"
                f"{self.latency_ratio:>11.3f}",
                f"{'weight bytes':<28}{self.predicted.memory_bytes:>14,}{v.encoded_weight_bytes:>14,}"
                f"{self.predicted.memory_bytes / max(v.encoded_weight_bytes, 1):>11.3f}",
                f"Vela: {v.total_cycles:,} cycles ({v.npu_cycles:,} NPU compute) at {self.clock_hz / 1e6:g} MHz; "
                f"SRAM {v.sram_bytes:,} bytes, flash {v.flash_bytes:,} bytes; {len(v.operators)} operators",
                "operators on the CPU: " + (", ".join(self.cpu_operators) if self.cpu_operators else "0 (full offload)"),
                f"int8 calibration: {self.calibrated_on}"]
        c = self.check
        rows.append("int8 check: skipped" if c is None else
                    f"int8 check (quantized torch model vs float): {c.describe()}: {'passed' if c.passed else 'FAILED'}")
        rows.append("slowest operators (Vela cycles): " + ", ".join(
            f"{o.original} {o.cycles:,}" for o in sorted(v.operators, key=lambda o: -o.cycles)[:5]))
        return "\n".join(rows)


def export_ethos_u(model_or_checkpoint: nn.Module | str | Path, path: str | Path, example_inputs: Any = None,
                   profile: str | HardwareProfile | None = None, *, data: Dataset | str | Path | None = None,
                   calibration: Calibration = Calibration(), gate: IntGate = IntGate(), verify: bool = True,
                   require_npu: bool = False, result: Any = None) -> EthosUReport:
    """Quantize with ExecuTorch's Ethos-U quantizer, lower through TOSA to Vela, write the ``.pte``.

    Nothing is written when the int8 check fails, or with ``require_npu`` when any operator is left
    on the CPU. ``data``: calibration from its training split, the check on its test split.
    ``result``: the ``PruneResult`` of a model a pruner finalized (see :func:`export_onnx`).
    """
    require_executorch()
    # before minutes of compiling, not after; never over the checkpoint it reads
    check_output(path, [model_or_checkpoint] if isinstance(model_or_checkpoint, (str, Path)) else [])
    job = job_from(model_or_checkpoint, example_inputs, profile, result=result)
    tool = job.profile.toolchain
    if not tool.vela_accelerator:
        raise EthosUError(f"profile '{job.profile.name}' names no Ethos-U accelerator ([toolchain] vela_accelerator); "
                          "prune on an ethos-u* profile, or add that section to your profile")
    dataset = as_dataset(data)
    was_training = job.masked.training
    job.masked.eval()
    try:
        model = remove_pruned(job.masked, job.graph, job.keep) if job.channel else \
            copy.deepcopy(job.masked)
        model.eval()
        quantized, calibrated_on = _quantize(model, job.example, tool, dataset, calibration)
        check = _check(quantized, job.masked, job.example, dataset, gate, path) if verify else None
        program, vela, outside = _lower(quantized, job.example, tool)
    finally:
        job.masked.train(was_training)
    if outside or vela.cpu_operators:
        names = outside + vela.cpu_operators
        if require_npu:
            raise EthosUError(f"{len(names)} operator(s) would run on the CPU, not the NPU: {', '.join(names)}; "
                              "nothing written (drop --require-npu to accept)")
        log.warning("%d operator(s) run on the CPU: %s", len(names), ", ".join(names))
    write_atomic(path, lambda tmp: tmp.write_bytes(program))
    formats = weight_formats(job.graph, job.keep) if job.packed_format is not None else None
    predicted = estimate(model if job.channel else job.masked, job.example, job.profile,
                         formats=formats)
    return EthosUReport(str(path), job.profile.name, job.label, Path(path).stat().st_size, vela, predicted,
                        job.profile.compute.clock_hz, check, calibrated_on, outside)


def vela_estimate(model: nn.Module, example: torch.Tensor, tool, samples: int = 4) -> VelaReport:
    """Vela's report for ``model`` (eval) compiled for ``tool`` (a profile's ``[toolchain]``), calibrated on
    ``samples`` random inputs: cycles depend on shapes, not values (Vela's weight compression aside)."""
    require_executorch()
    quantized, _ = _quantize(model.eval(), example, tool, None, Calibration(samples=samples), quiet=True)
    return _lower(quantized, example, tool)[1]


def _compile_spec(tool, intermediates: str | None = None):
    from executorch.backends.arm.ethosu import EthosUCompileSpec

    spec = EthosUCompileSpec(tool.vela_accelerator, system_config=tool.vela_system_config or None,
                             memory_mode=tool.vela_memory_mode or None, extra_flags=["--verbose-performance"])
    if intermediates is not None:
        spec.dump_intermediate_artifacts_to(intermediates)
    return spec


def _quantize(model: nn.Module, example: torch.Tensor, tool, data: Dataset | None,
              calibration: Calibration, quiet: bool = False) -> tuple[torch.fx.GraphModule, str]:
    """PT2E with the Ethos-U quantizer (int8, per-channel weights), calibrated one sample at a time."""
    from executorch.backends.arm.quantizer import EthosUQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = EthosUQuantizer(_compile_spec(tool))
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _quiet():
        # check_guards=False: with torch 2.13 a guard call_module breaks ExecuTorch's passes
        graph = torch.export.export(model, (example,)).module(check_guards=False)
        prepared = prepare_pt2e(graph, quantizer)
        if data is not None:
            x = data.x_train[:calibration.samples]
            where = f"training split of '{data.name}' ({len(x)} samples, Ethos-U quantizer min/max observers)"
        else:
            if not quiet:
                log.warning("Ethos-U export without data: calibrating on random inputs; pass data (--data)")
            x = random_inputs(example, calibration.samples, 1)
            where = f"random inputs ({len(x)} samples): no data given"
        with torch.no_grad():
            for i in range(len(x)):
                prepared(x[i:i + 1])
        return convert_pt2e(prepared), where


def _check(quantized: torch.fx.GraphModule, reference: nn.Module, example: torch.Tensor, data: Dataset | None,
           gate: IntGate, path: str | Path) -> AgreementResult:
    """The int8 torch model (q/dq simulation of what the NPU computes) against the float model."""
    if data is not None:
        n = gate.samples or len(data.x_test)
        x, y = data.x_test[:n], data.y_test[:n]
    else:
        x, y = random_inputs(example, gate.samples or RANDOM_CHECK_SAMPLES, 3), None

    batched = _runs_batched(quantized, x[:4])

    def run(xb: torch.Tensor):
        with torch.no_grad():
            if batched:
                return _first(quantized(xb)).numpy()
            return torch.cat([_first(quantized(xb[i:i + 1])) for i in range(len(xb))]).numpy()

    result = check_agreement(run, reference, x, y, gate)
    if not result.passed:
        raise VerificationError(result.failure(f"'{path}' (Ethos-U int8)") + "; nothing written")
    return result


def _runs_batched(quantized: torch.fx.GraphModule, x: torch.Tensor) -> bool:
    """The graph was exported at batch 1; many still run batched (4x faster). Use that only where a
    batch gives exactly what one sample at a time gives."""
    with torch.no_grad():
        one = torch.cat([_first(quantized(x[i:i + 1])) for i in range(len(x))])
        try:
            many = _first(quantized(x))
        except Exception:  # a shape baked in at batch 1
            return False
    return many.shape == one.shape and bool(torch.equal(many, one))


def _first(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _lower(quantized: torch.fx.GraphModule, example: torch.Tensor, tool) -> tuple[bytes, VelaReport, list[str]]:
    from executorch.backends.arm.ethosu import EthosUPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    with tempfile.TemporaryDirectory(prefix="npu_compress_vela_") as tmp:
        spec = _compile_spec(tool, tmp)
        vela_out = io.StringIO()
        reports: list[VelaReport] = []
        try:
            with _quiet(), contextlib.redirect_stdout(vela_out), _each_partition(reports):
                exported = torch.export.export(quantized, (example,))
                edge = to_edge_transform_and_lower(exported, partitioner=[EthosUPartitioner(spec)],
                                                   compile_config=EdgeCompileConfig(_check_ir_validity=False))
                program = edge.to_executorch()
        except Exception as e:  # ExecuTorch and Vela raise plain exceptions for what they cannot compile
            raise EthosUError(f"ExecuTorch / Vela could not compile the model for {tool.vela_accelerator}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        log.debug("Vela output:\n%s", vela_out.getvalue())
        outside = _outside_delegate(edge.exported_program().graph_module)
        return program.buffer, merge_reports(reports, outside), outside


@contextlib.contextmanager
def _each_partition(reports: list[VelaReport]):
    """Read Vela's report after each of its compiles: ExecuTorch compiles every delegated subgraph
    separately into the same folder, so reading it once at the end would see the last partition only."""
    from executorch.backends.arm.ethosu import backend

    original = backend.vela_compile

    def compile_and_read(*args, **kwargs):
        result = original(*args, **kwargs)
        folder = kwargs.get("intermediate_path")
        if folder is None:
            raise EthosUError("Vela ran without an intermediate folder: its report cannot be read")
        reports.append(read_vela_output(Path(folder) / "output"))
        return result

    backend.vela_compile = compile_and_read
    try:
        yield
    finally:
        backend.vela_compile = original


def _outside_delegate(graph_module: torch.fx.GraphModule) -> list[str]:
    """Compute ops the partitioner left in the ExecuTorch graph (they run on the CPU)."""
    names = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(getattr(node.target, "__name__", node.target))
        if not any(k in target for k in _IO_OPS):
            names.append(f"{target} ({node.name})")
    return names


@contextlib.contextmanager
def _quiet():
    """ExecuTorch and torchao warn about deprecations the user cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
