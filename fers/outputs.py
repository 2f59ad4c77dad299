"""Writing outputs in one place: atomic files (text, JSON, CSV, ``.npy``, ``.mat``, torch
checkpoints), all-or-nothing folders (:class:`OutputFolder` for results, :func:`staged_layout` for
dataset folders), and the one mapping of a failed write to a :class:`FersError` naming the folder
and the option that chose it (:func:`write_error`)."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import FersError

WRITE_FAILED = "write failed: disk full or file-size limit reached"


def write_error(folder, error: BaseException, flag: str, what: str = "", hint: str = "",
                fallback: str | None = None) -> FersError:
    """The one-line error for a failed write into ``folder``: ``<folder>: cannot write[ what]
    (<reason>); free disk space[hint] or choose another <flag>``. The reason is the OS's
    (``strerror``), else ``fallback``, else the error's text."""
    reason = getattr(error, "strerror", None) or fallback or error
    return FersError(f"{folder}: cannot write{' ' + what if what else ''} ({reason}); "
                     f"free disk space{hint} or choose another {flag}")


@contextlib.contextmanager
def write_errors(folder, flag: str, hint: str = ""):
    """A failed write (disk full, file-size limit, quota, folder gone) becomes one line naming the
    folder. ``torch.save`` reports such failures as RuntimeError, so wrap only code that writes."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        raise write_error(folder, error, flag, hint=hint, fallback=WRITE_FAILED) from None


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


def write_csv(path, rows: list, extra_rows: list = ()) -> None:
    """``rows`` (dicts) and then ``extra_rows`` (e.g. a mean row) as CSV; the columns are every key
    in order of first appearance, missing cells empty, a dict or list cell as JSON."""
    columns = list(dict.fromkeys(key for row in (*rows, *extra_rows) for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in (*rows, *extra_rows):
        writer.writerow({key: json.dumps(value, default=_json_default) if isinstance(value, (dict, list)) else value
                         for key, value in row.items()})
    write_text(path, buffer.getvalue())


def _first_sentence(error: Exception) -> str:
    """The first sentence of an exception's message, for one-line errors."""
    return str(error).splitlines()[0].split(". ")[0][:120] if str(error) else error.__class__.__name__


def atomic_torch_save(path, payload) -> None:
    """``torch.save`` through a temporary file and a rename: a kill never leaves a corrupt file."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as error:  # torch reports a failed write (disk full, quota) this way
            raise OSError(errno.EIO, f"writing {Path(path).name} failed: {_first_sentence(error)}") from None


def save_mat(path, variables: dict) -> None:
    import scipy.io

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, variables)


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


class OutputFolder:
    """All-or-nothing outputs: files are written into a hidden staging folder inside
    ``save_dir`` and moved into place when the block succeeds; on any failure the staging
    folder is removed, and so are ``save_dir`` and its parents if this run created them,
    so a failed run leaves nothing behind.

    >>> with OutputFolder("results/x") as out:
    ...     write_json(out / "results.json", {...})
    """

    def __init__(self, save_dir, flag: str = "`save_dir`", what: str = "the results"):
        self.save_dir = Path(save_dir)
        self.flag = flag  # the option that chooses this folder, named in error messages
        self.what = what
        self.staging: Path | None = None
        self.created: list[Path] = []

    def __enter__(self) -> Path:
        self.created = _missing_parents(self.save_dir)
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.save_dir))
        except OSError as error:
            _remove_empty(self.created)
            raise FersError(f"{self.save_dir}: cannot create the output folder ({error.strerror}); "
                            f"choose a writable {self.flag}") from None
        return self.staging

    def __exit__(self, exc_type, exc, tb):
        assert self.staging is not None
        moved = False
        try:
            if exc_type is None:
                try:
                    for item in sorted(self.staging.iterdir()):
                        os.replace(item, self.save_dir / item.name)
                        moved = True
                except OSError as error:
                    raise self._write_error(error) from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            if exc_type is not None or not moved:
                _remove_empty(self.created)
        if exc_type is not None and issubclass(exc_type, OSError):
            raise self._write_error(exc) from None
        return False

    def _write_error(self, error: OSError) -> FersError:
        return write_error(self.save_dir, error, self.flag, self.what)


def ensure_writable_dir(path, flag: str = "`save_dir`") -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise FersError(f"{path}: output folder is not writable ({error.strerror}); choose another {flag}") from None
    return path


def check_writable_dir(path, flag: str = "`save_dir`") -> Path:
    """Check up front that ``path`` can be created and written, leaving nothing behind: folders
    created for the check are removed again (the results are written later by :class:`OutputFolder`,
    so a run that fails in between leaves no empty results folder)."""
    path = Path(path)
    created = _missing_parents(path)
    try:
        ensure_writable_dir(path, flag)
    finally:
        _remove_empty(created)
    return path


# --------------------------------------------------------------------------- dataset folders


@contextlib.contextmanager
def staged_layout(root, parts, overwrite: bool = False, flag: str = "`output`"):
    """All-or-nothing writing of dataset folders.

    Yields a hidden staging folder inside ``root``; the caller writes ``staging/<part>/...`` for each
    relative folder in ``parts`` (and any top-level files). When the block succeeds, each part
    replaces ``root/<part>`` and the top-level files are moved beside them; on failure nothing in
    ``root`` changes. An existing ``root/<part>`` is an error unless ``overwrite``.
    """
    root = Path(root)
    parts = [Path(part) for part in parts]
    existing = [root / part for part in parts if (root / part).exists()]
    if existing and not overwrite:
        raise FersError(f"{existing[0]}: already exists; choose an empty {flag} or pass `overwrite`")
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    except OSError as error:
        raise FersError(f"{root}: cannot create the output folder ({error.strerror}); choose another {flag}") from None
    try:
        for part in parts:
            (staging / part).mkdir(parents=True)
        yield staging
        for part in parts:
            if (root / part).exists():
                shutil.rmtree(root / part)
            (root / part).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / part, root / part)
        for item in sorted(staging.iterdir()):
            if item.is_file():
                os.replace(item, root / item.name)
    except OSError as error:
        raise write_error(root, error, flag, "the dataset") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
