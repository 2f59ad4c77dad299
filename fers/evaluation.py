"""The detection pipeline: load scenes, compute the branch features, fuse, score with RX or the
autoencoder, measure, and write the reference outputs plus ``results.json``/``results.csv``."""

from __future__ import annotations

import copy as _copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import detectors, tuning
from .checkpoints import band_folder, load_fen, load_spatial_branch
from .datasets import Scene
from .errors import FersError
from .initialisation import skipped_initialisation
from .metrics import auc, mean_ignoring_nan
from .outputs import OutputFolder, save_mat, write_text
from .preprocessing import to_batch
from .profiling import mark, phase
from .results import measure, scene_row, summary, write_results
from .scene_reader import SceneReader, manifest_entry, read_all, scene_reader  # noqa: F401 (re-exported)
from .utils import preload, versions

_log = logging.getLogger(__name__)


def inference_copy(module: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """An eval-mode copy of ``module`` for inference: the exact shortcuts of each submodule's
    ``prepare_inference`` (same outputs, less work), BatchNorm folded into the preceding
    convolutions (``torch.fx`` fusion; skipped for a network fx cannot trace) and, if asked,
    channels-last weights (faster oneDNN convolutions on the CPU). The original is untouched."""
    copy = _copy.deepcopy(module).eval()
    for submodule in copy.modules():
        if hasattr(submodule, "prepare_inference"):
            submodule.prepare_inference()
    try:
        with warnings.catch_warnings():  # torch.fx's imports warn about torch.jit deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse

            copy = fuse(copy, inplace=True)
    except Exception:  # an untraceable network still runs, unfused
        pass
    for attribute in ("channels", "backbone"):
        if hasattr(module, attribute) and not hasattr(copy, attribute):
            setattr(copy, attribute, getattr(module, attribute))
    if channels_last:
        copy = copy.to(memory_format=torch.channels_last)
    return copy.requires_grad_(False)


class Detector:
    """The trained networks of one band setting and the rules to turn them into anomaly maps.

    ``fen`` and/or ``spatial`` may be None: with neither, the detector is plain global RX.
    ``network_chunk``/``pipeline_chunk``: scenes per forward pass (``{"fen": {"cpu": 2}, "spatial":
    {"cpu": 4}}``) / per pass through features, fusion and RX (``{"cpu": 4}``), by device type (a
    device type not named: the whole batch). Defaults: chosen for this machine's caches and threads
    (:func:`fers.tuning.network_chunk`, :func:`fers.tuning.pipeline_chunk`); on the CPU the FEN's
    maps stay in cache a few scenes at a time, the spatial branch's small late layers need a few
    scenes per thread, and the pipeline's intermediates stay small enough to reuse freed memory
    instead of page-faulting fresh hundreds of MiB per batch. The scores do not depend on them
    beyond rounding.
    ``model_wavelengths``: the C band centres (nm) the networks were trained on (default: those
    their checkpoints record, else unknown), for ``band_policy="wavelength"``.
    """

    def __init__(self, channels: int, fen=None, spatial=None, device="cpu", fusion="auto",
                 rx_precision="reference", network_chunk: dict | None = None, pipeline_chunk: dict | None = None,
                 model_wavelengths=None):
        recorded = {tuple(m.wavelengths) for m in (fen, spatial) if getattr(m, "wavelengths", None) is not None}
        if model_wavelengths is None and len(recorded) > 1:
            raise FersError("the spectral and spatial checkpoints record different training wavelengths; train "
                            "stage 2 on this stage 1, or pass `model_wavelengths`")
        self.model_wavelengths = (list(map(float, model_wavelengths)) if model_wavelengths is not None
                                  else list(recorded.pop()) if recorded else None)
        self.network_chunk = _copy.deepcopy(tuning.network_chunk() if network_chunk is None else network_chunk)
        self.pipeline_chunk = dict(tuning.pipeline_chunk() if pipeline_chunk is None else pipeline_chunk)
        self.channels = channels
        self.device = torch.device(device)
        self.fen = fen.to(self.device).eval() if fen is not None else None
        self.spatial = spatial.to(self.device).eval() if spatial is not None else None
        # Fusion only applies when both branches are present; recorded as "none" otherwise.
        self.fusion = detectors.resolve_fusion(fusion, channels) if fen is not None and spatial is not None else "none"
        self.rx_precision = detectors.resolve_rx_precision(rx_precision, channels)
        if rx_precision == "reference" and fen is None and spatial is None:
            self.rx_precision = "float64"  # the reference's float32 RX is its 50-band fusion's; plain RX: float64

    @classmethod
    def from_checkpoints(cls, checkpoint_dir, channels: int, branches: str = "both", **options):
        """Load the files the chosen branches need from ``<checkpoint_dir>/<C>bands/``."""
        if branches not in detectors.BRANCHES + ("none",):
            raise ValueError(f"branches must be one of {detectors.BRANCHES}, got {branches!r}")
        folder = band_folder(checkpoint_dir, channels)
        if branches != "none" and not folder.is_dir():
            raise FersError(f"{folder}: checkpoint folder not found; `checkpoint_dir` is the parent of "
                            f"'{channels}bands/' (train the model or put the released files there)")
        with phase("checkpoints"), skipped_initialisation():  # strict loading overwrites every weight
            fen = load_fen(folder, channels) if branches in ("both", "spectral") else None
            spatial = load_spatial_branch(folder, channels) if branches in ("both", "spatial") else None
            return cls(channels, fen, spatial, **options)

    @classmethod
    def from_pretrained(cls, name: str, branches: str | None = None, **options):
        """The authors' released weights by ``name`` (``fers-had100-50``, ``-100``, ``-200``,
        ``fers-aviris-200``; ``ferd-had100-*``: stage 1 only, a spectral-branch detector), downloaded
        once into torch.hub's cache and verified by hash before every use (:mod:`fers.weights`).
        ``branches`` defaults to what the release holds (``both`` for FERS, ``spectral`` for FERD);
        ``options`` as for :meth:`from_checkpoints` (``device``, ``fusion``, ``rx_precision``)."""
        from .weights import fetch, named_weights, resolve_branches

        weights = named_weights(name)
        branches = resolve_branches(weights, branches)
        return cls.from_checkpoints(fetch(name, branches), weights.channels, branches, **options)

    @property
    def branches(self) -> str:
        if self.fen is not None and self.spatial is not None:
            return "both"
        return "spectral" if self.fen is not None else ("spatial" if self.spatial is not None else "none")

    def describe(self) -> dict:
        return {"channels": self.channels, "branches": self.branches, "fusion": self.fusion,
                "rx_precision": self.rx_precision,
                "fen_backbone": getattr(self.fen, "backbone", None),
                "spatial_backbone": getattr(self.spatial, "backbone", None)}

    # Inference speed-ups (same results to float32 rounding): BatchNorm folded into the
    # convolutions, channels-last layout on the CPU, networks run on chunks of scenes.
    fast_inference = True

    def warm_up(self) -> None:
        """Build the inference copies now (else the first :meth:`score` builds them), e.g. while
        scenes are being read."""
        if self.fast_inference:
            self._inference_networks()

    def _inference_networks(self):
        """``(fen, spatial)`` to run: the originals, or cached inference copies rebuilt whenever a
        parameter or buffer of the originals changes (e.g. between training epochs)."""
        networks = (self.fen, self.spatial)
        if not self.fast_inference:
            return networks
        signature = tuple((id(t), t._version) for m in networks if m is not None
                          for t in (*m.parameters(), *m.buffers()))
        if getattr(self, "_inference_signature", None) != signature:
            channels_last = self.device.type == "cpu"
            with phase("inference_copies"):
                self._inference_copies = tuple(inference_copy(m, channels_last) if m is not None else None
                                               for m in networks)
            self._inference_signature = signature
        return self._inference_copies

    @torch.inference_mode()
    def features(self, cubes: torch.Tensor):
        """``(spectral, spatial)`` features ``(N, C, H, W)`` of normalised cubes (None for a missing branch)."""
        fen, spatial = self._inference_networks()
        if fen is None and spatial is None:
            return None, None
        if self.fast_inference and self.device.type == "cpu":
            cubes = cubes.contiguous(memory_format=torch.channels_last)
        else:  # e.g. a channels-last batch of fers.preprocessing.to_batch, on a GPU: as the networks always ran
            cubes = cubes.contiguous()

        def run(name, network):
            if network is None:
                return None
            chunk = self.network_chunk[name].get(self.device.type, len(cubes)) if self.fast_inference else len(cubes)
            parts = [network(part) for part in cubes.split(max(1, chunk))]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return run("fen", fen), run("spatial", spatial)

    @torch.inference_mode()
    def score(self, cubes: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``(N, H, W)`` for normalised cubes ``(N, C, H, W)`` on any device."""
        cubes = cubes.to(self.device, torch.float32)
        chunk = self.pipeline_chunk.get(self.device.type, len(cubes)) if self.fast_inference else len(cubes)
        maps = []
        for part in cubes.split(max(1, chunk)):
            if self.fast_inference and self.device.type == "cpu":
                part = part.contiguous(memory_format=torch.channels_last)
            with phase("networks", self.device):
                spectral, spatial = self.features(part)
            with phase("rx", self.device):
                maps.append(detectors.fused_scores(part, spectral, spatial, self.fusion, self.rx_precision))
        return torch.cat(maps) if len(maps) != 1 else maps[0]

    def default_background(self) -> str:
        """``global`` for plain RX (no branch: RX means global RX, as ``spectral.rx``), else ``tile``."""
        return "global" if self.branches == "none" else "tile"

    def detect(self, cube, band_policy: str = "interp", tile: int = 64, overlap: int = 16,
               background: str | None = None, batch_size: int = 16, progress: bool = False,
               name: str = "cube", wavelengths=None, nodata=None) -> np.ndarray:
        """Anomaly map ``(H, W)`` float64 of a raw cube ``(H, W, B)`` of any size, as ``detect.py``
        computes it: validation, ``band_policy`` to this detector's C bands (any of
        :data:`fers.bands.BAND_POLICIES`; ``wavelengths``: the scene's band centres in nm, for
        ``wavelength`` and to flag another sensor) and the reference scaling
        (:func:`fers.preprocessing.prepare_source`), then overlapping ``tile``×``tile`` tiles blended
        without seams, with the RX background per tile or ``"global"``
        (:func:`fers.scene_detection.detect_scene`; default :meth:`default_background`). A scene no
        larger than one tile gives exactly :meth:`score` of the whole scene (the map of
        ``FERS_ABU/test.py``). The band mapping is logged (``fers`` logger; a scene that is not the
        model's band set as a warning); :func:`fers.band_mapping` returns it.

        ``cube``: an array, or a :class:`fers.rasters.Raster` (``fers.open_raster``: ``.npy``, ENVI,
        GeoTIFF), which is read tile by tile in bounded memory. ``nodata``: ``None`` refuses NaN/Inf
        and fill values; ``"auto"`` or a value masks them (:func:`fers.preprocessing.nodata_rule`):
        they enter no statistic and are NaN in the map."""
        from .scene_detection import detect_scene

        background = background or self.default_background()
        scene = self.prepare(cube, band_policy, wavelengths, name, nodata, background)
        return detect_scene(self, scene.cube, tile, overlap, background, batch_size, progress, scene.valid)

    def prepare(self, cube, band_policy: str = "interp", wavelengths=None, name: str = "cube", nodata=None,
                background: str | None = None):
        """A raw cube (array or :class:`fers.rasters.Raster`) as this detector's input: its band
        mapping (:meth:`band_mapping`, statistics over the valid pixels), then
        :func:`fers.preprocessing.prepare_source` with the ``nodata`` rule, in the dtype RX needs
        for ``background`` (:meth:`rx_input_dtype`). Returns the
        :class:`fers.preprocessing.PreparedSource`."""
        from .bands import STATISTIC_POLICIES
        from .preprocessing import NOT_SCANNED, nodata_rule, prepare_source, valid_pixels

        rule = nodata_rule(nodata, getattr(cube, "nodata", None))
        statistics = rule is not None and band_policy in STATISTIC_POLICIES
        valid = valid_pixels(cube, rule, name) if statistics else NOT_SCANNED
        mapping = self.band_mapping(cube, band_policy, wavelengths, name, None if valid is NOT_SCANNED else valid)
        return prepare_source(cube, self.channels, band_policy, name, nodata, mapping=mapping, valid=valid,
                              dtype=self.rx_input_dtype(background or self.default_background()))

    def band_mapping(self, cube: np.ndarray, band_policy: str = "interp", wavelengths=None, name: str = "cube",
                     valid=None):
        """:func:`fers.bands.band_mapping` of a raw cube to this detector's bands (to its training band
        centres for ``wavelength``; ``valid``: the pixels its statistics may use), logged on the
        ``fers`` logger: the description, and as a warning why the scene is not the model's band set
        (not for plain RX, which has no model)."""
        from .bands import band_mapping

        mapping = band_mapping(cube, self.channels, band_policy, wavelengths, self.model_wavelengths, name,
                               compare_to_model=self.branches != "none", valid=valid)
        _log.debug(f"{name}: {mapping.description}")
        if mapping.warning:
            _log.warning(f"{name}: {mapping.warning}")
        return mapping

    def rx_input_dtype(self, background: str):
        """float64 for plain global RX (its scores then equal a float64 RX of the raw bands to
        rounding), float32 (the networks' input) otherwise."""
        return np.float64 if self.branches == "none" and background == "global" else np.float32

    def enhanced(self, cubes: torch.Tensor) -> torch.Tensor:
        """The cube plus all branch features: the input of the autoencoder detector."""
        with torch.inference_mode():
            cubes = cubes.to(self.device, torch.float32)
            spectral, spatial = self.features(cubes)
            total = sum(f for f in (spectral, spatial) if f is not None) + cubes if self.branches != "none" else cubes
        return total.clone()  # a normal tensor: the autoencoder trains on it outside inference mode


@dataclass
class SceneResult:
    name: str
    auc: float
    seconds: float
    bands: str
    shape: tuple
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    labelled: bool = True
    batch_scenes: int = 1

    def row(self) -> dict:
        """One results row. ``seconds_batch_average``: the wall time of the scene's batch divided by
        the scenes in it (``batch_scenes``); ``seconds`` is the same number, kept for older readers."""
        row = scene_row(self.name, {"auc": self.auc, **self.metrics}, seconds=self.seconds,
                        seconds_batch_average=self.seconds, batch_scenes=self.batch_scenes, labelled=self.labelled,
                        bands=self.bands, height=self.shape[0], width=self.shape[1])
        return {**row, **self.extra}


@dataclass
class Evaluation:
    results: list
    scores: list
    masks: list
    total_seconds: float
    config: dict
    manifest: list = field(default_factory=list)
    labelled: list = field(default_factory=list)  # per scene: has a ground truth (else metrics NaN)

    @property
    def mean_auc(self) -> tuple[float, int]:
        return mean_ignoring_nan(r.auc for r in self.results)


def load_inputs(scenes: list[Scene], channels: int, band_policy: str, log=None):
    """Load, validate and normalise every scene before any detection runs, so a bad file stops the
    run before anything is written. Returns ``(cubes (H, W, C) float32, masks, band descriptions)``;
    the mask of an unlabelled scene is None. Notes and warnings go to ``log`` (a callable taking
    one line), by default the ``fers`` logger."""
    prepared = read_all(scenes, channels, band_policy, log)
    return [p.cube for p in prepared], [p.mask for p in prepared], [p.bands for p in prepared]


def _batches(prepared, batch_size: int):
    """Lists of consecutive :class:`PreparedScene` with equal shapes, at most ``batch_size`` long,
    from a stream of them (a batch is yielded as soon as the next scene cannot join it)."""
    batch = []
    for item in prepared:
        if batch and (len(batch) == batch_size or batch[0].cube.shape != item.cube.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(detector: Detector, scenes: list[Scene], band_policy: str = "interp", batch_size: int = 16,
             detect: str = "RX", ae_steps: int = 50, ae_select: str = "last", seed: int = 0,
             progress: bool = True, log=None, reader: SceneReader | None = None) -> Evaluation:
    """Score every scene and compute its AUC, 3D-ROC measures and F1-optimal threshold.

    Scenes are read, validated and hashed on a reader thread (:func:`scene_reader`) while the
    inference copies are built and each batch is scored; a bad scene raises its error when it is
    reached (nothing has been written then). ``reader``: that reader for these ``scenes``, already
    started by the caller (e.g. before loading the checkpoints), else one is made here."""
    if detect not in ("RX", "AE"):
        raise ValueError("detect must be RX or AE")
    n = len(scenes)
    scores: list = [None] * n
    masks: list = [None] * n
    labelled = [False] * n
    seconds = [0.0] * n
    batch_scenes = [1] * n
    extras = [{} for _ in scenes]
    bands, shapes, metrics = [""] * n, [None] * n, [None] * n
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"detect ({detect})", unit="scene", disable=not progress, leave=False)
    started = time.perf_counter()
    reader = reader or scene_reader(scenes, detector.channels, band_policy, batch_size, log)
    first_batch = True
    with reader:
        detector.warm_up()  # the inference copies are built while the reader reads the first batch
        for batch in _batches(reader, 1 if detect == "AE" else batch_size):
            for item in batch:
                index = item.index
                labelled[index] = item.mask is not None
                masks[index] = item.mask if item.mask is not None else np.zeros(item.cube.shape[:2], bool)
                bands[index], shapes[index] = item.bands, item.cube.shape[:2]
            if detect == "AE" and ae_select == "oracle" and not labelled[batch[0].index]:
                raise FersError(f"{batch[0].scene.cube_path}: `ae_select` oracle picks the step by ground-truth AUC, "
                                "and this scene has no ground truth; use `ae_select` last or min_loss")
            indices = [item.index for item in batch]
            tick = time.perf_counter()
            tensor = to_batch([item.cube for item in batch])
            del batch[:]  # the items hold the prepared cubes, now copied into the tensor
            if first_batch:
                first_batch = False
                mark("first_batch")
                preload("scipy.io")  # for scores.mat and gts.mat (0.3 s), while the networks run
            if detect == "RX":
                maps = detector.score(tensor)
                _synchronise(detector.device)
                maps = maps.cpu().numpy()
            else:
                index = indices[0]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ae_map, info = detectors.autoencoder_scores(detector.enhanced(tensor), steps=ae_steps, seed=seed,
                                                                select=ae_select, mask=masks[index], auc_fn=auc)
                maps = ae_map.cpu().numpy()[None]
                extras[index] = info
            elapsed = (time.perf_counter() - tick) / len(indices)
            with phase("metrics"):
                for slot, index in enumerate(indices):
                    scores[index] = np.asarray(maps[slot], dtype=np.float64)
                    seconds[index] = elapsed
                    batch_scenes[index] = len(indices)
                    metrics[index] = measure(scores[index], masks[index])
            bar.update(len(indices))
    bar.close()
    total = time.perf_counter() - started
    results = []
    for index, scene in enumerate(scenes):
        scene_auc = metrics[index].pop("auc")
        results.append(SceneResult(scene.name, scene_auc, seconds[index], bands[index], shapes[index],
                                   metrics[index], extras[index], labelled[index], batch_scenes[index]))
    config = {**detector.describe(), "detect": detect, "band_policy": band_policy, "batch_size": batch_size,
              "device": str(detector.device)}
    if detect == "AE":
        config.update({"ae_steps": ae_steps, "ae_select": ae_select, "seed": seed,
                       "ae_selection_uses_ground_truth": ae_select == "oracle"})
    return Evaluation(results, scores, masks, total, config, reader.manifest, labelled)


def data_manifest(scenes: list[Scene]) -> list[dict]:
    """File names and SHA-256 of every cube and ground truth, recorded with the results."""
    return [manifest_entry(scene) for scene in scenes]


def _stack_or_cells(arrays: list) -> np.ndarray:
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    cells = np.empty(len(arrays), dtype=object)
    cells[:] = arrays
    return cells


SECONDS_NOTE = ("per-scene seconds (seconds_batch_average; 'seconds' is the same value) are the wall time of the "
                "scene's batch divided by the scenes in it (batch_scenes): scenes of equal size are scored "
                "together (--batch_size), so they are not measured one by one; total_seconds is the whole run")


def summary_lines(evaluation: Evaluation, title: str) -> list[str]:
    mean, covered = evaluation.mean_auc
    n = len(evaluation.results)
    oracle = " [ORACLE: AE step chosen on ground truth]" if evaluation.config.get("ae_selection_uses_ground_truth") else ""
    lines = [f"{title}{oracle}"]
    lines += [f"{r.name}: AUC {r.auc:.4f}  ({r.bands}, {r.seconds * 1000:.1f} ms"
              + (f" averaged over a batch of {r.batch_scenes}" if r.batch_scenes > 1 else "")
              + ("" if r.labelled else "; no ground truth") + ")" for r in evaluation.results]
    unlabelled = sum(not r.labelled for r in evaluation.results)
    left_out = [f"{n - covered - unlabelled} without anomaly pixels"] if n - covered - unlabelled else []
    left_out += [f"{unlabelled} without ground truth"] if unlabelled else []
    lines.append(f"mean AUC {mean:.4f} over {covered} of {n} scenes"
                 + (f" ({', '.join(left_out)} left out)" if left_out else ""))
    lines.append(f"total {evaluation.total_seconds:.2f} s, {evaluation.total_seconds / max(n, 1) * 1000:.1f} ms per scene")
    return lines


def write_outputs(save_dir, evaluation: Evaluation, run_config: dict, title: str) -> Path:
    """Write ``each_auc.txt``, ``test_list.txt``, ``log.txt``, ``scores.mat``, ``gts.mat``,
    ``results.json`` and ``results.csv`` all-or-nothing into ``save_dir``."""
    save_dir = Path(save_dir)
    results = evaluation.results
    oracle = bool(evaluation.config.get("ae_selection_uses_ground_truth"))
    payload = {
        "title": title,
        **summary([r.row() for r in results]),
        "total_seconds": evaluation.total_seconds,
        "seconds_per_scene": evaluation.total_seconds / max(len(results), 1),
        "seconds_note": SECONDS_NOTE,
        "oracle": oracle,
        "config": {**run_config, **evaluation.config},
        "versions": versions(),
        "data_manifest": evaluation.manifest,
    }
    if oracle:
        payload["warning"] = "ORACLE: the autoencoder step was chosen by ground-truth AUC (--ae_select oracle)"
    names = [r.name for r in results]
    with phase("write_outputs"), OutputFolder(save_dir) as out:
        write_text(out / "each_auc.txt", "".join(f"{r.name}:{r.auc}\n" for r in results)
                   + ("# ORACLE selection (--ae_select oracle)\n" if oracle else ""))
        write_text(out / "test_list.txt", "".join(f"{name}\n" for name in names))
        write_text(out / "log.txt", "\n".join(summary_lines(evaluation, title)) + "\n")
        save_mat(out / "scores.mat", {"scores": _stack_or_cells(evaluation.scores), "names": np.array(names, dtype=object)})
        save_mat(out / "gts.mat", {"gts": _stack_or_cells([m.astype(np.uint8) for m in evaluation.masks]),
                                   "names": np.array(names, dtype=object),
                                   "labelled": np.array([r.labelled for r in results], dtype=np.uint8)})
        write_results(out, payload, payload["scenes"],
                      [{"name": "mean", **payload["mean_metrics"], "seconds": payload["seconds_per_scene"],
                        "seconds_batch_average": payload["seconds_per_scene"]}])
    return save_dir
