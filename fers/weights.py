"""The authors' released weights by name: fetched from their repositories at a pinned commit,
verified by hash before every use, cached in torch.hub's cache folder.

``fers-had100-50``, ``fers-had100-100``, ``fers-had100-200`` (HAD100, AVIRIS-NG) and
``fers-aviris-200`` (AVIRIS-Classic, the FERS_ABU model) are the four files of FERS
(``convh.pt``, ``enc.pt``, ``pc.pt`` and ``spa_fen.pt``) from xjpp2016/FERS; ``ferd-had100-50``,
``-100``, ``-200`` are the stage-1 files (``convh.pt``, ``enc.pt``, ``pc.pt``: FERD, the spectral
branch alone) from cristianoKaKa/FERD. The FERD paths are assumed to mirror FERS's
(``saved_models/<C>bands/``) with the same bytes: the pinned SHA-256 is checked on the first
download, so a different file there is refused, never used.

Each file is fetched over HTTPS from ``<base>/<owner>/<repository>/<commit>/<path>`` (``base``:
``https://raw.githubusercontent.com``, or ``$FERS_WEIGHTS_URL``, e.g. a mirror or ``file:///``
folder), into a temporary file renamed only once its hash matches, and cached as
``<torch.hub.get_dir()>/checkpoints/fers/<name>/<C>bands/<file>``: that folder is a checkpoint
folder of the reference layout (:mod:`fers.checkpoints` loads it). ``convh``/``enc``/``pc`` are
checked by SHA-256; ``spa_fen.pt`` by its git blob id (SHA-1 of ``b"blob <size>\\0"`` + content),
which the repository itself guarantees.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .checkpoint_files import SPATIAL_FILE, band_folder, branch_files
from .errors import FersError, ParameterError
from .outputs import _first_sentence, atomic_path

_log = logging.getLogger(__name__)

BASE_URL = "https://raw.githubusercontent.com"
BASE_URL_ENV = "FERS_WEIGHTS_URL"
TIMEOUT_SECONDS = 60
SHA256, GIT_BLOB = "sha256", "git-blob"


@dataclass(frozen=True)
class Repository:
    owner: str
    name: str
    commit: str


FERS_REPOSITORY = Repository("xjpp2016", "FERS", "7911a857044053eb6ed16d102e8a1b8484c90e54")
FERD_REPOSITORY = Repository("cristianoKaKa", "FERD", "0e021faf9646a4c95ff975c300d4af9ecd3488b7")


@dataclass(frozen=True)
class PinnedFile:
    """One released file: its name in the band folder and the digest it must have."""

    name: str
    algorithm: str  # SHA256 or GIT_BLOB
    digest: str


@dataclass(frozen=True)
class NamedWeights:
    """A released model: where its files are (``folder`` inside ``repository``) and their digests."""

    name: str
    repository: Repository
    folder: str
    channels: int
    sensor: str
    files: tuple  # PinnedFile, ...

    @property
    def method(self) -> str:
        return "FERS" if any(f.name == SPATIAL_FILE for f in self.files) else "FERD"

    @property
    def default_branches(self) -> str:
        """``both`` (FERS) when the spatial branch is released, else ``spectral`` (FERD)."""
        return "both" if self.method == "FERS" else "spectral"

    def url(self, file_name: str) -> str:
        base = os.environ.get(BASE_URL_ENV) or BASE_URL
        repo = self.repository
        return f"{base.rstrip('/')}/{repo.owner}/{repo.name}/{repo.commit}/{self.folder}/{file_name}"

    def cache_dir(self) -> Path:
        """The checkpoint folder of these weights (the parent of ``<C>bands/``)."""
        return weights_cache() / self.name


# The digests of the pinned commits (issue 16). The stage-1 files of the three HAD100 models
# share one enc.pt (the frozen ImageNet layer1).
_HAD100_ENC_SHA256 = "c333f48607543486a380ba900a57ea20559b40ef2e7f25dd246de3369371978c"
_HAD100_STAGE1_SHA256 = {  # channels: (convh.pt, pc.pt)
    50: ("64859f3aa3b65352bc881e6c103e6d5131a765adf45cadff6ebea405f0649540",
         "adc3601bfe865cb5d60734ce32a2359d50a64671644aa418687fa118e494bf8d"),
    100: ("08e837f7e04c5f4982edb25a29f69877f7b7387404ffac3722682b52875adcda",
          "ac04ef92c5ace09365d60f7e729385eca9149299a3c6d3981c8c0d3b62c1f0a5"),
    200: ("18cebf832b4d740c7b34c2ab049f505e0e418c316940bbadd143131cc4f36da5",
          "e15f12739cbca0cf7eead7e9adeee785fe70e62ca36266178edc9891d50d7b56"),
}
_HAD100_SPATIAL_BLOB = {
    50: "30d1c7b4df477c4dc55f9da4189c8358e2a67cd5",
    100: "0e74bb9282b301ee00d2e9f7fe41a6b3dca35cb0",
    200: "d4bca8523b97ff1a771537020460e08a75831f6e",
}
_AVIRIS_FILES = (
    PinnedFile("convh.pt", SHA256, "ccd4286945c93829fdb3ccce4bb27599adf9f3e01c303cb3ea09827100e58ee4"),
    PinnedFile("enc.pt", SHA256, "142e80d8d16893a279cbece11bb1c4520e5f178a54207e5d628e3da826e71fe5"),
    PinnedFile("pc.pt", SHA256, "1351abeb56ccdece61c0fbac7ecc2f5f53f8d5714af77087114615f9fe263e57"),
    PinnedFile(SPATIAL_FILE, GIT_BLOB, "1b1f724ec0718dcb0e4cccaf20911d00e831ff51"),
)


def _had100_stage1(channels: int) -> tuple:
    convh, pc = _HAD100_STAGE1_SHA256[channels]
    return (PinnedFile("convh.pt", SHA256, convh), PinnedFile("enc.pt", SHA256, _HAD100_ENC_SHA256),
            PinnedFile("pc.pt", SHA256, pc))


def _table() -> dict:
    """FERS at 50, 100, 200 bands and the ABU model, then FERD at 50, 100, 200 bands."""
    fers, ferd = {}, {}
    for channels in (50, 100, 200):
        stage1 = _had100_stage1(channels)
        folder = f"saved_models/{channels}bands"
        fers[f"fers-had100-{channels}"] = NamedWeights(
            f"fers-had100-{channels}", FERS_REPOSITORY, folder, channels, "aviris_ng",
            stage1 + (PinnedFile(SPATIAL_FILE, GIT_BLOB, _HAD100_SPATIAL_BLOB[channels]),))
        ferd[f"ferd-had100-{channels}"] = NamedWeights(
            f"ferd-had100-{channels}", FERD_REPOSITORY, folder, channels, "aviris_ng", stage1)
    fers["fers-aviris-200"] = NamedWeights("fers-aviris-200", FERS_REPOSITORY,
                                           "FERS_ABU/saved_models/aviris/200bands", 200, "aviris", _AVIRIS_FILES)
    return {**fers, **ferd}


NAMED_WEIGHTS: dict[str, NamedWeights] = _table()
NAMES = tuple(NAMED_WEIGHTS)


def weights_cache() -> Path:
    """``<torch.hub.get_dir()>/checkpoints/fers``: where named weights are cached."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / "fers"


def named_weights(name: str) -> NamedWeights:
    if name not in NAMED_WEIGHTS:
        raise ParameterError(f"`weights` {name}: unknown name; choose one of {', '.join(NAMED_WEIGHTS)}")
    return NAMED_WEIGHTS[name]


def git_blob_hash(path):
    """The ``hashlib`` object whose digest of ``path``'s bytes is its git blob id: SHA-1 of
    ``b"blob <size>\\0"`` followed by the bytes."""
    return hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size)


def git_blob_id(path) -> str:
    """The git blob id of a file."""
    from .io import hash_file

    return hash_file(path, git_blob_hash(path))[0]


def file_digest(path, algorithm: str) -> str:
    """``path``'s SHA-256 or git blob id."""
    if algorithm == GIT_BLOB:
        return git_blob_id(path)
    from .io import sha256_file

    return sha256_file(path)


def resolve_branches(weights: NamedWeights, branches: str | None) -> str:
    """``branches`` (default: the weights' own), refused when the release lacks a file it needs."""
    branches = branches or weights.default_branches
    released = {f.name for f in weights.files}
    missing = [name for name in branch_files(branches) if name not in released]
    if missing:
        raise ParameterError(f"`weights` {weights.name} holds the stage-1 ({weights.method}) files only, not "
                             f"{', '.join(missing)}: use `branches` spectral, or a fers-* name for `branches` "
                             f"{branches}")
    return branches


def _verified(path: Path, pinned: PinnedFile) -> bool:
    return file_digest(path, pinned.algorithm) == pinned.digest


def _download(url: str, path: Path, pinned: PinnedFile, what: str) -> None:
    """Fetch ``url`` into a temporary file beside ``path`` and rename it onto ``path`` only when
    complete and matching ``pinned``; anything else leaves nothing behind and raises one line."""
    fix = f"download it elsewhere and put it at {path}"
    _log.info(f"{what}: downloading {url}")
    request = urllib.request.Request(url, headers={"User-Agent": "fers"})
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            expected, received = None, 0
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                    expected = response.headers.get("Content-Length")
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        received += len(chunk)
            except http.client.IncompleteRead as error:
                received += len(error.partial)
                expected = expected or (received + (error.expected or 0))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
                reason = getattr(error, "reason", None) or _first_sentence(error)
                raise FersError(f"cannot download {url} ({reason}); offline, {fix}") from None
            out.close()
            if expected is not None and received != int(expected):
                raise FersError(f"{url}: download interrupted after {received} of {expected} bytes (nothing kept); "
                                f"try again, or {fix}")
            found = file_digest(tmp, pinned.algorithm)
            if found != pinned.digest:
                raise FersError(f"{url}: refused: its {pinned.algorithm} {found} is not the pinned {pinned.digest} "
                                "(a corrupt or substituted file; not kept)")
    except OSError as error:  # the cache folder itself (not writable, disk full)
        raise FersError(f"{path.parent}: cannot write the downloaded weights ({error.strerror or error}); "
                        "free disk space or set TORCH_HOME to another folder") from None


def fetch(name: str, branches: str | None = None) -> Path:
    """The checkpoint folder of the named weights (the parent of ``<C>bands/``), holding the
    files ``branches`` need (default: all released files), each verified against its pinned digest
    before use: cached files are checked, a mismatching one is removed and downloaded again."""
    weights = named_weights(name)
    needed = set(branch_files(resolve_branches(weights, branches)))
    folder = band_folder(weights.cache_dir(), weights.channels)
    for pinned in weights.files:
        if pinned.name not in needed:
            continue
        path = folder / pinned.name
        if path.is_file():
            if _verified(path, pinned):
                continue
            _log.warning(f"{path}: does not match its pinned {pinned.algorithm} (corrupt or substituted): "
                         "removed, downloading again")
            path.unlink()
        _download(weights.url(pinned.name), path, pinned, f"{name} {pinned.name}")
    return weights.cache_dir()


def matching_files(digests: dict) -> list[str]:
    """``<name>/<file>`` of every named release file whose digest is in ``digests``
    (``{SHA256: ..., GIT_BLOB: ...}`` of one file)."""
    return [f"{weights.name}/{pinned.name}" for weights in NAMED_WEIGHTS.values() for pinned in weights.files
            if digests.get(pinned.algorithm) == pinned.digest]


def main(argv=None) -> int:
    """``python -m fers.weights [NAME ...]``: every file's URL and cache path (the offline procedure)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fers.weights",
                                     description="Released weights by name: each file's URL, digest and the "
                                                 "path to put it at (offline: download there by hand).")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"one of {', '.join(NAMES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMED_WEIGHTS]
    if unknown:
        parser.error(f"unknown name {unknown[0]}; choose from {', '.join(NAMES)}")
    for name in args.names or NAMES:
        weights = NAMED_WEIGHTS[name]
        print(f"{name}: {weights.method}, {weights.channels} bands, {weights.sensor}; "
              f"{weights.repository.owner}/{weights.repository.name}@{weights.repository.commit}")
        for pinned in weights.files:
            print(f"  {weights.url(pinned.name)}\n    -> {band_folder(weights.cache_dir(), weights.channels) / pinned.name}"
                  f"  ({pinned.algorithm} {pinned.digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
