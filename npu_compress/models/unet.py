"""A small U-Net (Ronneberger et al., MICCAI 2015) for 32x32 segmentation.

Three encoder levels (16, 32, 64 channels), a 128-channel bottleneck, and a decoder that
upsamples by nearest-neighbour interpolation and concatenates the encoder skip: the `cat`
pattern the pruning graph must follow with channel offsets.
"""

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    """(conv3x3 -> BN -> ReLU) x 2; keeps H and W."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Up(nn.Module):
    """Upsample x2 (nearest), concatenate the skip on channels, DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = DoubleConv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, c_in, 2H, 2W)
        return self.conv(torch.cat([x, skip], dim=1))  # (B, c_out, 2H, 2W)


class UNetSmall(nn.Module):
    def __init__(self, num_classes: int = 4, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = DoubleConv(in_channels, w)  # (B, 16, 32, 32)
        self.enc2 = DoubleConv(w, 2 * w)  # (B, 32, 16, 16)
        self.enc3 = DoubleConv(2 * w, 4 * w)  # (B, 64, 8, 8)
        self.bottleneck = DoubleConv(4 * w, 8 * w)  # (B, 128, 4, 4)
        self.pool = nn.MaxPool2d(2)
        self.up3 = Up(8 * w, 4 * w, 4 * w)  # (B, 64, 8, 8)
        self.up2 = Up(4 * w, 2 * w, 2 * w)  # (B, 32, 16, 16)
        self.up1 = Up(2 * w, w, w)  # (B, 16, 32, 32)
        self.head = nn.Conv2d(w, num_classes, 1)  # (B, num_classes, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W), H and W divisible by 8
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d = self.up1(self.up2(self.up3(b, e3), e2), e1)
        return self.head(d)


def unet_small(num_classes: int = 4) -> UNetSmall:
    return UNetSmall(num_classes=num_classes)
