"""The file layout of a checkpoint folder (the reference release's), without torch: which file
holds which network, and the per-band-count folders. :mod:`fers.checkpoints` reads and writes
them; :mod:`fers.weights` and the command lines need only the names."""

from __future__ import annotations

from pathlib import Path

STAGE1_FILES = ("convh.pt", "enc.pt", "pc.pt")
SPATIAL_FILE = "spa_fen.pt"
RESTORATION_FILE = "restoration.pt"


def band_folder(checkpoint_dir, channels: int) -> Path:
    """``<checkpoint_dir>/<C>bands``, the reference layout."""
    return Path(checkpoint_dir) / f"{channels}bands"


def branch_files(branches: str) -> tuple:
    """The checkpoint files the chosen branches read (``both``, ``spectral``, ``spatial``, ``none``)."""
    return {"both": STAGE1_FILES + (SPATIAL_FILE,), "spectral": STAGE1_FILES, "spatial": (SPATIAL_FILE,),
            "none": ()}[branches]
