"""Issue 15: band policies against plain NumPy references (std, entropy, low_correlation,
wavelength = np.interp), their refusals, the scene/model band record in results.json, training
wavelengths in the checkpoints; plain RX = global RX; heat maps at the scene's resolution with a
percentile colour scale."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

import fers
from conftest import ABU_DIR, BACKGROUND_DIR, REFERENCE_DIR, assert_matches_published, error_line, needs_abu, \
    needs_background, run_detect
from fers.bands import ENTROPY_BINS, band_mapping, band_statistic, select_bands, wavelength_blend
from fers.errors import FersError


_detect, _error_line = run_detect, error_line


def _pixels(cube):
    return np.asarray(cube, dtype=np.float64).reshape(-1, cube.shape[2])


# --------------------------------------------------------------------------- statistics policies


def _scaled_bands(rows=30, cols=20, bands=16, seed=0):
    """Bands of clearly different spread and shape (uniform, normal, peaked)."""
    rng = np.random.default_rng(seed)
    scales = rng.permutation(np.linspace(0.5, 8.0, bands))
    shapes = [rng.uniform(-1, 1, (rows, cols)), rng.normal(0, 0.5, (rows, cols)),
              rng.laplace(0, 0.1, (rows, cols))]
    cube = np.stack([100 + scales[b] * (shapes[b % 3] + 0.05 * rng.standard_normal((rows, cols)))
                     for b in range(bands)], axis=2)
    return cube


def test_std_picks_the_bands_of_highest_variance_in_spectral_order():
    cube = _scaled_bands()
    cube[3, 4, 7] = np.nan  # a pixel with a non-finite band is left out of the statistics
    finite = _pixels(cube)[np.isfinite(_pixels(cube)).all(1)]
    variance = finite.var(axis=0, ddof=1)
    np.testing.assert_allclose(band_statistic(cube, "std", chunk_bytes=2048), variance, rtol=1e-10)
    expected = sorted(np.argsort(-variance, kind="stable")[:6].tolist())
    selected, mapping = select_bands(cube, 6, "std", chunk_bytes=2048)  # several row chunks
    assert list(mapping.indices) == expected
    np.testing.assert_array_equal(selected, cube[:, :, expected])
    assert mapping.description == "6 of 16 bands by highest variance"
    assert mapping.record()["selected_bands"] == expected


def test_entropy_picks_the_bands_of_highest_histogram_entropy():
    cube = _scaled_bands(seed=1)
    reference = []
    for band in np.moveaxis(cube, 2, 0):
        counts, _ = np.histogram(band, bins=ENTROPY_BINS, range=(band.min(), band.max()))
        share = counts[counts > 0] / counts.sum()
        reference.append(-(share * np.log2(share)).sum())
    reference = np.array(reference)
    np.testing.assert_allclose(band_statistic(cube, "entropy", chunk_bytes=4096), reference, rtol=1e-12)
    expected = sorted(np.argsort(-reference, kind="stable")[:5].tolist())
    selected, mapping = select_bands(cube, 5, "entropy")
    assert list(mapping.indices) == expected
    np.testing.assert_array_equal(selected, cube[:, :, expected])
    # a constant band has entropy 0 and is never preferred
    cube[:, :, 2] = 7.0
    assert 2 not in select_bands(cube, 15, "entropy")[1].indices


def _greedy_low_correlation(pixels, channels):
    """The documented rule, written out: lowest mean |r| to the others first, then the band whose
    highest |r| with the chosen ones is lowest, lower index on ties; spectral order."""
    magnitude = np.abs(np.corrcoef(pixels, rowvar=False))
    bands = len(magnitude)
    mean_to_others = (magnitude.sum(1) - 1.0) / (bands - 1)
    chosen = [int(np.argmin(mean_to_others))]
    while len(chosen) < channels:
        best, best_value = None, np.inf
        for band in range(bands):
            if band not in chosen:
                value = max(magnitude[band, other] for other in chosen)
                if value < best_value:
                    best, best_value = band, value
        chosen.append(best)
    return sorted(chosen)


def test_low_correlation_picks_one_band_per_correlated_group():
    rng = np.random.default_rng(2)
    latent = rng.standard_normal((40 * 30, 4))  # four independent signals, three noisy bands each
    bands = np.stack([latent[:, b % 4] * (1 + b) + rng.normal(0, 0.3 + 0.05 * b, len(latent)) for b in range(12)],
                     axis=1)
    cube = bands.reshape(40, 30, 12)
    expected = _greedy_low_correlation(bands, 4)
    selected, mapping = select_bands(cube, 4, "low_correlation", chunk_bytes=8192)
    assert list(mapping.indices) == expected
    assert sorted(index % 4 for index in mapping.indices) == [0, 1, 2, 3]  # one band of each group
    np.testing.assert_array_equal(selected, cube[:, :, expected])
    assert list(select_bands(cube, 7, "low_correlation")[1].indices) == _greedy_low_correlation(bands, 7)


def test_statistics_policies_refuse_fewer_bands_and_keep_all_of_an_equal_count():
    cube = _scaled_bands(bands=8)
    for policy in ("std", "entropy", "low_correlation"):
        with pytest.raises(FersError, match=f"scene.npy: has 8 bands, fewer than the model's 10; `band_policy` "
                                            f"{policy} chooses among"):
            band_mapping(cube, 10, policy, name="scene.npy")
        mapping = band_mapping(cube, 8, policy)
        assert mapping.indices == tuple(range(8)) and mapping.warning is None
    with pytest.raises(ValueError, match="`band_policy` 'pca'"):
        band_mapping(cube, 8, "pca")


# --------------------------------------------------------------------------- wavelengths


def _overlapping_wavelengths(bands=30):
    """Band centres as AVIRIS stores them: spectrometer blocks overlapping, so not monotonic."""
    first = bands * 2 // 5  # the second spectrometer starts below the end of the first
    return np.concatenate([np.linspace(400, 1300, first), np.linspace(1240, 2500, bands - first)])


def _interp_reference(cube, scene_wl, model_wl):
    order = np.argsort(scene_wl, kind="stable")
    pixels = _pixels(cube)
    return np.stack([np.interp(model_wl, scene_wl[order], pixel[order]) for pixel in pixels]).reshape(
        cube.shape[:2] + (len(model_wl),))


def test_wavelength_resampling_equals_np_interp():
    rng = np.random.default_rng(3)
    scene_wl = _overlapping_wavelengths()
    cube = rng.uniform(0, 4000, (6, 5, 30)).astype(np.float32)
    model_wl = np.concatenate([[395.0], np.linspace(420, 2480, 18), [2505.0]])  # ends within 10 nm outside
    selected, mapping = select_bands(cube, 20, "wavelength", wavelengths=scene_wl, model_wavelengths=model_wl,
                                     compare_to_model=False)
    np.testing.assert_allclose(selected, _interp_reference(cube, scene_wl, model_wl), rtol=1e-6)  # float32 out
    lower, upper, weight = mapping.blend
    exact = (cube[:, :, lower].astype(np.float64) * (1 - weight) + cube[:, :, upper] * weight)
    np.testing.assert_allclose(exact, _interp_reference(cube, scene_wl, model_wl), rtol=1e-12)
    assert mapping.warning is None  # plain RX has no model to compare with; against a model, flagged:
    assert "the scene has 30 bands and the model takes 20" in band_mapping(
        cube, 20, "wavelength", scene_wl, model_wl).warning
    record = mapping.record()
    assert record["policy"] == "wavelength" and record["model_wavelengths_nm"] == model_wl.tolist()
    assert record["scene_wavelength_range_nm"] == [400.0, 2500.0]


def test_wavelength_refusals_and_gap_warning():
    cube = np.random.default_rng(4).random((4, 4, 30))
    scene_wl = _overlapping_wavelengths()
    beyond = np.linspace(420, 2520, 20)  # 20 nm past the scene's last band
    with pytest.raises(FersError, match=r"s.hdr: the scene covers 400–2500 nm but 1 of the model's 20 band centres "
                                        r"lie more than 10 nm outside \(2520 nm\)"):
        band_mapping(cube, 20, "wavelength", scene_wl, beyond, "s.hdr")
    with pytest.raises(FersError, match="needs the scene's band centres.*`wavelengths` FILE"):
        band_mapping(cube, 20, "wavelength", None, beyond)
    with pytest.raises(FersError, match="needs the band centres the model was trained on.*`model_wavelengths` FILE"):
        band_mapping(cube, 20, "wavelength", scene_wl, None)
    with pytest.raises(FersError, match="29 scene wavelengths for 30 bands"):
        band_mapping(cube, 20, "wavelength", scene_wl[:-1], beyond)
    # another policy ignores a wrong-length vector, with a note
    assert "scene wavelengths ignored" in band_mapping(cube, 20, "std", scene_wl[:-1], None).warning
    gapped = np.delete(np.linspace(400, 2500, 31), [13, 14, 15])  # 1310–1450 nm removed (water absorption)
    _, warning = wavelength_blend(gapped, [1000.0, 1400.0, 2000.0], "s.hdr")
    assert warning.startswith("1 of the model's band centres fall in gaps of the scene's spectrum") and \
        "apart: 1400 nm" in warning


def test_wavelength_files_in_every_format(tmp_path):
    centres = np.linspace(400.5, 2500, 7)
    (tmp_path / "w.txt").write_text("# band centres\n" + "\n".join(f"{v}" for v in centres) + "\n")
    (tmp_path / "w.csv").write_text(",".join(f"{v / 1000}" for v in centres))  # micrometres
    (tmp_path / "w.json").write_text(json.dumps({"wavelengths": centres.tolist()}))
    np.save(tmp_path / "w.npy", centres)
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 7)))
    scipy.io.savemat(tmp_path / "scene.mat", {"data": np.zeros((2, 2, 7)), "wavelength": centres[None] / 1000})
    (tmp_path / "w.hdr").write_text("ENVI\nsamples = 2\nlines = 2\nbands = 7\nwavelength units = Micrometers\n"
                                    "wavelength = {" + ", ".join(f"{v / 1000}" for v in centres) + "}\n")
    for name in ("w.txt", "w.csv", "w.json", "w.npy", "scene.mat", "w.hdr"):
        np.testing.assert_allclose(fers.load_wavelengths(tmp_path / name), centres, rtol=1e-12, err_msg=name)
    assert fers.load_wavelengths(tmp_path / "cube.npy") is None  # a cube carries none
    (tmp_path / "bad.txt").write_text("400, nm\n")
    with pytest.raises(FersError, match="bad.txt: cannot read band centres"):
        fers.load_wavelengths(tmp_path / "bad.txt")


# --------------------------------------------------------------------------- checkpoints, training, detect.py


TRAINING_WAVELENGTHS = np.linspace(400, 2500, 60)  # a training sensor's band centres; the model takes 50


@pytest.fixture(scope="module")
def fen50(tmp_path_factory):
    """One small (ResNet-18) 50-band FEN saved twice: ``recorded/`` with its training band centres (the
    first 50 of TRAINING_WAVELENGTHS), ``plain/`` without (as the released checkpoints)."""
    import torch

    from fers.checkpoints import band_folder, save_fen
    from fers.fen import FEN

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fen50")
    fen = FEN(50, "resnet18")
    save_fen(band_folder(root / "recorded", 50), fen, wavelengths=TRAINING_WAVELENGTHS[:50])
    save_fen(band_folder(root / "plain", 50), fen)
    return root


def test_checkpoints_record_training_wavelengths(tmp_path, fen50):
    from fers.checkpoints import band_folder, load_fen
    from fers.training import TrainConfig
    from fers.training.api import training_wavelengths

    (tmp_path / "train_wl.txt").write_text(" ".join(str(v) for v in TRAINING_WAVELENGTHS))
    config = TrainConfig(input_channel=50, wavelengths=str(tmp_path / "train_wl.txt"),
                         checkpoint_dir=str(fen50 / "recorded"))
    recorded = training_wavelengths(config, "stage1")
    assert recorded == TRAINING_WAVELENGTHS[:50].tolist()  # the first C, as the model's bands
    assert load_fen(band_folder(fen50 / "recorded", 50), 50).wavelengths == recorded
    assert load_fen(band_folder(fen50 / "plain", 50), 50).wavelengths is None
    # stage 2 records what stage 1 recorded
    assert training_wavelengths(config.replace(wavelengths=None), "stage2") == recorded
    assert fers.Detector.from_checkpoints(fen50 / "recorded", 50, "spectral").model_wavelengths == recorded
    with pytest.raises(FersError, match="`wavelengths`.*give at least 100"):
        training_wavelengths(config.replace(input_channel=100), "stage1")


@needs_background
def test_detect_flags_another_sensor_and_resamples_a_real_scene(tmp_path, capsys, fen50):
    """The real AVIRIS La Cumbre scene (224 bands, overlapping spectrometers) through a 50-band model that
    records its training band centres: flagged, resampled as np.interp, recorded in results.json."""
    scene = BACKGROUND_DIR / "aviris-lacumbre-90x90x224.mat"
    model_wl = TRAINING_WAVELENGTHS[:50]
    base = [scene, "--input_channel", 50, "--branches", "spectral", "--tile", 90, "--band_policy", "wavelength"]
    code, out, err = _detect([*base, "--checkpoint_dir", fen50 / "recorded", "--save_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "warning: " in err and "the scene has 224 bands and the model takes 50" in err
    row = json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]
    record = row["band_mapping"]
    assert record["policy"] == "wavelength" and record["scene_bands"] == 224 and record["model_bands"] == 50
    assert "another sensor" in record["warning"] and record["model_wavelengths_nm"] == model_wl.tolist()
    cell = next(csv.DictReader((tmp_path / "out" / "results.csv").open()))["band_mapping"]
    assert json.loads(cell) == record  # the CSV cell is the same record, as JSON
    contents = scipy.io.loadmat(scene)
    cube, scene_wl = contents["data"], contents["wavelengths"].ravel()
    selected, _ = select_bands(cube, 50, "wavelength", scene_wl, model_wl)
    assert selected.shape == (90, 90, 50)
    np.testing.assert_allclose(selected[:9, :9], _interp_reference(cube[:9, :9], scene_wl, model_wl), rtol=1e-6)
    # a checkpoint without wavelengths: refused, naming the fix
    code, _, err = _detect([*base, "--checkpoint_dir", fen50 / "plain", "--save_dir", tmp_path / "refused"], capsys)
    line = _error_line(code, err)
    assert "aviris-lacumbre" in line and "--model_wavelengths FILE" in line and "retrain with --wavelengths" in line
    assert not (tmp_path / "refused").exists()


def test_detect_wavelength_refusals_name_the_flags(tmp_path, capsys):
    cube = np.random.default_rng(5).random((20, 20, 12)).astype(np.float32)
    np.save(tmp_path / "scene.npy", cube)
    base = [tmp_path / "scene.npy", "--branches", "none", "--input_channel", 8, "--band_policy", "wavelength",
            "--save_dir", tmp_path / "out"]
    code, _, err = _detect(base, capsys)
    assert "scene.npy" in _error_line(code, err) and "--wavelengths FILE" in err
    (tmp_path / "scene_wl.txt").write_text("\n".join(str(v) for v in np.linspace(400, 1000, 12)))
    (tmp_path / "model_wl.txt").write_text("\n".join(str(v) for v in np.linspace(450, 1100, 8)))
    code, _, err = _detect([*base, "--wavelengths", tmp_path / "scene_wl.txt"], capsys)
    assert "--model_wavelengths FILE" in _error_line(code, err)
    code, _, err = _detect([*base, "--wavelengths", tmp_path / "scene_wl.txt", "--model_wavelengths",
                            tmp_path / "model_wl.txt"], capsys)
    assert "lie more than 10 nm outside (1100 nm)" in _error_line(code, err)
    assert not (tmp_path / "out").exists()


def test_detector_detect_takes_band_policy_and_wavelengths():
    """Plain RX through the public API: the wavelength policy equals RX of the np.interp-resampled cube."""
    rng = np.random.default_rng(6)
    cube = rng.random((24, 20, 16))
    scene_wl, model_wl = np.linspace(400, 1900, 16), np.linspace(410, 1880, 10)
    detector = fers.Detector(10, model_wavelengths=model_wl)
    scores = detector.detect(cube, band_policy="wavelength", wavelengths=scene_wl)
    expected = fers.rx_scores(_interp_reference(cube, scene_wl, model_wl))
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9 * expected.max())
    chosen = fers.select_bands(cube, 10, "std")[0]
    np.testing.assert_allclose(detector.detect(cube, band_policy="std"), fers.rx_scores(chosen), rtol=1e-9)


# --------------------------------------------------------------------------- plain RX = global RX


def _numpy_rx(cube):
    pixels = _pixels(cube)
    centred = pixels - pixels.mean(0)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, inverse, centred).reshape(cube.shape[:2])


@needs_abu
def test_plain_rx_defaults_to_global_rx(tmp_path, capsys):
    scene = ABU_DIR / "abu-airport-1.mat"
    contents = scipy.io.loadmat(scene)
    mask = contents["map"] != 0
    expected = _numpy_rx(contents["data"][:, :, :200])
    code, out, err = _detect([scene, "--branches", "none", "--save_dir", tmp_path / "global"], capsys)
    assert code == 0, err
    scores = np.load(tmp_path / "global" / "abu-airport-1_scores.npy")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-7 * expected.max())  # rounding, not tiles
    payload = json.loads((tmp_path / "global" / "results.json").read_text())
    assert payload["config"]["background"] == "global" and "global RX background" in out
    published = json.loads((REFERENCE_DIR / "abu-rx-reference.json").read_text())["abu-airport-1"]
    assert_matches_published(payload["scenes"][0]["auc"], published["rx_auc_first200"], scores, mask)
    # per-tile RX stays available by the explicit flag, and is not the same map
    code, _, err = _detect([scene, "--branches", "none", "--background", "tile", "--save_dir", tmp_path / "tile"],
                           capsys)
    assert code == 0, err
    tiled = np.load(tmp_path / "tile" / "abu-airport-1_scores.npy")
    assert np.corrcoef(tiled.ravel(), expected.ravel())[0, 1] < 0.99


# --------------------------------------------------------------------------- heat maps


def _map_pixels(path, shape):
    """The drawn map of a heat-map PNG, one pixel per scene pixel (top-left of each enlarged block)."""
    from fers.report import heatmap_layout

    layout = heatmap_layout(*shape)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert (image.shape[1], image.shape[0]) == layout["size"]
    left, top, width, height = layout["map"]
    step = layout["enlarge"]
    return image[top:top + height:step, left:left + width:step], layout


def test_heatmap_is_drawn_at_the_scene_resolution_with_a_percentile_scale(tmp_path):
    import matplotlib

    from fers.report import save_heatmap

    rng = np.random.default_rng(7)
    scores = rng.random((60, 90))
    scores[10, 20] = 1e9  # one huge outlier must not turn the rest black
    save_heatmap(tmp_path / "small.png", scores, "small")
    drawn, layout = _map_pixels(tmp_path / "small.png", scores.shape)
    assert layout["enlarge"] == 512 // 90 and layout["map"][2:] == (90 * 5, 60 * 5)
    low, high = np.percentile(scores, [1, 99])
    expected = matplotlib.colormaps["inferno"](np.clip((scores - low) / (high - low), 0, 1), bytes=True)[..., :3]
    np.testing.assert_array_equal(drawn, expected)
    assert np.median(drawn.astype(float).sum(2)) > 150  # mid-scale colours, not black
    # a 1008 × 1200 scene: one image pixel per scene pixel (no longer ~500 px wide)
    large = rng.random((1008, 1200))
    save_heatmap(tmp_path / "large.png", large, "large")
    drawn, layout = _map_pixels(tmp_path / "large.png", large.shape)
    assert layout["enlarge"] == 1 and drawn.shape[:2] == (1008, 1200) and layout["size"][0] >= 1200


def _module_level_imports(tree):
    """Modules imported when a file is imported: import statements outside functions and classes."""
    import ast

    pending, names = list(tree.body), set()
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return names


def test_matplotlib_is_imported_only_to_draw():
    import ast
    from pathlib import Path

    package = Path(fers.__file__).parent
    eager = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
             if any(name.split(".")[0] == "matplotlib" for name in _module_level_imports(ast.parse(path.read_text())))]
    assert eager == []  # only inside the functions that draw
