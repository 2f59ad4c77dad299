"""Scenes read, validated, prepared and hashed on a background thread while the caller computes.

The evaluation commands used to read every scene before detecting any, then hash every file for
the data manifest after the detection. :class:`SceneReader` does both on one thread, scene by scene
in manifest order, at most ``ahead`` scenes in front of the consumer (bounded memory), so reading,
validation and hashing overlap with checkpoint loading, the networks and RX. A bad scene raises its
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
    """Iterate :class:`PreparedScene` of ``scenes`` in order, prepared on a background thread ahead
    of the consumer by at most ``ahead`` scenes or ``ahead_bytes`` of prepared cubes, whichever
    allows more (small scenes are all read while torch loads; large ones stay bounded); an error
    of the reader is raised by the iteration. With ``hash_files``, each scene's files are hashed
    after it is handed over (the consumer computes meanwhile); :attr:`manifest` holds the entries,
    complete once the iteration has ended.

    >>> with SceneReader(scenes, 200, "interp", hash_files=True) as reader:   # reading starts here
    ...     for prepared in reader:
    ...         ...
    ...     reader.manifest
    """

    def __init__(self, scenes: list[Scene], channels: int, band_policy: str = "interp", log=None,
                 ahead: int = 16, hash_files: bool = False, ahead_bytes: int = 0):
        self.scenes = list(scenes)
        self.arguments = (channels, band_policy, log)
        self.hash_files = hash_files
        self.manifest: list = [None] * len(self.scenes)
        self.ahead, self.ahead_bytes = max(1, ahead), max(0, ahead_bytes)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.room = threading.Condition()
        self.held = [0, 0]  # scenes and bytes handed to the queue, not yet taken
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, name="fers-scene-reader", daemon=True)

    def _full(self) -> bool:
        return self.held[0] >= self.ahead and self.held[1] >= self.ahead_bytes

    def _put(self, item, size: int | None = None) -> bool:
        """Queue a prepared scene of ``size`` bytes once there is room, or (``size`` None) the end
        marker or an error at once; False if the reader was stopped."""
        if size is not None:
            with self.room:
                while self._full() and not self.stop.is_set():
                    self.room.wait(0.1)
                if self.stop.is_set():
                    return False
                self.held[0] += 1
                self.held[1] += size
        self.queue.put((item, size))
        return True

    def _take(self):
        item, size = self.queue.get()
        if size is not None:
            with self.room:
                self.held[0] -= 1
                self.held[1] -= size
                self.room.notify()
        return item

    def _read(self) -> None:
        _lower_priority()
        try:
            for index, scene in enumerate(self.scenes):
                if self.stop.is_set():
                    return
                prepared = prepare_scene_file(index, scene, *self.arguments)
                if not self._put(prepared, prepared.cube.nbytes):
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
        with self.room:
            self.room.notify_all()
        if self.thread.ident is not None:
            self.thread.join()
        return False

    def __iter__(self):
        self.start()
        for _ in range(len(self.scenes) + 1):
            with phase("waiting_for_scenes"):
                item = self._take()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def read_ahead_bytes() -> int:
    """How many bytes of prepared scenes the evaluation commands read ahead: 512 MiB, at most an
    eighth of the machine's memory (all of HAD100's 64×64 test scenes at 200 bands fit in ~300 MiB)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 4 << 30
    return min(512 << 20, memory // 8)


def scene_reader(scenes: list[Scene], channels: int, band_policy: str = "interp", batch_size: int = 16,
                 log=None) -> SceneReader:
    """The reader :func:`fers.evaluation.evaluate` uses: scenes prepared for ``channels`` and hashed
    for the data manifest, at least one batch ahead and up to :func:`read_ahead_bytes`. Start it
    (``with`` or ``.start()``) to read while doing other work, e.g. while torch loads."""
    return SceneReader(scenes, channels, band_policy, log, ahead=max(batch_size, 2), hash_files=True,
                       ahead_bytes=read_ahead_bytes())


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux threads have their own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READER_NICE)
    except (AttributeError, OSError):
        pass


def read_all(scenes: list[Scene], channels: int, band_policy: str = "interp", log=None) -> list[PreparedScene]:
    """Every scene prepared, in order, in this thread (stop at the first bad one)."""
    return [prepare_scene_file(index, scene, channels, band_policy, log) for index, scene in enumerate(scenes)]
