"""Fit a profile's ``[efficiency]`` per op class to measured per-layer cycles (Vela's or onnxruntime's).

Each sample is one layer we price paired with what the judge measured for it. Per op class a
least-squares fit on relative error (every layer counts alike, small or large), non-negative terms::

    measured_cycles ~ max(compute_scale * ideal_cycles, elem_cycles * output_elements) + overhead_cycles

``ideal_cycles`` is the peak-rate compute time of the layer at the profile's own rates and tiles
(tile-padded MACs / macs_per_cycle, or vector passes / vector_ops_per_cycle), in cycles.

    fits = fit_classes(samples, base_overhead=profile.overhead.layer_cycles)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from .cost import layer_cost
from .layers import LayerSpec
from .profile import OP_CLASSES, ClassEfficiency, Efficiency, HardwareProfile, efficiency_names

MIN_SAMPLES = 3  # a class with fewer keeps the peak-rate model


class ClassSample(Protocol):
    """What the fit reads of a sample (Vela's and onnxruntime's samples both have it)."""

    op_class: str
    ideal_cycles: float
    out_elems: int

    @property
    def measured_cycles(self) -> float: ...

    def ideal(self, tile_in: int) -> float: ...


@dataclass
class ClassFit:
    op_class: str
    efficiency: ClassEfficiency
    samples: int
    mape_before: float  # peak-rate model vs the judge, percent
    mape_after: float


def mape(pred: np.ndarray, meas: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    return float(np.mean(np.abs(pred - meas) / meas) * 100)


def ideal_cycles(spec: LayerSpec, profile: HardwareProfile, tile_in: int | None = None) -> float:
    """The peak-rate compute cycles of a layer (no ``[efficiency]``), at ``tile_in`` if given."""
    tiling = profile.tiling if tile_in is None else dataclasses.replace(profile.tiling, tile_in=tile_in)
    # the peak-rate model for every class, data movement included (one vector pass over the output)
    plain = dataclasses.replace(profile, efficiency=Efficiency((("move", ClassEfficiency()),)), tiling=tiling)
    if spec.fused:  # a layer the judge ran as its own op: price it as one
        spec = dataclasses.replace(spec, fused=False, fused_into=None)
    return layer_cost(spec, plain).t_compute_s * profile.compute.clock_hz


def fit_roofline(ideal: np.ndarray, elems: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``y ~ max(a * ideal, b * elems) + c`` with a > 0, b >= 0, c >= 0, least squares on relative error:
    a log grid over (a, b), c in closed form, then a finer grid around the best."""
    w2 = 1.0 / np.maximum(y, 1.0) ** 2

    def best_on(a_grid: np.ndarray, b_grid: np.ndarray) -> tuple[float, float, float, float]:
        p0 = np.maximum(a_grid[:, None, None] * ideal, b_grid[None, :, None] * elems)  # (A, B, n)
        c = np.maximum(((y - p0) * w2).sum(axis=2) / w2.sum(), 0.0)  # (A, B)
        err = (((p0 + c[..., None] - y) ** 2) * w2).sum(axis=2)
        i, j = np.unravel_index(np.argmin(err), err.shape)
        return float(a_grid[i]), float(b_grid[j]), float(c[i, j]), float(err[i, j])

    # a up to 1000: attention on a 256 / 512-MAC Ethos-U costs Vela over 100x its MAC-array ideal
    a, b, c, _ = best_on(np.logspace(-3, 3, 241), np.concatenate([[0.0], np.logspace(-3, 1.5, 181)]))
    fine = np.linspace(0.9, 1.1, 41)
    a, b, c, _ = best_on(a * fine, b * fine if b > 0 else np.array([0.0]))
    return a, b, c


def roofline_cycles(eff: ClassEfficiency, ideal: Any, elems: Any) -> Any:
    """``max(compute_scale * ideal, elem_cycles * elems) + overhead_cycles``: the cycles ``eff`` gives
    a layer (arrays or numbers; ``overhead_cycles`` None counts 0)."""
    return np.maximum(eff.compute_scale * ideal, eff.elem_cycles * elems) + (eff.overhead_cycles or 0.0)


PER_OP_CLASSES = ("elementwise", "scale", "activation")  # classes whose ops may be fitted one by one


def fit_classes(samples: Sequence[ClassSample], base_overhead: float, tile_in: int | None = None,
                classes: Sequence[str] = OP_CLASSES, per_op: bool | Sequence[str] = False) -> list[ClassFit]:
    """Per op class: efficiency from the samples at ``tile_in`` (default: the samples' own ideal cycles);
    classes without :data:`MIN_SAMPLES` samples keep the peak-rate model. ``per_op``: also fit each
    op of these classes (True: elementwise / activation) with enough samples of its own (samples
    need an ``op``)."""
    groups = [(c, [s for s in samples if s.op_class == c]) for c in classes]
    if per_op:
        by_op = PER_OP_CLASSES if per_op is True else tuple(per_op)
        ops = dict.fromkeys(s.op for s in samples if s.op_class in by_op)
        groups += [(op, [s for s in samples if s.op_class in by_op and s.op == op]) for op in ops]
    fits = []
    for c, rows in groups:
        if len(rows) < MIN_SAMPLES:
            continue
        ideal = np.array([s.ideal(tile_in) if tile_in else s.ideal_cycles for s in rows])
        elems = np.array([float(s.out_elems) for s in rows])
        y = np.array([float(s.measured_cycles) for s in rows])
        a, b, k = (float(f"{v:.4g}") for v in fit_roofline(ideal, elems, y))  # as the TOML holds them
        before = np.array([s.ideal_cycles for s in rows]) + base_overhead
        # the fit minimises squared relative error; on a class the roofline cannot describe (noisy
        # timings of near-free ops) that can still raise the reported MAPE: keep the peak-rate model then
        candidates = [ClassEfficiency(max(a, 1e-3), b, k), ClassEfficiency(1.0, 0.0, float(base_overhead))]
        scored = [(mape(roofline_cycles(e, ideal, elems), y), e) for e in candidates]
        after_mape, eff = min(scored, key=lambda t: t[0])
        fits.append(ClassFit(c, eff, len(rows), mape(before, y), after_mape))
    return fits


def fits_table(fits: Sequence[ClassFit], label: str = "class") -> list[str]:
    """The fits as table rows for people: coefficients, sample count, MAPE before and after."""
    rows = [f"{label:<12}{'n':>4}{'compute_scale':>15}{'elem_cycles':>13}{'overhead':>10}{'MAPE before':>13}{'after':>8}"]
    for f in fits:
        e = f.efficiency
        rows.append(f"{f.op_class:<12}{f.samples:>4}{e.compute_scale:>15.3f}{e.elem_cycles:>13.3f}"
                    f"{e.overhead_cycles or 0:>10.0f}{f.mape_before:>12.1f}%{f.mape_after:>7.1f}%")
    return rows


def efficiency_of(fits: Sequence[ClassFit]) -> Efficiency:
    """The ``[efficiency]`` of these fits, in the order a profile file lists them."""
    order = {name: i for i, name in enumerate(efficiency_names())}
    return Efficiency(tuple((f.op_class, f.efficiency) for f in sorted(fits, key=lambda f: order[f.op_class])))


__all__ = ["ClassFit", "ClassSample", "efficiency_of", "fit_classes", "fits_table", "fit_roofline", "ideal_cycles",
           "mape", "roofline_cycles"]
