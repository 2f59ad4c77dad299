"""ResNet backbones written once, with torchvision-compatible parameter names, so the
ImageNet files published by torchvision load with ``strict=True``.

Used by the stage-1 teacher (Wide-ResNet-101-2 layers 1-3), the FEN (its layer1) and the
spatial branch (ResNet-34 conv1 … layer3). He et al., "Deep Residual Learning", CVPR 2016;
Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import FersError
from .io import sha256_file

# torchvision's published ImageNet files; the hex digits start the file's SHA-256.
IMAGENET_WEIGHTS = {
    "wide_resnet101_2": "https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth",
    "wide_resnet50_2": "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}
WEIGHTS_DIR_ENV = "FERS_WEIGHTS_DIR"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """What the ResNet blocks share: the shortcut, optionally cropped for valid convolutions.

    ``shortcut_crop`` (0 as trained): pixels cropped from each side of the block's input before the
    shortcut (and its 1×1 downsample), set by :func:`fers.fen.trim_padding` in an inference copy whose
    3×3 convolutions run without zero padding, so the shortcut matches their smaller output."""

    shortcut_crop = 0

    def shortcut(self, x):
        crop = self.shortcut_crop
        if crop:  # a Python int: torch.fx traces the slicing as written
            x = x[:, :, crop:-crop, crop:-crop]
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(ResidualBlock):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # in place: BatchNorm's backward does not need its output; a method call, so torch.fx keeps it
        out.add_(identity)
        return self.relu(out)


class Bottleneck(ResidualBlock):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out.add_(identity)
        return self.relu(out)


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1, base_width: int = 64):
    """A ResNet stage; returns ``(nn.Sequential, out_channels)``."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample, base_width)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes, base_width=base_width) for _ in range(1, blocks)]
    return nn.Sequential(*layers), inplanes


# block, blocks per stage, base width
ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 64),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 128),
    "wide_resnet101_2": (Bottleneck, (3, 4, 23, 3), 128),
}


class ResNet(nn.Module):
    """ResNet trunk with torchvision names (``conv1 bn1 relu maxpool layer1..layer4``), no head.

    ``stages`` keeps only the first stages (3 → layer1..layer3), as the method never uses layer4.
    """

    def __init__(self, arch: str, stages: int = 4):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {arch!r}; choose from {sorted(ARCHITECTURES)}")
        block, blocks, base_width = ARCHITECTURES[arch]
        self.arch = arch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        self.out_channels = []
        for index in range(stages):
            layer, inplanes = make_layer(block, inplanes, 64 * 2 ** index, blocks[index],
                                         stride=1 if index == 0 else 2, base_width=base_width)
            setattr(self, f"layer{index + 1}", layer)
            self.out_channels.append(inplanes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(len(self.out_channels)):
            x = getattr(self, f"layer{index + 1}")(x)
            features.append(x)
        return features


def layer_channels(arch: str) -> list[int]:
    """Output channels of layer1..layer4 of ``arch`` (without building it)."""
    block, _, _ = ARCHITECTURES[arch]
    return [64 * 2 ** i * block.expansion for i in range(4)]


# --------------------------------------------------------------------------- ImageNet weights


def imagenet_file_name(arch: str) -> str:
    return IMAGENET_WEIGHTS[arch].rsplit("/", 1)[1]


def find_local_weights(arch: str, weights: str | os.PathLike | None) -> Path | None:
    """A local ImageNet file for ``arch``: ``weights`` itself if it is a file, else the
    torchvision file name inside ``weights`` (a folder), ``$FERS_WEIGHTS_DIR`` or torch.hub's cache."""
    name = imagenet_file_name(arch)
    folders = []
    if weights is not None:
        weights = Path(weights)
        if weights.is_file():
            return weights
        if not weights.is_dir():
            raise FersError(f"{weights}: no such ImageNet weights file or folder (`backbone_weights`)")
        folders.append(weights)
    if os.environ.get(WEIGHTS_DIR_ENV):
        folders.append(Path(os.environ[WEIGHTS_DIR_ENV]))
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def load_imagenet_weights(model: ResNet, weights=None, pretrained: bool = True) -> str:
    """Load torchvision's ImageNet weights into ``model`` (``strict`` on the stages it has).

    ``weights``: a file or folder (else ``$FERS_WEIGHTS_DIR``, the torch.hub cache, then a
    hash-checked download). ``pretrained=False`` is the explicit, loud choice of a random init.
    Returns a description of where the weights came from, for the run's records.
    """
    arch = model.arch
    if not pretrained:
        warnings.warn(f"{arch}: `no_pretrained`: the backbone is RANDOMLY initialised, "
                      "not ImageNet; results will not match the paper", stacklevel=2)
        return "random (`no_pretrained`)"
    expected = imagenet_file_name(arch).rsplit("-", 1)[1].split(".")[0]
    local = find_local_weights(arch, weights)
    if local is not None:
        if sha256_file(local)[: len(expected)] != expected:
            raise FersError(f"{local}: not torchvision's {arch} ImageNet file (SHA-256 does not start "
                            f"with {expected}); download {IMAGENET_WEIGHTS[arch]}")
        state = torch.load(local, map_location="cpu", weights_only=True)
        source = str(local)
    else:
        try:
            state = torch.hub.load_state_dict_from_url(IMAGENET_WEIGHTS[arch], map_location="cpu",
                                                       check_hash=True, progress=False)
        except Exception as error:
            raise FersError(
                f"cannot get the {arch} ImageNet weights ({error.__class__.__name__}); offline, download "
                f"{IMAGENET_WEIGHTS[arch]} elsewhere and pass `backbone_weights` FILE_OR_FOLDER "
                f"(or set {WEIGHTS_DIR_ENV}); `no_pretrained` trains from a random init instead") from None
        source = IMAGENET_WEIGHTS[arch]
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=True)
    return source
