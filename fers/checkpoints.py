"""Checkpoints in the reference release's layout.

``<checkpoint_dir>/<C>bands/`` holds ``convh.pt``, ``enc.pt`` and ``pc.pt`` (the FEN, stage 1)
and ``spa_fen.pt`` (the spatial branch, stage 2); each file is ``{'state_dict': ...}`` with the
key names of the reference. Our files add a ``config`` entry (channels, backbone and, when known,
``wavelengths``: the band centres in nm of the C bands the model was trained on); the reference
loaders ignore it, and a file without it means the reference architecture (wavelengths unknown).
Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from .errors import FersError
from .fen import FEN, REFERENCE_BACKBONE
from .outputs import _first_sentence, atomic_torch_save
from .restoration import RestorationNetwork, drop_legacy_attention_biases
from .spatial_branch import SPATIAL_BACKBONE, SpatialBranch

_log = logging.getLogger(__name__)

STAGE1_FILES = ("convh.pt", "enc.pt", "pc.pt")
SPATIAL_FILE = "spa_fen.pt"
RESTORATION_FILE = "restoration.pt"


def band_folder(checkpoint_dir, channels: int) -> Path:
    """``<checkpoint_dir>/<C>bands``, the reference layout."""
    return Path(checkpoint_dir) / f"{channels}bands"


def save_state(path, module: torch.nn.Module, config: dict | None = None) -> None:
    """``torch.save({'state_dict': module.state_dict(), 'config': config})``, atomically."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    if config is not None:
        payload["config"] = dict(config)
    atomic_torch_save(path, payload)


def read_checkpoint(path) -> dict:
    """Read a checkpoint file; a missing or corrupt file becomes a one-line :class:`FersError`."""
    path = Path(path)
    if not path.is_file():
        raise FersError(f"{path}: checkpoint not found; train the model or download the released "
                        "files into this folder (see README, 'Official checkpoints')")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise FersError(f"{path}: corrupt or unreadable checkpoint ({_first_sentence(error)}); "
                        "download or train it again") from None
    if isinstance(payload, dict) and "state_dict" in payload and isinstance(payload["state_dict"], dict):
        return payload
    if isinstance(payload, dict) and all(torch.is_tensor(v) for v in payload.values()):
        return {"state_dict": payload}  # a bare state dict
    raise FersError(f"{path}: not a checkpoint of the reference format {{'state_dict': ...}}")


def _load_strict(module: torch.nn.Module, payload: dict, path: Path) -> None:
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        detail = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
        raise FersError(f"{path}: does not fit the network ({detail.strip()[:200]}); "
                        "is it a checkpoint of this method and band count?") from None


def _check_channels(path: Path, found: int, channels: int) -> None:
    if found != channels:
        raise FersError(f"{path}: checkpoint is for {found} bands but `channels` is {channels}; "
                        f"use `channels` {found} or the {channels}bands checkpoints")


def model_config(channels: int, backbone: str | None = None, training: dict | None = None,
                 wavelengths=None) -> dict:
    """The ``config`` entry of our checkpoint files (keys with a value only)."""
    config = {"channels": channels, "backbone": backbone, "training": training,
              "wavelengths": None if wavelengths is None else [float(v) for v in wavelengths]}
    return {key: value for key, value in config.items() if value is not None}


def recorded_wavelengths(payload: dict) -> list | None:
    """The training band centres (nm) a checkpoint's config records, or None."""
    values = payload.get("config", {}).get("wavelengths")
    return [float(v) for v in values] if values is not None else None


def save_fen(folder, fen: FEN, training: dict | None = None, wavelengths=None) -> None:
    """Write ``convh.pt``, ``enc.pt`` and ``pc.pt`` for a trained FEN; ``training`` (how it was
    trained and selected) and ``wavelengths`` (its C band centres, nm) go into each file's config."""
    config = model_config(fen.channels, fen.backbone, training, wavelengths)
    folder = Path(folder)
    save_state(folder / "convh.pt", fen.convh, config)
    save_state(folder / "enc.pt", fen.encoder, config)
    save_state(folder / "pc.pt", fen.classifier, config)


def load_fen(folder, channels: int, map_location="cpu") -> FEN:
    """Rebuild the FEN from ``convh.pt``, ``enc.pt`` and ``pc.pt`` in ``folder`` (strict)."""
    folder = Path(folder)
    payloads = {name: read_checkpoint(folder / name) for name in STAGE1_FILES}
    convh_weight = payloads["convh.pt"]["state_dict"].get("convh.weight")
    if convh_weight is None or convh_weight.ndim != 4:
        raise FersError(f"{folder / 'convh.pt'}: has no 'convh.weight'; not a FEN checkpoint")
    _check_channels(folder / "convh.pt", int(convh_weight.shape[1]), channels)
    pc_weight = payloads["pc.pt"]["state_dict"].get("conv2.weight")
    if pc_weight is not None:
        _check_channels(folder / "pc.pt", int(pc_weight.shape[0]), channels)
    backbone = payloads["enc.pt"].get("config", {}).get("backbone", REFERENCE_BACKBONE)
    try:
        fen = FEN(channels, backbone)
    except ValueError as error:
        raise FersError(f"{folder / 'enc.pt'}: {error}") from None
    _load_strict(fen.convh, payloads["convh.pt"], folder / "convh.pt")
    _load_strict(fen.encoder, payloads["enc.pt"], folder / "enc.pt")
    _load_strict(fen.classifier, payloads["pc.pt"], folder / "pc.pt")
    fen.wavelengths = recorded_wavelengths(payloads["enc.pt"])
    return fen.to(map_location).eval()


def save_spatial_branch(folder, branch: SpatialBranch, training: dict | None = None, wavelengths=None) -> None:
    """Write ``spa_fen.pt``; ``training`` and ``wavelengths`` are recorded in its config."""
    config = model_config(branch.channels, branch.backbone, training, wavelengths)
    save_state(Path(folder) / SPATIAL_FILE, branch, config)


def _payload_with(path: Path, key: str, what: str, channels: int, axis: int = 1) -> dict:
    """The checkpoint at ``path``, checked to hold the 4-D weight ``key`` of a ``what`` checkpoint
    for ``channels`` bands (read on ``axis``)."""
    payload = read_checkpoint(path)
    weight = payload["state_dict"].get(key)
    if weight is None or weight.ndim != 4:
        raise FersError(f"{path}: has no '{key}'; not a {what} checkpoint")
    _check_channels(path, int(weight.shape[axis]), channels)
    return payload


def load_spatial_branch(folder, channels: int, map_location="cpu") -> SpatialBranch:
    """Rebuild the spatial branch from ``spa_fen.pt`` (strict)."""
    path = Path(folder) / SPATIAL_FILE
    payload = _payload_with(path, "initial_conv.conv.weight", "spatial-branch", channels)
    backbone = payload.get("config", {}).get("backbone", SPATIAL_BACKBONE)
    branch = SpatialBranch(channels, backbone)
    _load_strict(branch, payload, path)
    branch.wavelengths = recorded_wavelengths(payload)
    return branch.to(map_location).eval()


def load_restoration(folder, channels: int, map_location="cpu", log=None) -> RestorationNetwork:
    """Rebuild the stage-2 restoration network from ``restoration.pt`` (strict). Files written before
    the channel attention lost the biases the reference does not have still load: those biases are
    dropped with a note (to ``log``, by default the ``fers`` logger)."""
    path = Path(folder) / RESTORATION_FILE
    payload = _payload_with(path, "head.weight", "restoration-network", channels)
    network = RestorationNetwork(channels)
    state = drop_legacy_attention_biases(payload["state_dict"], log or _log.info, str(path))
    _load_strict(network, {**payload, "state_dict": state}, path)
    return network.to(map_location).eval()

