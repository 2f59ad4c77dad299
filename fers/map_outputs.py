"""Anomaly maps in the scene's georeferencing, a detection mask at a chosen false-alarm rate, and
the connected detections as GeoJSON.

- :func:`write_map`: ``.tif`` → GeoTIFF (float32 with nodata NaN for scores; uint8 with nodata 255
  for masks; CRS and transform of the :class:`fers.rasters.Georeference`; needs rasterio),
  ``.hdr`` → ENVI (a ``.img`` BSQ file beside it; ``map info`` and ``coordinate system string``
  kept verbatim; ``data ignore value = nan``; no dependency).
- :func:`detection_mask`: the pixels above the ``(1 − far)`` quantile of the scene's own valid
  scores, a scene being mostly background: a false-alarm rate of about ``far``.
- :func:`detections_geojson`: one point feature per 8-connected detection (area in pixels and map
  units, peak score and where it is, centroid in map coordinates).

Files are written as they are asked for; the commands write them into an
:class:`fers.outputs.OutputFolder` staging folder, so a failed run leaves nothing.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np

from .errors import FersError, ParameterError
from .rasters import GEOTIFF_SUFFIXES, Georeference, require_rasterio

_log = logging.getLogger(__name__)
MASK_NODATA = 255  # uint8 masks: 1 detection, 0 background, 255 no-data


# --------------------------------------------------------------------------- writers


def _as_band(values) -> tuple[np.ndarray, float]:
    """``(band to write, its nodata value)``: float maps as float32 with NaN, masks as uint8 with 255."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"a map must be 2-D (rows, cols), got shape {values.shape}")
    if values.dtype.kind in "bu" and values.dtype.itemsize == 1:
        return values.astype(np.uint8), MASK_NODATA
    return values.astype(np.float32), math.nan


def write_geotiff(path, values, georeference: Georeference | None = None) -> None:
    """One-band GeoTIFF of ``values`` ``(rows, cols)`` in ``georeference`` (tiled, deflate)."""
    rasterio = require_rasterio(path, "GeoTIFF maps")
    from rasterio.transform import Affine

    band, nodata = _as_band(values)
    profile = {"driver": "GTiff", "height": band.shape[0], "width": band.shape[1], "count": 1,
               "dtype": band.dtype.name, "nodata": nodata, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "predictor": 3 if band.dtype.kind == "f" else 2, "BIGTIFF": "IF_SAFER"}
    if georeference is not None and georeference.transform is not None:
        profile["transform"] = Affine(*georeference.transform)
    if georeference is not None and georeference.crs:
        profile["crs"] = rasterio.crs.CRS.from_user_input(georeference.crs)
    with warnings.catch_warnings():  # a map of a plain TIFF has no georeferencing: nothing to warn about
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.Env(), rasterio.open(path, "w", **profile) as target:
            target.write(band, 1)


def write_envi(path, values, georeference: Georeference | None = None, description: str = "",
               band_name: str = "anomaly scores") -> None:
    """ENVI image of ``values``: ``path`` (the ``.hdr``) and its BSQ data file ``.img`` (float32
    little-endian, ``data ignore value = nan``; uint8 masks: 255), with the input's ``map info``
    and ``coordinate system string`` kept verbatim."""
    path = Path(path)
    band, nodata = _as_band(values)
    band = band.astype(band.dtype.newbyteorder("<"))
    lines = ["ENVI", f"description = {{{description or 'FERS anomaly map'}}}", f"samples = {band.shape[1]}",
             f"lines = {band.shape[0]}", "bands = 1", "header offset = 0", "file type = ENVI Standard",
             f"data type = {1 if band.dtype.kind == 'u' else 4}", "interleave = bsq", "byte order = 0",
             f"band names = {{{band_name}}}", f"data ignore value = {'nan' if math.isnan(nodata) else nodata}"]
    for key, value in (georeference.envi if georeference is not None else {}).items():
        lines.append(f"{key} = {value}")
    band.tofile(path.with_suffix(".img"))
    path.write_text("\n".join(lines) + "\n")


def write_map(path, values, georeference: Georeference | None = None, description: str = "") -> None:
    """A 2-D map as GeoTIFF (``.tif``/``.tiff``) or ENVI (``.hdr``), chosen by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in GEOTIFF_SUFFIXES:
        write_geotiff(path, values, georeference)
    elif suffix == ".hdr":
        write_envi(path, values, georeference, description)
    else:
        raise ValueError(f"map files are .tif/.tiff (GeoTIFF) or .hdr (ENVI), got {path}")


# --------------------------------------------------------------------------- detections


def detection_mask(scores, far: float) -> tuple[np.ndarray, float]:
    """``(mask, threshold)``: the valid (finite) pixels whose score is at least the
    ``ceil(far · n)``-th highest of the ``n`` valid scores, i.e. above the scene's own
    ``(1 − far)`` quantile — about ``far · n`` pixels (more only where scores tie). Taking the
    scene's scores as the background distribution (anomalies are rare), that is a false-alarm
    rate of ``far``."""
    if not 0.0 < far < 1.0:
        raise ParameterError(f"`far` must be a false-alarm rate between 0 and 1 (exclusive), got {far}")
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    values = scores[finite]
    if not values.size:
        raise FersError("no valid score to threshold: every pixel is no-data")
    count = max(1, math.ceil(far * values.size))
    threshold = float(np.partition(values, values.size - count)[values.size - count])
    return finite & (scores >= threshold), threshold  # NaN compares False


def _epsg(crs: str | None) -> int | None:
    if not crs:
        return None
    try:
        from rasterio.crs import CRS

        return CRS.from_user_input(crs).to_epsg()
    except Exception:  # no rasterio, or a CRS without an EPSG code
        return None


def detections_geojson(scores, mask, georeference: Georeference | None = None, connectivity: int = 8) -> dict:
    """A GeoJSON FeatureCollection of the connected detections of ``mask`` (``connectivity`` 8 or 4):
    per detection a point at its centroid and ``area_pixels``, ``area_map_units`` (pixels × pixel
    area; None without a transform), ``peak_score``, ``peak_row``/``peak_col``, ``centroid_row``/
    ``centroid_col`` (pixel centres at ``+0.5``) and ``centroid_x``/``centroid_y`` in map coordinates
    (pixel coordinates, column then row, without a transform). Strongest first. With a CRS that has
    an EPSG code the collection carries it as the ``crs`` member (read by QGIS and GDAL)."""
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    scores = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    structure = np.ones((3, 3), bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(mask, structure=structure)
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    safe = np.where(mask, scores, -np.inf)
    peaks = ndimage.maximum(safe, labels, index) if count else []
    peak_positions = ndimage.maximum_position(safe, labels, index) if count else []
    centres = ndimage.center_of_mass(mask, labels, index) if count else []
    transform = georeference.transform if georeference is not None else None
    features = []
    for label, area, peak, (peak_row, peak_col), (row, col) in zip(index, areas, peaks, peak_positions, centres):
        row, col = row + 0.5, col + 0.5
        x, y = georeference.map_coordinates(row, col) if transform is not None else (col, row)
        properties = {"id": int(label), "area_pixels": int(area),
                      "area_map_units": float(area * georeference.pixel_area) if transform is not None else None,
                      "peak_score": float(peak), "peak_row": int(peak_row), "peak_col": int(peak_col),
                      "centroid_row": float(row), "centroid_col": float(col),
                      "centroid_x": float(x), "centroid_y": float(y)}
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
                         "properties": properties})
    features.sort(key=lambda feature: -feature["properties"]["peak_score"])
    collection = {"type": "FeatureCollection", "features": features}
    epsg = _epsg(georeference.crs if georeference is not None else None)
    if epsg is not None:
        collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}
    return collection


# --------------------------------------------------------------------------- one scene's files


def write_scene_maps(folder, name: str, scores, source, georeference: Georeference | None, far: float | None = None,
                     geojson: bool = False) -> dict:
    """The georeferenced files of one scene into ``folder``: ``<name>_scores.tif`` for a GeoTIFF
    ``source`` and for an ENVI one with map information (skipped with a warning when rasterio is
    missing for the latter), ``<name>_scores.hdr``/``.img`` for an ENVI ``source``; with ``far``
    ``<name>_mask.png`` (and ``<name>_mask.tif`` beside a GeoTIFF map), with ``geojson``
    ``<name>_detections.geojson``. Returns what the results row records (``far_threshold``,
    ``detections``, ``maps``)."""
    from .io import save_mask_png
    from .outputs import write_json

    folder, suffix = Path(folder), Path(source).suffix.lower()
    written, record = [], {}
    geotiff = suffix in GEOTIFF_SUFFIXES or (suffix == ".hdr" and georeference is not None
                                              and georeference.transform is not None)
    if geotiff and suffix == ".hdr":
        try:
            require_rasterio(source, "GeoTIFF maps")
        except FersError as error:
            _log.warning(f"{error}; {name}_scores.tif not written (the ENVI map keeps the map info)")
            geotiff = False
    if geotiff:
        write_geotiff(folder / f"{name}_scores.tif", scores, georeference)
        written.append(f"{name}_scores.tif")
    if suffix == ".hdr":
        write_envi(folder / f"{name}_scores.hdr", scores, georeference, f"FERS anomaly scores of {Path(source).name}")
        written += [f"{name}_scores.hdr", f"{name}_scores.img"]
    if far is not None:
        mask, threshold = detection_mask(scores, far)
        record.update({"far": far, "far_threshold": threshold, "detected_pixels": int(mask.sum())})
        save_mask_png(folder / f"{name}_mask.png", mask)
        written.append(f"{name}_mask.png")
        if geotiff:
            band = np.where(np.isfinite(scores), mask, MASK_NODATA).astype(np.uint8)
            write_geotiff(folder / f"{name}_mask.tif", band, georeference)
            written.append(f"{name}_mask.tif")
        if geojson:
            collection = detections_geojson(scores, mask, georeference)
            write_json(folder / f"{name}_detections.geojson", collection)
            written.append(f"{name}_detections.geojson")
            record["detections"] = len(collection["features"])
    record["maps"] = written
    return record
