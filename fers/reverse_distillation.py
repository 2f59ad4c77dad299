"""The stage-1 (FERD) training network: reverse distillation with a spectral input layer.

Teacher: ConvH → layers 1-3 of an ImageNet ResNet (frozen, eval mode). Student: a one-class
bottleneck that fuses the three teacher scales, then a decoder of transposed-conv ResNet
blocks that rebuilds the three scales (Deng & Li, "Anomaly Detection via Reverse Distillation
from One-Class Embedding", CVPR 2022). FERD adds a reconstruction head (decoder features →
cube, a 1×1 convolution without bias as released) and the SFAM pixel classifier, which classifies
the absolute difference of the projections of the teacher's and the decoder's full-resolution
features (FERD ``Pixel_Classifier``). After training it is pruned to the :class:`~fers.fen.FEN`.
Every trained module carries the reference's initialisation (:mod:`fers.initialisation`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ARCHITECTURES, BasicBlock, Bottleneck, conv1x1, conv3x3, make_layer
from .fen import FEN, REFERENCE_BACKBONE
from .initialisation import kaiming_fan_out_init, xavier_normal_init


def deconv2x2(in_planes: int, out_planes: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_planes, out_planes, 2, stride=2, bias=False)


class DeBasicBlock(nn.Module):
    """BasicBlock whose stride-2 convolution is a 2×2 transposed convolution (upsampling)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, upsample=None, base_width=64):
        super().__init__()
        self.conv1 = deconv2x2(inplanes, planes) if stride == 2 else conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x):
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class DeBottleneck(nn.Module):
    """Bottleneck whose stride-2 convolution is a 2×2 transposed convolution (upsampling)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, upsample=None, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if stride == 2 else conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x):
        identity = x if self.upsample is None else self.upsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def make_decoder_layer(block, inplanes, planes, blocks, base_width):
    upsample = nn.Sequential(deconv2x2(inplanes, planes * block.expansion), nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, 2, upsample, base_width)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes, base_width=base_width) for _ in range(1, blocks)]
    return nn.Sequential(*layers), inplanes


def decoder_architecture(backbone: str) -> str:
    """The decoder mirrors WRN-50-2 for the WRN-101-2 teacher (as in reverse distillation)."""
    return "wide_resnet50_2" if backbone == "wide_resnet101_2" else backbone


class OneClassBottleneck(nn.Module):
    """Fuses the three teacher scales into one compact embedding (the "OCBE" of reverse
    distillation): scales 1 and 2 are brought to scale 3 by stride-2 3×3 convolutions, the
    three are concatenated and a ResNet stage of stride 2 compresses them."""

    def __init__(self, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        block, _, base_width = ARCHITECTURES[backbone]
        e = block.expansion
        self.conv1 = conv3x3(64 * e, 128 * e, 2)
        self.bn1 = nn.BatchNorm2d(128 * e)
        self.conv2 = conv3x3(128 * e, 256 * e, 2)
        self.bn2 = nn.BatchNorm2d(256 * e)
        self.conv3 = conv3x3(128 * e, 256 * e, 2)
        self.bn3 = nn.BatchNorm2d(256 * e)
        self.relu = nn.ReLU(inplace=True)
        self.bn_layer, self.out_channels = make_layer(block, 256 * e * 3, 512, 3, 2, base_width)
        kaiming_fan_out_init(self)  # reference initialisation (FERD models/resnet.py:469-474)

    def forward(self, features):
        scale1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(features[0]))))))
        scale2 = self.relu(self.bn3(self.conv3(features[1])))
        return self.bn_layer(torch.cat([scale1, scale2, features[2]], 1))


class Decoder(nn.Module):
    """Three upsampling stages; returns the rebuilt scales in the teacher's order (fine → coarse)."""

    def __init__(self, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        arch = decoder_architecture(backbone)
        block, blocks, base_width = ARCHITECTURES[arch]
        deblock = DeBottleneck if block is Bottleneck else DeBasicBlock
        inplanes = 512 * block.expansion
        self.layer1, inplanes = make_decoder_layer(deblock, inplanes, 256, blocks[0], base_width)
        self.layer2, inplanes = make_decoder_layer(deblock, inplanes, 128, blocks[1], base_width)
        self.layer3, inplanes = make_decoder_layer(deblock, inplanes, 64, blocks[2], base_width)
        kaiming_fan_out_init(self)  # reference initialisation (FERD models/de_resnet.py:216-221)

    def forward(self, x, sizes=None):
        """``sizes``: the teacher's (fine, middle, coarse) spatial sizes; each stage's output is
        resized to them when the input size is not a multiple of 8 (training uses multiples)."""
        outputs = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3)):
            x = layer(x)
            target = None if sizes is None else tuple(sizes[2 - index])
            if target is not None and tuple(x.shape[-2:]) != target:
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            outputs.append(x)
        return outputs[::-1]


class FERDNetwork(nn.Module):
    """Stage-1 training network on cubes ``(N, C, H, W)`` (training crops are multiples of 8).

    ``forward`` returns a dict: ``teacher`` and ``student`` (lists of three ``(N, c_s, h_s, w_s)``
    maps, fine → coarse), ``reconstruction`` ``(N, C, H, W)``, ``classifier_logits``
    ``(N, 1, H, W)`` = ``conv3(|p2 − p1|)`` and ``projection`` = ``p1`` ``(N, C, H, W)``, with p1, p2
    the classifier's projections of the cropped teacher and decoder full-resolution maps (FERD
    ``Pixel_Classifier``; the reference's ``out`` is the sigmoid of these logits).
    """

    def __init__(self, channels: int, backbone: str = REFERENCE_BACKBONE):
        super().__init__()
        block, blocks, base_width = ARCHITECTURES[backbone]
        self.channels = channels
        self.backbone = backbone
        self.fen = FEN(channels, backbone)  # ConvH (trainable), layer1 (frozen), classifier (trainable)
        inplanes = self.fen.encoder.out_channels
        self.layer2, inplanes = make_layer(block, inplanes, 128, blocks[1], 2, base_width)
        self.layer3, _ = make_layer(block, inplanes, 256, blocks[2], 2, base_width)
        self.bottleneck = OneClassBottleneck(backbone)
        self.decoder = Decoder(backbone)
        # de_ConvH of the reference: no bias (FERD models/de_resnet.py:30-43), xavier_normal_
        self.reconstruction_head = nn.Conv2d(self.fen.encoder.out_channels, channels, 1, bias=False)
        xavier_normal_init(self.reconstruction_head)

    def frozen_modules(self):
        """The ImageNet teacher: layers 1-3 (ConvH is trained)."""
        return [self.fen.encoder, self.layer2, self.layer3]

    def trainable_parameters(self):
        frozen = {id(p) for module in self.frozen_modules() for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def freeze_teacher(self):
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # BatchNorm statistics of the teacher never move
        return self

    def load_backbone_state(self, state: dict):
        """Load an ImageNet ResNet state dict (torchvision names) into the teacher layers."""
        own = {f"fen.encoder.{k}": v for k, v in state.items() if k.startswith("layer1.")}
        own.update({k: v for k, v in state.items() if k.startswith(("layer2.", "layer3."))})
        expected = {k for k in self.state_dict() if k.startswith(("fen.encoder.", "layer2.", "layer3."))}
        missing = expected - set(own)
        if missing:
            raise KeyError(f"backbone state lacks {len(missing)} teacher keys, e.g. {sorted(missing)[0]}")
        self.load_state_dict(own, strict=False)

    def forward(self, x):
        pad = self.fen.convh.pad
        stem = self.fen.convh(x)
        f1 = self.fen.encoder(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        teacher = [f1, f2, f3]
        student = self.decoder(self.bottleneck(teacher), [t.shape[-2:] for t in teacher])
        crop = (slice(None), slice(None), slice(pad, -pad), slice(pad, -pad))
        logits, projection = self.fen.classifier.difference_logits(f1[crop], student[0][crop])
        return {
            "teacher": teacher,
            "student": student,
            "reconstruction": self.reconstruction_head(student[0])[crop],
            "classifier_logits": logits,
            "projection": projection,
        }
