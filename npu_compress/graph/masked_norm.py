"""Masked LayerNorm / RMSNorm statistics: the norm of a pruned residual stream, before it is pruned.

A LayerNorm over the channels of a ViT or ConvNeXt stream computes its mean and variance over all
``C`` channels. Zeroing a pruned channel's weights leaves it in those statistics (as a 0), so the
masked model would differ from the physically pruned one, whose norm sees only the kept channels.
Here a norm module carries per-channel weights ``w`` (1 kept, 0 pruned, or a soft mask in (0, 1)
while SMART trains) and computes its statistics as weighted means::

    mean = Σ w·x / Σ w        var = Σ w·(x − mean)² / Σ w        y = (x − mean) / √(var + eps) · γ + β

With a hard mask this equals the pruned model's norm exactly (its γ, β of pruned channels are 0,
so those outputs are 0, as the masking of every other parameter has it). The weights are set on the
module (``set_weights``: a tensor, or a callable returning one per forward, for soft masks); a
forward pre-hook enters a torch function mode that replaces the module's own ``layer_norm`` /
``rms_norm`` call, whatever the module's forward does around it (``LayerNorm2d`` permutes to
channels-last first). The graph proves, per norm, that exactly one such call runs inside the
module; ``graph.build`` checks masked == pruned for every group. Nothing here is in ``state_dict``:
``apply_masks`` (and a pruner's soft masks) set the weights again after a resume.

    >>> set_weights(model.norm, torch.tensor([1., 0., 1., 1.]))   # channel 1 is out of the stats
    >>> clear(model.norm)                                         # a plain LayerNorm again
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Weights = Union[torch.Tensor, Callable[[], torch.Tensor]]
_ATTR = "_npu_norm_weights"
_MODES = "_npu_norm_modes"
_LAYER_NORMS = (F.layer_norm, torch.layer_norm)
_RMS_NORMS = tuple(f for f in (getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None)) if f is not None)


def masked_layer_norm(x: torch.Tensor, shape: tuple[int, ...], w: torch.Tensor, weight: Any = None,
                      bias: Any = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm`` with statistics weighted by ``w`` (broadcastable to ``shape``)."""
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    w = w.to(device=x.device, dtype=x.dtype)
    total = w.expand(shape).sum().clamp_min(torch.finfo(x.dtype).tiny)
    mean = (x * w).sum(dims, keepdim=True) / total
    xc = x - mean
    y = xc * torch.rsqrt((w * xc * xc).sum(dims, keepdim=True) / total + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def masked_rms_norm(x: torch.Tensor, shape: tuple[int, ...], w: torch.Tensor, weight: Any = None,
                    eps: float | None = None) -> torch.Tensor:
    """``F.rms_norm`` with the mean square weighted by ``w``."""
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    w = w.to(device=x.device, dtype=x.dtype)
    total = w.expand(shape).sum().clamp_min(torch.finfo(x.dtype).tiny)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt((w * x * x).sum(dims, keepdim=True) / total + eps)
    return y * weight if weight is not None else y


def _bind(names: tuple[str, ...], defaults: tuple, args: tuple, kwargs: dict) -> list:
    """Positional + keyword arguments of a functional call, in ``names`` order."""
    out = list(args) + list(defaults[len(args):])
    for i, n in enumerate(names):
        if n in kwargs:
            out[i] = kwargs[n]
    return out


class _MaskedStats(TorchFunctionMode):
    """Inside one norm module's forward: its layer_norm / rms_norm call, with masked statistics."""

    def __init__(self, shape: tuple[int, ...], w: torch.Tensor):
        super().__init__()
        self.shape, self.w = shape, w

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LAYER_NORMS:
            x, shape, weight, bias, eps = _bind(("input", "normalized_shape", "weight", "bias", "eps"),
                                                (None, None, None, None, 1e-5), args, kwargs)
            if tuple(shape) == self.shape:
                return masked_layer_norm(x, self.shape, self.w, weight, bias, eps)
        elif func in _RMS_NORMS:
            x, shape, weight, eps = _bind(("input", "normalized_shape", "weight", "eps"),
                                          (None, None, None, None), args, kwargs)
            if tuple(shape) == self.shape:
                return masked_rms_norm(x, self.shape, self.w, weight, eps)
        return func(*args, **kwargs)


def _enter(module: nn.Module, args: Any) -> None:
    source = module.__dict__.get(_ATTR)
    if source is None:
        return
    w = source() if callable(source) else source
    mode = _MaskedStats(tuple(module.normalized_shape), w)
    mode.__enter__()
    module.__dict__.setdefault(_MODES, []).append(mode)


def _exit(module: nn.Module, args: Any, output: Any) -> None:
    modes = module.__dict__.get(_MODES)
    if modes:
        modes.pop().__exit__(None, None, None)


def set_weights(module: nn.Module, weights: Weights) -> None:
    """From now on ``module``'s statistics are weighted per channel by ``weights`` (a tensor
    broadcastable to its ``normalized_shape``, or a callable giving one at each forward)."""
    if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        raise TypeError(f"masked statistics are for nn.LayerNorm / nn.RMSNorm, got {type(module).__name__}")
    if _enter not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_enter)
        module.register_forward_hook(_exit, always_call=True)  # the mode is left even if forward raises
    module.__dict__[_ATTR] = weights


def clear(module: nn.Module) -> None:
    """``module`` is a plain norm again (no hooks, no weights)."""
    module.__dict__.pop(_ATTR, None)
    module.__dict__.pop(_MODES, None)
    for hooks, fn in ((module._forward_pre_hooks, _enter), (module._forward_hooks, _exit)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)


def weights_of(module: nn.Module) -> Weights | None:
    """The weights ``set_weights`` gave ``module`` (None: a plain norm)."""
    return module.__dict__.get(_ATTR)


__all__ = ["clear", "masked_layer_norm", "masked_rms_norm", "set_weights", "weights_of"]
