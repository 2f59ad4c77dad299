"""Visual reports (``fers.report``) and the baseline harness (``compare.py``)."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from conftest import ABU_DIR, REFERENCE_DIR, assert_matches_published, needs_abu, needs_reference, run_script
from fers import report
from fers.datasets import had100_manifest
from fers.detectors import rx_scores
from fers.evaluation import Detector, evaluate
from fers.fen import FEN


def test_false_colour_stretches_the_chosen_bands():
    rng = np.random.default_rng(0)
    cube = rng.gamma(2.0, size=(30, 40, 100))
    rgb = report.false_colour(cube)
    assert rgb.shape == (30, 40, 3) and rgb.min() == 0.0 and rgb.max() == 1.0
    for channel, band in enumerate((21, 12, 7)):  # round(fraction · 99)
        values = cube[:, :, band]
        low, high = np.percentile(values, [2, 98])
        np.testing.assert_allclose(rgb[:, :, channel], np.clip((values - low) / (high - low), 0, 1))


def test_roc_on_grid_takes_the_best_rate_at_or_below_each_false_alarm():
    # Background {0, 1, 2, 3}, targets {2.5, 4}: (F, D) = (0, .5) at s ≥ 4, (.25, 1) at s ≥ 2.5.
    scores = np.array([0.0, 1.0, 2.0, 3.0, 2.5, 4.0])
    mask = np.array([False, False, False, False, True, True])
    rates = report._roc_on_grid(scores, mask, np.array([0.1, 0.25, 0.3, 1.0]))
    np.testing.assert_allclose(rates, [0.5, 1.0, 1.0, 1.0])


def test_box_plot_values_are_scaled_and_split():
    scores = np.arange(10.0)
    mask = np.zeros(10, bool)
    mask[[3, 9]] = True
    anomaly, background = report._separated(scores, mask)
    np.testing.assert_allclose(anomaly, [3 / 9, 1.0])
    np.testing.assert_allclose(background, np.delete(scores, [3, 9]) / 9)


def _png_size(path):
    with Image.open(path) as image:
        return image.size


def test_write_report_of_an_evaluation(tmp_path, had100_layout):
    scenes = had100_manifest(had100_layout)
    detector = Detector(60, fen=FEN(60), rx_precision="float64")
    evaluation = evaluate(detector, scenes, progress=False, log=lambda *_: None)
    args = argparse.Namespace(input_channel=60, band_policy="interp")
    folder = report.write_report(tmp_path, scenes, evaluation, args)
    assert folder == tmp_path / "report"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["background_suppression.png", "roc_curves.png", "scene0.png", "scene1.png", "scene2.png"]
    width, height = _png_size(folder / "scene0.png")
    assert width > 3 * height  # composite, ground truth, RX and FERD side by side
    assert not list(tmp_path.glob("report/.*"))  # no temporary files left


def test_heatmap_is_written_atomically(tmp_path):
    report.save_heatmap(tmp_path / "map.png", np.random.default_rng(0).random((50, 120)), "a map")
    assert _png_size(tmp_path / "map.png")[0] > _png_size(tmp_path / "map.png")[1]
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_compare_skips_methods_without_checkpoints(tmp_path, had100_layout, capsys):
    from fers.cli.compare import main

    assert main(["--data_path", str(had100_layout), "--layout", "had100", "--input_channel", "60",
                 "--methods", "grx,ferd", "--checkpoint_dir", str(tmp_path / "none"),
                 "--save_dir", str(tmp_path / "out"), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "note: skipping FERD" in out and "convh.pt" in out and "not found" in out
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert payload["skipped"] == {"ferd": "checkpoints missing"} and payload["config"]["methods"] == ["grx"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_path", str(had100_layout), "--layout", "had100", "--input_channel", "60",
              "--methods", "fers", "--checkpoint_dir", str(tmp_path / "none"), "--save_dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "no method can run" in capsys.readouterr().err


@needs_abu
@needs_reference
def test_compare_on_abu_scenes_prints_the_table_and_writes_pngs(tmp_path, random_checkpoints):
    folder = tmp_path / "abu"
    folder.mkdir()
    for name in ("abu-airport-1", "abu-beach-3"):
        (folder / f"{name}.mat").symlink_to(ABU_DIR / f"{name}.mat")
    result = run_script("compare.py", "--data_path", folder, "--checkpoint_dir", random_checkpoints,
                        "--save_dir", tmp_path / "out", "--report", "--no_progress")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scene"))
    assert header.split()[:5] == ["scene", "method", "auc", "auc_dtau", "auc_ftau"] and "snpr_db" in header
    for method in ("GRX", "LRX", "FERD", "FERS"):
        assert sum(line.split()[:2] == ["abu-airport-1", method] for line in lines) == 1
        assert any(line.startswith("mean (2)") and line.split()[2] == method for line in lines)
    rows = list(csv.DictReader((tmp_path / "out" / "comparison.csv").open()))
    assert len(rows) == 2 * 4 + 4
    grx = next(r for r in rows if r["scene"] == "abu-airport-1" and r["method"] == "grx")
    expected = json.loads((REFERENCE_DIR / "abu-rx-reference.json").read_text())["abu-airport-1"]
    scene = scipy.io.loadmat(ABU_DIR / "abu-airport-1.mat")  # 200 bands, float64 RX
    scores = rx_scores(torch.from_numpy(np.moveaxis(scene["data"][:, :, :200].astype(np.float64), 2, 0))[None])[0]
    assert_matches_published(float(grx["auc"]), expected["rx_auc_first200"], scores.numpy(), scene["map"] != 0)
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert payload["means"]["lrx"]["scenes_covered"] == 2 and payload["skipped"] == {}
    pngs = sorted(p.name for p in (tmp_path / "out" / "report").glob("*.png"))
    assert pngs == ["abu-airport-1.png", "abu-beach-3.png", "background_suppression.png", "roc_curves.png"]
    width, height = _png_size(tmp_path / "out" / "report" / "abu-beach-3.png")
    assert width > 4 * height  # composite, ground truth and four maps in one row


def _local_rx_brute_force(cube, inner, outer, ridge, components):
    """Per-pixel loops: each pixel against the ring's mean and ``np.cov``, on the first
    ``components`` principal components of the [0, 1]-scaled cube."""
    c, h, w = cube.shape
    pixels = cube.reshape(c, -1).T.astype(np.float64)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    if components:
        centred = pixels - pixels.mean(0)
        _, vectors = np.linalg.eigh(np.cov(centred, rowvar=False))
        pixels = centred @ vectors[:, ::-1][:, :components]
    k = pixels.shape[1]
    image = pixels.reshape(h, w, k)
    big, small = outer // 2, inner // 2
    scores = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            ring = np.array([image[a, b] for a in range(max(0, i - big), min(h, i + big + 1))
                             for b in range(max(0, j - big), min(w, j + big + 1))
                             if abs(a - i) > small or abs(b - j) > small])
            covariance = np.cov(ring, rowvar=False)
            covariance += ridge * np.trace(covariance) / k * np.eye(k)
            difference = image[i, j] - ring.mean(0)
            scores[i, j] = difference @ np.linalg.solve(covariance, difference)
    return scores


@pytest.mark.parametrize("components", [None, 3])
def test_local_rx_equals_a_brute_force_ring_computation(components):
    import torch

    from fers.detectors import local_rx_scores

    cube = np.random.default_rng(6).standard_normal((6, 12, 13))
    expected = _local_rx_brute_force(cube, 3, 7, 1e-6, components)
    for memory_mb in (0, 256):  # strips of one row, and the whole scene at once
        scores = local_rx_scores(torch.from_numpy(cube), 3, 7, components=components, memory_mb=memory_mb)
        assert scores.shape == (12, 13)
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
