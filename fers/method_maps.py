"""Another method's precomputed anomaly maps, scored on the same protocol as FERS (``compare.py
--maps NAME=SOURCE``): one file per scene, ``.mat`` (v5 or v7.3), ``.npy`` or ``.npz``.

Which file belongs to which scene (:func:`match_map_files`):

- ``SOURCE`` a folder: a file belongs to scene ``S`` when its stem is ``S``, or ``S`` with a prefix
  and/or suffix that are **the same for every scene** (``CRD_abu-airport-1.mat``,
  ``abu-airport-1_result.npy``). The affix is found from the files (the plain stem wins when it
  fits every scene); one that fits only some scenes is not guessed: the others are reported missing.
- ``SOURCE`` a pattern holding ``{scene}`` (``out/crd/{scene}_map.mat``): the file of scene ``S`` is
  the pattern with ``S`` filled in (any of ``.mat``, ``.npy``, ``.npz`` when the pattern has no suffix).

Files of the folder that belong to no scene are ignored with a warning. Which variable is the map
(:func:`load_score_map`): as cubes are found (:mod:`fers.io`): a preferred name (``scores``,
``score``, ``anomaly_map``, ``detection``, ``result``, ``output``, ``R``), else the only 2-D numeric
array left once scalars, vectors and ground-truth names (``map``, ``gt``, ...) are set aside. The
map must be the scene's rows × cols (a transposed map is named as such) and hold no NaN/Inf.

Timing where given: a scalar ``seconds`` (or ``time``, ``runtime``, ``elapsed``) inside the map
file, else the scene's row of ``times.csv`` (columns ``scene,seconds``) beside the maps; otherwise
the scene's seconds are NaN and left out of the method's mean time.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FersError
from .io import PREFERRED_MASK_KEYS, _pick, _read_arrays, _read_npy, sha256_file

_log = logging.getLogger(__name__)

MAP_SUFFIXES = (".mat", ".npy", ".npz")
PREFERRED_MAP_KEYS = ("scores", "score", "anomaly_map", "detection", "result", "output", "R")
SECONDS_KEYS = ("seconds", "time", "runtime", "elapsed")
TIMES_FILE = "times.csv"
SCENE_FIELD = "{scene}"


def parse_map_sources(values, reserved=()) -> dict:
    """``{NAME: SOURCE}`` from ``NAME=SOURCE`` strings; a NAME given twice (letter case ignored) or
    equal to a built-in method (``reserved``) is refused."""
    sources: dict = {}
    taken = {name.lower(): name for name in reserved}
    for value in values or ():
        name, equals, source = str(value).partition("=")
        name, source = name.strip(), source.strip()
        if not equals or not name or not source:
            raise FersError(f"`maps` {value!r}: expected NAME=FOLDER (or NAME=PATTERN with {SCENE_FIELD}), "
                            "e.g. CRD=results/crd")
        if name.lower() in taken:
            what = "a built-in method" if taken[name.lower()] in reserved else f"given twice ({taken[name.lower()]})"
            raise FersError(f"`maps` {name}: the name is {what}; give each method's maps a name of its own")
        taken[name.lower()] = name
        sources[name] = source
    return sources


@dataclass
class MapFiles:
    """Where one method's maps are: ``files`` (scene → file), the ``pattern`` used, ``extras`` (files
    of the folder that belong to no scene) and the optional ``times`` file."""

    name: str
    source: str
    pattern: str
    files: dict
    extras: list = field(default_factory=list)
    times: Path | None = None


def _map_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MAP_SUFFIXES
                  and not p.name.startswith("."))


def _missing_error(name: str, where, pattern: str, missing: list, found: int) -> FersError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return FersError(f"{where}: no map of {name} for scene(s) {shown} (looked for '{pattern}'; {found} file(s) "
                     "matched); add them, or compare on the scenes that have maps (a `data_path` holding only "
                     f"those), or pass `maps` {name}=PATTERN with {SCENE_FIELD} where the file names differ more")


def match_map_files(name: str, source, scenes) -> MapFiles:
    """The map file of every scene name in ``scenes`` for ``source`` (a folder or a ``{scene}``
    pattern; see the module docstring). Missing scenes, two files for one scene or a folder that is
    not there are errors naming the fix."""
    source = str(source)
    scenes = list(scenes)
    if SCENE_FIELD in source:
        return _match_pattern(name, source, scenes)
    folder = Path(source)
    if not folder.is_dir():
        raise FersError(f"{folder}: the maps folder of {name} is not there; check `maps` {name}=FOLDER")
    candidates = _map_files(folder)
    affixes: dict = {}  # (prefix, suffix) -> {scene: [files]}
    for path in candidates:
        for scene in scenes:
            start = path.stem.find(scene)
            while start >= 0:
                affix = (path.stem[:start], path.stem[start + len(scene):])
                affixes.setdefault(affix, {}).setdefault(scene, []).append(path)
                start = path.stem.find(scene, start + 1)
    covering = [a for a, found in affixes.items() if len(found) == len(scenes)]
    if ("", "") in covering or not covering:
        best = ("", "") if ("", "") in covering else max(
            affixes, key=lambda a: (len(affixes[a]), a == ("", "")), default=("", ""))
    elif len(covering) == 1:
        best = covering[0]
    else:
        shown = ", ".join(f"'{p}{SCENE_FIELD}{s}'" for p, s in covering[:3])
        example = folder / f"{covering[0][0]}{SCENE_FIELD}{covering[0][1]}.mat"
        raise FersError(f"{folder}: the files of {name} fit several name patterns ({shown}); pass `maps` "
                        f"{name}=PATTERN with {SCENE_FIELD}, e.g. {example}")
    prefix, suffix = best
    pattern = f"{prefix}{SCENE_FIELD}{suffix}.*"
    found = affixes.get(best, {})
    missing = [scene for scene in scenes if scene not in found]
    if missing:
        raise _missing_error(name, folder, pattern, missing, len(found))
    for scene, paths in found.items():
        if len(paths) > 1:
            raise FersError(f"{folder}: {len(paths)} files for scene {scene} of {name} "
                            f"({', '.join(p.name for p in paths)}); keep one")
    if best != ("", ""):
        _log.info(f"note: {name}: maps matched as '{folder / pattern}'")
    files = {scene: found[scene][0] for scene in scenes}
    used = set(files.values())
    times = folder / TIMES_FILE
    return MapFiles(name, source, str(folder / pattern), files, [p for p in candidates if p not in used],
                    times if times.is_file() else None)


def _match_pattern(name: str, source: str, scenes: list) -> MapFiles:
    has_suffix = Path(source).suffix.lower() in MAP_SUFFIXES
    files, missing = {}, []
    for scene in scenes:
        base = source.replace(SCENE_FIELD, scene)
        options = [Path(base)] if has_suffix else [Path(base + suffix) for suffix in MAP_SUFFIXES]
        existing = [p for p in options if p.is_file()]
        if len(existing) > 1:
            raise FersError(f"{existing[0].parent}: {len(existing)} files for scene {scene} of {name} "
                            f"({', '.join(p.name for p in existing)}); keep one or give the suffix in the pattern")
        if existing:
            files[scene] = existing[0]
        else:
            missing.append(scene)
    folder = Path(source.split(SCENE_FIELD)[0] + "x").parent
    if missing:
        raise _missing_error(name, folder, source, missing, len(files))
    used = set(files.values())
    extras = [p for p in _map_files(folder) if p not in used] if folder.is_dir() else []
    times = folder / TIMES_FILE
    return MapFiles(name, source, source, files, extras, times if times.is_file() else None)


def read_times(path: Path) -> dict:
    """``{scene: seconds}`` from a ``times.csv`` (header ``scene,seconds``)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"scene", "seconds"} <= {f.strip() for f in reader.fieldnames}:
                raise FersError(f"{path}: expected the header 'scene,seconds' (one row per scene); fix the file "
                                "or remove it")
            times = {}
            for row in reader:
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                try:
                    times[row["scene"]] = float(row["seconds"])
                except ValueError:
                    raise FersError(f"{path}: seconds of scene {row['scene']!r} is {row['seconds']!r}, not a "
                                    "number; fix the row") from None
            return times
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FersError(f"{path}: not a readable CSV file ({error}); fix or remove it") from None


def load_score_map(path, shape, name: str = "method", scene: str = "scene") -> tuple:
    """``(map (rows, cols) float64, seconds or None)`` from one map file, checked against the scene's
    ``shape`` (rows, cols): a wrong or transposed size and NaN/Inf values are errors naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise FersError(f"{path}: no such map file")
    seconds = None
    if path.suffix.lower() == ".npy":
        array = np.squeeze(_read_npy(path))
    elif path.suffix.lower() in (".mat", ".npz"):
        arrays = {key: np.squeeze(value) for key, value in _read_arrays(path).items()
                  if np.asarray(value).dtype.kind in "biuf"}
        for key in SECONDS_KEYS:
            if key in arrays and arrays[key].size == 1:
                seconds = float(arrays[key])
                break
        planes = {key: value for key, value in arrays.items() if value.ndim == 2}
        if not any(key in planes for key in PREFERRED_MAP_KEYS):
            others = {key: value for key, value in planes.items() if key not in PREFERRED_MASK_KEYS}
            planes = others or planes
        array = _pick(planes, 2, PREFERRED_MAP_KEYS, path, f"anomaly map of {name}", None)
    else:
        raise FersError(f"{path}: unknown map file type '{path.suffix}'; use one of {', '.join(MAP_SUFFIXES)}")
    array = np.asarray(array)
    rows, cols = (int(n) for n in shape)
    if array.dtype.kind not in "biuf":
        raise FersError(f"{path}: the {name} map of scene {scene} has non-numeric type {array.dtype}")
    if array.shape != (rows, cols):
        shown = "×".join(str(n) for n in array.shape) or "a scalar"
        hint = ("; it looks transposed: save its transpose (map' in MATLAB, map.T in NumPy)"
                if array.shape == (cols, rows) else "; save the map at the scene's size (no cropping or padding)")
        raise FersError(f"{path}: the {name} map of scene {scene} is {shown} but the scene is {rows}×{cols}{hint}")
    array = array.astype(np.float64)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise FersError(f"{path}: the {name} map of scene {scene} holds {bad} NaN or Inf value(s); fix the method's "
                        "output (a score for every pixel); FERS does not guess scores")
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise FersError(f"{path}: its time ({seconds}) is not a non-negative number; fix or remove it")
    return array, seconds


@dataclass
class MethodMaps:
    """One method's maps, loaded and checked: ``maps``/``seconds`` per scene (seconds NaN where not
    given), the files and their SHA-256 (for the protocol manifest)."""

    name: str
    files: MapFiles
    maps: dict
    seconds: dict

    def manifest(self) -> dict:
        """The protocol entry: the source, the pattern used and every file's name and SHA-256."""
        entry = {"source": self.files.source, "pattern": self.files.pattern,
                 "files": {scene: {"file": str(path), "sha256": sha256_file(path)}
                           for scene, path in self.files.files.items()}}
        if self.files.times is not None:
            entry["times"] = {"file": str(self.files.times), "sha256": sha256_file(self.files.times)}
        return entry


def load_method_maps(name: str, source, shapes: dict) -> MethodMaps:
    """Every scene's map of one method: ``shapes`` is ``{scene: (rows, cols)}`` in scene order.
    All files are read and checked before anything is scored."""
    files = match_map_files(name, source, shapes)
    if files.extras:
        shown = ", ".join(p.name for p in files.extras[:5]) + (f" and {len(files.extras) - 5} more"
                                                              if len(files.extras) > 5 else "")
        _log.warning(f"{name}: {len(files.extras)} file(s) beside the maps belong to no scene and are ignored: {shown}")
    times = read_times(files.times) if files.times is not None else {}
    maps, seconds = {}, {}
    for scene, shape in shapes.items():
        maps[scene], given = load_score_map(files.files[scene], shape, name, scene)
        seconds[scene] = given if given is not None else times.get(scene, math.nan)
    return MethodMaps(name, files, maps, seconds)
