"""Detection on a scene of any size: overlapping tiles, blended without seams, with the RX
background taken per tile (as the method is trained on 64×64 patches) or over the whole scene.

Layout: cubes are ``(rows, cols, bands)`` NumPy arrays; tiles go through
:class:`fers.evaluation.Detector` as ``(N, C, tile, tile)`` batches.

Memory is bounded by the scene itself: the normalised cube (float32, ``H·W·C·4`` bytes), one
feature accumulator of the same size in ``global`` mode (two for the product fusion), and
row chunks of a few tens of MB for everything computed in float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .rx import reference_inverse, rx_statistics, solve_covariance
from .preprocessing import CHUNK_BYTES as PREPARE_CHUNK_BYTES
from .preprocessing import chunk_rows, minmax_scale, nodata_rule, to_batch, to_chw, valid_pixels

BACKGROUNDS = ("tile", "global")
ACCUMULATOR_MEMORY_BYTES = 256 * 2 ** 20  # a scene read from disk: larger global accumulators go to files
CHUNK_BYTES = PREPARE_CHUNK_BYTES  # float64 working set of one row chunk
_log = logging.getLogger(__name__)
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation


# --------------------------------------------------------------------------- preparation


def _chunk_rows(cube_shape, itemsize: int = 8) -> int:
    return chunk_rows(cube_shape, CHUNK_BYTES, itemsize)


# --------------------------------------------------------------------------- tiling


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` covering ``[0, size)``.

    The fewest tiles whose neighbours overlap by at least ``overlap`` pixels, spread evenly so
    that the first starts at 0 and the last ends at ``size`` (every tile has the same length).
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [int(round(i * (size - tile) / (count - 1))) for i in range(count)]


def _fade(overlap: int) -> np.ndarray:
    """Weight of the tile that ends across an overlap of ``overlap`` pixels: 1 on its first quarter,
    a ``cos²`` fade over the middle half, 0 on the last quarter (next to its own border, where the
    networks see the tile edge: ConvH's reflect pad, the spatial branch's zero padding and pooling).
    The tile starting there gets ``1 − fade``, so the two weights always sum to 1."""
    margin = overlap // 4
    middle = overlap - 2 * margin
    ramp = np.cos(0.5 * np.pi * (np.arange(middle) + 0.5) / middle) ** 2
    return np.concatenate([np.ones(margin), ramp, np.zeros(margin)])


def blend_weights(starts: list[int], length: int) -> list[np.ndarray]:
    """1-D blending weights, one array of ``length`` per tile (see :func:`_fade`).

    Neighbouring tiles cross-fade smoothly across their overlap; where at most two tiles overlap
    (overlap up to half a tile) their weights sum to exactly 1, and stitching divides by the
    summed weights anyway, so a map that is the same in every tile is stitched without any step.
    Scene borders are not faded.
    """
    weights = []
    for index, start in enumerate(starts):
        weight = np.ones(length)
        if index > 0:
            overlap = starts[index - 1] + length - start
            weight[:overlap] = np.minimum(weight[:overlap], 1.0 - _fade(overlap))
        if index < len(starts) - 1:
            overlap = start + length - starts[index + 1]
            weight[length - overlap:] = np.minimum(weight[length - overlap:], _fade(overlap))
        weights.append(weight)
    return weights


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile_rows × tile_cols`` covering an ``H × W`` scene."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def tile_rows(self) -> int:
        return min(self.tile, self.height)

    @property
    def tile_cols(self) -> int:
        return min(self.tile, self.width)

    @property
    def row_starts(self) -> list[int]:
        return tile_starts(self.height, self.tile, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return tile_starts(self.width, self.tile, self.overlap)

    def tiles(self) -> list[tuple[int, int, np.ndarray]]:
        """``(row, col, weight (tile_rows, tile_cols))`` for every tile, row-major."""
        row_weights = blend_weights(self.row_starts, self.tile_rows)
        col_weights = blend_weights(self.col_starts, self.tile_cols)
        return [(row, col, np.outer(row_weight, col_weight))
                for row, row_weight in zip(self.row_starts, row_weights)
                for col, col_weight in zip(self.col_starts, col_weights)]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def robust_standardise(maps: np.ndarray) -> np.ndarray:
    """Robust z-scores of each map of ``(N, h, w)``: ``(s − median) / (1.4826 · MAD)``.

    0 is a typical background pixel of that tile and 1 about one background standard deviation,
    whatever the detector's scale (RX distances, or products of [0, 1] maps). Median and MAD
    ignore the few anomalous pixels. A map with MAD 0 falls back to its standard deviation,
    and a constant map becomes 0. NaN (no-data) pixels are ignored and stay NaN.
    """
    flat = maps.reshape(maps.shape[0], -1).astype(np.float64)
    masked = np.isnan(flat).any()  # no-data pixels (NaN) are left out of every statistic
    median_of, std_of = (np.nanmedian, np.nanstd) if masked else (np.median, np.std)
    median = median_of(flat, axis=1, keepdims=True)
    spread = MAD_TO_SIGMA * median_of(np.abs(flat - median), axis=1, keepdims=True)
    fallback = std_of(flat, axis=1, keepdims=True)
    spread = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
    return ((flat - median) / spread).reshape(maps.shape)


# --------------------------------------------------------------------------- global RX in chunks


def global_rx_scores(cube, precision: str = "float64", valid: np.ndarray | None = None) -> np.ndarray:
    """Global RX ``(H, W)`` float64 of one ``(H, W, C)`` cube, as :func:`fers.detectors.rx_scores`
    computes it (cube min-max scaled to [0, 1], covariance /(n − 1), the same solver:
    :func:`fers.rx.solve_covariance`), with the mean and covariance accumulated in float64 over
    row chunks (:func:`fers.rx.rx_statistics`) so no float64 copy of the scene is ever made.
    ``cube`` is anything sliced by rows into arrays: an array, a memory map, a
    :class:`fers.preprocessing.PreparedView` or a :class:`fers.rasters.DiskArray`.

    ``float32``: the covariance is still accumulated in float64 (a float32 sum over millions of
    pixels loses digits), then cast to float32 and inverted with ``torch.linalg.pinv``'s default
    cutoff, as the reference's 50-band path does.

    ``valid`` ``(H, W)`` bool: only those pixels enter the min-max bounds, the mean and the
    covariance, and only they are scored; the others are NaN (no-data).
    """
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    height, width, bands = cube.shape
    rows = _chunk_rows(cube.shape)
    chunks = [slice(start, start + rows) for start in range(0, height, rows)]

    def pixels(part, dtype=np.float64):
        values = np.asarray(cube[part], dtype=dtype).reshape(-1, bands)
        return values if valid is None else values[valid[part].ravel()]

    bounds = [(float(np.min(values)), float(np.max(values))) for values in (pixels(part, None) for part in chunks)
              if values.size]
    low, high = min(bound[0] for bound in bounds), max(bound[1] for bound in bounds)

    def unit_pixels(part):
        return minmax_scale(pixels(part), low, high)

    mean, covariance, _ = rx_statistics(lambda: (unit_pixels(part) for part in chunks))
    covariance = torch.from_numpy(covariance)
    if precision == "float64":
        whitening = solve_covariance(covariance[None])
    else:
        inverse = reference_inverse(covariance).numpy()
    scores = np.empty((height, width)) if valid is None else np.full((height, width), np.nan)
    for part in chunks:
        centred = unit_pixels(part) - mean
        if not len(centred):
            continue
        if precision == "float64":  # (1, C, P) view: the column-major layout the solve wants
            values = whitening.scores(torch.from_numpy(centred).T[None])[0].numpy()
        else:
            centred = centred.astype(np.float32)
            values = ((centred @ inverse) * centred).sum(1)
        if valid is None:
            scores[part] = values.reshape(-1, width)
        else:
            block = scores[part]
            block[valid[part]] = values
    return scores


# --------------------------------------------------------------------------- the detection


RX_BACKGROUNDS = ("global", "local")


def rx_map(cube, background: str = "global", inner: int = 5, outer: int = 15, components: int | None = None,
           precision: str = "float64", nodata=None) -> np.ndarray:
    """Training-free RX (Reed & Yu 1990) of a cube ``(H, W, B)`` → ``(H, W)``, or of pixels
    ``(N, B)`` → ``(N,)``, float64, like ``spectral.rx``: ``(x − μ)ᵀ Σ⁺ (x − μ)`` with the sample
    covariance (n − 1) and its pseudo-inverse (exact inverse when well conditioned).

    - ``background="global"``: μ and Σ over the whole scene, accumulated in row chunks (bounded
      memory, :func:`global_rx_scores`); ``precision="float32"`` is the reference's 50-band path.
    - ``background="local"``: dual-window RX, μ and Σ from the ring between an ``inner`` and an
      ``outer`` odd square window (:func:`fers.detectors.local_rx_scores`; ``components`` principal
      components first, None = every band). Needs a cube, not a pixel list.

    ``nodata`` (global only): ``"auto"`` or a fill value (:func:`fers.preprocessing.nodata_rule`;
    ``auto`` includes the value a :class:`fers.rasters.Raster` declares): those pixels are left out
    of the min-max bounds, the mean and the covariance, and are NaN in the result. ``cube`` may be
    a :class:`fers.rasters.Raster`, read in row chunks.

    No state is kept; the cube is not modified (a read-only memory map works).
    """
    if background not in RX_BACKGROUNDS:
        raise ValueError(f"background must be one of {RX_BACKGROUNDS}, got {background!r}")
    if not hasattr(cube, "ndim") or cube.ndim not in (2, 3):
        raise ValueError(f"cube must be (rows, cols, bands) or pixels (N, bands), got shape {np.shape(cube)}")
    if background == "local" and (cube.ndim == 2 or nodata is not None):
        raise ValueError("background='local' needs a cube (rows, cols, bands), not a pixel list, and no `nodata`"
                         if cube.ndim == 2 else "`nodata` masks pixels of global RX only (background='global')")
    pixels = cube.ndim == 2
    if pixels:
        cube = np.asarray(cube)[:, None, :]
    if background == "global":
        rule = nodata_rule(nodata, getattr(cube, "nodata", None))
        valid = valid_pixels(cube, rule, chunk_bytes=CHUNK_BYTES) if rule is not None else None
        scores = global_rx_scores(cube, precision, valid)
        return scores[:, 0] if pixels else scores
    from .detectors import local_rx_scores

    bands_first = torch.from_numpy(to_chw(np.asarray(cube, dtype=np.float64)))
    return local_rx_scores(bands_first, inner, outer, components=components).numpy()


def crd_map(cube, win_in: int = 5, win_out: int = 11, lam: float = 1e-6, device="cpu") -> np.ndarray:
    """The collaborative-representation detector (CRD, Li & Du 2015) of a cube ``(H, W, B)`` →
    ``(H, W)`` float64: :func:`fers.detectors.crd_scores` (dual window ``win_in``/``win_out`` cut at
    the scene border, distance-weighted Tikhonov weight ``lam``), NumPy in and out. The cube is not
    modified."""
    if not hasattr(cube, "ndim") or cube.ndim != 3:
        raise ValueError(f"cube must be (rows, cols, bands), got shape {np.shape(cube)}")
    from .detectors import crd_scores

    bands_first = torch.from_numpy(to_chw(np.asarray(cube, dtype=np.float64))).to(device)
    return crd_scores(bands_first, win_in, win_out, lam).cpu().numpy()


def _window(grid: TileGrid, row: int, col: int) -> tuple[slice, slice]:
    return slice(row, row + grid.tile_rows), slice(col, col + grid.tile_cols)


def _scored_tiles(grid: TileGrid, valid: np.ndarray | None) -> list:
    """The tiles to score: every tile, less those holding no valid pixel."""
    tiles = grid.tiles()
    return tiles if valid is None else [t for t in tiles if valid[_window(grid, t[0], t[1])].any()]


def _tile_batches(tiles: list, batch_size: int):
    for start in range(0, len(tiles), batch_size):
        yield tiles[start:start + batch_size]


def _tile_tensor(cube: np.ndarray, batch, grid: TileGrid) -> torch.Tensor:
    """``(N, C, tile_rows, tile_cols)`` float32 tensor of the batch's tiles."""
    return to_batch([cube[row:row + grid.tile_rows, col:col + grid.tile_cols] for row, col, _ in batch])


@torch.inference_mode()
def masked_scores(detector, cubes: torch.Tensor, valid: np.ndarray) -> np.ndarray:
    """Anomaly maps ``(N, H, W)`` float64 of normalised cubes ``(N, C, H, W)`` whose pixels are
    valid only where ``valid`` ``(N, H, W)`` is: the networks see the whole (filled) cube, but the
    fusion rule and RX (:func:`fers.detectors.fused_scores`) use the valid pixels alone, so a
    filled pixel never enters a mean, a covariance or a min-max; the others are NaN. Fully valid
    cubes go through :meth:`Detector.score` unchanged."""
    from .detectors import fused_scores

    flat = valid.reshape(len(valid), -1)
    full = flat.all(1)
    if full.all():
        return detector.score(cubes).cpu().numpy()
    maps = np.full(valid.shape, np.nan)
    if full.any():
        maps[full] = detector.score(cubes[torch.from_numpy(full)]).cpu().numpy()
    partial = np.flatnonzero(~full & flat.any(1))
    if not len(partial):
        return maps
    partial_cubes = cubes[torch.from_numpy(partial)].to(detector.device, torch.float32)
    partial_spectral, partial_spatial = detector.features(partial_cubes)  # the networks once for the batch
    for slot, index in enumerate(partial):
        cube = partial_cubes[slot:slot + 1]
        spectral, spatial = (None if f is None else f[slot:slot + 1] for f in (partial_spectral, partial_spatial))
        keep = torch.from_numpy(np.flatnonzero(flat[index])).to(cube.device)

        def pixels(values):  # (1, C, H, W) → the valid pixels as a (1, C, 1, P) "scene"
            return None if values is None else values.reshape(1, values.shape[1], -1)[:, :, keep].unsqueeze(2)

        if keep.numel() < 2:  # no background statistics from one pixel: it is typical of itself
            values = np.zeros(keep.numel())
        else:
            values = fused_scores(pixels(cube), pixels(spectral), pixels(spatial), detector.fusion,
                                  detector.rx_precision).reshape(-1).double().cpu().numpy()
        maps[index].reshape(-1)[flat[index]] = values
    return maps


def _score_batch(detector, cube, batch, grid: TileGrid, valid: np.ndarray | None) -> np.ndarray:
    tensor = _tile_tensor(cube, batch, grid)
    if valid is None:
        return detector.score(tensor).cpu().numpy()
    return masked_scores(detector, tensor, np.stack([valid[_window(grid, row, col)] for row, col, _ in batch]))


def _accumulator(shape, on_disk: bool):
    if on_disk:
        from .rasters import DiskArray

        return DiskArray(shape, np.float32)
    return np.zeros(shape, dtype=np.float32)


def detect_scene(detector, cube: np.ndarray, tile: int = 64, overlap: int = 16, background: str = "tile",
                 batch_size: int = 16, progress: bool = True, valid: np.ndarray | None = None) -> np.ndarray:
    """Anomaly map ``(H, W)`` float64 of a normalised scene ``(H, W, C)`` (:meth:`fers.evaluation.Detector.prepare`).

    - ``tile``: each tile is scored by ``detector`` with its own RX background (the features and
      the fusion rule of :func:`fers.detectors.fused_scores` on the tile). With more than one
      tile, each tile map becomes robust z-scores (:func:`robust_standardise`) so tiles are
      comparable, then the maps are blended (:func:`blend_weights`). A single tile covering the
      scene is left as it is: the map of ``FERS_ABU/test.py``.
    - ``global``: the branch features are computed per tile and blended into full-scene features,
      then RX runs once over the whole enhanced scene (:func:`global_rx_scores`), with the same
      fusion rule: ``RX(x + spa + spe)`` (sum), ``N(RX(x + spa)) · N(RX(x + spe))`` (product),
      ``RX(x + features)`` for one branch, ``RX(x)`` for none.

    ``cube`` may be an array or a :class:`fers.preprocessing.PreparedView` (a scene read from disk
    window by window); for such a scene the ``global`` feature accumulators (``H·W·C`` float32
    each) go to temporary files (:class:`fers.rasters.DiskArray`) once they exceed
    :data:`ACCUMULATOR_MEMORY_BYTES`, so memory stays bounded.

    ``valid`` ``(H, W)`` bool (None: every pixel): pixels outside it are no-data. They are left out
    of every statistic (tile RX, the robust standardisation, global RX and its min-max bounds),
    enter the networks only as the filled values of ``cube``, and are NaN in the map; a tile with
    no valid pixel is not scored at all.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if cube.ndim != 3 or cube.shape[2] != detector.channels:
        raise ValueError(f"cube must be (H, W, {detector.channels}), got {tuple(cube.shape)}")
    height, width, _ = cube.shape
    grid = TileGrid(height, width, tile, overlap)
    tiles = _scored_tiles(grid, valid)
    if len(tiles) < len(grid):
        _log.info(f"{len(grid) - len(tiles)} of {len(grid)} tile(s) hold no valid pixel: not scored")
    from tqdm import tqdm

    bar = tqdm(total=len(tiles), desc=f"tiles ({background} RX)", unit="tile", disable=not progress, leave=False)
    if background == "global" and detector.branches == "none":  # plain RX: no tile is needed
        bar.close()
        return global_rx_scores(cube, detector.rx_precision, valid)
    weight_sum = np.zeros((height, width))
    if background == "tile" and len(grid) == 1:
        scores = _score_batch(detector, cube, grid.tiles(), grid, valid)
        bar.update(1)
        bar.close()
        return np.asarray(scores[0], dtype=np.float64)
    if background == "tile":
        score_sum = np.zeros((height, width))
        for batch in _tile_batches(tiles, batch_size):
            maps = robust_standardise(_score_batch(detector, cube, batch, grid, valid))
            for (row, col, weight), tile_map in zip(batch, maps):
                window = _window(grid, row, col)
                if valid is not None:  # no-data pixels of the tile add nothing
                    weight = np.where(valid[window], weight, 0.0)
                    tile_map = np.where(valid[window], tile_map, 0.0)
                score_sum[window] += weight * tile_map
                weight_sum[window] += weight
            bar.update(len(batch))
        bar.close()
        if valid is None:
            return score_sum / weight_sum
        return np.divide(score_sum, weight_sum, out=np.full((height, width), np.nan), where=valid)

    branches = detector.branches
    product = branches == "both" and detector.fusion == "product"
    terms = 2 if product else 1
    on_disk = not isinstance(cube, np.ndarray) and 4 * int(np.prod(cube.shape)) > ACCUMULATOR_MEMORY_BYTES
    accumulators = [_accumulator(cube.shape, on_disk) for _ in range(terms)]
    for batch in _tile_batches(tiles, batch_size):
        spectral, spatial = detector.features(_tile_tensor(cube, batch, grid).to(detector.device))
        if product:
            features = [spatial, spectral]
        elif branches == "both":
            features = [spatial + spectral]
        else:
            features = [spectral if spectral is not None else spatial]
        features = [to_hwc_batch(f) for f in features]
        for slot, (row, col, weight) in enumerate(batch):
            window = _window(grid, row, col)
            for accumulator, values in zip(accumulators, features):
                accumulator[window] += (weight[..., None] * values[slot]).astype(np.float32)
            weight_sum[window] += weight
        bar.update(len(batch))
    bar.close()
    if valid is not None:  # pixels of skipped tiles: no-data, never read by the RX below
        weight_sum[weight_sum == 0] = 1.0
    rows = _chunk_rows(cube.shape, itemsize=4)
    for start in range(0, height, rows):  # enhanced cube = x + blended features, in place
        part = slice(start, start + rows)
        inputs, weights = cube[part], weight_sum[part, :, None].astype(np.float32)  # x prepared once per chunk
        for accumulator in accumulators:  # one read and one write of each (possibly on-disk) accumulator
            block = accumulator[part]
            block /= weights
            block += inputs
            accumulator[part] = block
    maps = [global_rx_scores(enhanced, detector.rx_precision, valid) for enhanced in accumulators]
    del accumulators
    if not product:
        return maps[0]
    if valid is None:
        return minmax_scale(maps[0]) * minmax_scale(maps[1])
    return minmax_scale(maps[0], np.nanmin(maps[0]), np.nanmax(maps[0])) * \
        minmax_scale(maps[1], np.nanmin(maps[1]), np.nanmax(maps[1]))


def to_hwc_batch(features: torch.Tensor) -> np.ndarray:
    """``(N, C, h, w)`` tensor → ``(N, h, w, C)`` float32 NumPy array (back to the cube layout)."""
    return features.permute(0, 2, 3, 1).float().cpu().numpy()


# --------------------------------------------------------------------------- results of several scenes

SCENE_RESULTS_SUFFIX = "_results.json"
# Settings that change a scene's map: scenes detected with different values are not comparable.
DETECTION_SETTINGS = ("input_channel", "checkpoint_dir", "branches", "fusion", "rx_precision", "band_policy",
                      "tile", "overlap", "background", "nodata")


def write_scene_results(staging, save_dir) -> dict:
    """Write the summary of every scene detected into ``save_dir``: ``results.json`` (``scenes``: one
    row per ``<scene>_results.json``, in name order; ``mean_auc``/``mean_metrics`` over the scenes with
    a defined value and ``scenes_covered``; the newest run's ``config``) and ``results.csv`` (the rows
    and a mean row) into ``staging``. Per-scene files in ``staging`` (this run) replace those of the
    same name in ``save_dir`` (earlier runs). Returns the ``results.json`` payload."""
    import json
    from pathlib import Path

    from .results import summary, write_results
    from .utils import versions

    staging, save_dir = Path(staging), Path(save_dir)
    files = {path.name: path for path in sorted(save_dir.glob(f"*{SCENE_RESULTS_SUFFIX}"))}
    fresh = {path.name: path for path in sorted(staging.glob(f"*{SCENE_RESULTS_SUFFIX}"))}
    files.update(fresh)
    records = []
    for name in sorted(files):
        try:
            record = json.loads(files[name].read_text())
            if isinstance(record, dict) and isinstance(record.get("scene"), dict):
                records.append((name, record))
        except (OSError, ValueError):
            continue  # not a file of ours: left alone, not summarised
    rows = [record["scene"] for _, record in records]
    newest = next(record for name, record in records if name in fresh) if fresh else records[-1][1]
    payload = summary(rows)
    payload = {
        "scenes": rows,
        "scene_files": [name for name, _ in records],
        **payload,
        "seconds_note": "per-scene seconds are measured for that scene alone (detect.py runs one scene per call)",
        "config": newest["config"],
        "versions": versions(),
    }
    settings = {key: {json.dumps(record["config"].get(key), default=str) for _, record in records}
                for key in DETECTION_SETTINGS}
    differing = [key for key, values in settings.items() if len(values) > 1]
    if differing:
        payload["warning"] = (f"the scenes in this folder were detected with different {', '.join(differing)}; "
                              "their metrics are not comparable (see each <scene>_results.json)")
    write_results(staging, payload, rows, [{"name": "mean", **payload["mean_metrics"]}])
    return payload
