"""The FEN: the pruned stage-1 network that gives the spectral features.

ConvH (reflect-pad 4, 1×1 conv C→64) → layer1 of the teacher backbone (no stem) → crop the
pad → feature projection (1×1 256→h, ReLU, 1×1 h→C, ReLU) = spectral features ``(N, C, H, W)``.
The pixel-classifier head (1×1 C→1) belongs to the same module (``pc.pt``) and is used in training.
Its three parts are saved separately as ``convh.pt``, ``enc.pt`` and ``pc.pt``, the layout of
the reference release.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .backbones import ARCHITECTURES, layer_channels, make_layer

REFERENCE_BACKBONE = "wide_resnet101_2"
PAD = 4


def projection_width(channels: int) -> int:
    """Hidden width h of the feature projection: 256 if C > 128 else 128."""
    return 256 if channels > 128 else 128


class ConvH(nn.Module):
    """Trainable 1×1 spectral input layer (C→64, no bias) that replaces the ResNet stem,
    after reflect padding by 4 pixels so layer1's 3×3 convolutions see no zero border."""

    def __init__(self, channels: int, pad: int = PAD):
        super().__init__()
        self.pad = pad
        self.convh = nn.Conv2d(channels, 64, 1, bias=False)

    def forward(self, x):
        return self.convh(F.pad(x, [self.pad] * 4, mode="reflect"))


class Layer1Encoder(nn.Module):
    """layer1 of a torchvision ResNet (keys ``layer1.*``, the content of ``enc.pt``)."""

    def __init__(self, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        block, blocks, base_width = ARCHITECTURES[backbone]
        self.layer1, self.out_channels = make_layer(block, 64, 64, blocks[0], 1, base_width)

    def forward(self, x):
        return self.layer1(x)


class PixelClassifier(nn.Module):
    """Feature projection and pixel-classifier head (``pc.pt``): conv1 in→h, conv2 h→C, conv3 C→1."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        hidden = projection_width(channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)
        self.conv3 = nn.Conv2d(channels, 1, 1)

    def project(self, features):
        """Spectral features ``(N, C, H, W)`` from backbone features ``(N, in, H, W)``."""
        return F.relu(self.conv2(F.relu(self.conv1(features))))

    def forward(self, features):
        """Per-pixel logits ``(N, 1, H, W)``."""
        return self.conv3(self.project(features))


class FEN(nn.Module):
    """Feature extraction network: cube ``(N, C, H, W)`` → spectral features ``(N, C, H, W)``."""

    def __init__(self, channels: int, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        self.channels = channels
        self.backbone = backbone
        self.convh = ConvH(channels)
        self.encoder = Layer1Encoder(backbone)
        self.classifier = PixelClassifier(layer_channels(backbone)[0], channels)

    def backbone_features(self, x):
        """layer1 features cropped back to the input size ``(N, 256, H, W)``."""
        features = self.encoder(self.convh(x))
        pad = self.convh.pad
        return features[:, :, pad:-pad, pad:-pad]

    def forward(self, x):
        return self.classifier.project(self.backbone_features(x))
