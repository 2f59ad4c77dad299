"""FERS: hyperspectral anomaly detection by feature-enhanced reverse distillation (FERD) and the
"rebellious student" spatial branch (FERS).

The public API (cubes are NumPy arrays ``(rows, cols, bands)``)::

    cube = fers.load_cube("scene.mat")            # any supported file: .mat, .npy, .npz, ENVI
    mask = fers.load_mask("scene.mat")            # (rows, cols) bool ground truth
    rx_map = fers.rx_scores(cube)                 # global (or local) RX, like spectral.rx
    detector = fers.Detector.from_checkpoints("checkpoints", channels=200, branches="both")
    scores = detector.detect(cube)                # (rows, cols) anomaly map of a scene of any size
    fers.metrics.auc(scores, mask)                # AUC, Chang's 3D-ROC measures (fers.metrics)
    line = fers.open_raster("flight_line.hdr")    # ENVI/GeoTIFF/.npy read tile by tile, any size
    scores = detector.detect(line, nodata="auto") # no-data pixels masked: NaN in the map
    fers.write_map("scores.tif", scores, line.georeference)   # GeoTIFF in the scene's CRS
    fers.train(fers.TrainConfig(stage="all", input_channel=50, data_path="data/HAD100Dataset"))

- ``Detector``: the trained networks of one band count and the fusion/RX rules;
  ``Detector.score(batch)`` is the tensor-level call on normalised ``(N, C, H, W)`` cubes.
- ``rx_scores(cube, background="global" | "local")``: training-free RX of a cube or of pixels.
- ``prepare_cube(cube, channels)``: the network input (band policy and the reference scaling).
- ``load_cube``, ``load_mask``: the readers the commands use.
- ``open_raster(path)``: a cube read window by window (``shape``, ``wavelengths``, ``nodata``,
  ``georeference``); ``write_map(path, values, georeference)``: GeoTIFF or ENVI map;
  ``detection_mask(scores, far)`` and ``detections_geojson(scores, mask, georeference)``.
- ``metrics``: per-scene AUC and the 3D-ROC measures; ``tie_sensitivity`` gives their noise.
- ``train``, ``TrainConfig``: stage 1, stage 2 or both, as ``train.py`` does.

The scripts at the repository root (``test.py``, ``train.py``, ``FERS_ABU/test.py``,
``train_FERD/train.py``, ``train_FERS/train.py``, ``detect.py``, ``compare.py``, ``demo.py``) are
thin command lines over this package. Names load on first use, so ``import fers`` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> (module, attribute); None: the module itself
_API = {
    "Detector": ("fers.evaluation", "Detector"),
    "rx_scores": ("fers.scene_detection", "rx_map"),
    "prepare_cube": ("fers.preprocessing", "prepare_cube"),
    "load_cube": ("fers.io", "load_cube"),
    "load_mask": ("fers.io", "load_mask"),
    "open_raster": ("fers.rasters", "open_raster"),
    "write_map": ("fers.map_outputs", "write_map"),
    "detection_mask": ("fers.map_outputs", "detection_mask"),
    "detections_geojson": ("fers.map_outputs", "detections_geojson"),
    "metrics": ("fers.metrics", None),
    "train": ("fers.training", "train"),
    "TrainConfig": ("fers.training", "TrainConfig"),
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'fers' has no attribute {name!r}")
    module_name, attribute = _API[name]
    module = import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
