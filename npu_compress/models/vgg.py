"""VGG-11 / VGG-16 with BatchNorm (Simonyan & Zisserman 2015), CIFAR variant.

Five max-pools take 32x32 to 1x1, so the classifier is a single Linear(512, num_classes)
after `torch.flatten(x, 1)`: the flatten-into-linear pattern the pruning graph must follow.
"""

import torch
from torch import nn

POOL = "M"
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
              512, 512, 512, POOL, 512, 512, 512, POOL),
}


def make_features(config: tuple[int | str, ...], in_channels: int = 3) -> nn.Sequential:
    """Conv3x3-BN-ReLU for each int in the config, MaxPool2d(2) for each "M"."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for item in config:
        if item == POOL:
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(c_in, item, 3, padding=1, bias=False), nn.BatchNorm2d(item),
                   nn.ReLU()]
        c_in = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, config: tuple[int | str, ...], num_classes: int = 10) -> None:
        super().__init__()
        self.features = make_features(config)  # (B, 512, 1, 1) for a 32x32 input
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = torch.flatten(self.features(x), 1)  # (B, 512)
        return self.classifier(x)  # (B, num_classes)


def vgg11(num_classes: int = 10) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes)
