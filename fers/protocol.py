"""The protocol manifest of a comparison (``protocol.json``): everything that decides the numbers
of a ``compare.py`` table, so that the table can be recomputed on exactly the same inputs
(``compare.py --protocol protocol.json``).

It records the scene list (name, file relative to the data folder, SHA-256 of the cube file and of
a separate ground-truth file, size, bands in the file and the band indices used), the band count and
band policy, the normalisation, padding and tiling, the options of every method (windows, λ,
precision, fusion; SHA-256 of the checkpoint files of FERD/FERS and of every external map file),
the statistics, and the fers version.

Read back (:func:`check_scenes`, :func:`apply_options`): a scene of the manifest that is missing, or
whose file (or ground truth) has another SHA-256, is refused; scenes the data folder holds beyond
the manifest's are left out (the manifest's list is the protocol). The manifest's options are
used; a flag typed on the command line that disagrees with one of them is refused (a flag that
agrees is fine). Where the files are is not part of the protocol: the data folder and map folders
may have moved (``--data_path``, ``--maps``), the hashes say whether they hold the same files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import FersError
from .io import sha256_file

PROTOCOL_FILE = "protocol.json"
PROTOCOL_FORMAT = "fers-comparison-protocol"
PROTOCOL_VERSION = 1
NORMALISATION = ("each scene: the selected bands (band policy), then "
                 "x = 0.1 · (2 · (v − min) / (max − min) − 1) with min and max over the scene's selected bands (fers.preprocessing.prepare_cube, the "
                 "reference scaling); grx, lrx and crd are invariant to it or min-max scale x to [0, 1] again")
PADDING = ("none: every scene is scored whole, at its own size; lrx and crd windows are cut at the scene "
           "border (no padding)")
TILING = "none: one pass per scene (no tiles)"


def band_indices(bands_in_file: int, channels: int) -> str:
    """The bands a scene contributes: ``0:C`` (the first C of the file, a half-open range) or, with
    fewer bands than C, the linear interpolation of :func:`fers.preprocessing.interpolate_bands`."""
    if bands_in_file >= channels:
        return f"0:{channels}"
    return (f"interpolated: {bands_in_file} bands to {channels} at positions "
            f"linspace(0, {bands_in_file - 1}, {channels})")


def data_root(data_path) -> Path:
    """The folder scene files are recorded relative to: ``data_path`` itself or, for one scene file, its folder."""
    path = Path(data_path)
    return path.parent if path.is_file() else path


def _relative(path, root: Path) -> str:
    """``path`` relative to ``root`` (links not followed: the name the dataset uses), else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return str(absolute)


def scene_entries(scenes: list, shapes: list, data_path, channels: int) -> list:
    """The manifest's scene list: ``shapes`` are the cubes' ``(rows, cols, bands)`` as read."""
    from .evaluation import data_manifest

    root = data_root(data_path)
    entries = []
    for scene, record, shape in zip(scenes, data_manifest(scenes), shapes):
        entries.append({"name": scene.name, "file": _relative(scene.cube_path, root), "sha256": record["cube_sha256"],
                        "ground_truth": _relative(scene.gt_path, root) if scene.gt_path else None,
                        "ground_truth_sha256": record["ground_truth_sha256"],
                        "rows": int(shape[0]), "cols": int(shape[1]), "bands_in_file": int(shape[2]),
                        "band_indices": band_indices(int(shape[2]), channels)})
    return entries


def build_protocol(scene_list: list, data_path, options: dict, detectors: dict, maps: dict,
                   statistics: dict, versions: dict) -> dict:
    """The manifest (see the module docstring); ``options`` are the command's protocol options
    (``{dest: value}``), ``detectors`` each method's settings, ``maps`` each external method's files."""
    return {"format": PROTOCOL_FORMAT, "version": PROTOCOL_VERSION, "fers_version": versions.get("fers"),
            "git": versions.get("git"), "data_path": os.path.abspath(data_path), "scenes": scene_list,
            "input_channel": options.get("input_channel"), "band_policy": options.get("band_policy"),
            "normalisation": NORMALISATION, "padding": PADDING, "tiling": TILING,
            "options": options, "detectors": detectors, "maps": maps, "statistics": statistics,
            "versions": versions}


def read_protocol(path) -> dict:
    """A manifest written by :func:`build_protocol`; anything else is refused naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FersError(f"{path}: no such protocol file; pass the protocol.json a comparison wrote (`protocol`)")
    try:
        protocol = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FersError(f"{path}: not a readable protocol ({error.__class__.__name__}: {error}); pass the "
                        "protocol.json a comparison wrote") from None
    if not isinstance(protocol, dict) or protocol.get("format") != PROTOCOL_FORMAT:
        raise FersError(f"{path}: not a comparison protocol (no \"format\": \"{PROTOCOL_FORMAT}\"); pass the "
                        "protocol.json a comparison wrote")
    if protocol.get("version") != PROTOCOL_VERSION:
        raise FersError(f"{path}: protocol version {protocol.get('version')} is not {PROTOCOL_VERSION}, the one this "
                        "fers reads; recompute it with this version")
    for key in ("scenes", "options"):
        if key not in protocol:
            raise FersError(f"{path}: the protocol has no '{key}'; it is damaged: write it again")
    return protocol


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def apply_options(current: dict, given, recorded: dict, path) -> dict:
    """``current`` options with the protocol's ``recorded`` ones put in; a ``given`` (typed) option
    whose value disagrees with the protocol is refused, naming both values."""
    merged = dict(current)
    for name, value in recorded.items():
        if name in given and not _same(current.get(name), value):
            raise FersError(f"`{name}` {_shown(current.get(name))} conflicts with the protocol's {_shown(value)} "
                            f"({path}); drop `{name}` to use the protocol, or drop `protocol` to compare anew")
        merged[name] = value
    return merged


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_scenes(protocol: dict, scenes: list, data_path, path) -> list:
    """The scenes of the protocol, in its order, from ``scenes`` (what ``data_path`` holds now):
    a missing scene, or a cube or ground-truth file with another SHA-256, is refused."""
    by_name = {scene.name: scene for scene in scenes}
    recorded = protocol["scenes"]
    missing = [entry["name"] for entry in recorded if entry["name"] not in by_name]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FersError(f"{data_path}: scene(s) {shown} of the protocol {path} are not there; pass `data_path` "
                        f"with the folder that holds the protocol's {len(recorded)} scenes")
    chosen = []
    for entry in recorded:
        scene = by_name[entry["name"]]
        for file, expected, what in ((scene.cube_path, entry.get("sha256"), "scene file"),
                                     (scene.gt_path, entry.get("ground_truth_sha256"), "ground truth")):
            if (file is None) != (expected is None):
                raise FersError(f"{scene.cube_path}: scene {scene.name} has {'no' if file is None else 'a'} separate "
                                f"ground-truth file, unlike in the protocol {path}; use the protocol's data")
            if file is not None and sha256_file(file) != expected:
                raise FersError(f"{file}: the {what} of scene {scene.name} differs from the protocol {path} "
                                f"(SHA-256 {sha256_file(file)[:12]}…, recorded {expected[:12]}…); restore the "
                                "original file, or drop `protocol` to compare on the new data")
        chosen.append(scene)
    return chosen


def check_files(recorded: dict, current: dict, what: str, path) -> None:
    """``recorded`` ``{label: sha256}`` against the files ``current`` ``{label: path}`` (checkpoints,
    external maps): a missing or changed file is refused."""
    for label, expected in recorded.items():
        file = current.get(label)
        if file is None or not Path(file).is_file():
            raise FersError(f"{file or label}: {what} {label} of the protocol {path} is not there; restore it")
        digest = sha256_file(file)
        if digest != expected:
            raise FersError(f"{file}: {what} {label} differs from the protocol {path} (SHA-256 {digest[:12]}…, "
                            f"recorded {expected[:12]}…); restore the original file, or drop `protocol`")
