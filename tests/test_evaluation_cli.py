"""End to end: test.py on a HAD100 layout and FERS_ABU/test.py on ABU, with checkpoints the tests make."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import scipy.io

from conftest import ABU_DIR, REPO_ROOT, needs_abu, run_script
from fers.checkpoints import band_folder, save_fen
from fers.fen import FEN
from fers.io import save_mask_png


def test_had100_test_py_end_to_end(had100_layout, random_checkpoints, tmp_path):
    save_dir = tmp_path / "out"
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        random_checkpoints, "--save_dir", save_dir, "--device", "cpu", "--batch_size", 2)
    assert result.returncode == 0, result.stderr
    assert "mean AUC" in result.stdout
    lines = (save_dir / "each_auc.txt").read_text().splitlines()
    names = [line.split(":")[0] for line in lines]
    aucs = [float(line.split(":")[1]) for line in lines]
    assert names == ["scene0", "scene1", "scene2"]
    assert (save_dir / "test_list.txt").read_text().split() == names
    assert all(0.0 <= value <= 1.0 for value in aucs)
    payload = json.loads((save_dir / "results.json").read_text())
    assert [row["name"] for row in payload["scenes"]] == names
    np.testing.assert_allclose([row["auc"] for row in payload["scenes"]], aucs)
    assert payload["mean_auc"] == pytest.approx(np.mean(aucs))
    assert payload["scenes_covered"] == 3
    assert payload["config"]["fusion"] == "product" and payload["config"]["rx_precision"] == "float32"
    assert payload["versions"]["torch"]
    manifest = {entry["name"]: entry for entry in payload["data_manifest"]}
    cube_path = had100_layout / "test" / "aviris_ng" / "scene1.npy"
    assert manifest["scene1"]["cube_sha256"] == hashlib.sha256(cube_path.read_bytes()).hexdigest()
    assert manifest["scene1"]["ground_truth"].endswith("scene1.png")
    scores = scipy.io.loadmat(save_dir / "scores.mat")["scores"]
    gts = scipy.io.loadmat(save_dir / "gts.mat")["gts"]
    assert scores.shape == gts.shape == (3, 64, 64)
    assert gts[0].sum() == 9
    assert "mean" in (save_dir / "results.csv").read_text().splitlines()[-1]
    assert not list(save_dir.glob(".partial-*"))


def test_rx_precision_float64_is_recorded(had100_layout, random_checkpoints, tmp_path):
    save_dir = tmp_path / "out64"
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        random_checkpoints, "--save_dir", save_dir, "--rx_precision", "float64",
                        "--branches", "spectral", "--no_progress")
    assert result.returncode == 0, result.stderr
    config = json.loads((save_dir / "results.json").read_text())["config"]
    assert config["rx_precision"] == "float64" and config["branches"] == "spectral"
    assert config["fusion"] == "none"  # one branch: RX(x + spectral), no fusion


def test_spectral_branch_needs_only_stage1_files(had100_layout, tmp_path):
    checkpoints = tmp_path / "released"
    save_fen(band_folder(checkpoints, 50), FEN(50))
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        checkpoints, "--save_dir", tmp_path / "o", "--branches", "spectral", "--no_progress")
    assert result.returncode == 0, result.stderr
    both = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                      checkpoints, "--save_dir", tmp_path / "o2", "--no_progress")
    assert both.returncode == 2
    assert "spa_fen.pt: checkpoint not found" in both.stderr


@needs_abu
def test_fers_abu_spectral_reports_13_aucs_from_its_own_folder(random_checkpoints, tmp_path):
    save_dir = tmp_path / "abu"
    result = run_script("FERS_ABU/test.py", "--data_path", ABU_DIR, "--checkpoint_dir", random_checkpoints,
                        "--branches", "spectral", "--save_dir", save_dir, "--no_progress",
                        cwd=REPO_ROOT / "FERS_ABU")
    assert result.returncode == 0, result.stderr
    lines = (save_dir / "each_auc.txt").read_text().splitlines()
    assert len(lines) == 13
    assert all(0.5 < float(line.split(":")[1]) <= 1.0 for line in lines)
    rows = json.loads((save_dir / "results.json").read_text())["scenes"]
    bands = {row["name"]: row["bands"] for row in rows}
    assert bands["abu-beach-4"] == "102 bands linearly interpolated to 200"
    assert bands["abu-airport-1"] == "first 200 of 205 bands"
    assert "mean AUC" in result.stdout and "over 13 of 13 scenes" in result.stdout


@needs_abu
def test_fers_abu_autoencoder_label_free_and_oracle(random_checkpoints, tmp_path):
    data = tmp_path / "abu"
    data.mkdir()
    shutil.copy(ABU_DIR / "abu-beach-3.mat", data)
    free = run_script("FERS_ABU/test.py", "--data_path", data, "--checkpoint_dir", random_checkpoints,
                      "--detect", "AE", "--ae_steps", 5, "--save_dir", tmp_path / "ae", "--no_progress")
    assert free.returncode == 0, free.stderr
    payload = json.loads((tmp_path / "ae" / "results.json").read_text())
    assert payload["oracle"] is False and payload["scenes"][0]["ae_step"] == 5
    oracle = run_script("FERS_ABU/test.py", "--data_path", data, "--checkpoint_dir", random_checkpoints,
                        "--detect", "AE", "--ae_steps", 5, "--ae_select", "oracle", "--save_dir",
                        tmp_path / "oracle", "--no_progress")
    assert oracle.returncode == 0, oracle.stderr
    assert "ORACLE" in oracle.stdout
    payload = json.loads((tmp_path / "oracle" / "results.json").read_text())
    assert payload["oracle"] is True and "ORACLE" in payload["warning"]
    assert "ORACLE" in (tmp_path / "oracle" / "each_auc.txt").read_text()


def test_scene_without_anomaly_is_nan_and_left_out_of_the_mean(had100_layout, random_checkpoints, tmp_path):
    save_mask_png(had100_layout / "ground_truth" / "aviris_ng" / "scene1.png", np.zeros((64, 64), bool))
    save_dir = tmp_path / "nan"
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        random_checkpoints, "--save_dir", save_dir, "--branches", "spectral", "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "no anomaly pixel" in result.stdout
    assert "over 2 of 3 scenes" in result.stdout
    payload = json.loads((save_dir / "results.json").read_text())
    assert payload["scenes_covered"] == 2
    assert np.isnan(payload["scenes"][1]["auc"])
    assert payload["mean_auc"] == pytest.approx(np.mean([payload["scenes"][0]["auc"], payload["scenes"][2]["auc"]]))
