"""Reading hyperspectral cubes and masks, and writing outputs atomically.

One array layout after loading: cubes are ``(rows, cols, bands)`` NumPy arrays, masks are
``(rows, cols)`` boolean arrays. Every reader turns a broken file into a :class:`FersError`
that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import FersError

CUBE_SUFFIXES = (".mat", ".npy", ".npz", ".hdr")
MASK_SUFFIXES = (".png", ".mat", ".npy", ".tif", ".tiff", ".bmp")
PREFERRED_CUBE_KEYS = ("data", "cube", "hsi", "X", "img", "image")
PREFERRED_MASK_KEYS = ("map", "gt", "mask", "groundtruth", "ground_truth", "label")


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


def _read_envi(path: Path) -> np.ndarray:
    try:
        import spectral.io.envi as envi
    except ImportError:
        raise FersError(f"{path}: ENVI files need the optional 'spectral' package: "
                        "pip install spectral") from None
    try:
        image = envi.open(str(path))
        return np.asarray(image.load())
    except Exception as error:
        raise FersError(f"{path}: cannot read the ENVI image ({error.__class__.__name__}: {error}); "
                        "the header needs its data file beside it (same name, .img/.dat/.raw or none)") from None


def load_cube(path, key: str | None = None, mmap: bool = False) -> np.ndarray:
    """Read a cube as a ``(rows, cols, bands)`` array from .mat (v5 or v7.3), .npy, .npz or ENVI .hdr."""
    path = Path(path)
    if not path.exists():
        raise FersError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        cube = _read_npy(path, mmap)
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as error:
            raise FersError(f"{path}: not a readable .npz file ({error}); copy it again") from None
        cube = _pick(arrays, 3, PREFERRED_CUBE_KEYS, path, "cube", key)
    elif suffix == ".mat":
        cube = _pick(_read_mat(path), 3, PREFERRED_CUBE_KEYS, path, "cube", key)
    elif suffix == ".hdr":
        cube = _read_envi(path)
    else:
        raise FersError(f"{path}: unknown file type '{suffix}'; use one of {', '.join(CUBE_SUFFIXES)}")
    if cube.ndim != 3:
        raise FersError(f"{path}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    if cube.dtype.kind not in "biuf":
        raise FersError(f"{path}: cube has non-numeric type {cube.dtype}")
    return cube


def load_mask(path, key: str | None = None) -> np.ndarray:
    """Read a ground-truth mask as a boolean ``(rows, cols)`` array.

    PNG and other images: an RGB image uses channel 1, as the HAD100 reference does; a pixel
    is an anomaly when its value is at least 128 (the reference's anomalies are 255).
    .mat/.npy: non-zero is an anomaly (ABU's ``map``).
    """
    path = Path(path)
    if not path.exists():
        raise FersError(f"{path}: no such ground-truth file")
    suffix = path.suffix.lower()
    if suffix in (".png", ".tif", ".tiff", ".bmp"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image.load()
                array = np.asarray(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise FersError(f"{path}: not a readable image ({error}); the file may be truncated") from None
        if array.ndim == 3:
            array = array[:, :, 1] if array.shape[2] >= 2 else array[:, :, 0]
        if array.dtype == bool:
            return array
        return array >= 128
    if suffix == ".mat":
        array = _pick(_read_mat(path), 2, PREFERRED_MASK_KEYS, path, "ground truth", key)
    elif suffix == ".npy":
        array = _read_npy(path)
    else:
        raise FersError(f"{path}: unknown ground-truth type '{suffix}'; use .png, .mat or .npy")
    if array.ndim != 2:
        raise FersError(f"{path}: expected a 2-D ground truth (rows, cols), got shape {tuple(array.shape)}")
    array = np.asarray(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FersError(f"{path}: ground truth holds NaN or Inf values; use 0 for background and 1 for anomalies")
    return array != 0


def save_mask_png(path, mask: np.ndarray) -> None:
    """Write a boolean mask as a grey PNG, anomalies 255."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(mask, bool) * 255).astype(np.uint8), mode="L").save(tmp, format="PNG")


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (data manifests, weight checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def save_npy(path, array) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def save_mat(path, variables: dict) -> None:
    import scipy.io

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, variables)


class OutputFolder:
    """All-or-nothing outputs: files are written into a hidden staging folder inside
    ``save_dir`` and moved into place when the block succeeds; on any failure the staging
    folder is removed, so a failed run leaves no half-written result.

    >>> with OutputFolder("results/x") as out:
    ...     write_json(out / "results.json", {...})
    """

    def __init__(self, save_dir, flag: str = "--save_dir", what: str = "the results"):
        self.save_dir = Path(save_dir)
        self.flag = flag  # the option that chooses this folder, named in error messages
        self.what = what
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.save_dir))
        except OSError as error:
            raise FersError(f"{self.save_dir}: cannot create the output folder ({error.strerror}); "
                            f"choose a writable {self.flag}") from None
        return self.staging

    def __exit__(self, exc_type, exc, tb):
        assert self.staging is not None
        try:
            if exc_type is None:
                try:
                    for item in sorted(self.staging.iterdir()):
                        os.replace(item, self.save_dir / item.name)
                except OSError as error:
                    raise self._write_error(error) from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        if exc_type is not None and issubclass(exc_type, OSError):
            raise self._write_error(exc) from None
        return False

    def _write_error(self, error: OSError) -> FersError:
        return FersError(f"{self.save_dir}: cannot write {self.what} ({error.strerror or error}); "
                         f"free disk space or choose another {self.flag}")


def ensure_writable_dir(path, flag: str = "--save_dir") -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise FersError(f"{path}: output folder is not writable ({error.strerror}); choose another {flag}") from None
    return path
