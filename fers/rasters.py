"""Scenes read window by window: one small interface over every cube file, so a flight line of
any size is scored without ever being held whole.

A :class:`Raster` has ``shape`` ``(rows, cols, bands)``, ``dtype``, ``wavelengths`` (nm or the
file's unit, or None), ``nodata`` (the value the file declares, or None), ``georeference``
(:class:`Georeference` or None) and reads a window: ``raster.read(rows, cols)`` or
``raster[rows, cols]`` → an in-memory ``(h, w, bands)`` array.

- ``.npy``: ``np.load(mmap_mode="r")``; ENVI (``.hdr`` and its data file, BSQ/BIL/BIP, any byte
  order): SPy's memory map (``pip install spectral``); GeoTIFF: rasterio windows with a small GDAL
  block cache (``pip install rasterio``). Arrays already in memory need no raster: the library
  reads windows of either.
- A memory map is opened for each window and closed after it, so the pages read leave the
  process's resident set with it (a long-lived map of a large file keeps every page it touched
  counted there); the kernel's page cache still serves repeated reads.

:class:`DiskArray` is the writable counterpart: a float32 array in a temporary file, used for
whole-scene accumulators that would not fit in memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FersError

GDAL_CACHE_MB = 64  # GDAL's block cache while reading GeoTIFF windows (its default is 5 % of the RAM)
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def require_rasterio(path, what: str = "GeoTIFF files"):
    """``rasterio``, or a :class:`FersError` naming ``path`` and ``pip install rasterio``."""
    try:
        import rasterio
    except ImportError:
        raise FersError(f"{path}: {what} need the optional 'rasterio' package: pip install rasterio") from None
    return rasterio


def _spectral_envi(path):
    try:
        import spectral.io.envi as envi
    except ImportError:
        raise FersError(f"{path}: ENVI files need the optional 'spectral' package: pip install spectral") from None
    return envi


# --------------------------------------------------------------------------- georeferencing


@dataclass(frozen=True)
class Georeference:
    """Where a scene lies: ``crs`` as WKT (None if unknown), ``transform`` the affine pixel-to-map
    transform ``(a, b, c, d, e, f)`` in rasterio's order (``x = a·col + b·row + c``,
    ``y = d·col + e·row + f`` at a pixel's upper-left corner), and ``envi`` the ENVI header fields
    that state it (``map info``, ``coordinate system string``), kept verbatim for ENVI outputs."""

    crs: str | None
    transform: tuple | None
    envi: dict = field(default_factory=dict)

    def map_coordinates(self, rows, cols):
        """Map ``(x, y)`` of fractional pixel positions (``row + 0.5`` is a pixel's centre)."""
        a, b, c, d, e, f = self.transform
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        return a * cols + b * rows + c, d * cols + e * rows + f

    @property
    def pixel_area(self) -> float:
        """The area of one pixel in map units (``|det|`` of the transform)."""
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)


def envi_map_transform(map_info) -> tuple | None:
    """The affine transform (rasterio order) of an ENVI ``map info`` (a list of its fields, or its
    text): projection, reference pixel x/y (1-based), its map x/y, pixel size x/y, ..., optional
    ``rotation=<degrees>``, as GDAL's ENVI driver reads it. None when it cannot be read."""
    fields = [part.strip() for part in (map_info.strip("{} ").split(",") if isinstance(map_info, str) else map_info)]
    try:
        ref_col, ref_row, map_x, map_y, size_x, size_y = (float(value) for value in fields[1:7])
    except (ValueError, IndexError):
        return None
    rotation = 0.0
    for item in fields[7:]:
        key, _, value = item.partition("=")
        if value and key.strip().lower() == "rotation":
            rotation = math.radians(float(value))
    cos, sin = math.cos(rotation), math.sin(rotation)
    # GDAL's reading (tested against it): the rotation turns the pixel axes, the origin is offset
    # from the reference pixel by unrotated pixel sizes.
    return (cos * size_x, sin * size_x, map_x - (ref_col - 1) * size_x,
            sin * size_y, -cos * size_y, map_y + (ref_row - 1) * size_y)


# --------------------------------------------------------------------------- the interface


def _span(key, size: int) -> slice:
    if isinstance(key, (int, np.integer)):
        key = int(key) + size if key < 0 else int(key)
        return slice(key, key + 1)
    start, stop, step = key.indices(size)
    if step != 1:
        raise ValueError("rasters are read in windows of consecutive rows and columns (step 1)")
    return slice(start, max(start, stop))


class Raster:
    """A ``(rows, cols, bands)`` cube read window by window (see the module docstring)."""

    ndim = 3
    path: Path | None = None
    shape: tuple
    dtype: np.dtype
    wavelengths: np.ndarray | None = None
    nodata: float | None = None
    georeference: Georeference | None = None

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``rows × cols`` as an in-memory ``(h, w, bands)`` array (the whole cube by default)."""
        rows, cols = _span(rows, self.shape[0]), _span(cols, self.shape[1])
        return self._read(rows, cols)

    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D raster: {len(key)}")
        rows, cols = (key + (slice(None), slice(None)))[:2]
        window = self.read(rows, cols)
        squeeze = tuple(axis for axis, item in enumerate(key[:2]) if isinstance(item, (int, np.integer)))
        window = window[(slice(None), slice(None)) + key[2:]] if len(key) > 2 else window
        return window.squeeze(squeeze) if squeeze else window

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path or 'memory'}, shape={self.shape}, dtype={self.dtype})"


class NpyRaster(Raster):
    """A ``.npy`` cube, each window read through its own ``np.load(mmap_mode="r")``. ``layout``
    ``bhw``: the file stores ``(bands, rows, cols)`` (read transposed)."""

    def __init__(self, path, layout: str = "hwb"):
        self.path, self.layout = Path(path), layout
        stored = self._open()
        if stored.ndim != 3:
            raise FersError(f"{path}: expected a 3-D cube (rows, cols, bands), got shape {tuple(stored.shape)}")
        self.shape = tuple(stored.shape[1:] + stored.shape[:1]) if layout == "bhw" else tuple(stored.shape)
        self.dtype = np.dtype(stored.dtype)

    def _open(self):
        from .io import _read_npy

        return _read_npy(self.path, mmap=True)

    def bands_first(self) -> "NpyRaster":
        """The same file read as ``(bands, rows, cols)`` storage."""
        return NpyRaster(self.path, "bhw")

    def _read(self, rows, cols):
        stored = self._open()
        if self.layout == "bhw":
            return np.ascontiguousarray(np.moveaxis(stored[:, rows, cols], 0, 2))
        return np.array(stored[rows, cols])


class EnviRaster(Raster):
    """An ENVI image (the ``.hdr`` and its data file; BSQ, BIL or BIP, any byte order and header
    offset), each window read through SPy's memory map (``spectral``'s ``open_memmap``). The
    header's ``data ignore value``, ``wavelength``, ``map info`` and ``coordinate system string``
    are kept."""

    def __init__(self, path):
        self.path = Path(path)
        envi = _spectral_envi(path)
        try:
            self.image = envi.open(str(self.path))
        except Exception as error:
            raise FersError(f"{path}: cannot read the ENVI image ({error.__class__.__name__}: {error}); "
                            "the header needs its data file beside it (same name, .img/.dat/.raw or none)") from None
        self.shape = tuple(int(n) for n in self.image.shape)
        self.dtype = np.dtype(self.image.dtype)
        metadata = self.image.metadata
        self.nodata = _number(metadata.get("data ignore value"))
        wavelengths = metadata.get("wavelength")
        try:
            self.wavelengths = np.asarray(wavelengths, dtype=np.float64) if wavelengths else None
        except ValueError:
            self.wavelengths = None
        self.georeference = self._georeference(metadata)

    def _georeference(self, metadata) -> Georeference | None:
        map_info = metadata.get("map info")
        if not map_info:
            return None
        text = "{" + ", ".join(map_info) + "}" if isinstance(map_info, list) else str(map_info)
        envi_fields = {"map info": text}
        crs = metadata.get("coordinate system string")
        if crs:
            crs = ", ".join(crs) if isinstance(crs, list) else str(crs)
            envi_fields["coordinate system string"] = "{" + crs.strip("{}") + "}"
            crs = crs.strip("{}")
        else:  # GDAL knows the CRS of a UTM/geographic map info without a WKT string
            crs = _gdal_crs(self.image.filename)
        return Georeference(crs, envi_map_transform(map_info), envi_fields)

    def _read(self, rows, cols):
        memmap = self.image.open_memmap(interleave="bip")
        if memmap is None:  # SPy could not map the file: its own reader
            return np.asarray(self.image.read_subregion((rows.start, rows.stop), (cols.start, cols.stop)))
        window = np.array(memmap[rows, cols])
        del memmap  # unmapped: the pages read leave the resident set
        return window


def _gdal_crs(data_file) -> str | None:
    try:
        import rasterio
    except ImportError:
        return None
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(data_file) as source:
            return source.crs.to_wkt() if source.crs else None
    except Exception:  # GDAL cannot read it: the map coordinates stay without a CRS
        return None


class GeoTiffRaster(Raster):
    """A GeoTIFF (or any single file GDAL reads) through rasterio windows: bands → the last axis;
    its nodata value, CRS and transform, and per-band ``wavelength`` metadata when present."""

    def __init__(self, path):
        self.path = Path(path)
        self.rasterio = require_rasterio(path)
        try:
            with self._open() as source:
                self.shape = (source.height, source.width, source.count)
                self.dtype = np.dtype(source.dtypes[0])
                self.nodata = _number(source.nodata)
                tags = [source.tags(band).get("wavelength") for band in range(1, source.count + 1)]
                georeferenced = source.crs is not None or not source.transform.is_identity
                self.georeference = Georeference(source.crs.to_wkt() if source.crs else None,
                                                 tuple(source.transform)[:6]) if georeferenced else None
        except self.rasterio.errors.RasterioError as error:
            raise FersError(f"{path}: not a readable GeoTIFF ({error}); the file may be truncated: "
                            "copy it again") from None
        self.wavelengths = (np.asarray([float(t) for t in tags]) if all(_number(t) is not None for t in tags)
                            else None)

    def _open(self):
        import warnings

        with warnings.catch_warnings():  # a plain TIFF is fine: it has no georeferencing to keep
            warnings.simplefilter("ignore", self.rasterio.errors.NotGeoreferencedWarning)
            return self.rasterio.open(self.path)

    def _read(self, rows, cols):
        from rasterio.windows import Window

        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        with self.rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), self._open() as source:
            return np.ascontiguousarray(np.moveaxis(source.read(window=window), 0, 2))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


def open_raster(path, layout: str = "hwb") -> Raster:
    """The :class:`Raster` of a cube file: ``.npy`` (``layout`` ``bhw`` for ``(bands, rows, cols)``),
    ENVI ``.hdr``, GeoTIFF ``.tif``/``.tiff``. ``.mat``/``.npz`` are read whole by
    :func:`fers.io.load_cube`."""
    path = Path(path)
    if not path.exists():
        raise FersError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return NpyRaster(path, layout)
    if suffix == ".hdr":
        return EnviRaster(path)
    if suffix in GEOTIFF_SUFFIXES:
        return GeoTiffRaster(path)
    raise FersError(f"{path}: no window reader for '{path.suffix}' (use .npy, ENVI .hdr or GeoTIFF .tif)")


# --------------------------------------------------------------------------- accumulators on disk


class DiskArray:
    """A zero-initialised array in a temporary file (sparse until written), read and updated in
    windows (``disk[rows] += values`` works) through a memory map opened for each access, so its
    pages do not stay in the process's resident set. The file is removed by :meth:`close` or when
    the object is collected. The file goes to the system's temporary folder (``TMPDIR``)."""

    ndim = 3

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        handle, name = tempfile.mkstemp(prefix="fers-accumulator-", suffix=".raw")
        self.path = Path(name)
        size = int(np.prod(self.shape)) * self.dtype.itemsize
        try:
            os.ftruncate(handle, size)
        except OSError as error:
            os.close(handle)
            self.path.unlink()
            raise FersError(f"{self.path.parent}: cannot create a {size / 2 ** 30:.1f} GiB working file "
                            f"({error.strerror}); free disk space or set TMPDIR") from None
        os.close(handle)

    def _map(self, mode: str):
        return np.memmap(self.path, dtype=self.dtype, mode=mode, shape=self.shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.array(self._map("r")[key])

    def __setitem__(self, key, values) -> None:
        memmap = self._map("r+")
        memmap[key] = values
        del memmap

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
