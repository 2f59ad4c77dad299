"""Training of both stages: losses fall on real crops, frozen parts stay frozen, the exported
checkpoints work in test.py, kill-and-resume is bitwise exact, bad input exits 2 with one line.

Small configurations only (ResNet-18 teacher, 32×32 crops, random init, 1-3 epochs): the
point is the machinery, not the detector's quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import BACKGROUND_DIR, REPO_ROOT, needs_background, run_script
from fers.checkpoints import band_folder, read_checkpoint, save_fen
from fers.cli.train import main, stage1_main, stage2_main
from fers.fen import FEN
from fers.io import load_cube
from fers.training import REFERENCE, Stage1, Stage2
from fers.training_data import load_training_data

SMALL = ["--img_size", "32", "--backbone", "resnet18", "--no_pretrained", "--no_progress", "--device", "cpu"]


def _optimizer(parameters):
    return torch.optim.Adam(parameters, lr=REFERENCE["lr"], betas=REFERENCE["betas"])


def _losses_over_steps(stage, x, steps=4):
    optimizer = _optimizer(stage.trainable_parameters())
    stage.train_mode()
    values = []
    for _ in range(steps):
        optimizer.zero_grad()
        total, _ = stage.loss(x)
        total.backward()
        optimizer.step()
        values.append(total.item())
    return values


@pytest.fixture(scope="module")
def background_crops():
    if not BACKGROUND_DIR.is_dir():
        pytest.skip(f"real background scenes not found at {BACKGROUND_DIR}")
    data = load_training_data(BACKGROUND_DIR, 50, img_size=32, crop="tile", seed=0)
    return torch.from_numpy(data.crops)


@needs_background
def test_stage1_loss_falls_on_real_crops(background_crops):
    assert background_crops.shape == (14, 50, 32, 32)  # 2×2 + 3×3 + 1×1 tiles of the three scenes
    torch.manual_seed(0)
    stage = Stage1(50, "resnet18", "cpu", pretrained=False)
    values = _losses_over_steps(stage, background_crops[:2], steps=3)
    assert values[-1] < 0.8 * values[0], values


@needs_background
def test_stage2_loss_falls_on_real_crops(background_crops):
    torch.manual_seed(0)
    stage = Stage2(50, FEN(50, "resnet18"), "cpu", pretrained=False)
    values = _losses_over_steps(stage, background_crops[:2], steps=3)
    assert values[-1] < 0.8 * values[0], values


def _snapshot(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def _assert_identical(before, after):
    for old, new in zip(before, after):
        assert old.keys() == new.keys()
        for key in old:
            assert torch.equal(old[key], new[key]), key


def test_one_step_leaves_teacher_weights_and_batchnorm_statistics_bit_identical():
    torch.manual_seed(0)
    stage = Stage1(8, "resnet18", "cpu", pretrained=False)
    teacher = stage.net.frozen_modules()
    before = _snapshot(*teacher)
    convh_before = stage.net.fen.convh.convh.weight.clone()
    frozen_ids = {id(p) for m in teacher for p in m.parameters()}
    assert not frozen_ids & {id(p) for p in stage.trainable_parameters()}
    _losses_over_steps(stage, torch.randn(2, 8, 16, 16), steps=1)
    _assert_identical(before, _snapshot(*teacher))
    assert all(not m.training for m in teacher)
    assert not torch.equal(convh_before, stage.net.fen.convh.convh.weight)  # the student side did learn


@pytest.mark.parametrize("spatial_bn", ["eval", "train"])
def test_stage2_keeps_fen_and_resnet34_frozen(spatial_bn):
    torch.manual_seed(0)
    stage = Stage2(8, FEN(8, "resnet18"), "cpu", spatial_bn=spatial_bn, pretrained=False)
    fen_before, resnet_before = _snapshot(stage.fen, stage.spatial.get_features)
    _losses_over_steps(stage, torch.randn(2, 8, 16, 16), steps=1)
    fen_after, resnet_after = _snapshot(stage.fen, stage.spatial.get_features)
    _assert_identical([fen_before], [fen_after])
    weights = {k: v for k, v in resnet_before.items() if "running" not in k and "num_batches" not in k}
    _assert_identical([weights], [{k: resnet_after[k] for k in weights}])
    drifted = not torch.equal(resnet_before["1.running_mean"], resnet_after["1.running_mean"])
    assert drifted == (spatial_bn == "train")  # reference mode: BN statistics drift; default: kept


@needs_background
def test_train_both_stages_then_detect_with_test_py(tmp_path, had100_layout):
    """HAD100 layout: the real background scenes as train/aviris_ng/*.npy beside the fixture's test set,
    trained with the reference's test-set selection, then evaluated by test.py."""
    train = had100_layout / "train" / "aviris_ng"
    train.mkdir(parents=True)
    for path in sorted(BACKGROUND_DIR.glob("*.mat")):
        np.save(train / f"{path.stem}.npy", np.ascontiguousarray(load_cube(path)[:, :, :60]))
    checkpoints = tmp_path / "checkpoints"
    result = run_script("train.py", "--stage", "all", "--data_path", had100_layout, "--input_channel", 50,
                        "--epochs", 1, "--batch_size", 3, "--crop", "random", "--crops_per_scene", 2,
                        "--select_on_test", "--checkpoint_dir", checkpoints, "--run_dir", tmp_path / "run", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "ON TEST LABELS" in result.stdout
    folder = band_folder(checkpoints, 50)
    assert sorted(p.name for p in folder.iterdir()) == ["convh.pt", "enc.pt", "pc.pt", "restoration.pt",
                                                        "spa_fen.pt"]
    for name in ("enc.pt", "spa_fen.pt"):
        training = read_checkpoint(folder / name)["config"]["training"]
        assert training["selection"] == "test_auc" and training["selection_uses_test_labels"] is True
    assert read_checkpoint(folder / "enc.pt")["config"]["backbone"] == "resnet18"
    for stage in ("stage1", "stage2"):
        run = tmp_path / "run" / stage
        config = json.loads((run / "config.json").read_text())
        assert config["stage"] == stage and config["seed"] == 0
        assert config["selection"] == "test_auc" and config["selection_uses_test_labels"] is True
        assert config["data"]["crops"] == 6 and config["data"]["source"] == "HAD100 train/aviris_ng"
        manifest = config["data"]["manifest"]
        assert [m["file"] for m in manifest] == sorted(p.name for p in train.glob("*.npy"))
        assert manifest[0]["shape"] == [100, 100, 60]
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log] == [1] and np.isfinite(log[0]["loss"])
        assert log[0]["selection"] == "test_auc" and 0.0 <= log[0]["test_auc"] <= 1.0

    result = run_script("test.py", "--data_path", had100_layout, "--checkpoint_dir", checkpoints,
                        "--input_channel", 50, "--save_dir", tmp_path / "results", "--device", "cpu",
                        "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "mean AUC" in result.stdout
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert len(results["scenes"]) == 3 and all(0.0 <= s["auc"] <= 1.0 for s in results["scenes"])
    assert results["config"]["fen_backbone"] == "resnet18"


# --------------------------------------------------------------------------- kill and resume


@pytest.fixture
def small_scene_folder(tmp_path):
    """One real background scene (50×50, first 60 bands) as .npy."""
    if not BACKGROUND_DIR.is_dir():
        pytest.skip(f"real background scenes not found at {BACKGROUND_DIR}")
    folder = tmp_path / "scenes"
    folder.mkdir()
    cube = load_cube(BACKGROUND_DIR / "aviris-moffett-50x50x189.mat")
    np.save(folder / "moffett.npy", np.ascontiguousarray(cube[:, :, :60]))
    return folder


def _start(script, args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_and_resume(script, tmp_path, data, stage_files, prepare=None):
    # 3 random crops: 1 held out for --selection val_loss, 2 trained on (one step per epoch), 3 epochs
    common = ["--data_path", data, "--input_channel", 50, "--epochs", 3, "--batch_size", 2, "--crop", "random",
              "--crops_per_scene", 3, "--selection", "val_loss", "--val_fraction", 0.34, *SMALL]
    runs = {}
    for name in ("full", "killed"):
        checkpoints = tmp_path / f"checkpoints_{name}"
        if prepare:
            prepare(checkpoints)
        runs[name] = (tmp_path / f"run_{name}", checkpoints)
    cwd = (REPO_ROOT / script).parent
    full = _start(script, [*common, "--run_dir", runs["full"][0], "--checkpoint_dir", runs["full"][1]], cwd)
    killed = _start(script, [*common, "--run_dir", runs["killed"][0], "--checkpoint_dir", runs["killed"][1]], cwd)
    log = runs["killed"][0] / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().strip()) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert killed.poll() is None, killed.communicate()[1]  # still running: the kill lands mid-run
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert len(log.read_text().splitlines()) < 3
    resumed = _start(script, ["--resume", runs["killed"][0], "--no_progress"], cwd)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    states = [torch.load(runs[n][0] / "state.pt", weights_only=True) for n in ("full", "killed")]
    assert states[0]["epoch"] == states[1]["epoch"] == 3
    for module in states[0]["modules"]:
        _assert_identical([states[0]["modules"][module]], [states[1]["modules"][module]])
    for name in stage_files:
        _assert_identical([read_checkpoint(band_folder(runs["full"][1], 50) / name)["state_dict"]],
                          [read_checkpoint(band_folder(runs["killed"][1], 50) / name)["state_dict"]])
    logs = [[json.loads(line) for line in (runs[n][0] / "log.jsonl").read_text().splitlines()] for n in runs]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert [r["val_loss"] for r in logs[0]] == [r["val_loss"] for r in logs[1]]


@needs_background
def test_stage1_kill_and_resume_gives_bitwise_identical_weights(tmp_path, small_scene_folder):
    _kill_and_resume("train_FERD/train.py", tmp_path, small_scene_folder, ("convh.pt", "enc.pt", "pc.pt"))


@needs_background
def test_stage2_kill_and_resume_gives_bitwise_identical_weights(tmp_path, small_scene_folder):
    def stage1_checkpoints(checkpoints):
        torch.manual_seed(7)
        save_fen(band_folder(checkpoints, 50), FEN(50, "resnet18"))

    _kill_and_resume("train_FERS/train.py", tmp_path, small_scene_folder, ("spa_fen.pt", "restoration.pt"),
                     stage1_checkpoints)


# --------------------------------------------------------------------------- bad input


def _expect_error(capsys, entry, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        entry([str(a) for a in argv])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _scene(folder, name, shape):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, np.random.default_rng(0).random(shape).astype(np.float32))


def test_bad_training_input_exits_2_with_one_line(tmp_path, capsys):
    common = ["--input_channel", 8, "--epochs", 1, "--run_dir", tmp_path / "run", "--checkpoint_dir",
              tmp_path / "ck", *SMALL]
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(capsys, stage1_main, ["--data_path", empty, *common], str(empty), "no training scenes")
    _expect_error(capsys, stage1_main, ["--data_path", tmp_path / "absent", *common], "not found")

    small = tmp_path / "small"
    _scene(small, "tiny.npy", (16, 40, 10))
    _expect_error(capsys, stage1_main, ["--data_path", small, *common], "tiny.npy", "smaller than the 32×32 crop")

    mixed = tmp_path / "mixed"
    _scene(mixed, "a.npy", (32, 32, 10))
    _scene(mixed, "b.npy", (32, 32, 6))
    _expect_error(capsys, stage1_main, ["--data_path", mixed, *common], "b.npy", "6 bands", "--input_channel 8")

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    good = tmp_path / "good"
    _scene(good, "a.npy", (32, 32, 10))
    argv = ["--data_path", good, "--input_channel", 8, "--epochs", 1, *SMALL]
    _expect_error(capsys, stage1_main, [*argv, "--run_dir", tmp_path / "run", "--checkpoint_dir", blocker / "ck"],
                  "not writable", "--checkpoint_dir")
    _expect_error(capsys, stage1_main, [*argv, "--run_dir", blocker / "run", "--checkpoint_dir", tmp_path / "ck"],
                  "not writable", "--run_dir")
    assert not (tmp_path / "run" / "state.pt").exists()
    _expect_error(capsys, main, ["--resume", tmp_path / "no_run"], "config.json", "--resume")


def test_stage2_without_matching_stage1_checkpoints_exits_2(tmp_path, capsys):
    good = tmp_path / "good"
    _scene(good, "a.npy", (32, 32, 10))
    common = ["--data_path", good, "--epochs", 1, "--run_dir", tmp_path / "run", *SMALL]
    _expect_error(capsys, stage2_main, [*common, "--input_channel", 8, "--checkpoint_dir", tmp_path / "none"],
                  "8bands", "convh.pt", "run stage 1 first")
    checkpoints = tmp_path / "ck"
    save_fen(band_folder(checkpoints, 8), FEN(6, "resnet18"))  # a 6-band FEN in the 8bands folder
    _expect_error(capsys, main, ["--stage", "2", *common, "--input_channel", 8, "--checkpoint_dir", checkpoints],
                  "6 bands", "--input_channel is 8")
