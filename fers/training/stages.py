"""The two training stages behind one interface (:class:`Stage`): stage 1 (FERD) trains the spectral
FEN by reverse distillation, stage 2 (FERS) the rebellious student on the frozen FEN."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..backbones import ResNet, load_imagenet_weights
from ..checkpoints import (STAGE1_FILES, band_folder, load_fen, save_fen, save_restoration,
                           save_spatial_branch)
from ..errors import FersError, ParameterError
from ..fen import FEN
from ..outputs import OutputFolder
from ..losses import BCE_INPUTS, STAGE1_WEIGHTS, STAGE2_WEIGHTS, stage1_loss, stage2_loss
from ..restoration import RestorationNetwork
from ..reverse_distillation import FERDNetwork
from ..spatial_branch import SPATIAL_BACKBONE, SpatialBranch

SPATIAL_BN_MODES = ("eval", "train")


class Stage(Protocol):
    """What the loop (:func:`fers.training.loop.fit`) and the run folder need from a stage."""

    name: str  # "stage1" | "stage2"
    channels: int
    weights: dict  # loss term → weight

    def modules(self) -> dict:
        """The networks whose state the run folder saves, by name."""

    def trainable_parameters(self) -> list:
        """The parameters the optimiser updates."""

    def wrap(self, wrapper) -> None:
        """Wrap the trained module for the training forward pass (DDP)."""

    def train_mode(self) -> None:
        """Networks in training mode (the frozen parts stay as they must)."""

    def eval_mode(self) -> None:
        """Every network in eval mode."""

    def loss(self, x: torch.Tensor, training: bool = True) -> tuple:
        """``(total, {term: value})`` on a batch."""

    def frozen_keys(self) -> dict:
        """Per entry of :meth:`modules`, the state keys training never changes."""

    def selected_state(self) -> dict:
        """What model selection keeps of the current epoch."""

    def load_selected(self, state: dict) -> None:
        """Restore what :meth:`selected_state` kept."""

    def detector_modules(self) -> dict:
        """``{"fen": ..., "spatial": ...}`` for the test-set selection metric."""

    def export(self, checkpoint_dir, training_info: dict, card: dict | None = None) -> Path:
        """Write the checkpoints (``training_info`` and the model ``card`` in their config); returns
        their folder."""

    def describe(self) -> dict:
        """The networks, as recorded in config.json."""


def cpu_state(module: nn.Module, skip=()) -> dict:
    """A CPU copy of ``module``'s state, without the entries named in ``skip``."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k not in skip}


def _load_over(module: nn.Module, state: dict) -> None:
    """Load ``state`` (possibly without the frozen entries) over ``module``'s current state, strictly:
    entries missing from ``state`` keep their (frozen, never changing) values."""
    full = module.state_dict()
    unknown = set(state) - set(full)
    if unknown:
        raise KeyError(f"state entries the network does not have, e.g. {sorted(unknown)[0]}")
    full.update(state)
    module.load_state_dict(full)


def _keys_under(module: nn.Module, submodules, parameters_only: bool = False) -> set:
    """State-dict keys of ``module`` that belong to ``submodules`` (only their parameters if asked)."""
    prefixes = tuple(f"{name}." for name, m in module.named_modules() if any(m is s for s in submodules))
    parameters = {name for name, _ in module.named_parameters()}
    return {k for k in module.state_dict() if k.startswith(prefixes) and (not parameters_only or k in parameters)}


class Stage1:
    """FERD: ImageNet teacher (frozen, eval) → bottleneck → decoder; ConvH, bottleneck, decoder,
    reconstruction head and SFAM classifier are trained. Exports the pruned FEN."""

    name = "stage1"
    weights = STAGE1_WEIGHTS
    wavelengths = None  # the C training band centres (nm) recorded in the exported checkpoints

    def __init__(self, channels: int, backbone: str, device, bce_input: str = "logits",
                 backbone_weights=None, pretrained: bool = True, load_backbone: bool = True):
        if bce_input not in BCE_INPUTS:
            raise ParameterError(f"`bce_input` {bce_input}: choose one of {', '.join(BCE_INPUTS)}")
        self.channels = channels
        self.backbone = backbone
        self.bce_input = bce_input
        self.net = FERDNetwork(channels, backbone)
        self.weights_source = "restored from the run's state"
        if load_backbone:
            teacher = ResNet(backbone, stages=3)
            self.weights_source = load_imagenet_weights(teacher, backbone_weights, pretrained)
            self.net.load_backbone_state(teacher.state_dict())
        self.net.freeze_teacher().to(device)
        self.forward_module = self.net

    def modules(self) -> dict:
        return {"net": self.net}

    def trainable_parameters(self):
        return self.net.trainable_parameters()

    def wrap(self, wrapper) -> None:
        self.forward_module = wrapper(self.net)

    def train_mode(self) -> None:
        self.net.train()  # FERDNetwork.train keeps the teacher in eval mode

    def eval_mode(self) -> None:
        self.net.eval()

    def loss(self, x, training: bool = True):
        outputs = (self.forward_module if training else self.net)(x)
        return stage1_loss(x, outputs, self.bce_input)

    def frozen_keys(self) -> dict:
        """Per entry of :meth:`modules`, the state keys that training never changes: the teacher's
        weights and BatchNorm buffers (always in eval mode)."""
        return {"net": _keys_under(self.net, self.net.frozen_modules())}

    def selected_state(self) -> dict:
        return {"fen": cpu_state(self.net.fen, _keys_under(self.net.fen, [self.net.fen.encoder]))}

    def load_selected(self, state: dict) -> None:
        _load_over(self.net.fen, state["fen"])

    def detector_modules(self):
        return {"fen": self.net.fen, "spatial": None}

    def export(self, checkpoint_dir, training_info: dict, card: dict | None = None) -> Path:
        """``convh.pt``, ``enc.pt``, ``pc.pt`` in ``<checkpoint_dir>/<C>bands/``; their config also
        records how the FEN was trained."""
        folder = band_folder(checkpoint_dir, self.channels)
        with OutputFolder(folder, "`checkpoint_dir`", "the checkpoints") as staging:
            save_fen(staging, self.net.fen, training_info, self.wavelengths, card)
        return folder

    def describe(self) -> dict:
        return {"backbone": self.backbone, "bce_input": self.bce_input, "backbone_weights": self.weights_source}


class RebelliousStudent(nn.Module):
    """The trainable part of stage 2: spatial branch and restoration network.

    ``forward(x, spectral)`` → ``(spatial features, restored cube)``, all ``(N, C, H, W)``.
    """

    def __init__(self, spatial: SpatialBranch, restoration: RestorationNetwork):
        super().__init__()
        self.spatial = spatial
        self.restoration = restoration

    def forward(self, x, spectral):
        spatial = self.spatial(x)
        return spatial, self.restoration(spectral + spatial)


class Stage2:
    """FERS: frozen FEN (eval) gives the spectral features; the spatial branch (its ResNet-34
    frozen) and the restoration network are trained. Exports ``spa_fen.pt`` and ``restoration.pt``."""

    name = "stage2"
    weights = STAGE2_WEIGHTS
    wavelengths = None  # the C training band centres (nm) recorded in the exported checkpoints

    def __init__(self, channels: int, fen: FEN, device, spatial_bn: str = "eval", backbone_weights=None,
                 pretrained: bool = True, load_backbone: bool = True):
        if spatial_bn not in SPATIAL_BN_MODES:
            raise ParameterError(f"`spatial_bn` {spatial_bn}: choose one of {', '.join(SPATIAL_BN_MODES)}")
        self.channels = channels
        self.spatial_bn = spatial_bn
        self.fen = fen.to(device).eval().requires_grad_(False)
        spatial = SpatialBranch(channels, SPATIAL_BACKBONE)
        self.weights_source = "restored from the run's state"
        if load_backbone:
            resnet = ResNet(SPATIAL_BACKBONE, stages=3)
            self.weights_source = load_imagenet_weights(resnet, backbone_weights, pretrained)
            spatial.load_backbone_state(resnet.state_dict())
        spatial.freeze_backbone()
        self.student = RebelliousStudent(spatial, RestorationNetwork(channels)).to(device)
        self.forward_module = self.student

    @property
    def spatial(self) -> SpatialBranch:
        return self.student.spatial

    def modules(self) -> dict:
        return {"fen": self.fen, "student": self.student}

    def trainable_parameters(self):
        return self.spatial.trainable_parameters() + list(self.student.restoration.parameters())

    def wrap(self, wrapper) -> None:
        self.forward_module = wrapper(self.student)

    def train_mode(self) -> None:
        self.fen.eval()
        self.student.train()
        if self.spatial_bn == "eval":
            self.spatial.get_features.eval()  # the frozen ResNet-34 keeps its ImageNet BN statistics

    def eval_mode(self) -> None:
        self.fen.eval()
        self.student.eval()

    def loss(self, x, training: bool = True):
        with torch.no_grad():
            spectral = self.fen(x)
        spatial, restored = (self.forward_module if training else self.student)(x, spectral)
        return stage2_loss(x, restored, spectral, spatial)

    def frozen_keys(self) -> dict:
        """Per entry of :meth:`modules`, the state keys that training never changes: the whole FEN, the
        ResNet-34's weights, and its BatchNorm buffers unless ``--spatial_bn train`` lets them drift."""
        return {"fen": set(self.fen.state_dict()),
                "student": _keys_under(self.student, [self.spatial.get_features],
                                       parameters_only=self.spatial_bn == "train")}

    def selected_state(self) -> dict:
        return {"student": cpu_state(self.student, self.frozen_keys()["student"])}

    def load_selected(self, state: dict) -> None:
        _load_over(self.student, state["student"])

    def detector_modules(self):
        return {"fen": self.fen, "spatial": self.spatial}

    def export(self, checkpoint_dir, training_info: dict, card: dict | None = None) -> Path:
        folder = band_folder(checkpoint_dir, self.channels)
        with OutputFolder(folder, "`checkpoint_dir`", "the checkpoints") as staging:
            save_spatial_branch(staging, self.spatial, training_info, self.wavelengths, card)
            save_restoration(staging, self.student.restoration, self.channels, training_info,
                             self.wavelengths, card)
        return folder

    def describe(self) -> dict:
        return {"fen_backbone": self.fen.backbone, "spatial_backbone": SPATIAL_BACKBONE,
                "spatial_bn": self.spatial_bn, "backbone_weights": self.weights_source}


def load_stage1_for_stage2(checkpoint_dir, channels: int) -> FEN:
    """The stage-1 FEN from ``<checkpoint_dir>/<C>bands/``, with a clear error when it is missing."""
    folder = band_folder(checkpoint_dir, channels)
    missing = [name for name in STAGE1_FILES if not (folder / name).is_file()]
    if missing:
        raise FersError(f"{folder}: stage-1 checkpoint(s) {', '.join(missing)} missing; run stage 1 first "
                        f"(python train.py --stage 1 --input_channel {channels}) or put the released files there")
    return load_fen(folder, channels)
