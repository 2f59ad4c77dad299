"""Feature restoration network of stage 2: rebuilds the input cube from the sum of the
spectral and spatial features, so the spatial branch cannot drift into features that
carry no information about the scene."""

from __future__ import annotations

from torch import nn


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel attention (reduction 8, at least 4 channels)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1),
                                nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.body(x))


class RestorationNetwork(nn.Module):
    """3 × [residual block + channel attention] + 1×1 convolution; ``(N, C, H, W)`` → ``(N, C, H, W)``."""

    def __init__(self, channels: int, blocks: int = 3):
        super().__init__()
        stages = []
        for _ in range(blocks):
            stages += [ResidualBlock(channels), ChannelAttention(channels)]
        self.body = nn.Sequential(*stages)
        self.head = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.head(self.body(x))
