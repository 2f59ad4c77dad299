"""Feature restoration network of stage 2: rebuilds the input cube from the sum of the
spectral and spatial features, so the spatial branch cannot drift into features that
carry no information about the scene. Architecture and initialisation as the reference
(FERS ``models/spa_branch.py:163-177``, ``:208``)."""

from __future__ import annotations

from torch import nn

from .initialisation import uniform_init

# Parameter names of the channel-attention biases that versions of this project before the
# faithful-training work had (the reference has none); loading drops them with a note.
LEGACY_ATTENTION_BIAS_SUFFIXES = (".fc.1.bias", ".fc.3.bias")


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation style channel attention: 1×1 convolutions C → C//8 → C **without
    bias**, sigmoid gate (the reference's ``ChannelAttention``)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1, bias=False),
                                nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False), nn.Sigmoid())

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
    """3 × [residual block + channel attention] + 1×1 convolution with bias (``final_conv``);
    ``(N, C, H, W)`` → ``(N, C, H, W)``. Initialised as the reference: weights U(−0.1, 0.1),
    biases U(±1/√fan_in), BatchNorm 1/0."""

    def __init__(self, channels: int, blocks: int = 3):
        super().__init__()
        stages = []
        for _ in range(blocks):
            stages += [ResidualBlock(channels), ChannelAttention(channels)]
        self.body = nn.Sequential(*stages)
        self.head = nn.Conv2d(channels, channels, 1)
        uniform_init(self)

    def forward(self, x):
        return self.head(self.body(x))


def drop_legacy_attention_biases(state: dict, log, source: str = "") -> dict:
    """``state`` without the channel-attention biases of older versions of this project (they are
    not part of the reference network); says so when it drops any."""
    dropped = [k for k in state if k.endswith(LEGACY_ATTENTION_BIAS_SUFFIXES) and ".fc." in k]
    if dropped:
        log(f"note: {source or 'restoration state'}: dropped {len(dropped)} channel-attention bias tensors "
            "written by an older version (the reference network has none)")
    return {k: v for k, v in state.items() if k not in dropped}
