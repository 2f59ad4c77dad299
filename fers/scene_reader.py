"""Scenes read, validated, prepared and hashed on a background thread while the caller computes.

The evaluation commands used to read every scene before detecting any, then hash every file for
the data manifest after the detection. :class:`SceneReader` does both on one thread, scene by scene
in manifest order, at most ``ahead`` scenes in front of the consumer (bounded memory), so reading,
validation and hashing overlap with ``import torch`` (``test.py`` starts the reader before torch
loads), checkpoint loading, the networks and RX. A bad scene raises its
:class:`fers.errors.FersError` in the consumer when the consumer reaches it; the commands write
their outputs only after the last scene, so nothing is half-written.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from .datasets import Scene, load_scene
from .io import sha256_file
from .preprocessing import prepare_cube
from .profiling import phase

_log = logging.getLogger("fers")
READER_NICE = 5  # the reader thread yields the cores to the networks when both want them (Linux)


@dataclass
class PreparedScene:
    """One scene ready for detection: ``cube`` ``(H, W, C)`` float32 (band policy and reference
    scaling applied), ``mask`` ``(H, W)`` bool or None (unlabelled) and the band-policy description."""

    index: int
    scene: Scene
    cube: np.ndarray
    mask: np.ndarray | None
    bands: str


def manifest_entry(scene: Scene) -> dict:
    """File names and SHA-256 of a scene's cube and ground truth, recorded with the results."""
    with phase("manifest_hash"):
        return {"name": scene.name, "cube": str(scene.cube_path), "cube_sha256": sha256_file(scene.cube_path),
                "ground_truth": str(scene.gt_path) if scene.gt_path else None,
                "ground_truth_sha256": sha256_file(scene.gt_path) if scene.gt_path else None}


def prepare_scene_file(index: int, scene: Scene, channels: int, band_policy: str, log=None) -> PreparedScene:
    """Read, validate and prepare one scene (:func:`fers.datasets.load_scene`,
    :func:`fers.preprocessing.prepare_cube`); notes on unlabelled scenes and empty ground truths go to
    ``log`` (a callable taking one line, default the ``fers`` logger)."""
    with phase("read_validate"):
        cube, mask = load_scene(scene)
        prepared, description = prepare_cube(cube, channels, band_policy, str(scene.cube_path))
    if mask is None:
        (log or _log.info)(f"note: {scene.cube_path}: no ground truth (no 2-D array of the scene's size in the file); "
                           "detection only, its metrics are NaN and left out of the means")
    elif not mask.any():
        # on stdout with the per-scene lines, as the commands always printed it
        (log or _log.info)(f"warning: {scene.cube_path}: the ground truth has no anomaly pixel; its AUC is undefined "
                           "(NaN) and left out of the mean")
    return PreparedScene(index, scene, prepared, mask, description)


_DONE = object()


class SceneReader:
    """Iterate :class:`PreparedScene` of ``scenes`` in order, prepared on a background thread at most
    ``ahead`` scenes in front of the consumer; an error of the reader is raised by the iteration.
    With ``hash_files``, each scene's files are hashed after it is handed over (the consumer computes
    meanwhile); :attr:`manifest` holds the entries, complete once the iteration has ended.

    >>> with SceneReader(scenes, 200, "interp", hash_files=True) as reader:   # reading starts here
    ...     for prepared in reader:
    ...         ...
    ...     reader.manifest
    """

    def __init__(self, scenes: list[Scene], channels: int, band_policy: str = "interp", log=None,
                 ahead: int = 16, hash_files: bool = False):
        self.scenes = list(scenes)
        self.arguments = (channels, band_policy, log)
        self.hash_files = hash_files
        self.manifest: list = [None] * len(self.scenes)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, name="fers-scene-reader", daemon=True)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        _lower_priority()
        try:
            for index, scene in enumerate(self.scenes):
                if self.stop.is_set() or not self._put(prepare_scene_file(index, scene, *self.arguments)):
                    return
                if self.hash_files:
                    self.manifest[index] = manifest_entry(scene)
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(error)

    def start(self) -> SceneReader:
        """Start reading (once)."""
        if self.thread.ident is None:
            self.thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.ident is not None:
            self.thread.join()
        return False

    def __iter__(self):
        self.start()
        for _ in range(len(self.scenes) + 1):
            with phase("waiting_for_scenes"):
                item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux threads have their own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
    except (AttributeError, OSError):
        pass


def read_all(scenes: list[Scene], channels: int, band_policy: str = "interp", log=None) -> list[PreparedScene]:
    """Every scene prepared, in order, in this thread (stop at the first bad one)."""
    return [prepare_scene_file(index, scene, channels, band_policy, log) for index, scene in enumerate(scenes)]


def scene_reader(scenes: list[Scene], channels: int, band_policy: str = "interp", batch_size: int = 16,
                 log=None) -> SceneReader:
    """The reader :func:`fers.evaluation.evaluate` uses: scenes prepared for ``channels`` one batch
    ahead, and hashed for the data manifest. Start it (``with`` or ``.start()``) to read while doing
    other work, e.g. while torch loads."""
    return SceneReader(scenes, channels, band_policy, log, ahead=max(batch_size, 2), hash_files=True)
