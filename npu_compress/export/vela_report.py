"""Arm Vela's own performance figures, read from the CSV files it writes beside its output.

Vela (``ethos-u-vela``) writes ``<name>_summary_<system config>.csv`` (one row: cycles, SRAM and
flash used, bandwidth) and, with ``--verbose-performance``, ``<name>_per-layer.csv`` (one row per
operator: target NPU/CPU, cycles, MACs). These are the compiler's estimate for the chip, the
ground truth our cost model is judged against.

    >>> report = read_vela_output(Path("intermediates/output"))
    >>> report.total_cycles, report.latency_s(500e6), report.cpu_operators
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NpuCompressError

KIB = 1024


class VelaOutputError(NpuCompressError, RuntimeError):
    """Vela's report files are missing or not in the expected form."""


@dataclass(frozen=True)
class VelaOperator:
    name: str  # the TOSA tensor Vela names the operator by
    original: str  # operator type before Vela's rewrites (Conv2D, DepthwiseConv2D, ...)
    target: str  # "NPU" or "CPU"
    cycles: int  # Vela's op cycles: the larger of compute and each memory's access cycles
    macs: int
    npu_cycles: int = 0  # the compute part alone (column "NPU")


@dataclass(frozen=True)
class VelaReport:
    accelerator: str  # e.g. Ethos_U55_128
    system_config: str
    memory_mode: str
    clock_hz: float  # the system config's core clock, at which Vela's inference_time is stated
    total_cycles: int  # cycles_total: NPU compute and memory access, as Vela schedules them
    npu_cycles: int  # cycles_npu: the compute part
    sram_bytes: int  # SRAM used (tensor arena)
    flash_bytes: int  # off-chip flash used (encoded weights, command stream)
    encoded_weight_bytes: int  # weights after Vela's lossless compression
    original_weight_bytes: int
    operators: tuple[VelaOperator, ...] = field(default_factory=tuple)
    partitions: int = 1  # Vela compiles, one per delegated subgraph (merge_reports adds them up)
    # compute ops ExecuTorch kept outside every delegate: they run on the host CPU and Vela never sees
    # them, so its cycles cover the NPU partitions only
    host_operators: tuple[str, ...] = ()

    @property
    def fully_delegated(self) -> bool:
        """Every compute op runs on the NPU: Vela's figures are the whole model's."""
        return not self.host_operators and not self.cpu_operators

    @property
    def cpu_operators(self) -> list[str]:
        """Operators Vela left to the host CPU (a full offload: none)."""
        return [f"{o.original} ({o.name})" for o in self.operators if o.target != "NPU"]

    def latency_s(self, clock_hz: float | None = None) -> float:
        """Vela's cycles at ``clock_hz`` (default: the system config's clock)."""
        return self.total_cycles / (clock_hz or self.clock_hz)

    def to_dict(self) -> dict:
        return {"accelerator": self.accelerator, "system_config": self.system_config,
                "memory_mode": self.memory_mode, "clock_hz": self.clock_hz, "total_cycles": self.total_cycles,
                "npu_cycles": self.npu_cycles, "sram_bytes": self.sram_bytes, "flash_bytes": self.flash_bytes,
                "encoded_weight_bytes": self.encoded_weight_bytes, "original_weight_bytes": self.original_weight_bytes,
                "cpu_operators": self.cpu_operators, "partitions": self.partitions,
                "host_operators": list(self.host_operators),
                "operators": [{"name": o.name, "original": o.original, "target": o.target, "cycles": o.cycles,
                               "npu_cycles": o.npu_cycles, "macs": o.macs} for o in self.operators]}


def merge_reports(reports: list[VelaReport], host_operators: list[str] | tuple[str, ...] = ()) -> VelaReport:
    """One report for a program ExecuTorch split into several delegated partitions (each compiled by
    Vela on its own): cycles, flash and weights add up, SRAM is the largest arena (partitions run one
    after another), operators in order."""
    if not reports:
        raise VelaOutputError("Vela compiled no partition (nothing was delegated to the NPU)")
    first = reports[0]
    return VelaReport(first.accelerator, first.system_config, first.memory_mode, first.clock_hz,
                      sum(r.total_cycles for r in reports), sum(r.npu_cycles for r in reports),
                      max(r.sram_bytes for r in reports), sum(r.flash_bytes for r in reports),
                      sum(r.encoded_weight_bytes for r in reports), sum(r.original_weight_bytes for r in reports),
                      tuple(o for r in reports for o in r.operators), len(reports), tuple(host_operators))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _int(row: dict[str, str], key: str, where: Path) -> int:
    try:
        return int(round(float(row[key])))
    except (KeyError, TypeError, ValueError):
        raise VelaOutputError(f"{where}: no numeric column '{key}' (Vela's output format changed?)") from None


def read_vela_output(folder: Path) -> VelaReport:
    """Parse Vela's summary and per-layer CSV files in ``folder``; fail if either has no figures."""
    summaries = sorted(folder.glob("*_summary_*.csv"))
    layers = sorted(folder.glob("*_per-layer.csv"))
    if not summaries or not layers:
        raise VelaOutputError(f"{folder}: Vela wrote no summary / per-layer CSV (was --verbose-performance "
                              f"passed?); found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}")
    summary_rows = _rows(summaries[0])
    if not summary_rows:
        raise VelaOutputError(f"{summaries[0]}: empty summary")
    s = summary_rows[0]
    operators = tuple(VelaOperator(r.get("Name", ""), r.get("Original Operator", ""), r.get("Target", ""),
                                   _int(r, "Op Cycles", layers[0]), _int(r, "MAC Count", layers[0]),
                                   _int(r, "NPU", layers[0]) if r.get("NPU") else 0)
                      for r in _rows(layers[0]))
    if not operators:
        raise VelaOutputError(f"{layers[0]}: Vela reported no operators")
    total = _int(s, "cycles_total", summaries[0])
    if total <= 0:
        raise VelaOutputError(f"{summaries[0]}: cycles_total is {total}")
    return VelaReport(accelerator=s.get("accelerator_configuration", ""), system_config=s.get("system_config", ""),
                      memory_mode=s.get("memory_mode", ""), clock_hz=float(s.get("core_clock") or 0) or 1.0,
                      total_cycles=total, npu_cycles=_int(s, "cycles_npu", summaries[0]),
                      sram_bytes=round(float(s["sram_memory_used"]) * KIB),
                      flash_bytes=round(float(s["off_chip_flash_memory_used"]) * KIB),
                      encoded_weight_bytes=_int(s, "total_npu_encoded_weights", summaries[0]),
                      original_weight_bytes=_int(s, "total_original_weights", summaries[0]), operators=operators)
