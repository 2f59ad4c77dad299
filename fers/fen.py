"""The FEN: the pruned stage-1 network that gives the spectral features.

ConvH (reflect-pad 4, 1×1 conv C→64) → layer1 of the teacher backbone (no stem) → crop the
pad → feature projection (1×1 256→h, ReLU, 1×1 h→C, ReLU) = spectral features ``(N, C, H, W)``.
The inference copy (:meth:`FEN.prepare_inference`) computes the same features with less work: it
pads after ConvH, only layer1's receptive radius, and runs layer1's last 3×3 convolutions without
zero padding (each shrinks the map by its radius, so no crop is left at the end).
The pixel-classifier head (1×1 C→1) belongs to the same module (``pc.pt``) and is used in training.
Its three parts are saved separately as ``convh.pt``, ``enc.pt`` and ``pc.pt``, the layout of
the reference release.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .backbones import ARCHITECTURES, layer_channels, make_layer
from .initialisation import xavier_normal_init

REFERENCE_BACKBONE = "wide_resnet101_2"
PAD = 4


def projection_width(channels: int) -> int:
    """Hidden width h of the feature projection: 256 if C > 128 else 128."""
    return 256 if channels > 128 else 128


class ConvH(nn.Module):
    """Trainable 1×1 spectral input layer (C→64, no bias) that replaces the ResNet stem,
    after reflect padding by 4 pixels so layer1's 3×3 convolutions see no zero border.

    ``pad_after`` (inference): pad the 64 output channels instead of the C input bands; a 1×1
    convolution acts on each pixel alone, so it commutes with any re-indexing of the pixels."""

    pad_after = False

    def __init__(self, channels: int, pad: int = PAD):
        super().__init__()
        self.pad = pad
        self.convh = nn.Conv2d(channels, 64, 1, bias=False)
        xavier_normal_init(self.convh)  # reference initialisation (FERD models/resnet.py:44-54)

    def forward(self, x):
        if self.pad_after:
            return F.pad(self.convh(x), [self.pad] * 4, mode="reflect")
        return self.convh(F.pad(x, [self.pad] * 4, mode="reflect"))


def receptive_radius(stage: nn.Sequential) -> int:
    """Pixels on each side that one output pixel of a stride-1 ResNet stage depends on: the sum of
    the radii of the convolutions on each block's main path (the shortcut is 1×1)."""
    return sum(conv.dilation[0] * (conv.kernel_size[0] // 2) for block in stage
               for conv in block.children() if isinstance(conv, nn.Conv2d))


def trim_padding(stage: nn.Sequential, pixels: int) -> int:
    """Run the last 3×3 convolutions of a stride-1 ResNet ``stage`` without zero padding ("valid"),
    in place, as far as their radii add up to at most ``pixels``; returns the pixels trimmed.

    Exact for the central pixels of an input padded by ``pixels``: a convolution's zero padding only
    reaches outputs within the radii of the convolutions from it to the end, so when these add up to
    at most ``pixels`` (the last convolutions), the central outputs never see it. Each trimmed
    convolution's block crops its shortcut by the same amount (before its 1×1 downsample, which
    then works on fewer pixels too); 1×1 convolutions run on their full input. For inference copies
    only: the stage's output is ``2 × trimmed`` pixels smaller, so it no longer fits the layers after it."""
    trimmed = 0
    for block in reversed(stage):
        for conv in reversed([m for m in block.children() if isinstance(m, nn.Conv2d)]):
            radius = conv.dilation[0] * (conv.kernel_size[0] // 2)
            if radius == 0:
                continue
            if trimmed + radius > pixels or conv.padding != (radius, radius) or conv.stride != (1, 1):
                return trimmed  # an earlier convolution's padding reaches the centre: it stays
            conv.padding = (0, 0)
            block.shortcut_crop += radius
            trimmed += radius
    return trimmed


class Layer1Encoder(nn.Module):
    """layer1 of a torchvision ResNet (keys ``layer1.*``, the content of ``enc.pt``)."""

    def __init__(self, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        block, blocks, base_width = ARCHITECTURES[backbone]
        self.layer1, self.out_channels = make_layer(block, 64, 64, blocks[0], 1, base_width)

    def forward(self, x):
        return self.layer1(x)


class PixelClassifier(nn.Module):
    """The SFAM pixel classifier (``pc.pt``; FERD ``Pixel_Classifier``): a shared feature projection
    (conv1 in→h, ReLU, conv2 h→C, ReLU) and the head conv3 C→1, all 1×1 convolutions with bias,
    initialised by ``xavier_normal_`` with biases 0 (the reference's scheme).

    In training it compares two maps: ``p1 = project(x1)`` (teacher), ``p2 = project(x2)`` (decoder)
    and classifies ``|p2 − p1|`` (:meth:`difference_logits`); at detection only ``p1`` is used: the
    FEN's spectral features.
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        hidden = projection_width(channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)
        self.conv3 = nn.Conv2d(channels, 1, 1)
        xavier_normal_init(self.conv1, self.conv2, self.conv3)

    def project(self, features):
        """Spectral features ``(N, C, H, W)`` from backbone features ``(N, in, H, W)``."""
        return F.relu(self.conv2(F.relu(self.conv1(features), inplace=True)), inplace=True)

    def difference_logits(self, teacher_features, decoder_features):
        """``(conv3(|p2 − p1|), p1)``: the classifier's logits ``(N, 1, H, W)`` on the absolute
        difference of the two projections, and the teacher's projection ``p1`` ``(N, C, H, W)``
        (the reference's forward returns ``sigmoid`` of these logits and ``p1``)."""
        p1 = self.project(teacher_features)
        p2 = self.project(decoder_features)
        return self.conv3((p2 - p1).abs()), p1

    def forward(self, features):
        """Per-pixel logits ``(N, 1, H, W)`` of one map: ``conv3(project(features))``."""
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

    trimmed = 0  # pixels on each side that layer1's valid convolutions remove (inference copies)

    def prepare_inference(self):
        """Exact shortcuts for inference (once; the features inside are the same): pad after ConvH;
        pad only as far as layer1 can see (its receptive radius: 3 pixels for Wide-ResNet-101-2,
        whose 3 blocks have one 3×3 convolution each), since the crop removes the padding again;
        and instead of computing layer1 on the padding and cropping it, let its last 3×3
        convolutions drop their zero padding (:func:`trim_padding`; all of them for
        Wide-ResNet-101-2 and ResNet-18, the last 4 of ResNet-34's 6), each shrinking the map by
        its radius until it is the input's size (64×64: 7.24 → 6.59 GFLOP for the FEN)."""
        if self.convh.pad_after:
            return
        self.convh.pad_after = True
        self.convh.pad = min(self.convh.pad, receptive_radius(self.encoder.layer1))
        self.trimmed = trim_padding(self.encoder.layer1, self.convh.pad)

    def backbone_features(self, x):
        """layer1 features cropped back to the input size ``(N, 256, H, W)``."""
        features = self.encoder(self.convh(x))
        crop = self.convh.pad - self.trimmed
        if crop:  # a Python int: torch.fx traces the slicing as written
            features = features[:, :, crop:-crop, crop:-crop]
        return features

    def forward(self, x):
        return self.classifier.project(self.backbone_features(x))
