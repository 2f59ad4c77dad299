"""Reading hyperspectral cubes and masks (writing lives in :mod:`fers.outputs`, re-exported here).

One array layout after loading: cubes are ``(rows, cols, bands)`` NumPy arrays, masks are
``(rows, cols)`` boolean arrays. A cube stored bands-first is transposed here, at load time
(:func:`orient_cube`), and nowhere else. Every reader turns a broken file into a
:class:`FersError` that names the file and says what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FersError
from .outputs import (OutputFolder, _json_default, _missing_parents, _remove_empty, _umask,  # noqa: F401 (re-exported)
                      atomic_path, atomic_torch_save, check_writable_dir, ensure_writable_dir, save_mat, save_npy,
                      staged_layout, write_csv, write_error, write_errors, write_json, write_text)

CUBE_SUFFIXES = (".mat", ".npy", ".npz", ".hdr", ".tif", ".tiff")
# Files that state their own band layout (ENVI interleave, GeoTIFF bands): never transposed here.
SELF_DESCRIBING_SUFFIXES = (".hdr", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".mat", ".npy", ".tif", ".tiff", ".bmp")
PREFERRED_CUBE_KEYS = ("data", "cube", "hsi", "X", "img", "image")
PREFERRED_MASK_KEYS = ("map", "gt", "mask", "groundtruth", "ground_truth", "label")
# How a cube file is laid out: hwb = (rows, cols, bands) as stored; bhw = (bands, rows, cols),
# transposed on loading; auto = transposed when it looks bands-first (see looks_bands_first);
# check = hwb, but a cube that looks bands-first is refused (the command lines' default).
CUBE_LAYOUTS = ("hwb", "bhw", "auto")
LAYOUT_CHECK = "check"
# How an image mask is read: nonzero = a pixel is an anomaly when any colour channel is non-zero
# (alpha ignored; the documented rule for a user's mask); had100 = channel 1 >= 128 (the HAD100
# and reference FERS_ABU ground-truth PNGs, anomalies 255).
MASK_RULES = ("nonzero", "had100")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


def _read_mat(path: Path) -> dict:
    """All numeric arrays of a MATLAB file, v5 (scipy) or v7.3 (HDF5, through h5py)."""
    import scipy.io

    try:
        contents = scipy.io.loadmat(str(path))
        return {k: v for k, v in contents.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    except NotImplementedError:
        pass  # MATLAB v7.3 files are HDF5
    except Exception as error:  # scipy raises many types for damaged files
        if _is_hdf5(path):
            return _read_hdf5_mat(path)
        raise FersError(f"{path}: not a readable .mat file ({error.__class__.__name__}: {error}); "
                        "re-export it from MATLAB or replace the damaged copy") from None
    return _read_hdf5_mat(path)


def _is_hdf5(path: Path) -> bool:
    try:
        import h5py

        return bool(h5py.is_hdf5(path))
    except (ImportError, OSError):
        return False


def _read_hdf5_mat(path: Path) -> dict:
    try:
        import h5py
    except ImportError:
        raise FersError(f"{path}: MATLAB v7.3 file needs the h5py package: pip install h5py") from None
    arrays = {}
    try:
        with h5py.File(path, "r") as handle:
            for key, item in handle.items():
                if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                    # HDF5 stores MATLAB arrays column-major: reverse the axes.
                    arrays[key] = np.asarray(item[()]).transpose()
    except OSError as error:
        raise FersError(f"{path}: not a readable .mat file ({error}); replace the damaged copy") from None
    return arrays


def _pick(arrays: dict, ndim: int, preferred: tuple, path: Path, what: str, key: str | None):
    if key is not None:
        if key not in arrays:
            raise FersError(f"{path}: no variable '{key}' (found: {', '.join(sorted(arrays)) or 'none'})")
        return arrays[key]
    for name in preferred:
        if name in arrays and np.ndim(arrays[name]) == ndim:
            return arrays[name]
    candidates = [name for name, value in arrays.items()
                  if np.ndim(value) == ndim and np.asarray(value).dtype.kind in "biuf"]
    if len(candidates) == 1:
        return arrays[candidates[0]]
    found = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in sorted(arrays.items())) or "nothing"
    raise FersError(f"{path}: cannot tell which variable is the {what} "
                    f"(need exactly one {ndim}-D numeric array; found {found}); "
                    f"name it '{preferred[0]}'")


def _read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise FersError(f"{path}: not a readable .npy file ({error}); "
                        "the file may be truncated: copy it again") from None


def _read_arrays(path: Path) -> dict:
    """All numeric arrays of a ``.mat`` or ``.npz`` file."""
    if path.suffix.lower() == ".mat":
        return _read_mat(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except Exception as error:
        raise FersError(f"{path}: not a readable .npz file ({error}); copy it again") from None


def _load_stored_cube(path: Path, key: str | None, mmap: bool, lazy: bool = False):
    """``(cube as stored, other arrays of the file)``; checks the suffix, 3-D and numeric. ``lazy``:
    a ``.npy``, ENVI or GeoTIFF cube comes back as a :class:`fers.rasters.Raster` (read window by
    window) instead of an array."""
    from .rasters import open_raster

    if not path.exists():
        raise FersError(f"{path}: no such file")
    suffix = path.suffix.lower()
    arrays: dict = {}
    if suffix == ".npy":
        cube = open_raster(path) if lazy else _read_npy(path, mmap)
    elif suffix in (".npz", ".mat"):
        arrays = _read_arrays(path)
        cube = _pick(arrays, 3, PREFERRED_CUBE_KEYS, path, "cube", key)
    elif suffix in SELF_DESCRIBING_SUFFIXES:
        cube = open_raster(path)
        cube = cube if lazy else cube.read()
    else:
        raise FersError(f"{path}: unknown file type '{suffix}'; use one of {', '.join(CUBE_SUFFIXES)}")
    if cube.ndim != 3:
        raise FersError(f"{path}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    if cube.dtype.kind not in "biuf":
        raise FersError(f"{path}: cube has non-numeric type {cube.dtype}")
    return cube, {name: value for name, value in arrays.items() if value is not cube}


def looks_bands_first(shape, gt_shapes=()) -> bool:
    """Whether a stored 3-D cube of ``shape`` looks like ``(bands, rows, cols)``.

    1. A ground truth decides when there is one: ``(d0, d1)`` equal to a ground-truth shape means
       rows, cols, bands; ``(d1, d2)`` equal to it (and ``(d0, d1)`` not) means bands first.
    2. Otherwise the shape alone: bands first when the last two axes are equal and the first
       differs (``205×100×100``): square scenes are common, a band count equal to the scene
       width is rare. Any other shape is taken as rows, cols, bands.
    """
    d0, d1, d2 = (int(n) for n in shape)
    gt_shapes = [tuple(int(n) for n in g) for g in gt_shapes]
    if gt_shapes:
        if (d0, d1) in gt_shapes:
            return False
        if (d1, d2) in gt_shapes:
            return True
    return d1 == d2 and d0 != d1


def orient_cube(cube: np.ndarray, layout: str, path, gt_shapes=()) -> tuple[np.ndarray, str]:
    """``(cube (rows, cols, bands), layout used: 'hwb' or 'bhw')`` for a stored 3-D cube.

    ``layout``: ``hwb`` as stored; ``bhw`` transposed; ``auto`` transposed when
    :func:`looks_bands_first`; ``check`` as stored, but a cube that looks bands-first is refused
    with the fix. The transposition is a view (a memory map stays a memory map)."""
    if layout not in CUBE_LAYOUTS + (LAYOUT_CHECK,):
        raise ValueError(f"layout must be one of {CUBE_LAYOUTS + (LAYOUT_CHECK,)}, got {layout!r}")
    path = Path(path)
    if path.suffix.lower() in SELF_DESCRIBING_SUFFIXES:  # ENVI interleave, GeoTIFF bands: applied by the reader
        if layout == "bhw":
            kind = "an ENVI header" if path.suffix.lower() == ".hdr" else "a GeoTIFF"
            raise FersError(f"{path}: {kind} states its own layout (interleave); drop `layout` bhw")
        return cube, "hwb"
    bands_first = layout == "bhw" or (layout in ("auto", LAYOUT_CHECK) and looks_bands_first(cube.shape, gt_shapes))
    if bands_first and layout == LAYOUT_CHECK:
        d0, d1, d2 = cube.shape
        matching = [g for g in gt_shapes if tuple(g) == (d1, d2)]
        reason = (f"its ground truth is {d1}×{d2}" if matching
                  else "its last two axes are equal and the first differs")
        raise FersError(f"{path}: the cube {d0}×{d1}×{d2} looks bands-first, (bands, rows, cols) ({reason}); "
                        f"FERS reads (rows, cols, bands). For a {d1}×{d2} scene with {d0} bands pass "
                        f"`layout` bhw (or auto); if it really is {d0}×{d1} with {d2} bands pass "
                        "`layout` hwb")
    if bands_first:
        return (cube.bands_first() if hasattr(cube, "bands_first") else np.transpose(cube, (1, 2, 0))), "bhw"
    return cube, "hwb"


def load_cube(path, key: str | None = None, mmap: bool = False, layout: str = "hwb", gt_shape=None) -> np.ndarray:
    """Read a cube as a ``(rows, cols, bands)`` array from .mat (v5 or v7.3), .npy, .npz, ENVI .hdr or
    GeoTIFF (for a scene too large for memory: :func:`fers.rasters.open_raster`).

    ``layout`` (:data:`CUBE_LAYOUTS` or ``check``) says how the file stores it; ``gt_shape``, the
    ground truth's ``(rows, cols)`` if known, helps to recognise a bands-first cube."""
    path = Path(path)
    cube, _ = _load_stored_cube(path, key, mmap)
    return orient_cube(cube, layout, path, [gt_shape] if gt_shape is not None else ())[0]


@dataclass
class SceneFile:
    """What :func:`read_scene` found: the cube ``(rows, cols, bands)``, the ground truth (None when
    the scene is unlabelled or none was asked for), where the ground truth came from, the layout used."""

    cube: np.ndarray
    mask: np.ndarray | None
    gt_source: str | None
    layout: str


EMBEDDED = "embedded"  # read_scene's gt: the ground truth stored in the scene file, if any


def read_scene(path, gt=EMBEDDED, cube_key: str | None = None, gt_key: str | None = None,
               layout: str = LAYOUT_CHECK, mask_rule: str = "nonzero", mmap: bool = False,
               lazy: bool = False) -> SceneFile:
    """A scene file and its ground truth, in one read.

    ``gt``: a mask file (read with ``mask_rule``), ``None`` (explicitly no ground truth), or
    :data:`EMBEDDED`: a 2-D array inside a ``.mat``/``.npz`` scene **of the scene's rows × cols**
    (``gt_key`` names it; otherwise ``map``, ``gt``, ... or the only such array). Other 2-D arrays
    (``wavelengths``, ``bands`` vectors) are not ground-truth candidates; a scene without one is
    unlabelled (``mask`` None), but an array named like a ground truth (``map``, ``gt``, ...) of
    another size is an error. A mask file of another size is returned as is: the caller reports it.
    ``lazy``: a ``.npy``, ENVI or GeoTIFF cube is a :class:`fers.rasters.Raster` read window by window.
    """
    path = Path(path)
    mask, source = None, None
    if gt is not None and gt != EMBEDDED:
        mask, source = load_mask(gt, gt_key, rule=mask_rule), str(gt)
    stored, others = _load_stored_cube(path, cube_key, mmap, lazy)
    planes = {name: value for name, value in others.items()
              if np.ndim(value) == 2 and np.asarray(value).dtype.kind in "biuf"}
    if mask is not None:
        hints = [mask.shape]
    elif gt == EMBEDDED:
        hints = [value.shape for name, value in planes.items() if gt_key in (None, name)
                 and value.shape in (stored.shape[:2], stored.shape[1:])]
    else:
        hints = []
    cube, used = orient_cube(stored, layout, path, hints)
    if gt == EMBEDDED:
        mask = _embedded_mask(path, planes, cube.shape[:2], gt_key)
        source = f"{path} (ground truth inside the scene file)" if mask is not None else None
    return SceneFile(cube, mask, source, used)


def _embedded_mask(path: Path, planes: dict, shape: tuple, key: str | None):
    """The ground truth stored beside the cube: a 2-D array of exactly ``shape``, or None."""
    if key is not None:
        if key not in planes:
            raise FersError(f"{path}: no 2-D variable '{key}' (`gt_key`; 2-D variables: "
                            f"{', '.join(f'{k} {tuple(np.shape(v))}' for k, v in sorted(planes.items())) or 'none'})")
        value = planes[key]
        if value.shape != tuple(shape):
            raise FersError(f"{path}: ground truth '{key}' is {value.shape[0]}×{value.shape[1]} but the scene is "
                            f"{shape[0]}×{shape[1]}; they must match")
        return _mask_values(path, value)
    fitting = {name: value for name, value in planes.items() if value.shape == tuple(shape)}
    for name in PREFERRED_MASK_KEYS:
        if name in fitting:
            return _mask_values(path, fitting[name])
    if len(fitting) == 1:
        return _mask_values(path, next(iter(fitting.values())))
    if fitting:
        raise FersError(f"{path}: several 2-D variables of the scene's size {shape[0]}×{shape[1]} "
                        f"({', '.join(sorted(fitting))}); name the ground truth with `gt_key`, or `gt` none")
    for name in PREFERRED_MASK_KEYS:  # named as a ground truth but of another size: a broken file
        if name in planes:
            value = planes[name]
            raise FersError(f"{path}: ground truth is {value.shape[0]}×{value.shape[1]} but the cube {path.name} "
                            f"is {shape[0]}×{shape[1]}; they must match")
    return None


def _mask_values(path, array) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FersError(f"{path}: ground truth holds NaN or Inf values; use 0 for background and 1 for anomalies")
    return array != 0


def load_mask(path, key: str | None = None, rule: str = "nonzero") -> np.ndarray:
    """Read a ground-truth mask as a boolean ``(rows, cols)`` array.

    Images (PNG, TIFF, BMP), by ``rule``: ``nonzero`` (a user's mask): an anomaly is a pixel
    that is non-zero in any colour channel, alpha ignored, palettes resolved to colours;
    ``had100`` (the HAD100 and reference FERS_ABU PNGs): channel 1 (or the grey channel) >= 128.
    .mat/.npz/.npy: non-zero is an anomaly (ABU's ``map``); ``key`` names the variable.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"rule must be one of {MASK_RULES}, got {rule!r}")
    path = Path(path)
    if not path.exists():
        raise FersError(f"{path}: no such ground-truth file")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _image_mask(path, rule)
    if suffix in (".mat", ".npz"):
        array = _pick(_read_arrays(path), 2, PREFERRED_MASK_KEYS, path, "ground truth", key)
    elif suffix == ".npy":
        array = _read_npy(path)
    else:
        raise FersError(f"{path}: unknown ground-truth type '{suffix}'; use .png, .mat, .npz or .npy")
    if array.ndim != 2:
        raise FersError(f"{path}: expected a 2-D ground truth (rows, cols), got shape {tuple(array.shape)}")
    return _mask_values(path, array)


def _image_mask(path: Path, rule: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if rule == "nonzero" and image.mode in ("P", "PA"):
                image = image.convert("RGBA")  # palette indices are not colours
            mode = image.mode
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise FersError(f"{path}: not a readable image ({error}); the file may be truncated") from None
    if rule == "had100":
        if array.ndim == 3:
            array = array[:, :, 1] if array.shape[2] >= 2 else array[:, :, 0]
        return array if array.dtype == bool else array >= 128
    if array.ndim == 3:
        if mode.endswith("A") or mode == "RGBa":  # LA, RGBA, La: drop the alpha channel
            array = array[:, :, :-1]
        return (array != 0).any(axis=2)
    return array != 0


def save_mask_png(path, mask: np.ndarray) -> None:
    """Write a boolean mask as a grey PNG, anomalies 255."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask, bool) * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")


def hash_file(path, *digests) -> list[str]:
    """The hex digests of a file for each ``hashlib`` object given, in one read in 1 MiB chunks."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            for digest in digests:
                digest.update(chunk)
    return [digest.hexdigest() for digest in digests]


def sha256_file(path) -> str:
    """Hex SHA-256 of a file (data manifests, weight checks)."""
    return hash_file(path, hashlib.sha256())[0]


# --------------------------------------------------------------------------- band centres

WAVELENGTH_KEYS = ("wavelengths", "wavelength")
WAVELENGTH_SUFFIXES = (".txt", ".csv", ".json", ".hdr", ".npy", ".mat", ".npz")
MICROMETRE_UNITS = ("micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron", "um", "µm")
# Band centres all below this are micrometres: no optical sensor has a band centre under 100 nm.
MICROMETRE_LIMIT = 100.0


def in_nanometres(values, units: str | None = None) -> np.ndarray:
    """Band centres in nm: ``units`` micrometres (ENVI's ``wavelength units``) or, when no unit is
    stated, every value below :data:`MICROMETRE_LIMIT`, are multiplied by 1000."""
    values = np.asarray(values, dtype=np.float64).ravel()
    stated = (units or "").strip().lower()
    if stated in MICROMETRE_UNITS or (stated in ("", "unknown") and len(values)
                                       and np.nanmax(values) < MICROMETRE_LIMIT):
        return values * 1000.0
    return values


def load_wavelengths(path, key: str | None = None) -> np.ndarray | None:
    """The band centres (nm, :func:`in_nanometres`) a file carries, or None when it carries none.

    - a scene: ENVI ``.hdr`` (``wavelength`` with ``wavelength units``), ``.mat``/``.npz`` (the
      vector ``key``, else ``wavelengths`` or ``wavelength``), ``.npy`` (a cube: none);
    - a list of band centres: ``.txt``/``.csv`` (numbers separated by commas or white space, ``#``
      comments), ``.json`` (a list, or ``{"wavelengths": [...]}``), ``.npy`` (a 1-D array).
    """
    path = Path(path)
    if not path.is_file():
        raise FersError(f"{path}: no such wavelength file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".hdr":
            return _envi_wavelengths(path)
        if suffix == ".npy":
            array = _read_npy(path, mmap=True)
            return in_nanometres(array) if array.ndim == 1 else None
        if suffix in (".mat", ".npz"):
            return _stored_wavelengths(path, key)
        if suffix == ".json":
            import json

            payload = json.loads(path.read_text())
            values = payload.get("wavelengths", payload.get("wavelength")) if isinstance(payload, dict) else payload
            return in_nanometres(values, payload.get("units") if isinstance(payload, dict) else None)
        if suffix in (".txt", ".csv"):
            import re

            text = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
            values = [float(v) for v in re.split(r"[,;\s]+", text) if v]
            if not values:
                raise ValueError("no numbers in the file")
            return in_nanometres(values)
    except FersError:
        raise
    except (ValueError, TypeError, OSError) as error:
        raise FersError(f"{path}: cannot read band centres ({error}); write one number per band (nm), "
                        "separated by commas or new lines") from None
    raise FersError(f"{path}: unknown wavelength file type '{path.suffix}'; use one of "
                    f"{', '.join(WAVELENGTH_SUFFIXES)}")


def _envi_wavelengths(path: Path):
    try:
        from spectral.io.envi import read_envi_header
    except ImportError:
        raise FersError(f"{path}: ENVI files need the optional 'spectral' package: pip install spectral") from None
    header = read_envi_header(str(path))
    if "wavelength" not in header:
        return None
    return in_nanometres([float(v) for v in header["wavelength"]], header.get("wavelength units"))


def _stored_wavelengths(path: Path, key: str | None):
    """The wavelength vector of a ``.mat``/``.npz`` without reading its cube."""
    names = (key,) if key else WAVELENGTH_KEYS
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            found = [archive[name] for name in names if name in archive.files]
    else:
        import scipy.io

        try:
            contents = scipy.io.loadmat(str(path), variable_names=list(names))
            found = [contents[name] for name in names if name in contents]
        except NotImplementedError:  # MATLAB v7.3 (HDF5)
            import h5py

            with h5py.File(path, "r") as handle:
                found = [np.asarray(handle[name][()]) for name in names if name in handle]
    if not found:
        if key:
            raise FersError(f"{path}: no variable '{key}' holding band centres")
        return None
    return in_nanometres(found[0])
