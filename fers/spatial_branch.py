"""The "rebellious student": the spatial branch of FERS.

Conv2RGB (1×1 C→256, ReLU, 1×1 256→3, sigmoid) compresses the spectrum to a pseudo-RGB
image; a frozen ImageNet ResNet-34 (conv1 … layer3) extracts spatial features; a light
spatial pyramid pooling (average pools to 1, 2 and 4 cells, bilinear back to the input
size, 768 → 128 → C) and squeeze-and-excitation (reduction 8) give the spatial features
``(N, C, H, W)``. Parameter names follow the reference ``spa_fen.pt``; Conv2RGB and the pyramid
pooling (with its SE) carry the reference's initialisation (FERS ``models/spa_branch.py:9-51``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNet
from .initialisation import uniform_init

SPATIAL_BACKBONE = "resnet34"
PYRAMID_SIZES = (1, 2, 4)


class Conv2RGB(nn.Module):
    """Spectral compression to three channels in [0, 1] (``initial_conv.conv`` / ``.hidden``)."""

    def __init__(self, channels: int, hidden: int = 256):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 1)
        self.hidden = nn.Conv2d(hidden, 3, 1)
        uniform_init(self)

    def forward(self, x):
        return torch.sigmoid(self.hidden(F.relu(self.conv(x), inplace=True)))


class SqueezeExcitation(nn.Module):
    """Channel re-weighting (Hu et al., CVPR 2018), 1×1 convolutions without bias."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1, bias=False),
                                nn.ReLU(inplace=True),
                                nn.Conv2d(channels // reduction, channels, 1, bias=False),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(F.adaptive_avg_pool2d(x, 1))


class LightSPP(nn.Module):
    """Light spatial pyramid pooling: pooled context at 1×1, 2×2 and 4×4 cells, resized to the
    output size, fused by 1×1 convolutions (768 → 128 → C, ReLU, no bias), then SE.

    ``factored`` (set by :meth:`prepare_inference`): the first fusing convolution is applied to each
    pooled level at its own 1, 2 or 4 cells before resizing. A 1×1 convolution and bilinear resizing
    are both linear and act on different axes, so they commute: the same features, without the
    768-channel concatenation at full size (0.8 of 9.6 GFLOP per 64×64 scene at 200 bands).
    """

    factored = False

    def __init__(self, in_channels: int, channels: int, reduction: int = 8):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(in_channels * len(PYRAMID_SIZES), 128, 1, bias=False),
                                  nn.ReLU(inplace=True),
                                  nn.Conv2d(128, channels, 1, bias=False),
                                  nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(channels, reduction)
        uniform_init(self)

    def prepare_inference(self):
        self.factored = True

    def forward(self, features, size):
        if self.factored:
            fused = self.fuse[3](self.fuse[2](self.fuse[1](self._factored_first_fuse(features, size))))
            return self.se(fused)
        pooled = [F.interpolate(F.adaptive_avg_pool2d(features, cells), size=size, mode="bilinear",
                                align_corners=False) for cells in PYRAMID_SIZES]
        return self.se(self.fuse(torch.cat(pooled, 1)))

    def _factored_first_fuse(self, features, size):
        """``fuse[0](cat(resized levels))`` as ``Σ resize(fuse[0]'s block of the level · pooled level)``."""
        width = self.fuse[0].in_channels // len(PYRAMID_SIZES)
        total = None
        for index, cells in enumerate(PYRAMID_SIZES):  # Python loop and slices: torch.fx can trace it
            weight = self.fuse[0].weight[:, index * width:(index + 1) * width]
            level = F.conv2d(F.adaptive_avg_pool2d(features, cells), weight)
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            total = level if total is None else total.add_(level)
        return total


class SpatialBranch(nn.Module):
    """Cube ``(N, C, H, W)`` → spatial features ``(N, C, H, W)``."""

    def __init__(self, channels: int, backbone: str = SPATIAL_BACKBONE):
        super().__init__()
        self.channels = channels
        self.backbone = backbone
        resnet = ResNet(backbone, stages=3)
        self.initial_conv = Conv2RGB(channels)
        self.get_features = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                          resnet.layer1, resnet.layer2, resnet.layer3)
        self.spp = LightSPP(resnet.out_channels[-1], channels)

    def load_backbone_state(self, state: dict):
        """Load a torchvision ImageNet ResNet state dict into ``get_features``."""
        names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
        own = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in names:
                own[f"get_features.{names[head]}.{rest}"] = value
        expected = {k for k in self.state_dict() if k.startswith("get_features.")}
        missing = expected - set(own)
        if missing:
            raise KeyError(f"backbone state lacks {len(missing)} keys, e.g. {sorted(missing)[0]}")
        self.load_state_dict(own, strict=False)

    def freeze_backbone(self):
        self.get_features.requires_grad_(False)
        return self

    def trainable_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("get_features.")]

    def forward(self, x):
        features = self.get_features(self.initial_conv(x))
        return self.spp(features, x.shape[-2:])
