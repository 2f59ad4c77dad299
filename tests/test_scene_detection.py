"""Tiled detection (``fers.scene_detection``) and ``detect.py``: chunked preparation equals the
reference preparation, tiles cover and blend to one, stitching reassembles maps exactly, a
constant background gives a flat map without seams, a tile covering the scene reproduces
``FERS_ABU/test.py``, bad inputs exit 2, and the peak-memory measurement works."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import scipy.io
import torch

from conftest import ABU_DIR, REPO_ROOT, needs_abu, run_script
from fers import scene_detection
from fers.detectors import rx_scores
from fers.errors import FersError
from fers.evaluation import Detector
from fers.preprocessing import prepare_cube, to_chw
from fers.scene_detection import (TileGrid, blend_weights, detect_scene, global_rx_scores,
                                  robust_standardise, tile_starts)

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so the chunked code paths really iterate on small test cubes."""
    monkeypatch.setattr(scene_detection, "CHUNK_BYTES", 4000)


@pytest.mark.parametrize("policy, channels", [("first", 20), ("interp", 45)])
def test_chunked_preparation_equals_prepare_cube_whole(small_chunks, policy, channels):
    cube = (np.random.default_rng(0).random((23, 17, 30)) * 900 + 100).astype(np.float32)
    prepared, description = prepare_cube(cube, channels, policy, "scene", chunk_bytes=scene_detection.CHUNK_BYTES)
    expected, expected_description = prepare_cube(cube, channels, policy, "scene")
    np.testing.assert_array_equal(prepared, expected)
    assert description == expected_description and prepared.dtype == np.float32


def test_chunked_preparation_rejects_bad_values(small_chunks):
    cube = np.random.default_rng(0).random((20, 10, 8)).astype(np.float32)
    cube[15, 3, 2] = np.nan
    with pytest.raises(FersError, match="1 pixel.*NaN"):
        prepare_cube(cube, 8, "first", "scene.npy", chunk_bytes=scene_detection.CHUNK_BYTES)
    cube[15, 3, 2] = -9999.0
    with pytest.raises(FersError, match="no-data"):
        prepare_cube(cube, 8, "first", "scene.npy", chunk_bytes=scene_detection.CHUNK_BYTES)
    with pytest.raises(FersError, match="constant"):
        prepare_cube(np.ones((20, 10, 8), np.float32), 8, "first", "scene.npy", chunk_bytes=scene_detection.CHUNK_BYTES)


@pytest.mark.parametrize("size, tile, overlap", [(100, 64, 16), (1000, 64, 16), (64, 64, 16), (65, 64, 16),
                                                 (300, 50, 0), (130, 32, 31), (20, 64, 16)])
def test_tiles_cover_the_scene_with_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size)
    assert starts[0] == 0 and starts[-1] + length == size and starts == sorted(set(starts))
    assert all(a + length - b >= overlap for a, b in zip(starts, starts[1:]))
    total = np.zeros(size)
    for start, weight in zip(starts, blend_weights(starts, length)):
        total[start:start + length] += weight
        assert weight.min() >= 0 and weight.max() <= 1
    assert total.min() >= 1 - 1e-12  # every pixel gets weight
    if len(starts) > 1 and all(a + length - b <= length // 2 for a, b in zip(starts, starts[1:])):
        np.testing.assert_allclose(total, 1.0, atol=1e-12)  # a partition of unity


def test_blend_weights_fade_smoothly_and_skip_the_tile_edge():
    starts = tile_starts(112, 64, 16)  # two tiles overlapping by exactly 16
    assert starts == [0, 48]
    first, second = blend_weights(starts, 64)
    np.testing.assert_array_equal(first[:52], 1.0)  # the first quarter of the overlap is all first tile
    np.testing.assert_array_equal(first[60:], 0.0)  # the last 4 pixels before its edge are not used
    np.testing.assert_allclose(first[48:] + second[:16], 1.0, atol=1e-15)
    assert np.abs(np.diff(first)).max() < 0.25  # a fade over 8 pixels, no step


def test_stitching_reassembles_a_map_exactly(monkeypatch):
    """With identical tile maps (here: the first band of each tile) and no standardisation,
    blending must give back the scene's own map: weights and placements are right."""
    monkeypatch.setattr(scene_detection, "robust_standardise", lambda maps: maps)

    class FirstBand:
        channels, device, branches = 4, torch.device("cpu"), "none"

        def score(self, cubes):
            return cubes[:, 0]

    cube = np.random.default_rng(1).random((150, 97, 4)).astype(np.float32)
    stitched = detect_scene(FirstBand(), cube, tile=32, overlap=12, background="tile", progress=False)
    np.testing.assert_allclose(stitched, cube[:, :, 0], rtol=1e-6)


def test_global_background_blends_features_into_one_rx(small_chunks):
    """Features 2·x per tile, blended: the enhanced scene is 3·x, and RX is scale-free, so the map
    equals global RX of the scene; plain RX (no branch) likewise."""

    class Doubling(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    cube = np.random.default_rng(2).random((70, 90, 12)).astype(np.float32)
    expected = rx_scores(torch.from_numpy(to_chw(cube))[None].double(), "float64")[0].numpy()
    for detector in (Detector(12, fen=Doubling(), rx_precision="float64"), Detector(12, rx_precision="float64")):
        scores = detect_scene(detector, cube, tile=32, overlap=8, background="global", progress=False)
        np.testing.assert_allclose(scores, expected, rtol=1e-4)


@pytest.mark.parametrize("precision, rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_chunked_global_rx_equals_rx_scores(small_chunks, precision, rtol):
    cube = np.random.default_rng(4).random((41, 23, 15)).astype(np.float32)
    expected = rx_scores(torch.from_numpy(to_chw(cube))[None], precision)[0].double().numpy()
    np.testing.assert_allclose(global_rx_scores(cube, precision), expected, rtol=rtol)


def test_robust_standardise_hand_case():
    maps = np.array([[[1.0, 2.0, 3.0], [4.0, 100.0, 5.0]]])  # median 3.5, MAD 1.5 (100 ignored)
    np.testing.assert_allclose(robust_standardise(maps), (maps - 3.5) / (1.4826 * 1.5))
    np.testing.assert_array_equal(robust_standardise(np.full((1, 3, 3), 7.0)), 0.0)


def _constant_background(size=160, bands=200, seed=0):
    rng = np.random.default_rng(seed)
    spectrum = rng.uniform(0.2, 1.0, bands)
    cube = (spectrum + 0.01 * rng.standard_normal((size, size, bands))).astype(np.float32)
    return prepare_cube(cube, bands, "first", "background", chunk_bytes=scene_detection.CHUNK_BYTES)[0]


def _seam_jumps(scores, grid: TileGrid):
    """Jumps of the column means at tile edges, and the largest of all other jumps (the noise)."""
    jumps = np.abs(np.diff(scores.mean(0)))
    edges = sorted({start for start in grid.col_starts[1:]} | {start + grid.tile_cols for start in grid.col_starts[:-1]})
    border = jumps[[edge - 1 for edge in edges]]
    other = np.delete(jumps, [edge - 1 for edge in edges])
    return border, other.max()


@pytest.mark.parametrize("branches", ["none", "spectral"])
@pytest.mark.parametrize("background", ["tile", "global"])
def test_constant_background_gives_a_flat_map_without_seams(random_checkpoints, branches, background):
    cube = _constant_background()
    detector = Detector.from_checkpoints(random_checkpoints, 200, branches)
    grid = TileGrid(160, 160, 64, 16)
    assert len(grid) == 9
    scores = detect_scene(detector, cube, 64, 16, background, progress=False)
    blocks = scores.reshape(10, 16, 10, 16).mean((1, 3))
    if background == "global":  # RX distances: mean ≈ number of bands, blocks within 2 %
        assert blocks.std() < 0.02 * scores.mean()
    else:  # robust z-scores: background median 0, spread 1; blocks agree within 0.15 σ
        assert abs(np.median(scores)) < 0.1 and 0.8 < scores.std() < 1.2
        assert blocks.std() < 0.15
    for transposed in (scores, scores.T):
        border, typical = _seam_jumps(transposed, grid)
        assert border.max() <= typical, f"seam at a tile edge: {border} vs typical jump {typical}"


def test_moderately_large_scene_tiled(random_checkpoints):
    """192×192×200 (16 tiles) through both branches: every pixel scored, finite, and the implanted
    anomalies stand out. The 1000×1000×200 run is benchmarks/large_scene.py."""
    rng = np.random.default_rng(7)
    endmembers = rng.uniform(0.1, 1.0, (3, 200))
    abundances = rng.dirichlet(np.ones(3), size=(192, 192))
    cube = abundances @ endmembers + 0.01 * rng.standard_normal((192, 192, 200))
    mask = np.zeros((192, 192), bool)
    for row, col in [(20, 30), (100, 170), (150, 60), (185, 185), (60, 130)]:
        mask[row:row + 3, col:col + 3] = True
    cube[mask] = 0.6 * cube[mask] + 0.4 * rng.uniform(0.1, 1.0, 200)
    prepared, _ = prepare_cube(cube.astype(np.float32), 200, "first", "synthetic",
                               chunk_bytes=scene_detection.CHUNK_BYTES)
    detector = Detector.from_checkpoints(random_checkpoints, 200, "both")
    scores = detect_scene(detector, prepared, 64, 16, "tile", batch_size=16, progress=False)
    assert scores.shape == (192, 192) and np.isfinite(scores).all()
    from fers.metrics import auc

    assert auc(scores, mask) > 0.95


def test_peak_memory_measurement(tmp_path):
    """The benchmark's measurement on a small scene: detect.py's own peak RSS, plausibly sized."""
    import large_scene

    output = tmp_path / "large.json"
    assert large_scene.main(["--size", "96", "--bands", "50", "--branches", "none", "--output", str(output),
                             "--work_dir", str(tmp_path)]) == 0
    rows = json.loads(output.read_text())["rows"]
    assert [row["background"] for row in rows] == ["tile", "global"]
    for row in rows:
        assert 50 < row["peak_rss_mib"] < 4096  # at least the interpreter and NumPy, under the limit
        assert row["tiles"] == 4 and row["auc"] > 0.9
    # The measurement sees the child's own allocations (300 MB more: at least 250 MiB more), and
    # not this test process's memory (pytest with PyTorch loaded is far above 200 MiB).
    small = large_scene.run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(2**20)"])
    large = large_scene.run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(300 * 2**17)"])
    assert small["returncode"] == 0 and small["peak_rss_mib"] < 200
    assert large["peak_rss_mib"] - small["peak_rss_mib"] > 250


@needs_abu
def test_tile_covering_the_scene_reproduces_fers_abu(tmp_path, random_checkpoints):
    scene = ABU_DIR / "abu-beach-3.mat"
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / scene.name).symlink_to(scene)
    reference = run_script("FERS_ABU/test.py", "--data_path", folder, "--checkpoint_dir", random_checkpoints,
                           "--save_dir", tmp_path / "abu", "--no_progress")
    assert reference.returncode == 0, reference.stderr
    detected = run_script("detect.py", scene, "--checkpoint_dir", random_checkpoints, "--tile", 100,
                          "--save_dir", tmp_path / "detect", "--no_progress")
    assert detected.returncode == 0, detected.stderr
    expected_map = scipy.io.loadmat(tmp_path / "abu" / "scores.mat")["scores"][0]
    scores = np.load(tmp_path / "detect" / "abu-beach-3_scores.npy")
    np.testing.assert_allclose(scores, expected_map, rtol=1e-6, atol=0)
    np.testing.assert_allclose(scipy.io.loadmat(tmp_path / "detect" / "abu-beach-3_scores.mat")["scores"], scores)
    expected_auc = json.loads((tmp_path / "abu" / "results.json").read_text())["scenes"][0]["auc"]
    row = json.loads((tmp_path / "detect" / "results.json").read_text())["scenes"][0]
    assert row["auc"] == pytest.approx(expected_auc, abs=1e-9) and row["tiles"] == 1
    assert (tmp_path / "detect" / "abu-beach-3_scores.png").stat().st_size > 1000
    assert "auc_dtau" in (tmp_path / "detect" / "results.csv").read_text().splitlines()[0]


def test_detect_cli_npy_with_png_gt_and_plain_rx(tmp_path):
    from fers.io import save_mask_png

    rng = np.random.default_rng(8)
    cube = rng.random((70, 80, 30)).astype(np.float32)
    mask = np.zeros((70, 80), bool)
    mask[30:33, 40:43] = True
    cube[mask] += 2.0
    np.save(tmp_path / "scene.npy", cube)
    save_mask_png(tmp_path / "gt.png", mask)
    result = run_script("detect.py", tmp_path / "scene.npy", "--gt", tmp_path / "gt.png", "--branches", "none",
                        "--input_channel", 30, "--tile", 32, "--overlap", 8, "--save_dir", tmp_path / "out",
                        "--adaptive")
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]
    assert row["auc"] > 0.99 and row["tiles"] == 9 and "adaptive_auc_dtau" in row  # 3 × 3 tiles of 32
    assert np.load(tmp_path / "out" / "scene_scores.npy").shape == (70, 80)


def _bad_inputs(tmp_path):
    (tmp_path / "scene.xyz").write_bytes(b"II*\x00")  # .tif is a GeoTIFF cube now
    scipy.io.savemat(tmp_path / "flat.mat", {"map": np.zeros((5, 5)), "labels": np.arange(4)})
    rng = np.random.default_rng(0)
    scipy.io.savemat(tmp_path / "scene.mat", {"data": rng.random((20, 20, 10)), "map": np.zeros((20, 20))})
    np.save(tmp_path / "gt_small.npy", np.zeros((10, 20), bool))
    (tmp_path / "envi.hdr").write_text("ENVI\nsamples = 20\nlines = 20\nbands = 10\ndata type = 4\n"
                                       "interleave = bsq\nbyte order = 0\n")
    return {
        "unknown file type": ([tmp_path / "scene.xyz"], "unknown file type"),
        ".mat without a 3-D array": ([tmp_path / "flat.mat"], "cannot tell which variable is the cube"),
        "gt of another size": ([tmp_path / "scene.mat", "--gt", tmp_path / "gt_small.npy"], "10×20 but the scene"),
        "ENVI header without data": ([tmp_path / "envi.hdr"], "ENVI header without its data file"),
    }


def test_detect_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    from fers.cli.detect import main

    for case, (arguments, message) in _bad_inputs(tmp_path).items():
        with pytest.raises(SystemExit) as exit_info:
            main([*map(str, arguments), "--branches", "none", "--input_channel", "10",
                  "--save_dir", str(tmp_path / "out"), "--no_progress"])
        assert exit_info.value.code == 2, case
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, lines)
        assert not (tmp_path / "out" / "results.json").exists()
