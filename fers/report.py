"""Visual reports (matplotlib, Agg backend): per-scene panels, ROC curves and the
background-suppression box plot, written atomically into ``<save_dir>/report/``.

- ``<scene>.png``: false-colour composite, ground truth, then one score map per method, each map
  min-max scaled for display, its AUC in the title.
- ``roc_curves.png``: ROC curves with a logarithmic false-alarm axis; first the mean over the
  scenes (detection rate averaged at each false-alarm rate), then one small plot per scene.
- ``background_suppression.png``: per method, the distribution of the min-max scaled scores of
  anomaly pixels (red) and background pixels (blue), as box plots (box: quartiles, whiskers:
  10th and 90th percentiles, no outliers drawn), as in the hyperspectral anomaly detection
  literature; a detector separates well when the red box sits high and the blue box is short
  and low. First all scenes pooled, then one plot per scene.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np

from .outputs import OutputFolder, atomic_path
from .metrics import auc as auc_score
from .metrics import roc_curve
from .preprocessing import minmax_scale

_log = logging.getLogger(__name__)

# False-colour bands as fractions of the band count: near-infrared, red and green for a
# 400-2500 nm sensor such as AVIRIS (about 850, 650 and 550 nm).
FALSE_COLOUR_FRACTIONS = (0.21, 0.12, 0.07)
MAX_SCENE_PLOTS = 24  # beyond this, ROC and box plots show only the set as a whole
MAX_BACKGROUND_SAMPLES = 20000  # background pixels per scene in the box plot (a fixed stride)
LOWEST_FALSE_ALARM = 1e-4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preload_in_background() -> None:
    """Import matplotlib (and scipy.io for the .mat files written beside the plots) on a background
    thread while the caller computes (about 0.8 s of a command otherwise)."""
    from .utils import in_background

    in_background(lambda: (_pyplot(), __import__("scipy.io")), "fers-preload-matplotlib")


def _save(figure, path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def false_colour(cube: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB in [0, 1] from a ``(H, W, B)`` cube: the bands of
    :data:`FALSE_COLOUR_FRACTIONS`, each stretched between its 2nd and 98th percentile."""
    bands = cube.shape[2]
    picks = [min(bands - 1, int(round(fraction * (bands - 1)))) for fraction in FALSE_COLOUR_FRACTIONS]
    rgb = np.stack([np.asarray(cube[:, :, band], dtype=np.float64) for band in picks], axis=-1)
    low = np.percentile(rgb, 2, axis=(0, 1))
    high = np.percentile(rgb, 98, axis=(0, 1))
    return np.clip(minmax_scale(rgb, low, high), 0.0, 1.0)


def _display(scores: np.ndarray) -> np.ndarray:
    return minmax_scale(np.asarray(scores, dtype=np.float64))


# Heat maps (detect.py's <scene>_scores.png): one block of pixels per scene pixel, robust colours.
HEATMAP_PERCENTILES = (1.0, 99.0)  # the colour scale spans these percentiles of the finite scores
HEATMAP_MIN_SIDE = 512  # a smaller scene is enlarged by an integer factor to at least this (longer side)
HEATMAP_MAX_SIDE = 8192  # a larger one is reduced by an integer factor, each block showing its maximum
HEATMAP_TITLE_PX, HEATMAP_BAR_PX, HEATMAP_MARGIN_PX, HEATMAP_MIN_WIDTH = 30, 120, 10, 480
HEATMAP_DPI = 100
NO_DATA_GREY = (0.6, 0.6, 0.6, 1.0)  # non-finite scores (no-data pixels)


def display_range(scores: np.ndarray, percentiles=HEATMAP_PERCENTILES) -> tuple[float, float]:
    """The robust colour scale of a score map: the ``percentiles`` (1st and 99th) of its finite
    scores, so a few extreme pixels cannot turn the rest of the map black; the full range when
    those coincide, ``(0, 1)`` without a finite score."""
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, percentiles)
    if not high > low:
        low, high = finite.min(), finite.max()
    return float(low), float(high)


def _ordinal(value: float) -> str:
    number = f"{value:g}"
    suffix = "th" if number.endswith(("11", "12", "13")) else {"1": "st", "2": "nd", "3": "rd"}.get(number[-1], "th")
    return number + suffix


def heatmap_scale(height: int, width: int) -> tuple[int, int]:
    """``(enlarge, reduce)``: the integer factors a ``height × width`` map is drawn with (one is 1)."""
    side = max(height, width)
    if side > HEATMAP_MAX_SIDE:
        return 1, math.ceil(side / HEATMAP_MAX_SIDE)
    return max(1, HEATMAP_MIN_SIDE // side), 1


def heatmap_layout(height: int, width: int) -> dict:
    """Where :func:`save_heatmap` puts things, in PNG pixels: ``size`` ``(width, height)`` of the image,
    ``map`` ``(left, top, width, height)`` of the drawn map, and the scale factors."""
    enlarge, reduce = heatmap_scale(height, width)
    map_height, map_width = -(-height // reduce) * enlarge, -(-width // reduce) * enlarge
    image_width = max(HEATMAP_MIN_WIDTH, 2 * HEATMAP_MARGIN_PX + map_width + HEATMAP_BAR_PX)
    image_height = HEATMAP_TITLE_PX + map_height + HEATMAP_MARGIN_PX
    return {"size": (image_width, image_height), "map": (HEATMAP_MARGIN_PX, HEATMAP_TITLE_PX, map_width, map_height),
            "enlarge": enlarge, "reduce": reduce}


def _block_maximum(scores: np.ndarray, reduce: int) -> np.ndarray:
    """Each ``reduce × reduce`` block's largest finite score (NaN where it has none)."""
    height, width = scores.shape
    padded = np.full((-(-height // reduce) * reduce, -(-width // reduce) * reduce), np.nan)
    padded[:height, :width] = np.where(np.isfinite(scores), scores, np.nan)
    blocks = padded.reshape(padded.shape[0] // reduce, reduce, padded.shape[1] // reduce, reduce)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmax(blocks, axis=(1, 3))


def heatmap_colours(scores: np.ndarray, low: float, high: float, colormap: str = "inferno") -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a map on the scale ``[low, high]`` (values outside take the end
    colours; non-finite scores :data:`NO_DATA_GREY`)."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap].with_extremes(bad=NO_DATA_GREY)
    values = np.asarray(scores, dtype=np.float64)
    scaled = np.ma.masked_invalid(np.clip((values - low) / (high - low if high > low else 1.0), 0.0, 1.0))
    return cmap(scaled, bytes=True)[..., :3]


def save_heatmap(path, scores: np.ndarray, title: str, colormap: str = "inferno") -> None:
    """A score map as a PNG at the scene's own resolution: one block of ``enlarge × enlarge`` image
    pixels per scene pixel (an integer factor bringing small scenes to about 512 px; 1 from 512 px
    on; scenes over 8192 px reduced by an integer factor, each block showing its maximum so no
    anomaly disappears), coloured on the robust scale of :func:`display_range` (1st–99th
    percentile; the colour bar's arrows mark clipped values), no-data grey, the title above and the
    colour bar at the right (:func:`heatmap_layout`)."""
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from PIL import Image

    scores = np.asarray(scores, dtype=np.float64)
    layout = heatmap_layout(*scores.shape)
    low, high = display_range(scores)
    shown = _block_maximum(scores, layout["reduce"]) if layout["reduce"] > 1 else scores
    colours = heatmap_colours(shown, low, high, colormap)
    colours = np.repeat(np.repeat(colours, layout["enlarge"], axis=0), layout["enlarge"], axis=1)
    width, height = layout["size"]
    left, top, map_width, map_height = layout["map"]
    figure = plt.figure(figsize=((width + 0.5) / HEATMAP_DPI, (height + 0.5) / HEATMAP_DPI), dpi=HEATMAP_DPI)
    figure.text(HEATMAP_MARGIN_PX / width, 1 - 0.5 * HEATMAP_TITLE_PX / height, title, fontsize=9, va="center")
    bar_left = left + map_width + HEATMAP_MARGIN_PX
    bar = figure.add_axes([bar_left / width, HEATMAP_MARGIN_PX / height, 14 / width,
                           (map_height - 2 * HEATMAP_MARGIN_PX) / height if map_height > 60 else map_height / height])
    finite = scores[np.isfinite(scores)]
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(finite.size and finite.min() < low), bool(finite.size and finite.max() > high))]
    colour_bar = figure.colorbar(ScalarMappable(Normalize(low, high), colormap), cax=bar, extend=extend)
    colour_bar.set_label(f"score (colours: {_ordinal(HEATMAP_PERCENTILES[0])}–{_ordinal(HEATMAP_PERCENTILES[1])} "
                         "percentile)", fontsize=8)
    bar.tick_params(labelsize=7)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    image[top:top + map_height, left:left + map_width] = colours  # the map's own pixels, never resampled
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def scene_panel(path, name: str, composite: np.ndarray, mask: np.ndarray, maps: dict) -> None:
    """One row: false-colour composite, ground truth, then each method's map (``{label: (H, W)}``)."""
    plt = _pyplot()
    count = 2 + len(maps)
    figure, axes = plt.subplots(1, count, figsize=(2.6 * count, 2.9))
    axes[0].imshow(composite, interpolation="nearest")
    axes[0].set_title("false colour", fontsize=9)
    axes[1].imshow(mask, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    axes[1].set_title(f"ground truth ({int(mask.sum())} px)", fontsize=9)
    for axis, (label, scores) in zip(axes[2:], maps.items()):
        low, high = display_range(scores)
        axis.imshow(scores, cmap="inferno", interpolation="nearest", vmin=low, vmax=high)
        value = auc_score(scores, mask) if mask.any() else math.nan
        axis.set_title(f"{label}  AUC {value:.4f}", fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(name, fontsize=10)
    _save(figure, path)


def _roc_on_grid(scores, mask, grid):
    """Detection rate at each false-alarm rate of ``grid`` (the best reached at or below it)."""
    false_alarm, detection, _ = roc_curve(scores, mask)
    index = np.searchsorted(false_alarm, grid, side="right") - 1
    return detection[np.clip(index, 0, None)]


def roc_figure(path, names: list, masks: list, maps: dict) -> None:
    """Mean ROC over the scenes, then one plot per scene (up to :data:`MAX_SCENE_PLOTS`)."""
    plt = _pyplot()
    grid = np.logspace(math.log10(LOWEST_FALSE_ALARM), 0, 300)
    usable = [i for i, mask in enumerate(masks) if mask.any() and not mask.all()]
    per_scene = usable if len(usable) <= MAX_SCENE_PLOTS else []
    count = 1 + len(per_scene)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False,
                             layout="constrained")  # titles never overlap the axis labels above
    axes = axes.ravel()
    for label, scene_maps in maps.items():
        curves = np.array([_roc_on_grid(scene_maps[i], masks[i], grid) for i in usable])
        if len(curves):
            axes[0].plot(grid, curves.mean(0), label=label)
        for axis, index in zip(axes[1:], per_scene):
            false_alarm, detection, _ = roc_curve(scene_maps[index], masks[index])
            axis.step(np.maximum(false_alarm, LOWEST_FALSE_ALARM), detection, where="post", label=label)
    axes[0].set_title(f"mean over {len(usable)} scenes", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower right")
    for axis, index in zip(axes[1:], per_scene):
        axis.set_title(names[index], fontsize=9)
    for axis in axes[:count]:
        axis.set_xscale("log")
        axis.set_xlim(LOWEST_FALSE_ALARM, 1.0)
        axis.set_ylim(0.0, 1.02)
        axis.set_xlabel("false-alarm rate", fontsize=8)
        axis.set_ylabel("detection rate", fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
        axis.tick_params(labelsize=7)
    for axis in axes[count:]:
        axis.axis("off")
    _save(figure, path)


def _separated(scores, mask):
    """Min-max scaled ``(anomaly scores, background scores)`` of one scene, background subsampled."""
    scaled = _display(scores).ravel()
    mask = np.asarray(mask, bool).ravel()
    background = scaled[~mask]
    stride = max(1, math.ceil(background.size / MAX_BACKGROUND_SAMPLES))
    return scaled[mask], background[::stride]


def _box_pairs(axis, label_values: list) -> None:
    """Side-by-side red (anomaly) and blue (background) boxes for each ``(label, (anomaly, background))``."""
    positions, data, colours = [], [], []
    for index, (_, (anomaly, background)) in enumerate(label_values):
        positions += [3 * index + 0.6, 3 * index + 1.4]
        data += [anomaly, background]
        colours += ["tab:red", "tab:blue"]
    boxes = axis.boxplot(data, positions=positions, widths=0.7, whis=(10, 90), showfliers=False,
                         patch_artist=True, medianprops={"color": "black"})
    for patch, colour in zip(boxes["boxes"], colours):
        patch.set_facecolor(colour)
        patch.set_alpha(0.6)
    axis.set_xticks([3 * i + 1 for i in range(len(label_values))])
    axis.set_xticklabels([label for label, _ in label_values], fontsize=8)
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("normalised score", fontsize=8)
    axis.tick_params(labelsize=7)


def box_figure(path, names: list, masks: list, maps: dict) -> None:
    """Background-suppression box plot: all scenes pooled, then one plot per scene."""
    plt = _pyplot()
    usable = [i for i, mask in enumerate(masks) if mask.any() and not mask.all()]
    per_scene = usable if len(usable) <= MAX_SCENE_PLOTS else []
    count = 1 + len(per_scene)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(max(3.6, 1.1 * len(maps) + 1.5) * columns, 3.0 * rows),
                                squeeze=False)
    axes = axes.ravel()
    pooled = []
    for label, scene_maps in maps.items():
        parts = [_separated(scene_maps[i], masks[i]) for i in usable]
        pooled.append((label, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))))
    _box_pairs(axes[0], pooled)
    axes[0].set_title(f"{len(usable)} scenes pooled (red: anomaly, blue: background)", fontsize=9)
    for axis, index in zip(axes[1:], per_scene):
        _box_pairs(axis, [(label, _separated(scene_maps[index], masks[index])) for label, scene_maps in maps.items()])
        axis.set_title(names[index], fontsize=9)
    for axis in axes[count:]:
        axis.axis("off")
    _save(figure, path)


def write_method_report(report_dir, scenes: list, masks: list, maps: dict, log=None) -> Path:
    """All report PNGs for several methods: ``maps`` is ``{label: [map (H, W) per scene]}``.
    The false-colour composites read the scene cubes again (one at a time)."""
    from .datasets import load_scene

    report_dir = Path(report_dir)
    names = [scene.name for scene in scenes]
    with OutputFolder(report_dir) as staging:  # all figures or none (e.g. on a full disk)
        for index, scene in enumerate(scenes):
            cube, _ = load_scene(scene)
            composite = false_colour(cube)
            del cube
            scene_panel(staging / f"{scene.name}.png", scene.name, composite, masks[index],
                        {label: scene_maps[index] for label, scene_maps in maps.items()})
        if any(mask.any() and not mask.all() for mask in masks):
            roc_figure(staging / "roc_curves.png", names, masks, maps)
            box_figure(staging / "background_suppression.png", names, masks, maps)
        else:
            (log or _log.info)("note: no scene has both anomaly and background pixels; ROC and box plots skipped")
    (log or _log.info)(f"report written to {report_dir}")
    return report_dir


def method_label(config: dict) -> str:
    """Display name of an evaluated detector from its ``Evaluation.config``."""
    label = {"both": "FERS", "spectral": "FERD", "spatial": "spatial branch", "none": "RX"}.get(
        config.get("branches"), "detector")
    return f"{label} (AE)" if config.get("detect") == "AE" else label


def write_report(save_dir, scenes, evaluation, args) -> Path:
    """The report of an evaluation command (``--report``): each scene's panel shows global RX (on the
    same bands, float64) next to the evaluated detector's map; ROC and box plots compare the two."""
    import torch

    from . import detectors
    from .evaluation import load_inputs
    from .preprocessing import to_chw

    label = method_label(evaluation.config)
    maps = {}
    if label != "RX":
        cubes, _, _ = load_inputs(scenes, args.input_channel, args.band_policy, log=lambda *_: None)
        maps["RX"] = [detectors.rx_scores(torch.from_numpy(to_chw(cube))[None], "float64")[0].numpy()
                      for cube in cubes]
        del cubes
    maps[label] = evaluation.scores
    return write_method_report(Path(save_dir) / "report", scenes, evaluation.masks, maps)
