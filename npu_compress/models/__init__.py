"""The built-in model zoo: small CIFAR-scale models in plain torch.nn, keyed by name.

>>> from npu_compress import models
>>> net = models.create("resnet20")
>>> net(models.example_input("resnet20")).shape
torch.Size([1, 10])

Every model runs on its default input, exports with `torch.export.export`, and has no
data-dependent Python control flow.
"""

from collections.abc import Callable
from dataclasses import dataclass
import inspect
from typing import Literal

import torch
from torch import nn

from ..errors import ModelSpecError
from .digits_cnn import digits_cnn
from .mobilenetv2 import mobilenetv2
from .resnet_cifar import resnet20, resnet56
from .unet import unet_small
from .vgg import vgg11, vgg16
from .vit import vit_tiny

Task = Literal["classification", "segmentation"]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and what it expects (input shape includes batch 1)."""

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task
    description: str


_CIFAR = (1, 3, 32, 32)
_ENTRIES = (
    ZooEntry("digits-cnn", digits_cnn, (1, 1, 8, 8), 10, "classification",
             "3-conv CNN for the 8x8 scikit-learn digits (~15k params)"),
    ZooEntry("resnet20", resnet20, _CIFAR, 10, "classification",
             "CIFAR ResNet-20, basic blocks 16/32/64, option-B shortcuts (~0.27M params)"),
    ZooEntry("resnet56", resnet56, _CIFAR, 10, "classification",
             "CIFAR ResNet-56, basic blocks 16/32/64, option-B shortcuts (~0.86M params)"),
    ZooEntry("mobilenetv2", mobilenetv2, _CIFAR, 10, "classification",
             "MobileNetV2 at CIFAR strides, depthwise inverted residuals (~2.2M params)"),
    ZooEntry("vgg11", vgg11, _CIFAR, 10, "classification",
             "VGG-11 with BatchNorm, CIFAR variant, Linear(512, 10) head (~9.2M params)"),
    ZooEntry("vgg16", vgg16, _CIFAR, 10, "classification",
             "VGG-16 with BatchNorm, CIFAR variant, Linear(512, 10) head (~14.7M params)"),
    ZooEntry("vit-tiny", vit_tiny, _CIFAR, 10, "classification",
             "ViT, patch 4, dim 192, depth 6, 3 heads x 64, MLP ratio 4 (~2.7M params)"),
    ZooEntry("unet-small", unet_small, _CIFAR, 4, "segmentation",
             "U-Net, 3 levels from width 16, nearest upsampling + cat skips, 4 classes (~0.49M)"),
)
ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def names() -> list[str]:
    """The zoo's model names, in a stable order."""
    return list(ZOO)


def entry(name: str) -> ZooEntry:
    """The zoo entry for `name`; ModelSpecError listing the valid names if there is none."""
    if name not in ZOO:
        raise ModelSpecError(
            f"unknown zoo model {name!r}; valid names: {', '.join(names())}"
        )
    return ZOO[name]


def create(name: str, **kwargs: object) -> nn.Module:
    """Build a fresh zoo model, e.g. `create("resnet20", num_classes=100)`."""
    zoo_entry = entry(name)
    signature = inspect.signature(zoo_entry.factory)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ModelSpecError(
            f"bad arguments for zoo model {name!r}: {exc}; it accepts {signature}"
        ) from None
    return zoo_entry.factory(**kwargs)


def example_input(name: str, batch: int = 1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A standard-normal input of the model's default shape with `batch` rows."""
    if batch < 1:
        raise ModelSpecError(f"batch must be a positive integer, got {batch}")
    shape = (batch, *entry(name).input_shape[1:])
    return torch.randn(shape, generator=generator)


__all__ = ["ZOO", "ZooEntry", "Task", "create", "entry", "example_input", "names"]
