"""A checker for HAD100/ABU dataset folders: per scene, what makes it unusable (unreadable, empty,
NaN/Inf, no-data fill values, constant, ground truth missing or of another size), as a report.
Layouts: docs/data.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .abu import CUBE_SUFFIX, MASK_SUFFIX
from .errors import FersError
from .io import EMBEDDED, LAYOUT_CHECK, load_mask, read_scene
from .preprocessing import nodata_pixels

LAYOUTS = ("auto", "had100", "abu")


@dataclass
class SceneCheck:
    """What ``check`` found for one cube (and its ground truth, for test scenes)."""

    group: str  # e.g. "test/aviris_ng", "train/aviris", "mat"
    name: str
    cube_path: str
    gt_path: str | None = None
    shape: list | None = None
    dtype: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    nan_values: int = 0
    inf_values: int = 0
    nodata_pixels: int = 0
    anomaly_pixels: int | None = None
    unlabelled: bool = False  # a scene file without a ground truth of its size: detection only
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.ok:
            return "OK (no ground truth: detection only)" if self.unlabelled else "OK"
        return "; ".join(self.problems)


@dataclass
class CheckReport:
    root: str
    layout: str
    scenes: list
    warnings: list = field(default_factory=list)

    @property
    def problems(self) -> list:
        return [scene for scene in self.scenes if not scene.ok]

    def as_dict(self) -> dict:
        return {"root": self.root, "layout": self.layout, "ok": not self.problems,
                "scenes": [dict(asdict(s), status=s.status) for s in self.scenes], "warnings": self.warnings}


def _strip_path(message: str, *paths) -> str:
    """Messages of fers.io start with the file name; the table shows the file already."""
    for path in paths:
        if path is not None and message.startswith(f"{path}: "):
            return message[len(f"{path}: "):]
    return message


def inspect_cube(cube: np.ndarray) -> tuple[dict, list]:
    """Statistics of a ``(rows, cols, bands)`` cube and the problems that make it unusable:
    empty, NaN/Inf values, no-data fill values, constant."""
    stats = {"shape": list(cube.shape), "dtype": str(cube.dtype)}
    problems = []
    if cube.size == 0:
        return stats, [f"empty cube (shape {tuple(cube.shape)})"]
    if cube.dtype.kind == "f":
        nan = np.isnan(cube)
        inf = np.isinf(cube)
        stats["nan_values"], stats["inf_values"] = int(nan.sum()), int(inf.sum())
        bad = nan | inf
        if bad.any():
            bands = int(bad.any(axis=(0, 1)).sum())
            full = int(bad.all(axis=(0, 1)).sum())
            detail = f", {full} band(s) entirely" if full else ""
            problems.append(f"{stats['nan_values']} NaN and {stats['inf_values']} Inf value(s) in {bands} "
                            f"band(s){detail}")
        finite = cube[~bad] if bad.any() else cube
    else:
        finite = cube
    if finite.size == 0:
        return stats, problems
    low, high = finite.min(), finite.max()
    stats["minimum"], stats["maximum"] = float(low), float(high)
    nodata = np.zeros(cube.shape[:2], dtype=bool)
    hits = nodata_pixels(cube, low, high)
    for hit in hits.values():
        nodata |= hit
    found = [f"{value:g}" for value in hits]
    stats["nodata_pixels"] = int(nodata.sum())
    if found:
        problems.append(f"no-data value {', '.join(found)} in {int(nodata.sum())} pixel(s)")
    if not high > low:
        problems.append(f"constant cube (every value is {float(low):g})")
    return stats, problems


def check_scene(group: str, name: str, cube_path: Path, gt_path: Path | None, mask_in_cube: bool = False,
                needs_mask: bool = True, layout: str = LAYOUT_CHECK) -> SceneCheck:
    """Read one cube (and its ground truth) and record everything wrong with it; never raises.

    ``mask_in_cube``: the ground truth is the 2-D array of the scene's size inside the cube file;
    a file without one is unlabelled (fine for detection: no metrics), not a problem. A PNG of the
    paired layouts is read with the HAD100 rule (channel 1 >= 128)."""
    result = SceneCheck(group, name, str(cube_path), str(gt_path) if gt_path else None)
    cube = None
    try:
        scene = read_scene(cube_path, EMBEDDED if mask_in_cube else None, layout=layout)
        cube = scene.cube
        stats, problems = inspect_cube(cube)
        for key, value in stats.items():
            setattr(result, key, value)
        result.problems += problems
    except FersError as error:
        message = _strip_path(str(error), cube_path)
        if mask_in_cube and message.startswith("ground truth"):
            result.problems.append(message)  # a 'map' of another size: the size problem, not 'unreadable'
            return result
        result.problems.append(f"unreadable cube: {message}")
    except Exception as error:  # noqa: BLE001 - a checker reports, it does not crash
        result.problems.append(f"unreadable cube: {error.__class__.__name__}: {error}")
    if not needs_mask:
        return result
    if mask_in_cube:
        if cube is None:
            return result
        mask = scene.mask
        if mask is None:
            result.unlabelled = True
            return result
    else:
        if gt_path is None or not Path(gt_path).is_file():
            result.problems.append(f"no ground truth (expected {gt_path})")
            return result
        try:
            mask = load_mask(gt_path, rule="had100")
        except FersError as error:
            result.problems.append(f"unreadable ground truth: {_strip_path(str(error), gt_path)}")
            return result
        except Exception as error:  # noqa: BLE001
            result.problems.append(f"unreadable ground truth: {error.__class__.__name__}: {error}")
            return result
    result.anomaly_pixels = int(mask.sum())
    if cube is not None and mask.shape != cube.shape[:2]:
        result.problems.append(f"ground truth is {mask.shape[0]}×{mask.shape[1]} but the cube is "
                               f"{cube.shape[0]}×{cube.shape[1]}")
    elif not mask.any():
        result.problems.append("ground truth has no anomaly pixel (AUC undefined)")
    elif mask.all():
        result.problems.append("ground truth marks every pixel as anomaly (AUC undefined)")
    return result


def _paired_checks(root: Path, sensor: str | None, layout: str = LAYOUT_CHECK) -> list[SceneCheck]:
    checks = []
    for split in ("train", "test"):
        split_root = root / split
        if not split_root.is_dir():
            continue
        sensors = [sensor] if sensor else sorted(p.name for p in split_root.iterdir() if p.is_dir())
        for name in sensors:
            folder = split_root / name
            if not folder.is_dir():
                continue  # e.g. --sensor aviris: HAD100 has train/aviris but no test/aviris
            group = f"{split}/{name}"
            cubes = sorted(folder.glob(f"*{CUBE_SUFFIX}"))
            for cube_path in cubes:
                gt_path = root / "ground_truth" / name / f"{cube_path.stem}{MASK_SUFFIX}"
                checks.append(check_scene(group, cube_path.stem, cube_path, gt_path if split == "test" else None,
                                          needs_mask=split == "test", layout=layout))
            if split == "test":
                stems = {p.stem for p in cubes}
                for orphan in sorted((root / "ground_truth" / name).glob(f"*{MASK_SUFFIX}")):
                    if orphan.stem not in stems:
                        checks.append(SceneCheck(group, orphan.stem, str(folder / f"{orphan.stem}{CUBE_SUFFIX}"),
                                                 str(orphan), problems=["ground truth without a cube"]))
    return checks


def detect_layout(root) -> str:
    """``abu`` for a folder of ``.mat`` files, ``had100`` for a ``train/``/``test/`` layout."""
    root = Path(root)
    if any(root.glob("*.mat")):
        return "abu"
    if (root / "test").is_dir() or (root / "train").is_dir():
        return "had100"
    hint = ""
    if (root / "HAD100Dataset").is_dir():
        hint = f" (did you mean {root / 'HAD100Dataset'}?)"
    raise FersError(f"{root}: neither a HAD100/FERS_ABU folder (test/<sensor>/*.npy) nor a folder of ABU "
                    f".mat files{hint}; pass the dataset root")


def check_dataset(root, layout: str = "auto", sensor: str | None = None, cube_layout: str = LAYOUT_CHECK) -> CheckReport:
    """Validate every cube and ground truth of a HAD100, FERS_ABU or ABU ``.mat`` folder (``cube_layout``:
    how the cube files store their axes, see :data:`fers.io.CUBE_LAYOUTS`).

    Folder-level problems (missing folder, no scenes) raise :class:`FersError`; problems of single
    files are collected per scene in the report.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise FersError(f"{root}: dataset folder not found; pass the folder holding test/ (HAD100, FERS_ABU) "
                        "or the ABU .mat files")
    if layout == "auto":
        layout = detect_layout(root)
    mats = sorted(root.glob("*.mat"))
    if layout == "abu" and mats:
        checks = [check_scene("mat", p.stem, p, None, mask_in_cube=True, layout=cube_layout) for p in mats]
    else:
        if not (root / "test").is_dir() and not (root / "train").is_dir():
            raise FersError(f"{root}: no test/ or train/ folder; this is not a {layout.upper()} layout "
                            "(let the layout be detected: auto)")
        checks = _paired_checks(root, sensor, cube_layout)
        if layout == "had100" and not (root / "test").is_dir():
            checks.append(SceneCheck("test", "-", str(root / "test"), None,
                                     problems=["no test/ folder: test.py needs test/<sensor>/*.npy"]))
    if not checks:
        where = sensor or "<sensor>"
        raise FersError(f"{root}: no scenes found (no *.mat, no test/{where}/*{CUBE_SUFFIX}, "
                        f"no train/{where}/*{CUBE_SUFFIX}); check the path" + (" and `sensor`" if sensor else ""))
    warnings = _band_warnings(checks)
    unlabelled = [check.name for check in checks if check.unlabelled]
    if unlabelled:
        warnings.append(f"{len(unlabelled)} scene file(s) without a ground truth of their size ({', '.join(unlabelled)}): "
                        "detect.py and FERS_ABU/test.py run on them without metrics")
    return CheckReport(str(root), layout, checks, warnings)


def _band_warnings(checks) -> list[str]:
    warnings = []
    groups = {}
    for check in checks:
        if check.shape and len(check.shape) == 3:
            groups.setdefault(check.group, []).append(check.shape[2])
    for group, bands in groups.items():
        counts = {b: bands.count(b) for b in sorted(set(bands))}
        if len(counts) > 1:
            listed = ", ".join(f"{b} bands ({n} scene{'s' if n > 1 else ''})" for b, n in counts.items())
            warnings.append(f"{group}: band counts differ: {listed}; models take the first C bands "
                            "(interpolated when a scene has fewer, --band_policy)")
        if min(counts) < 50:
            warnings.append(f"{group}: {min(counts)} bands is fewer than the smallest model (50); "
                            "test.py will interpolate bands (--band_policy interp)")
    return warnings


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def report_lines(report: CheckReport) -> list[str]:
    """The summary table (one row per scene) and the list of problems with full paths."""
    header = ("scene", "size", "dtype", "min", "max", "anomaly px", "status")
    rows = []
    for s in report.scenes:
        size = "×".join(str(n) for n in s.shape) if s.shape else "-"
        rows.append((f"{s.group}/{s.name}", size, s.dtype or "-", _number(s.minimum), _number(s.maximum),
                     "-" if s.anomaly_pixels is None else str(s.anomaly_pixels), s.status))
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
    kind = ("ABU .mat files" if report.scenes and report.scenes[0].group == "mat"
            else "HAD100/FERS_ABU layout: test/<sensor>/*.npy + ground_truth/<sensor>/*.png, train/<sensor>/*.npy")
    lines = [f"{report.root} ({kind}): {len(report.scenes)} cube(s)"]
    for row in [header] + rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    problems = report.problems
    lines.append("")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if problems:
        lines.append(f"{len(problems)} of {len(report.scenes)} scene(s) have problems:")
        for s in problems:
            where = s.cube_path
            if s.gt_path and any(p.startswith(("ground truth", "unreadable ground truth", "no ground truth"))
                                 for p in s.problems):
                where = f"{s.cube_path} / {s.gt_path}"
            lines.append(f"  {where}: {s.status}")
    else:
        lines.append(f"all {len(report.scenes)} scene(s) OK")
    return lines
