"""A small CNN for the 8x8 scikit-learn digits: the model the quick demo prunes in seconds.

Wide enough (7.1 M MACs) that compute, not per-layer overhead, dominates its latency on the
default profile, so a latency budget of 50% is reachable (the unprunable floor is ~20%).
"""

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (padding 1, no bias: BN follows) -> BatchNorm -> ReLU; keeps H and W."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    """conv 1->64, conv 64->128, maxpool, conv 128->128, global average pool, linear 128->10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 64),  # (B, 64, 8, 8)
            conv_bn_relu(64, 128),  # (B, 128, 8, 8)
            nn.MaxPool2d(2),  # (B, 128, 4, 4)
            conv_bn_relu(128, 128),  # (B, 128, 4, 4)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # (B, 128, 1, 1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8)
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))  # (B, num_classes)


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes=num_classes)
