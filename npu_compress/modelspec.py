"""Turn a model spec string into a module and its example input shape.

Spec forms (checked in this order):

- ``model.pt2``: a program saved by ``torch.export.save``; the input shape comes from its
  example inputs.
- ``resnet20``: a name from the built-in zoo (`npu_compress.models`).
- ``path/to/file.py:factory``: a callable in a Python file.
- ``package.module:factory``: a callable in an importable module.

A factory is called with no arguments and must return an ``nn.Module``; if it has an
``input_shape`` (and optionally ``num_classes``) attribute, that is the default.

The file, module and ``.pt2`` forms run code from where they point (README "Security"): each
import of a user file or module, and each ``.pt2`` load, is logged at INFO on ``npu_compress.modelspec``
with the file's full path (the CLI always shows these lines).

>>> load_model("resnet20").input_shape
(1, 3, 32, 32)
"""


from dataclasses import dataclass
import hashlib
import importlib
import importlib.util
import logging
from pathlib import Path
import sys
import types

import torch
from torch import nn

from . import models
from .errors import ModelSpecError

SPEC_FORMS = ("a zoo name ({zoo})", "package.module:factory", "path/to/file.py:factory",
              "a torch.export file model.pt2")
SHAPE_HINT = "pass --input-shape 1,3,32,32 (batch, channels, height, width)"
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to trace: the module, its example input shape (batch first), its origin."""

    module: nn.Module
    input_shape: tuple[int, ...]
    spec: str
    num_classes: int | None = None

    def example_input(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(self.input_shape, generator=generator)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """"1,3,32,32" -> (1, 3, 32, 32); ModelSpecError for empty, non-integer or non-positive."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(part.lstrip("+").isdigit() for part in parts):
        raise ModelSpecError(f"bad input shape {text!r}: expected comma-separated positive "
                             f"integers, e.g. 1,3,32,32")
    shape = tuple(int(part) for part in parts)
    if min(shape) < 1:
        raise ModelSpecError(f"bad input shape {text!r}: every dimension must be positive")
    return shape


def load_model(spec: str, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Load the model a spec names; `input_shape` overrides the spec's default shape."""
    if input_shape is not None:
        input_shape = _check_shape(input_shape, spec, "input_shape")
    if spec.endswith(".pt2"):
        return _load_exported(spec, input_shape)
    if spec in models.ZOO:
        entry = models.ZOO[spec]
        return LoadedModel(entry.factory(), input_shape or entry.input_shape, spec,
                           entry.num_classes)
    if ":" in spec:
        return _load_factory(spec, input_shape)
    raise ModelSpecError(f"cannot load model {spec!r}: it is not a zoo name, has no ':factory' "
                         f"part and is not a .pt2 file; valid forms: {_forms()}")


def _forms() -> str:
    return "; ".join(SPEC_FORMS).format(zoo=", ".join(models.names()))


def _check_shape(shape: object, spec: str, what: str) -> tuple[int, ...]:
    """A tuple of positive ints, or ModelSpecError naming the spec."""
    try:
        dims = tuple(shape)  # type: ignore[call-overload]
    except TypeError:
        dims = ()
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in dims):
        raise ModelSpecError(f"model {spec!r}: {what} {shape!r} is not a tuple of positive "
                             f"integers such as (1, 3, 32, 32)")
    return dims


def import_factory(spec: str, what: str) -> object:
    """The callable a ``path/file.py:factory`` or ``package.module:factory`` spec names (imported, logged
    like a model spec: it runs the file's code); errors name ``what`` (``"data"``, ``"task"``)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelSpecError(f"bad {what} spec {spec!r}: expected path/to/file.py:factory or package.module:factory")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = _import_file(target, spec, what) if is_file else _import_module(target, spec, what)
    return _get_attr(module, attr, spec, what)


def _load_factory(spec: str, input_shape: tuple[int, ...] | None) -> LoadedModel:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelSpecError(f"bad model spec {spec!r}: expected {_forms()}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = _import_file(target, spec) if is_file else _import_module(target, spec)
    factory = _get_attr(module, attr, spec)
    net = _call_factory(factory, spec)
    shape = input_shape or getattr(factory, "input_shape", None)
    if shape is None:
        raise ModelSpecError(f"model {spec!r} has no default input shape; {SHAPE_HINT}, "
                             f"or give the factory an input_shape attribute")
    num_classes = getattr(factory, "num_classes", None)
    return LoadedModel(net, _check_shape(shape, spec, "input_shape"), spec,
                       num_classes if isinstance(num_classes, int) else None)


def _import_module(name: str, spec: str, what: str = "model") -> types.ModuleType:
    if name not in sys.modules:
        log.info("importing module '%s' (runs its code) for %s '%s'", name, what, spec)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"{what} {spec!r}: cannot import module {name!r} ({exc}); "
                             f"valid forms: {_forms()}") from None
    except Exception as exc:  # the user's module failed while importing
        raise ModelSpecError(f"{what} {spec!r}: importing {name!r} failed: "
                             f"{type(exc).__name__}: {exc}") from exc


def _import_file(target: str, spec: str, what: str = "model") -> types.ModuleType:
    path = Path(target)
    if not path.is_file():
        raise ModelSpecError(f"{what} {spec!r}: file {target!r} does not exist; "
                             f"expected path/to/file.py:factory")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"npu_compress_user_model_{path.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelSpecError(f"{what} {spec!r}: {target!r} is not an importable Python file")
    module = importlib.util.module_from_spec(module_spec)
    log.info("importing '%s' (runs its code) for %s '%s'", path.resolve(), what, spec)
    sys.modules[name] = module  # so dataclasses and pickling inside the file resolve
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelSpecError(f"{what} {spec!r}: running {target!r} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
    return module


def _get_attr(module: types.ModuleType, attr: str, spec: str, what: str = "model") -> object:
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_")
                            and callable(getattr(module, n)))
            raise ModelSpecError(f"{what} {spec!r}: {module.__name__!r} has no attribute "
                                 f"{attr!r}; callables there: {', '.join(public) or 'none'}")
        obj = getattr(obj, part)
    return obj


def _call_factory(factory: object, spec: str) -> nn.Module:
    if not callable(factory):
        raise ModelSpecError(f"model {spec!r}: {type(factory).__name__} object is not callable; "
                             f"the part after ':' must name a function or class that takes no "
                             f"arguments and returns an nn.Module")
    try:
        net = factory()
    except Exception as exc:
        raise ModelSpecError(f"model {spec!r}: calling the factory with no arguments failed: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ModelSpecError(f"model {spec!r}: the factory returned {type(net).__name__}, "
                             f"expected a torch.nn.Module")
    return net


def _load_exported(spec: str, input_shape: tuple[int, ...] | None) -> LoadedModel:
    if not Path(spec).is_file():
        raise ModelSpecError(f"model {spec!r}: file does not exist; expected a file written by "
                             f"torch.export.save, or {_forms()}")
    log.info("loading torch.export program '%s' (a .pt2 can run code when loaded)", Path(spec).resolve())
    try:
        program = torch.export.load(spec)
    except Exception as exc:
        raise ModelSpecError(f"model {spec!r}: not a readable torch.export archive "
                             f"({type(exc).__name__}: {exc}); save one with "
                             f"torch.export.save(torch.export.export(model, (x,)), path)") from None
    traced = _exported_input_shape(program, spec)
    if input_shape is not None and traced is not None and input_shape != traced:
        raise ModelSpecError(f"model {spec!r} was exported for input shape {traced}, "
                             f"not {input_shape}; re-export it or drop --input-shape")
    shape = input_shape or traced
    if shape is None:
        raise ModelSpecError(f"model {spec!r}: the exported program has no static example "
                             f"input shape; {SHAPE_HINT}")
    return LoadedModel(_unfreeze_mode(program.module(check_guards=False)), shape, spec,
                       _exported_num_classes(program))


def _exported_input_shape(program: torch.export.ExportedProgram,
                          spec: str) -> tuple[int, ...] | None:
    """The single tensor input's static shape (None if dynamic or unknown)."""
    user_inputs = program.graph_signature.user_inputs
    if len(user_inputs) != 1:
        raise ModelSpecError(f"model {spec!r} takes {len(user_inputs)} inputs; only models with "
                             f"one tensor input are supported")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name ==
                user_inputs[0])
    return _static_shape(node.meta.get("val"))


def _exported_num_classes(program: torch.export.ExportedProgram) -> int | None:
    """K when the program returns one (B, K) tensor (a classifier), else None."""
    outputs = next(n for n in program.graph.nodes if n.op == "output").args[0]
    if len(outputs) != 1 or not isinstance(outputs[0], torch.fx.Node):
        return None
    shape = _static_shape(outputs[0].meta.get("val"))
    return shape[1] if shape is not None and len(shape) == 2 else None


def _static_shape(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, torch.Tensor):
        return None
    dims = tuple(value.shape)
    return dims if all(isinstance(d, int) for d in dims) else None


def _unfreeze_mode(module: nn.Module) -> nn.Module:
    """Let train()/eval() be called on an exported program's module.

    `ExportedProgram.module()` makes both raise NotImplementedError. We restore nn.Module's,
    which only set the `training` flags: the graph keeps the behaviour it was exported with
    (e.g. BatchNorm with running statistics when exported in eval mode).
    """
    for name in ("train", "eval"):
        if name in vars(module):
            delattr(module, name)
    return module


__all__ = ["LoadedModel", "load_model", "parse_input_shape"]
