"""Third-party architectures for the benchmarks: torchvision and timm models, random weights.

Benchmark-only dependencies (not the package's): ``pip install --no-deps torchvision==<matching torch>
timm pillow safetensors``. Costs depend on shapes, not weights, so nothing is downloaded::

    >>> model, x = build("tv/resnet18", size=96)     # (1, 3, 96, 96) input, 1000 classes
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PREFIXES = ("tv/", "timm/")


@dataclass(frozen=True)
class ThirdParty:
    """One architecture: its library's constructor name and whether it takes the input size."""

    name: str  # "tv/resnet18", "timm/deit_tiny_patch16_224"
    sized: bool = False  # the constructor fixes the input size (ViTs): pass img_size


# Chosen to cover what the project zoo does not: grouped convs and channel shuffle (ShuffleNet),
# squeeze-excite and hard-swish (MobileNetV3, EfficientNet), fire modules with concat (SqueezeNet),
# RegNet's group widths, LayerNorm + 7x7 depthwise (ConvNeXt), ghost modules, conv+attention hybrids,
# linear attention and a ViT (timm).
THIRD_PARTY: tuple[ThirdParty, ...] = (
    ThirdParty("tv/resnet18"),
    ThirdParty("tv/mobilenet_v3_small"),
    ThirdParty("tv/efficientnet_b0"),
    ThirdParty("tv/shufflenet_v2_x0_5"),
    ThirdParty("tv/regnet_x_400mf"),
    ThirdParty("tv/mnasnet0_5"),
    ThirdParty("tv/squeezenet1_1"),
    ThirdParty("tv/convnext_tiny"),
    ThirdParty("timm/mobilevit_xxs"),
    ThirdParty("timm/efficientvit_m0", sized=True),
    ThirdParty("timm/efficientvit_b0"),
    ThirdParty("timm/ghostnet_100"),
    ThirdParty("timm/deit_tiny_patch16_224", sized=True),
)
BY_NAME = {t.name: t for t in THIRD_PARTY}


def is_third_party(name: str) -> bool:
    return name.startswith(PREFIXES)


def _torchvision() -> types.ModuleType:
    """torchvision without its compiled ops: the wheel's ``_C`` does not load against CPU torch, and
    ``_meta_registrations`` (the only import that needs it at import time) is replaced by an empty module."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def _factory(name: str) -> Callable[..., nn.Module]:
    lib, _, arch = name.partition("/")
    tv = _torchvision()  # timm imports torchvision too
    if lib == "tv":
        return getattr(tv.models, arch)
    import timm

    return lambda **kw: timm.create_model(arch, pretrained=False, **kw)


def build(name: str, size: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """(model in eval mode, random weights from ``seed``; one (1, 3, size, size) input)."""
    spec = BY_NAME.get(name) or ThirdParty(name)
    torch.manual_seed(seed)
    model = _factory(name)(**({"img_size": size} if spec.sized else {}))
    return model.eval(), torch.randn(1, 3, size, size)
