"""Checkpoints in the reference release's layout.

``<checkpoint_dir>/<C>bands/`` holds ``convh.pt``, ``enc.pt`` and ``pc.pt`` (the FEN, stage 1)
and ``spa_fen.pt`` (the spatial branch, stage 2); each file is ``{'state_dict': ...}`` with the
key names of the reference. Our files add a ``config`` entry (channels, backbone, how it was
trained, when known ``wavelengths``: the band centres in nm of the C bands the model was trained on,
and a model card: :func:`model_card`); the reference loaders ignore it, and a file without it means
the reference architecture (wavelengths unknown). Files are written atomically (temporary file,
then rename) and read with ``weights_only=True``.

``python -m fers.checkpoints info DIR`` prints what a checkpoint folder holds: the model card of
our files; for files without one (the reference releases), the band count, the file hashes and
which named released weights (:mod:`fers.weights`) they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from pathlib import Path

import torch

from .checkpoint_files import RESTORATION_FILE, SPATIAL_FILE, STAGE1_FILES, band_folder  # noqa: F401 (re-exported)
from .errors import FersError, cli_entry
from .fen import FEN, REFERENCE_BACKBONE
from .outputs import _first_sentence, atomic_torch_save
from .preprocessing import NORMALISATION
from .restoration import RestorationNetwork, drop_legacy_attention_biases
from .spatial_branch import SPATIAL_BACKBONE, SpatialBranch

_log = logging.getLogger(__name__)

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


MODEL_CARD_FORMAT = "fers-model-card/1"
CARD_VERSIONS = ("fers", "git", "torch", "numpy", "python")


def model_card(training: dict, channels: int, data, versions: dict) -> dict:
    """What a checkpoint we write says about itself (its ``config['model_card']``): the band count,
    the sensor and the training files (name, SHA-256, shape), the seed, the selection rule and
    whether it looked at test labels, the input normalisation and the software versions.
    ``training``: the run's record (``stage``, ``seed``, ``selection``, ``selection_uses_test_labels``,
    ``epoch`` selected, ``epochs``); ``data``: its :class:`fers.training_data.TrainingData`."""
    card = {"format": MODEL_CARD_FORMAT,
            "method": ("FERD (stage 1: convh, enc, pc)" if training["stage"] == "stage1"
                       else "FERS (stage 2: spa_fen, restoration)"),
            "channels": int(channels), "sensor": data.sensor,
            "training_data": {"source": data.source, "files": list(data.manifest)},
            "seed": int(training["seed"]),
            "selection": {"rule": training["selection"], "uses_test_labels": training["selection_uses_test_labels"],
                          "epoch": int(training["epoch"]), "epochs": int(training["epochs"])},
            "normalisation": dict(NORMALISATION),
            "versions": {name: versions.get(name) for name in CARD_VERSIONS}}
    # plain JSON types only (torch.__version__ is a str subclass): the card must load with weights_only=True
    return json.loads(json.dumps(card, default=str))


def model_config(channels: int, backbone: str | None = None, training: dict | None = None,
                 wavelengths=None, card: dict | None = None) -> dict:
    """The ``config`` entry of our checkpoint files (keys with a value only)."""
    config = {"channels": channels, "backbone": backbone, "training": training,
              "wavelengths": None if wavelengths is None else [float(v) for v in wavelengths],
              "model_card": card}
    return {key: value for key, value in config.items() if value is not None}


def recorded_wavelengths(payload: dict) -> list | None:
    """The training band centres (nm) a checkpoint's config records, or None."""
    values = payload.get("config", {}).get("wavelengths")
    return [float(v) for v in values] if values is not None else None


def save_fen(folder, fen: FEN, training: dict | None = None, wavelengths=None, card: dict | None = None) -> None:
    """Write ``convh.pt``, ``enc.pt`` and ``pc.pt`` for a trained FEN; ``training`` (how it was
    trained and selected), ``wavelengths`` (its C band centres, nm) and the model ``card`` go into
    each file's config."""
    config = model_config(fen.channels, fen.backbone, training, wavelengths, card)
    folder = Path(folder)
    save_state(folder / "convh.pt", fen.convh, config)
    save_state(folder / "enc.pt", fen.encoder, config)
    save_state(folder / "pc.pt", fen.classifier, config)


# State keys that reveal the band count C, and the axis it is on (convh.pt, pc.pt, spa_fen.pt,
# restoration.pt): the loaders check them and `info` reads them.
_CHANNEL_KEYS = {"convh.weight": 1, "conv2.weight": 0, "initial_conv.conv.weight": 1, "head.weight": 1}


def load_fen(folder, channels: int, map_location="cpu") -> FEN:
    """Rebuild the FEN from ``convh.pt``, ``enc.pt`` and ``pc.pt`` in ``folder`` (strict)."""
    folder = Path(folder)
    payloads = {name: read_checkpoint(folder / name) for name in STAGE1_FILES}
    convh_weight = payloads["convh.pt"]["state_dict"].get("convh.weight")
    if convh_weight is None or convh_weight.ndim != 4:
        raise FersError(f"{folder / 'convh.pt'}: has no 'convh.weight'; not a FEN checkpoint")
    _check_channels(folder / "convh.pt", int(convh_weight.shape[_CHANNEL_KEYS["convh.weight"]]), channels)
    pc_weight = payloads["pc.pt"]["state_dict"].get("conv2.weight")
    if pc_weight is not None:
        _check_channels(folder / "pc.pt", int(pc_weight.shape[_CHANNEL_KEYS["conv2.weight"]]), channels)
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


def save_spatial_branch(folder, branch: SpatialBranch, training: dict | None = None, wavelengths=None,
                        card: dict | None = None) -> None:
    """Write ``spa_fen.pt``; ``training``, ``wavelengths`` and the model ``card`` are recorded in its config."""
    save_state(Path(folder) / SPATIAL_FILE, branch, model_config(branch.channels, branch.backbone, training,
                                                                 wavelengths, card))


def save_restoration(folder, network: RestorationNetwork, channels: int, training: dict | None = None,
                     wavelengths=None, card: dict | None = None) -> None:
    """Write ``restoration.pt`` (stage 2's restoration network, not needed for detection)."""
    save_state(Path(folder) / RESTORATION_FILE, network, model_config(channels, None, training, wavelengths, card))


def _payload_with(path: Path, key: str, what: str, channels: int) -> dict:
    """The checkpoint at ``path``, checked to hold the 4-D weight ``key`` of a ``what`` checkpoint
    for ``channels`` bands (on the axis :data:`_CHANNEL_KEYS` gives)."""
    payload = read_checkpoint(path)
    weight = payload["state_dict"].get(key)
    if weight is None or weight.ndim != 4:
        raise FersError(f"{path}: has no '{key}'; not a {what} checkpoint")
    _check_channels(path, int(weight.shape[_CHANNEL_KEYS[key]]), channels)
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



# --------------------------------------------------------------------------- python -m fers.checkpoints info

def _band_folders(directory: Path) -> list[Path]:
    """``directory`` itself when it holds ``.pt`` files, else its ``<C>bands/`` folders that do."""
    if not directory.is_dir():
        raise FersError(f"{directory}: no such checkpoint folder")
    if any(directory.glob("*.pt")):
        return [directory]
    folders = sorted((p for p in directory.glob("*bands") if p.is_dir() and any(p.glob("*.pt"))),
                     key=lambda p: (len(p.name), p.name))
    if not folders:
        raise FersError(f"{directory}: no checkpoint files (*.pt) here or in <C>bands/ folders below it")
    return folders


def file_info(path) -> dict:
    """What one checkpoint file says and is: band count (from its shapes), SHA-256, git blob id,
    its config and model card when it has them, and the named released files it is."""
    from .io import hash_file
    from .weights import GIT_BLOB, SHA256, git_blob_hash, matching_files

    path = Path(path)
    payload = read_checkpoint(path)
    channels = None
    for key, axis in _CHANNEL_KEYS.items():
        weight = payload["state_dict"].get(key)
        if torch.is_tensor(weight) and weight.ndim == 4:
            channels = int(weight.shape[axis])
            break
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    sha256, blob = hash_file(path, hashlib.sha256(), git_blob_hash(path))  # one read for both
    digests = {SHA256: sha256, GIT_BLOB: blob}
    return {"file": path.name, "bytes": path.stat().st_size, "channels": config.get("channels", channels),
            "sha256": digests[SHA256], "git_blob": digests[GIT_BLOB],
            "model_card": config.get("model_card"), "training": config.get("training"),
            "backbone": config.get("backbone"), "matches": matching_files(digests)}


def checkpoint_info(directory) -> list[dict]:
    """``[{"folder", "channels", "files": [file_info, ...]}]`` for ``directory`` (a ``<C>bands/``
    folder or their parent)."""
    folders = []
    for folder in _band_folders(Path(directory)):
        files = [file_info(path) for path in sorted(folder.glob("*.pt"))]
        counts = sorted({f["channels"] for f in files if f["channels"] is not None})
        folders.append({"folder": str(folder), "channels": counts[0] if len(counts) == 1 else counts or None,
                        "files": files})
    return folders


def _card_lines(card: dict) -> list[str]:
    data = card.get("training_data", {})
    files = data.get("files", [])
    shown = ", ".join(f"{f.get('file')} {str(f.get('sha256'))[:12]}" for f in files[:3])
    selection = card.get("selection", {})
    versions = card.get("versions", {})
    return [f"method: {card.get('method')}",
            f"bands: {card.get('channels')}; sensor: {card.get('sensor') or 'not recorded (scene folder)'}",
            f"training data: {data.get('source')}, {len(files)} file(s)" + (f": {shown}" if shown else "")
            + (", ..." if len(files) > 3 else ""),
            f"seed: {card.get('seed')}",
            f"selection: {selection.get('rule')}, epoch {selection.get('epoch')} of {selection.get('epochs')}; "
            f"uses test labels: {'YES' if selection.get('uses_test_labels') else 'no'}",
            f"normalisation: {card.get('normalisation', {}).get('description')}",
            "versions: " + ", ".join(f"{name} {value}" for name, value in versions.items() if value is not None)]


def info_lines(folders: list[dict]) -> list[str]:
    """:func:`checkpoint_info` as the ``info`` command prints it."""
    lines = []
    for folder in folders:
        lines.append(f"{folder['folder']}: {folder['channels'] or 'unknown'} bands")
        cards = {}
        for entry in folder["files"]:
            lines.append(f"  {entry['file']:<15} {entry['bytes']:>11,} bytes  "
                         f"{entry['channels'] or '-'} bands")
            lines.append(f"    sha256 {entry['sha256']}  git blob {entry['git_blob']}")
            lines.append("    = " + (", ".join(entry["matches"]) if entry["matches"]
                                     else "no named released weights (python -m fers.weights lists them)"))
            key = json.dumps(entry["model_card"], sort_keys=True)
            cards.setdefault(key, []).append(entry["file"])
        for key, names in cards.items():
            card = json.loads(key)
            if card is None:
                lines.append(f"  no model card: {', '.join(names)} (a reference-release file, or written before "
                             "model cards: bands and hashes above are read from the file)")
            else:
                lines.append(f"  model card of {', '.join(names)}:")
                lines += [f"    {line}" for line in _card_lines(card)]
    return lines


@cli_entry
def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fers.checkpoints",
                                     description="Inspect checkpoint folders of the reference layout.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="model card, band count, hashes and matching released weights")
    info.add_argument("directory", metavar="DIR", help="a <C>bands/ folder or the parent of such folders")
    info.add_argument("--json", action="store_true", help="everything as JSON (the full training-data manifest)")
    args = parser.parse_args(argv)
    folders = checkpoint_info(args.directory)
    if args.json:
        print(json.dumps(folders, indent=1))
    else:
        print("\n".join(info_lines(folders)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
