"""FERS: hyperspectral anomaly detection by feature-enhanced reverse distillation (FERD) and the
"rebellious student" spatial branch (FERS).

The public API (cubes are NumPy arrays ``(rows, cols, bands)``)::

    cube = fers.load_cube("scene.mat")            # any supported file: .mat, .npy, .npz, ENVI
    mask = fers.load_mask("scene.mat")            # (rows, cols) bool ground truth
    rx_map = fers.rx_scores(cube)                 # global (or local) RX, like spectral.rx
    crd_map = fers.crd_scores(cube)               # collaborative-representation detector (Li & Du 2015)
    detector = fers.Detector.from_checkpoints("checkpoints", channels=200, branches="both")
    detector = fers.Detector.from_pretrained("fers-aviris-200")   # the authors' weights by name
    scores = detector.detect(cube)                # (rows, cols) anomaly map of a scene of any size
    scores = detector.detect(cube, band_policy="wavelength", wavelengths=fers.load_wavelengths("scene.hdr"))
    bands, mapping = fers.select_bands(cube, 50, "std")   # the 50 bands of highest variance, and how
    fers.metrics.auc(scores, mask)                # AUC, Chang's 3D-ROC measures (fers.metrics)
    line = fers.open_raster("flight_line.hdr")    # ENVI/GeoTIFF/.npy read tile by tile, any size
    scores = detector.detect(line, nodata="auto") # no-data pixels masked: NaN in the map
    fers.write_map("scores.tif", scores, line.georeference)   # GeoTIFF in the scene's CRS
    fers.train(fers.TrainConfig(stage="all", input_channel=50, data_path="data/HAD100Dataset"))

- ``Detector``: the trained networks of one band count and the fusion/RX rules;
  ``Detector.score(batch)`` is the tensor-level call on normalised ``(N, C, H, W)`` cubes;
  ``Detector.from_pretrained(name)``: the released weights (``fers.weights``: names, sources,
  hashes), downloaded once into torch.hub's cache and verified by hash before every use.
- ``rx_scores(cube, background="global" | "local")``: training-free RX of a cube or of pixels.
- ``crd_scores(cube, win_in=5, win_out=11, lam=1e-6)``: the CRD baseline (dual window, cut at the border).
- ``load_score_map(path, shape)``: another method's precomputed map, checked as ``compare.py --maps`` does;
  ``compare_methods(rows, methods, metrics)``: mean ± std per method and the paired Wilcoxon test
  against the best (``compare.py``'s statistics).
- ``prepare_cube(cube, channels)``: the network input (band policy and the reference scaling).
- ``select_bands(cube, channels, policy)``, ``band_mapping(...)``: the band policies (``first``,
  ``interp``, ``error``, ``std``, ``entropy``, ``low_correlation``, ``wavelength``) as pure
  functions: the chosen or resampled bands and a record of how (``fers.bands``).
- ``load_wavelengths(path)``: the band centres (nm) a scene or a wavelength file carries.
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
    "crd_scores": ("fers.scene_detection", "crd_map"),
    "load_score_map": ("fers.method_maps", "load_score_map"),
    "compare_methods": ("fers.statistics", "compare_methods"),
    "prepare_cube": ("fers.preprocessing", "prepare_cube"),
    "select_bands": ("fers.bands", "select_bands"),
    "band_mapping": ("fers.bands", "band_mapping"),
    "load_wavelengths": ("fers.io", "load_wavelengths"),
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
