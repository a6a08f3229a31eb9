"""Fit an Ethos-U profile's ``[efficiency]`` to Arm Vela's own per-operator cycle estimates.

Vela (``ethos-u-vela``, the Ethos-U compiler) estimates the cycles of every operator it schedules.
Small single-operator probes (convs, depthwise convs, fully connected, residual adds, pooling, over
a grid of channel counts and spatial sizes) are quantized and compiled through the same ExecuTorch
path ``export --target ethos-u`` uses; each Vela operator is paired with the layer our cost model
prices (in order, skipping the layout transposes ExecuTorch adds at the program's edges), and per
op class a least-squares fit (relative error, non-negative terms) of Vela's *compute* cycles
(column ``NPU``) to the cost model's roofline::

    vela_npu_cycles ~ max(compute_scale * ideal_cycles, elem_cycles * output_elements) + overhead_cycles

gives the class's efficiency (``ideal_cycles``: tile-padded MACs / macs_per_cycle, or vector passes /
vector_ops_per_cycle). Memory stays as the profile states it (flash bandwidth and SRAM from Vela's
own system configuration). Vela is the vendor's estimator, not silicon: the profile says so.

    profile, report = calibrate_vela(load_profile("ethos-u55-128"))
    print(report.table())
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .cost import op_class, trace_layers
from .efficiency_fit import ClassFit, efficiency_of, fit_classes, fits_table, ideal_cycles, roofline_cycles
from .ops import canonical
from .profile import OP_CLASSES, HardwareProfile

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
# layout changes ExecuTorch inserts at the program's inputs / outputs, and the reshapes around them
_EDGE_OPS = ("Transpose", "Reshape")
_MOVED_BY_MEMORY = ("permute", "cat")  # ops fitted to Vela's total cycles, not its compute cycles
TILE_IN_CANDIDATES = (8, 16, 32)  # input-channel granules the compiler may charge (Ethos-U IFM blocks)


class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups)

    def forward(self, x):  # (1, C, H, W)
        return torch.relu(self.conv(x))


class _Residual(nn.Module):
    """conv -> relu, plus the input: the residual add of a ResNet block."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return torch.relu(self.conv(x)) + x


class _Pooled(nn.Module):
    def __init__(self, c: int, pool: str):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))


class _Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):  # (1, n_in)
        return self.fc(x)


class _Tokens(nn.Module):
    """A transformer's token projection: a linear over (1, N, C), a ``gemm`` (Vela: a 1x1 Conv2D)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, x):  # (1, N, C)
        return self.fc(x)


class _Attention(nn.Module):
    """Scaled dot-product attention over (1, N, heads * d), heads split and merged as timm does."""

    def __init__(self, heads: int, d: int):
        super().__init__()
        self.heads, self.d = heads, d

    def forward(self, x):  # (1, N, heads * d)
        b, n, c = x.shape
        q = x.view(b, n, self.heads, self.d).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(b, n, c)


class _Shuffled(nn.Module):
    """1x1 conv -> ReLU, then (``shuffle``) ShuffleNet's channel shuffle: view, transpose, reshape."""

    def __init__(self, c: int, shuffle: bool = True):
        super().__init__()
        self.conv, self.shuffle = nn.Conv2d(c, c, 1), shuffle

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if not self.shuffle:
            return y
        b, c, h, w = y.shape
        return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _SplitCat(nn.Module):
    """ShuffleNet's unit without the shuffle: half the channels pass, half go through a 1x1 conv, and
    a concat joins them. The passed half is no op's output: the concat copies both (Vela: Concats)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c // 2, c // 2, 1)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat((a, torch.relu(self.conv(b))), dim=1)


class _TokenNorm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):  # (1, N, C)
        return self.norm(x)


@dataclass(frozen=True)
class Probe:
    """One probe model. ``summed``: Vela lowers its one priced layer into several operators (attention:
    two MatMuls and a decomposed softmax; LayerNorm: reductions, rescales, a table); their cycles,
    with the layout transposes around them, which our cost model leaves to the layer, are summed."""

    label: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    summed: bool = False
    # the same model without the op measured: Vela's cycles of the op are the difference (a layout
    # permutation becomes several Transposes mixed with the program's own edge transposes)
    reference: Callable[[], nn.Module] | None = None
    # our one layer of this op family paired with the sum of Vela's operators of these types (a copied
    # concat: one Concat per input)
    only: tuple[str, str] | None = None  # (our op family, Vela's operator type)


def probes(quick: bool = False) -> list[Probe]:
    """The calibration grid: every op class the Ethos-U profiles price, over channels and sizes."""
    chans = (8, 16, 32, 64) if quick else (8, 16, 32, 64, 128)
    sizes = (8, 16) if quick else (8, 16, 32)
    out: list[Probe] = []
    for c, hw in itertools.product(chans, sizes):
        out.append(Probe(f"conv3x3 {c}->{c} @{hw}", lambda c=c: _Conv(c, c, 3), (1, c, hw, hw)))
        out.append(Probe(f"dwconv3x3 {c} @{hw}", lambda c=c: _Conv(c, c, 3, groups=c), (1, c, hw, hw)))
        out.append(Probe(f"residual 1x1 {c} @{hw}", lambda c=c: _Residual(c), (1, c, hw, hw)))
    for c, hw in itertools.product(chans, sizes):
        out.append(Probe(f"conv1x1 {c}->{2 * c} @{hw}", lambda c=c: _Conv(c, 2 * c, 1), (1, c, hw, hw)))
        out.append(Probe(f"maxpool {c} @{hw}", lambda c=c: _Pooled(c, "max"), (1, c, hw, hw)))
        out.append(Probe(f"avgpool {c} @{hw}", lambda c=c: _Pooled(c, "avg"), (1, c, hw, hw)))
    for c_in, c_out in ((3, 16), (3, 32), (16, 64), (64, 16)):
        out.append(Probe(f"conv3x3 {c_in}->{c_out} @32", lambda a=c_in, b=c_out: _Conv(a, b, 3), (1, c_in, 32, 32)))
    for c in (24, 40, 48, 96):  # channel counts pruning produces: not powers of two
        out.append(Probe(f"conv3x3 {c}->{c} @8", lambda c=c: _Conv(c, c, 3), (1, c, 8, 8)))
        out.append(Probe(f"conv3x3 {c}->{c} @16", lambda c=c: _Conv(c, c, 3), (1, c, 16, 16)))
        out.append(Probe(f"conv3x3 {c}->32 @16", lambda c=c: _Conv(c, 32, 3), (1, c, 16, 16)))
        out.append(Probe(f"conv1x1 {c}->{2 * c} @16", lambda c=c: _Conv(c, 2 * c, 1), (1, c, 16, 16)))
    for n_in, n_out in ((64, 10), (128, 128), (256, 64), (512, 256)):
        out.append(Probe(f"linear {n_in}->{n_out}", lambda a=n_in, b=n_out: _Linear(a, b), (1, n_in)))
    out += transformer_probes(quick)
    for c, hw in ((32, 16), (48, 12), (96, 6), (192, 3), (64, 8), (24, 16)) if not quick else ((32, 16), (96, 6)):
        out.append(Probe(f"split concat {c} @{hw}", lambda c=c: _SplitCat(c), (1, c, hw, hw), only=("cat", "Concat")))
    for c, hw in ((16, 8), (16, 16), (24, 16), (32, 16), (48, 8), (64, 8), (96, 8)) if not quick else ((16, 16), (64, 8)):
        out.append(Probe(f"channel shuffle {c} @{hw}", lambda c=c: _Shuffled(c), (1, c, hw, hw),
                         reference=lambda c=c: _Shuffled(c, shuffle=False)))
    return out


def transformer_probes(quick: bool = False) -> list[Probe]:
    """Token linears (``gemm``), attention and LayerNorm over (1, N, C): what ViT-style models run."""
    tokens = (16, 64) if quick else (16, 49, 64, 196)
    out = []
    for n, (a, b) in itertools.product(tokens, ((64, 64), (192, 192), (192, 768), (768, 192), (128, 256))):
        out.append(Probe(f"tokens {n}x{a}->{b}", lambda a=a, b=b: _Tokens(a, b), (1, n, a)))
    for heads, n, d in itertools.product((1, 3, 4), tokens[:3], (32, 64)):
        out.append(Probe(f"attention {heads}x{n}x{d}", lambda h=heads, d=d: _Attention(h, d), (1, n, heads * d),
                         summed=True))
    for n, c in itertools.product(tokens, (64, 192)):
        out.append(Probe(f"layernorm {n}x{c}", lambda c=c: _TokenNorm(c), (1, n, c), summed=True))
    return out


@dataclass(frozen=True)
class Sample:
    """One Vela operator paired with the layer we price."""

    probe: str
    op_class: str
    vela_op: str
    ideal_cycles: float  # at the profile's own tiling
    out_elems: int
    vela_npu_cycles: int
    vela_cycles: int
    ideal_by_tile_in: tuple[tuple[int, float], ...] = ()  # ideal cycles if tile_in were each candidate
    op: str = ""  # our layer's op family (per-op fits: ``permute``)
    # a summed sample's layout permutations, (ideal cycles, elements) each: our model prices them
    # as ``permute``, so the fit takes their cycles out of Vela's sum (see :func:`fit`)
    moved: tuple[tuple[float, int], ...] = ()
    less: float = 0.0  # cycles taken out of Vela's: the permutations priced apart

    def ideal(self, tile_in: int) -> float:
        return dict(self.ideal_by_tile_in).get(tile_in, self.ideal_cycles)

    @property
    def measured_cycles(self) -> float:
        """What the fit matches: Vela's compute cycles; for data movement (a permutation, a copied
        concat: their cost is their memory traffic, which no other term prices) its total cycles."""
        return float(self.vela_cycles if self.op in _MOVED_BY_MEMORY else self.vela_npu_cycles) - self.less


@dataclass
class VelaCalibration:
    accelerator: str
    vela_version: str
    samples: list[Sample]
    fits: list[ClassFit]
    skipped: list[str] = field(default_factory=list)  # probes whose operators could not be paired
    tile_in: int = 0  # the input-channel granule chosen
    tile_errors: dict[int, float] = field(default_factory=dict)  # mean relative error (%) per candidate

    def to_dict(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "vela_version": self.vela_version,
                "samples": [dataclasses.asdict(s) for s in self.samples],
                "fits": [{**dataclasses.asdict(f)} for f in self.fits], "skipped": self.skipped,
                "tile_in": self.tile_in, "tile_errors_pct": self.tile_errors}

    def table(self) -> str:
        rows = [f"Vela {self.vela_version} on {self.accelerator}: {len(self.samples)} operators",
                *fits_table(self.fits)]
        rows.append(f"tile_in {self.tile_in} (mean error by candidate: "
                    + ", ".join(f"{t}: {e:.1f}%" for t, e in self.tile_errors.items()) + ")")
        if self.skipped:
            rows.append("skipped: " + "; ".join(self.skipped))
        return "\n".join(rows)


def _sample(probe: Probe, spec, profile: HardwareProfile, vela_op: str, npu_cycles: int, cycles: int,
            moved: tuple[tuple[float, int], ...] = ()) -> Sample:
    """Our layer ``spec`` paired with Vela's cycles for it."""
    by_tile = tuple((t, ideal_cycles(spec, profile, t)) for t in TILE_IN_CANDIDATES)
    return Sample(probe.label, op_class(spec), vela_op, ideal_cycles(spec, profile), spec.out_elems, npu_cycles,
                  cycles, by_tile, canonical(spec.op), moved)


def _pair(probe: Probe, profile: HardwareProfile, operators, reference=None) -> list[Sample]:
    """Our costed layers and Vela's operators, in order; [] when they do not pair up one to one.
    With ``reference`` (Vela's operators of ``probe.reference``): the one layer the probe adds, paired
    with the cycles Vela adds."""
    model = probe.build().eval()
    layers = [s for s in trace_layers(model, (torch.zeros(probe.input_shape),)) if not s.fused]
    if reference is not None:
        base = {(s.op, s.in_shape) for s in trace_layers(probe.reference().eval(), (torch.zeros(probe.input_shape),))}
        added = [s for s in layers if (s.op, s.in_shape) not in base]
        npu = sum(o.npu_cycles for o in operators) - sum(o.npu_cycles for o in reference)
        if len(added) != 1 or npu <= 0:
            return []
        return [_sample(probe, added[0], profile, "Transpose", npu,
                        sum(o.cycles for o in operators) - sum(o.cycles for o in reference))]
    if probe.only is not None:
        ours = [s for s in layers if canonical(s.op) == probe.only[0]]
        theirs = [o for o in operators if o.original == probe.only[1]]
        if len(ours) != 1 or not theirs:
            return []
        return [_sample(probe, ours[0], profile, probe.only[1], sum(o.npu_cycles for o in theirs),
                        sum(o.cycles for o in theirs))]
    if probe.summed:
        priced = [s for s in layers if op_class(s) != "move"]
        if len(priced) != 1:
            return []
        moved = tuple((ideal_cycles(s, profile), s.out_elems) for s in layers if canonical(s.op) == "permute")
        return [_sample(probe, priced[0], profile, "+".join(dict.fromkeys(o.original for o in operators)),
                        sum(o.npu_cycles for o in operators), sum(o.cycles for o in operators), moved)]
    vela = [o for o in operators if o.original not in _EDGE_OPS and o.cycles > 0]
    if len(layers) != len(vela):
        return []
    return [_sample(probe, spec, profile, op.original, op.npu_cycles, op.cycles) for spec, op in zip(layers, vela)]


def fit(samples: list[Sample], profile: HardwareProfile, tile_in: int | None = None) -> list[ClassFit]:
    """Per op class: efficiency from the paired samples at ``tile_in`` (default: the profile's). Data
    movement per op only (``permute``; ``cat``, a concat that copies its inputs): the rest of ``move``
    stays free, and so does a concat Vela assembles in place (``[fusion] concat_in_place``). A summed
    sample (attention: Vela's operators of the whole probe) holds the head split and merge transposes
    too, which a model prices as ``permute`` layers of their own: their cycles by
    the ``permute`` fit are taken out of Vela's sum first, so no cycle is priced twice."""
    tile_in = tile_in or profile.tiling.tile_in
    moves = fit_classes(samples, profile.overhead.layer_cycles, tile_in, (), per_op=("move",))
    permute = next((f.efficiency for f in moves if f.op_class == "permute"), None)
    if permute is not None:
        samples = [dataclasses.replace(s, less=sum(float(roofline_cycles(permute, ideal, elems)) for ideal, elems in s.moved))
                   if s.moved else s for s in samples]
    classes = tuple(c for c in OP_CLASSES if c != "move")
    return fit_classes(samples, profile.overhead.layer_cycles, tile_in, classes) + moves


def best_tile_in(samples: list[Sample], profile: HardwareProfile) -> tuple[int, dict[int, float]]:
    """The input-channel granule under which the fitted classes explain Vela best (mean relative error
    over every operator), and that error for each candidate."""
    errors = {}
    for tile in TILE_IN_CANDIDATES:
        fits = fit(samples, profile, tile)
        errors[tile] = sum(f.mape_after * f.samples for f in fits) / max(sum(f.samples for f in fits), 1)
    return min(errors, key=errors.get), errors


def calibrate_vela(profile: HardwareProfile, quick: bool = False, progress: Progress | None = None,
                   grid: list[Probe] | None = None) -> tuple[HardwareProfile, VelaCalibration]:
    """Compile the probe grid (default :func:`probes`) with Vela for ``profile``'s ``[toolchain]``, fit
    ``[efficiency]``."""
    from importlib.metadata import version

    from ..errors import NpuCompressError
    from ..export.ethos_u import EthosUError, vela_estimate

    tool = profile.toolchain
    if not tool.vela_accelerator:
        raise NpuCompressError(f"profile '{profile.name}' names no Ethos-U accelerator ([toolchain] vela_accelerator)")
    grid = grid if grid is not None else probes(quick)
    samples: list[Sample] = []
    skipped: list[str] = []
    for i, probe in enumerate(grid):
        if progress:
            progress(i, len(grid), probe.label)
        try:
            report = vela_estimate(probe.build(), torch.zeros(probe.input_shape), tool)
            reference = None if probe.reference is None else \
                vela_estimate(probe.reference(), torch.zeros(probe.input_shape), tool).operators
        except EthosUError as e:
            skipped.append(f"{probe.label}: {e}")
            continue
        paired = _pair(probe, profile, report.operators, reference)
        if not paired:
            skipped.append(f"{probe.label}: Vela operators "
                           f"{[o.original for o in report.operators if o.original not in _EDGE_OPS]} do not pair "
                           "with our layers")
        samples += paired
    return _fitted(profile, tool.vela_accelerator, version("ethos-u-vela"), samples, skipped)


def _fitted(profile: HardwareProfile, accelerator: str, vela_version: str, samples: list[Sample],
            skipped: list[str]) -> tuple[HardwareProfile, VelaCalibration]:
    tile_in, tile_errors = best_tile_in(samples, profile)
    fits = fit(samples, profile, tile_in)
    calibration = VelaCalibration(accelerator, vela_version, samples, fits, skipped, tile_in, tile_errors)
    tiling = dataclasses.replace(profile.tiling, tile_in=tile_in)
    return dataclasses.replace(profile, efficiency=efficiency_of(fits), tiling=tiling), calibration


def refit_vela(profile: HardwareProfile, saved: Path) -> tuple[HardwareProfile, VelaCalibration]:
    """Fit ``[efficiency]`` again from the samples of an earlier calibration's ``--json`` report (no Vela
    compile: seconds, not minutes), e.g. after a change to the fit. The report must be of the
    profile's own accelerator."""
    from ..errors import NpuCompressError

    try:
        data = json.loads(saved.read_text(encoding="utf-8"))
        accelerator, vela_version = data["accelerator"], data["vela_version"]
        samples = [Sample(**{**row, "ideal_by_tile_in": tuple(tuple(t) for t in row.get("ideal_by_tile_in", ())),
                             "moved": tuple(tuple(m) for m in row.get("moved", ())), "less": 0.0})
                   for row in data["samples"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NpuCompressError(f"--refit {saved}: not a Vela calibration report written by "
                               f"'profiles calibrate --vela --json' ({type(e).__name__}: {e})") from None
    if accelerator != profile.toolchain.vela_accelerator:
        raise NpuCompressError(f"--refit {saved}: its samples are of {accelerator}, the profile "
                               f"'{profile.name}' is {profile.toolchain.vela_accelerator or 'no Ethos-U accelerator'}")
    if not samples:
        raise NpuCompressError(f"--refit {saved}: the report holds no samples")
    return _fitted(profile, accelerator, vela_version, samples, list(data.get("skipped", [])))


def efficiency_toml(calibration: VelaCalibration) -> str:
    """The ``[efficiency]`` section, every number with its provenance."""
    lines = ["[efficiency]",
             f"# measured: Vela {calibration.vela_version} (ethos-u-vela), NPU cycles (total cycles for data movement) of "
             f"{len(calibration.samples)} "
             f"operators in {len({s.probe for s in calibration.samples})} small probe models compiled for "
             f"{calibration.accelerator} through "
             "ExecuTorch's Arm backend ('npu-compress profiles calibrate --vela'); Vela is Arm's estimator, "
             "not silicon"]
    for f in calibration.fits:
        src = (f"# measured: Vela {calibration.vela_version}, {f.samples} {f.op_class} operators; MAPE vs Vela "
               f"{f.mape_before:.1f}% -> {f.mape_after:.1f}%")
        e = f.efficiency
        lines += [f"{f.op_class}_compute_scale = {e.compute_scale:.4g}    {src}",
                  f"{f.op_class}_elem_cycles = {e.elem_cycles:.4g}    {src}",
                  f"{f.op_class}_overhead_cycles = {e.overhead_cycles:.4g}    {src}"]
    return "\n".join(lines) + "\n"


def with_efficiency(profile_text: str, calibration: VelaCalibration) -> str:
    """The profile's TOML text with its ``[efficiency]`` section replaced by the fitted one (the rest,
    comments and sources included, as it was)."""
    kept, skipping = [], False
    for line in profile_text.splitlines():
        if line.strip().startswith("["):
            skipping = line.strip() == "[efficiency]"
        if line.startswith("tile_in =") and calibration.tile_in:
            errors = ", ".join(f"{t}: {e:.1f}%" for t, e in calibration.tile_errors.items())
            line = (f"tile_in = {calibration.tile_in}    # measured: Vela {calibration.vela_version} charges input "
                    f"channels in granules of {calibration.tile_in} (mean error vs Vela by granule: {errors}); "
                    "the MAC array's own depth is 8 (architecture_features.py ifm_ublock)")
        if not skipping:
            kept.append(line)
    return "\n".join(kept).rstrip() + "\n\n" + efficiency_toml(calibration)


__all__ = ["Probe", "Sample", "VelaCalibration", "calibrate_vela", "efficiency_toml", "fit", "probes",
           "with_efficiency"]
