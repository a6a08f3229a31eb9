"""Hardware profiles: one TOML file per chip, loaded into a frozen, validated dataclass.

A profile holds facts about a chip that the cost model needs. Every number in a shipped TOML
carries a comment naming its source (datasheet, compiler source) or saying it is an assumption.

Example::

    >>> p = load_profile("ethos-u55-256")
    >>> p.compute.macs_per_cycle, p.tiling.tile_out
    (256, 8)
"""
from __future__ import annotations

import dataclasses
import enum
import math
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from ..choices import Choice, NMPattern
from ..errors import ProfileError

SCHEMA_VERSION = 2  # 2: optional [efficiency] and [toolchain]; older files load through migrate()
DEFAULT_PROFILE = "generic-4tops"


class DType(Choice):
    """Arithmetic type of weights and activations on the chip."""

    INT8 = "int8"
    INT16 = "int16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def bytes(self) -> int:
        return {"int8": 1, "int16": 2, "fp16": 2, "fp32": 4}[self.value]

    @property
    def bias_bytes(self) -> int:
        # Integer NPUs keep bias at accumulator width: int8 -> int32, int16 -> int64
        # (Ethos-U: 32-bit / 40-bit accumulators, stored as int32 / int64 in TFLite). Floats keep dtype.
        return {"int8": 4, "int16": 8, "fp16": 2, "fp32": 4}[self.value]


def key(default: Any = dataclasses.MISSING, *, min: float | None = None, allowed: Any = None,
        hint: str = "") -> Any:
    """A profile key: the field's type says how it is read (int, float, bool, str, a :class:`Choice`, a pair
    of ints, a list of N:M patterns or of strings); ``min``: the smallest value allowed (default: > 0 for
    numbers); ``allowed``: the values a string (or each list entry) may take, or a function giving them;
    ``hint``: what the allowed values are, for the error message."""
    meta = {"min": min, "allowed": allowed, "hint": hint}
    return field(metadata=meta) if default is dataclasses.MISSING else field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Compute:
    macs_per_cycle: int = key()  # MAC array throughput, multiply-accumulates per clock
    clock_hz: float = key()
    dtype: DType = key()
    vector_ops_per_cycle: int = key()  # elementwise / pooling throughput, elements per clock
    # a conv with a larger stride runs as one operator per output position, each reading all of its
    # weights (0: no limit)
    max_conv_stride: int = key(0, min=0)


@dataclass(frozen=True, kw_only=True)
class Tiling:
    tile_out: int = key()  # output channels the MAC array consumes at once
    tile_in: int = key()  # input channels the MAC array consumes at once
    block: tuple[int, int] = key()  # (bo, bi) weight block shape used by block pruning
    # a depthwise conv writes its outputs in blocks of this many channels: its per-output cost
    # (``elem_cycles``) counts the channels padded to it (0: not padded)
    depthwise_out_granule: int = key(0, min=0)
    # an elementwise op whose output stays in the chip's channel-brick layout (``LayerSpec.brick_out``)
    # pays its per-element cost for its channels padded to this (0: not modelled)
    brick_depth: int = key(0, min=0)


@dataclass(frozen=True, kw_only=True)
class Memory:
    sram_bytes: int = key()  # on-chip buffer for activations
    dram_bandwidth_bytes_per_s: float = key()  # off-chip (DRAM / flash) read bandwidth
    weight_compression: str = key("")  # notes on the compiler's weight encoding
    # cycles per element an op spends reading a constant operand (a layer scale, a decomposed norm's
    # scale and shift) that the toolchain materialises at its 4-D activation's full shape in flash and
    # reads in short bursts; ``_short``: on maps of at most 8 rows (0: not modelled)
    constant_read_cycles: float = key(0.0, min=0)
    constant_read_cycles_short: float = key(0.0, min=0)


@dataclass(frozen=True, kw_only=True)
class Sparsity:
    block_skip: bool = key()  # hardware skips all-zero packed blocks (compute scales with density)
    nm: tuple[NMPattern, ...] = key()  # N:M patterns the hardware accelerates, e.g. (NMPattern(2, 4),) from "2:4"
    index_bytes: int = key(min=0)  # bytes of index stored per kept block
    nm_index_bits: int = key(min=0)  # bits of index stored per kept weight in N:M format


@dataclass(frozen=True, kw_only=True)
class Overhead:
    layer_cycles: int = key(min=0)  # fixed cycles per executed layer (command setup, DMA start)


OP_CLASSES = ("conv", "depthwise", "grouped", "matmul", "gemm", "attention", "elementwise", "scale", "activation",
              "pool", "norm", "move")


@dataclass(frozen=True)
class ClassEfficiency:
    """How one op class runs, beyond the peak-rate model (optional keys of ``[efficiency]``)::

        cycles = max(compute_scale * ideal_cycles, elem_cycles * output_elements) + overhead_cycles

    a roofline between the compute array (``ideal_cycles``: tile-padded MACs / macs_per_cycle for
    MAC-array classes, vector passes / vector_ops_per_cycle for the others) and the output side
    (write-back and requantisation per output element: why a 1x1 conv on a large map costs about
    one cycle per output on Ethos-U whatever its MACs). ``overhead_cycles`` None: ``[overhead]
    layer_cycles``. Memory time is separate: ``latency = max(compute, memory) + overhead``."""

    compute_scale: float = 1.0
    elem_cycles: float = 0.0
    overhead_cycles: float | None = None


# Data movement (concat, transpose, materialising copies; ``ideal_cycles`` one vector pass over
# the output) costs nothing unless a profile prices it: an NPU compiler writes a concat's inputs in
# place and folds most layout changes into its neighbours' DMA.
_CLASS_DEFAULTS = {"move": ClassEfficiency(compute_scale=0.0, elem_cycles=0.0, overhead_cycles=0.0)}


# a class a profile does not fit falls back to a broader one: transcendental activations (GELU,
# sigmoid, softmax ...) run like any elementwise op unless measured apart; a linear over many rows
# (``gemm``: a transformer's token projections, a 1x1 conv by another name) and attention (QK^T,
# softmax, AV as one op) run like a matmul unless measured apart. On Ethos-U they differ by orders of
# magnitude: Vela lowers a token linear to an efficient Conv2D, a one-row linear streams its weights
# once, and attention becomes two MatMuls plus a decomposed softmax at ~100x their MAC-array ideal.
# A ``scale`` (a multiply / add by a constant tensor on a 4-D activation) runs like any elementwise op
# unless measured apart; on Ethos-U ExecuTorch materialises the constant at the activation's full
# shape and Vela reads it from flash in short bursts: ~8-16 cycles per element, not ~1.5.
_CLASS_FALLBACK = {"activation": "elementwise", "scale": "elementwise", "gemm": "matmul", "attention": "matmul"}


def class_default(op_class: str) -> ClassEfficiency:
    """The efficiency of ``op_class`` when a profile's ``[efficiency]`` says nothing of it (or of the
    class it falls back to)."""
    return _CLASS_DEFAULTS.get(op_class, ClassEfficiency())


@dataclass(frozen=True)
class Efficiency:
    """Per op class efficiency: ``[efficiency]`` keys ``<class>_compute_scale``, ``<class>_elem_cycles``,
    ``<class>_overhead_cycles`` for class in :data:`OP_CLASSES`; absent keys keep the peak-rate model."""

    classes: tuple[tuple[str, ClassEfficiency], ...] = ()

    def of(self, op_class: str, op: str | None = None) -> ClassEfficiency:
        """The efficiency of an op: its own entry (elementwise ops measured one by one), else its
        class's, else the class it falls back to, else the peak-rate model."""
        classes = dict(self.classes)
        if op is not None and op not in OP_CLASSES and op in classes:  # the op "matmul" is not the class
            return classes[op]
        if op_class not in classes and op_class in _CLASS_FALLBACK:
            op_class = _CLASS_FALLBACK[op_class]
        return classes.get(op_class) or class_default(op_class)

    def flat(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, eff in self.classes:
            for key in ("compute_scale", "elem_cycles", "overhead_cycles"):
                value = getattr(eff, key)
                if value is not None and value != getattr(class_default(name), key):
                    out[f"{name}_{key}"] = value
        return out


@dataclass(frozen=True, kw_only=True)
class Fusion:
    """Which single-input elementwise ops (activations, scalings) the chip's compiler runs in the output
    stage of the layer before them, at no cost (optional section ``[fusion]``). NPU compilers fuse
    them all (the default); a CPU runtime fuses a few into a conv or GEMM and runs the rest, GELU and
    SiLU's sigmoid among them, as kernels of their own. Batch norm after a conv is always folded."""

    activations: tuple[str, ...] = key(("*",), allowed=lambda: _elementwise_ops(), hint="not an elementwise op; "
                                       "use ATen base names such as relu, gelu, sigmoid, mul, or \"*\" for all")
    # ATen base names (hardware/ops.py); "*": every such op
    after_elementwise: bool = key(True)  # also into an unfused elementwise op (residual add then ReLU: one op)
    # a norm's affine scale and shift run inside the norm's kernel; false: as a multiply and an add by
    # constant tensors of their own, priced as ``scale`` ops on a 4-D activation (ExecuTorch decomposes
    # LayerNorm and GroupNorm for Ethos-U); over tokens (3-D) they stay in the norm's fitted cost
    norm_affine: bool = key(True)
    # a concat whose inputs ops write right before it is assembled in place and costs nothing (Vela);
    # one with an input no op writes (a split or slice of another tensor) copies every input. False:
    # every concat runs as a copy (a CPU runtime's Concat kernel), priced by ``move`` / ``cat``
    concat_in_place: bool = key(False)

    def fuses(self, op: str, into: Any) -> bool:
        """Whether ``op`` runs free in the output stage of a layer of kind ``into`` (``ops.Stage`` MAC | ELEMENTWISE)."""
        from .ops import Stage

        if Stage.parse(into) is Stage.ELEMENTWISE and not self.after_elementwise:
            return False
        return "*" in self.activations or op in self.activations


@dataclass(frozen=True, kw_only=True)
class Toolchain:
    """The chip vendor's compiler that a ``--target`` export drives (optional section ``[toolchain]``)."""

    vela_accelerator: str = key("", allowed=lambda: VELA_ACCELERATORS,
                                hint="not a Vela accelerator configuration")  # e.g. "ethos-u55-128" ("": not an Ethos-U)
    vela_system_config: str = key("")  # Vela --system-config in Arm/vela.ini ("": ExecuTorch's default for the target)
    vela_memory_mode: str = key("")  # Vela --memory-mode ("": ExecuTorch's default for the target)


VELA_ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                     "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                     "ethos-u85-2048")  # Vela's accelerator configurations (ethosu/vela/architecture_features.py)


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    """A chip, as the cost model sees it. Frozen; compare with ``==``."""

    schema_version: int
    name: str
    description: str
    source: str
    compute: Compute
    tiling: Tiling
    memory: Memory
    sparsity: Sparsity
    overhead: Overhead
    toolchain: Toolchain = Toolchain()
    efficiency: Efficiency = Efficiency()
    fusion: Fusion = Fusion()

    @property
    def peak_macs_per_s(self) -> float:
        return self.compute.macs_per_cycle * self.compute.clock_hz

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, enum.Enum):
                return v.value
            if isinstance(v, NMPattern):
                return str(v)
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (Toolchain, Efficiency, Fusion)) and v == type(v)():
                continue  # an optional section, absent
            if isinstance(v, Efficiency):
                out[f.name] = v.flat()
                continue
            if dataclasses.is_dataclass(v):
                out[f.name] = {g.name: conv(getattr(v, g.name)) for g in fields(v)}
            else:
                out[f.name] = conv(v)
        return out

    def to_toml(self) -> str:
        """TOML text that :func:`load_profile` reads back into an equal profile."""
        top = [k for k, v in self.to_dict().items() if not isinstance(v, dict)]
        d = self.to_dict()
        lines = [f"{k} = {_toml_value(d[k])}" for k in top]
        for section, body in d.items():
            if isinstance(body, dict):
                lines.append(f"\n[{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# ---------------------------------------------------------------- validation

_SECTIONS: dict[str, type] = {
    "compute": Compute, "tiling": Tiling, "memory": Memory, "sparsity": Sparsity, "overhead": Overhead,
    "toolchain": Toolchain, "efficiency": Efficiency, "fusion": Fusion,
}
_OPTIONAL_SECTIONS = ("toolchain", "efficiency", "fusion")
_TOP = ("schema_version", "name", "description", "source")


def _check_number(where: str, key: str, v: Any, kind: type, positive: bool = True) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise ProfileError(f"{where}: key '{key}' must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if not math.isfinite(v):  # TOML's inf / nan, or 1e400 (read as inf)
        raise ProfileError(f"{where}: key '{key}' must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise ProfileError(f"{where}: key '{key}' must be > 0, got {v!r}")
    if not positive and v < 0:
        raise ProfileError(f"{where}: key '{key}' must be >= 0, got {v!r}")
    return v


def efficiency_names() -> tuple[str, ...]:
    """What ``[efficiency]`` keys may start with: an op class, or one elementwise op (its ATen base
    name) where a judge shows ops of one class cost differently (a GELU is 4x a ReLU on a CPU), or
    ``permute`` (every layout permutation, channel shuffle included) and ``cat`` (a concat that copies)
    apart from the rest of ``move`` (Vela runs a transpose as its own operator, and a concat only when
    it cannot write its inputs in place)."""
    from .ops import _ALIASES, BINARY, SOFTMAX, TRANSCENDENTAL, UNARY

    ops = (UNARY | BINARY | TRANSCENDENTAL | SOFTMAX | {"permute", "cat"}) - set(OP_CLASSES) - set(_ALIASES)
    return OP_CLASSES + tuple(sorted(ops))


def _parse_efficiency(where: str, body: dict[str, Any]) -> Efficiency:
    names = efficiency_names()
    keys = {f"{c}_{k}": (c, k) for c in names for k in ("compute_scale", "elem_cycles", "overhead_cycles")}
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise ProfileError(f"{where}: unknown key 'efficiency.{unknown[0]}'; allowed: <name>_compute_scale, "
                           f"<name>_elem_cycles, <name>_overhead_cycles for name an op class "
                           f"({', '.join(OP_CLASSES)}) or an elementwise op such as gelu")
    per_class: dict[str, dict[str, float]] = {}
    for key, v in body.items():
        op_class, field_name = keys[key]
        positive = field_name == "compute_scale" and op_class != "move"  # a move may be priced per element only
        number = float(_check_number(where, f"efficiency.{key}", v, float, positive=positive))
        if not math.isfinite(number):
            raise ProfileError(f"{where}: key 'efficiency.{key}' must be finite, got {v!r}")
        per_class.setdefault(op_class, {})[field_name] = number
    return Efficiency(tuple((c, dataclasses.replace(class_default(c), **per_class[c]))
                            for c in names if c in per_class))


def _parse_section(where: str, name: str, body: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(body, dict):
        raise ProfileError(f"{where}: '{name}' must be a table [{name}], got {type(body).__name__}")
    if cls is Efficiency:
        return _parse_efficiency(where, body)
    known = {f.name: f for f in fields(cls)}
    types = typing.get_type_hints(cls)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ProfileError(f"{where}: unknown key '{name}.{unknown[0]}'; allowed keys in [{name}]: {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, f in known.items():
        qual = f"{name}.{key}"
        if key not in body:
            if f.default is not dataclasses.MISSING:
                continue
            raise ProfileError(f"{where}: missing key '{qual}'")
        values[key] = _parse_value(where, qual, types[key], f.metadata, body[key])
    return cls(**values)


def _parse_value(where: str, qual: str, tp: Any, meta: Any, v: Any) -> Any:
    """One key's value, read by its field's type and checked against its metadata (``key(...)``)."""
    if isinstance(tp, type) and issubclass(tp, Choice):
        if v not in tp.values():
            raise ProfileError(f"{where}: key '{qual}' = {v!r} is not a known {qual.rpartition('.')[2]}; "
                               f"allowed: {', '.join(tp.values())}")
        return tp(v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ProfileError(f"{where}: key '{qual}' must be true or false, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ProfileError(f"{where}: key '{qual}' must be a string, got {v!r}")
        return _check_allowed(where, qual, meta, v)
    if tp in (int, float):
        number = _check_number(where, qual, v, tp, positive=meta.get("min") is None)
        return float(number) if tp is float else number
    item = typing.get_args(tp)[0] if typing.get_args(tp) else None
    if item is NMPattern:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ProfileError(f"{where}: key '{qual}' must be a list of 'N:M' strings, got {v!r}")
        return tuple(NMPattern.parse(x, f"{where}: key '{qual}' entry", ProfileError) for x in v)
    if item is int:  # a pair (bo, bi)
        if not (isinstance(v, list) and len(v) == len(typing.get_args(tp))):
            raise ProfileError(f"{where}: key '{qual}' must be a list of two positive integers [bo, bi], got {v!r}")
        return tuple(_check_number(where, qual, x, int) for x in v)
    if item is str:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ProfileError(f"{where}: key '{qual}' must be a list of op names, got {v!r}")
        return tuple(_check_allowed(where, qual, meta, x, entry=True) for x in v)
    raise TypeError(f"profile key '{qual}' has a type the schema cannot read: {tp!r}")  # a programming error


def _check_allowed(where: str, qual: str, meta: Any, v: str, entry: bool = False) -> str:
    allowed = meta.get("allowed")
    allowed = allowed() if callable(allowed) else allowed
    if allowed is None or v in allowed:
        return v
    if entry:
        raise ProfileError(f"{where}: key '{qual}' names {v!r}, {meta.get('hint') or 'not allowed'}")
    raise ProfileError(f"{where}: key '{qual}' = {v!r} is {meta.get('hint') or 'not allowed'}; allowed: "
                       f"{', '.join(allowed)}")


def _elementwise_ops() -> set[str]:
    from .ops import BINARY, UNARY

    return UNARY | BINARY | {"div", "pow", "*"}


def profile_from_dict(data: dict[str, Any], where: str = "<dict>") -> HardwareProfile:
    """Validate a parsed TOML document. ``where`` names the file in error messages."""
    unknown = sorted(set(data) - set(_TOP) - set(_SECTIONS))
    if unknown:
        allowed = ", ".join(list(_TOP) + [f"[{s}]" for s in _SECTIONS])
        raise ProfileError(f"{where}: unknown key '{unknown[0]}'; allowed top-level keys: {allowed}")
    for key in _TOP + tuple(_SECTIONS):
        if key not in data and key not in _OPTIONAL_SECTIONS:
            raise ProfileError(f"{where}: missing key '{key}'")
    data = migrate(data["schema_version"], data, where)
    for key in ("name", "description", "source"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise ProfileError(f"{where}: key '{key}' must be a non-empty string, got {data[key]!r}")
    sections = {name: _parse_section(where, name, data[name]) for name in _SECTIONS if name in data}
    return HardwareProfile(schema_version=SCHEMA_VERSION, name=data["name"], description=data["description"],
                           source=data["source"], **sections)


def migrate(version: Any, data: dict[str, Any], where: str = "<dict>") -> dict[str, Any]:
    """A profile document of schema ``version`` as a current one (:data:`SCHEMA_VERSION`), one step at a
    time; a version this npu_compress does not know is a ProfileError."""
    if version == SCHEMA_VERSION:
        return data
    if isinstance(version, bool) or version not in _MIGRATIONS:
        raise ProfileError(f"{where}: key 'schema_version' = {version!r}; this version of npu_compress reads "
                           f"{SCHEMA_VERSION} (and migrates {', '.join(map(str, sorted(_MIGRATIONS)))})")
    return migrate(version + 1, _MIGRATIONS[version](data, where), where)


def _migrate_v1(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Version 1 -> 2: v1 had no [efficiency] or [toolchain]; as written it has no such sections, so its
    costs are the same under v2 (the peak-rate model, ``[overhead] layer_cycles`` for every op)."""
    if "efficiency" in data:
        raise ProfileError(f"{where}: a schema_version 1 profile cannot have [efficiency] (added in version 2)")
    return {**data, "schema_version": 2}


_MIGRATIONS = {1: _migrate_v1}  # version n -> n + 1


# ---------------------------------------------------------------- loading

def profile_dir() -> Path:
    """The folder of shipped profiles: the installed ``npu_compress/hw_profiles``, or ``hw_profiles/``
    at the root of a checkout (pyproject.toml installs the latter as the former)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "hw_profiles", package.parent / "hw_profiles"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    raise ProfileError(f"no shipped profiles found in {package / 'hw_profiles'} or {package.parent / 'hw_profiles'}; "
                       "is the installation complete?")


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profile_dir().glob("*.toml"))


def profile_path(name_or_path: str | Path) -> Path:
    """The TOML file of a shipped profile name (``"ethos-u55-256"``), or the path itself."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file()):
        path = profile_dir() / f"{text}.toml"
        if not path.is_file():
            raise ProfileError(f"unknown profile '{text}'; shipped profiles: {', '.join(list_profiles())} "
                               "(or give a path to a .toml file)")
    return path


def load_profile(name_or_path: str | Path | HardwareProfile = DEFAULT_PROFILE) -> HardwareProfile:
    """Load a shipped profile by name (``"ethos-u55-256"``) or any profile TOML by path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    path = profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from None
    return profile_from_dict(data, where=str(path))
