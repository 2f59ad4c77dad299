"""Runs that can be continued as printed (issue 12): absolute paths and the working folder in
config.json, flags given with --resume honoured or refused (never ignored), diverging runs flagged,
frozen weights written once (state.pt holds what training changes, resume stays bitwise).

Small configurations only (ResNet-18 teacher, 32×32 crops, random init, 1-3 epochs), run in-process.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import needs_background
from fers.checkpoints import band_folder, read_checkpoint, save_fen
from fers.cli.train import main, stage1_main, stage2_main
from fers.fen import FEN
from fers.training import FROZEN_FILE, Stage1, Stage2, divergence
from test_training import SMALL, _assert_identical, _expect_error, _losses_over_steps, small_scene_folder  # noqa: F401

# 3 random crops of one real scene, 2 trained on per epoch (one step) when 1 is held out
COMMON = ["--input_channel", 50, "--crop", "random", "--crops_per_scene", 3, "--batch_size", 2, *SMALL]


def _train(entry, argv):
    assert entry([str(a) for a in argv]) == 0


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _config(run):
    return json.loads((run / "config.json").read_text())


# --------------------------------------------------------------------------- paths


@needs_background
def test_run_started_with_relative_paths_resumes_from_another_folder(tmp_path, small_scene_folder, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.move(small_scene_folder, work / "scenes")
    monkeypatch.chdir(work)
    _train(stage1_main, ["--data_path", "scenes", "--run_dir", "run", "--checkpoint_dir", "ck", "--epochs", 1, *COMMON])
    run = work / "run"
    config = _config(run)
    assert config["cwd"] == str(work)
    assert config["args"]["data_path"] == str(work / "scenes")
    assert config["args"]["run_dir"] == str(run) and config["args"]["checkpoint_dir"] == str(work / "ck")

    monkeypatch.chdir(elsewhere)  # the printed resume command, from another folder
    _train(main, ["--resume", run, "--epochs", 2, "--no_progress"])
    assert [r["epoch"] for r in _log(run)] == [1, 2]
    config = _config(run)
    assert config["args"]["epochs"] == 2
    assert config["resumes"][-1]["changed"] == {"epochs": {"recorded": 1, "now": 2}}
    assert config["resumes"][-1]["after_epoch"] == 1 and config["resumes"][-1]["cwd"] == str(elsewhere)

    # a run folder written before this fix: relative paths and no cwd; the relative --run_dir gives it
    config["args"].update(data_path="scenes", run_dir="run", checkpoint_dir="ck")
    del config["cwd"]
    (run / "config.json").write_text(json.dumps(config))
    _train(main, ["--resume", "../work/run", "--epochs", 3, "--no_progress"])
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3]
    assert read_checkpoint(band_folder(work / "ck", 50) / "enc.pt")["config"]["training"]["epoch"] == 3


# --------------------------------------------------------------------------- flags given with --resume


@needs_background
def test_flags_given_with_resume_are_honoured_or_refused_never_ignored(tmp_path, small_scene_folder, capsys):
    run, checkpoints = tmp_path / "run", tmp_path / "ck"
    _train(stage1_main, ["--data_path", small_scene_folder, "--run_dir", run, "--checkpoint_dir", checkpoints,
                         "--epochs", 2, "--lr", 0.001, *COMMON])
    capsys.readouterr()
    before = (run / "config.json").read_bytes(), (run / "state.pt").stat().st_mtime_ns
    # --lr 0.005 is the default: refused because the run recorded 0.001 (given, not compared to defaults)
    _expect_error(capsys, main, ["--resume", run, "--lr", 0.005], "--lr 0.005", "recorded 0.001", "start a new run")
    _expect_error(capsys, stage1_main, ["--resume", run, "--seed", 1], "--seed 1", "recorded 0")
    _expect_error(capsys, main, ["--resume", run, "--backbone", "resnet34"], "--backbone resnet34")
    _expect_error(capsys, main, ["--resume", run, "--selection", "val_loss"], "--selection val_loss")
    _expect_error(capsys, main, ["--resume", run, "--select_on_test"], "--select_on_test True")
    _expect_error(capsys, main, ["--resume", run, "--run_dir", tmp_path / "other"], "--run_dir", "drop --run_dir")
    _expect_error(capsys, main, ["--resume", run, "--epochs", 1], "--epochs 1", "already completed 2 epochs",
                  "--epochs 2 or more")
    other = tmp_path / "other_scenes"
    other.mkdir()
    np.save(other / "b.npy", np.random.default_rng(0).random((40, 40, 60)).astype(np.float32))
    _expect_error(capsys, main, ["--resume", run, "--data_path", other], str(other), "missing: moffett.npy",
                  "not in the run: b.npy")
    assert ((run / "config.json").read_bytes(), (run / "state.pt").stat().st_mtime_ns) == before  # nothing written

    # a moved copy of the same files is honoured, and so are values equal to the recorded ones
    moved = tmp_path / "moved"
    shutil.copytree(small_scene_folder, moved)
    shutil.rmtree(small_scene_folder)
    _train(main, ["--resume", run, "--data_path", moved, "--lr", 0.001, "--img_size", 32, "--epochs", 3,
                  "--no_progress"])
    assert "resume: --data_path" in capsys.readouterr().out
    config = _config(run)
    assert config["args"]["data_path"] == str(moved) and config["args"]["epochs"] == 3
    assert set(config["resumes"][-1]["changed"]) == {"data_path", "epochs"}
    assert [r["epoch"] for r in _log(run)] == [1, 2, 3]
    _train(main, ["--resume", run, "--no_progress"])  # the recorded (moved) folder is used from now on


# --------------------------------------------------------------------------- divergence


def test_divergence_rule_on_loss_sequences():
    history = []
    flags = []
    for epoch, val_loss in enumerate([1.75, 72594.0, 999.0, 15.0, 17.4], start=1):
        record = {"epoch": epoch, "loss": 1.0, "val_loss": val_loss}
        flags.append(divergence(record, history))
        history.append(record)
    assert flags[0] is None and flags[3] is None and flags[4] is None  # 15 and 17.4 < 10 × 1.75
    assert "val_loss 7.259e+04 is 41482× its lowest so far (1.75, epoch 1)" == flags[1]
    assert flags[2].startswith("val_loss 999 is 571×")
    assert divergence({"epoch": 2, "loss": math.nan}, [{"epoch": 1, "loss": 1.0}]) == "loss is nan"
    assert divergence({"epoch": 1, "loss": math.inf}, []) == "loss is inf"
    assert divergence({"epoch": 2, "loss": 9.9}, [{"epoch": 1, "loss": 1.0}]) is None
    assert divergence({"epoch": 2, "loss": 5.0}, [{"epoch": 1, "loss": 0.0}]) is None  # no positive lowest


@needs_background
def test_a_diverging_run_is_flagged_in_the_log_and_on_the_console(tmp_path, small_scene_folder, capsys):
    run = tmp_path / "run"
    _train(stage1_main, ["--data_path", small_scene_folder, "--run_dir", run, "--checkpoint_dir", tmp_path / "ck",
                         "--epochs", 3, "--lr", 1000, "--selection", "val_loss", "--val_fraction", 0.34, *COMMON])
    err = capsys.readouterr().err
    log = _log(run)
    flagged = [r for r in log if r["diverging"]]
    assert flagged and all(r["divergence"] for r in flagged)
    assert all(("divergence" in r) == r["diverging"] for r in log)
    warnings = [line for line in err.splitlines() if line.startswith("warning: stage1 epoch")]
    assert len(warnings) == len(flagged) and "the run is diverging" in warnings[0] and "--lr" in warnings[0]
    selected = log[-1]["selected"]  # a non-finite held-out loss is never selected
    assert math.isfinite(log[selected - 1]["val_loss"])


# --------------------------------------------------------------------------- frozen weights


def _frozen_entries(stage):
    keys = stage.frozen_keys()
    return {name: {k: v.clone() for k, v in module.state_dict().items() if k in keys[name]}
            for name, module in stage.modules().items()}


@pytest.mark.parametrize("kind", ["stage1", "stage2_eval", "stage2_train"])
def test_entries_declared_frozen_never_change_in_training(kind):
    torch.manual_seed(0)
    stage = (Stage1(8, "resnet18", "cpu", pretrained=False) if kind == "stage1" else
             Stage2(8, FEN(8, "resnet18"), "cpu", spatial_bn=kind.split("_")[1], pretrained=False))
    before = _frozen_entries(stage)
    _losses_over_steps(stage, torch.randn(2, 8, 16, 16), steps=2)
    after = _frozen_entries(stage)
    for name in before:
        _assert_identical([before[name]], [after[name]])
    if kind == "stage1":
        assert any(k.startswith("layer3.") for k in before["net"]) and "bottleneck.bn1.running_mean" not in before["net"]
    else:
        student = before["student"]
        assert "spatial.get_features.0.weight" in student  # the frozen ResNet-34 conv
        assert ("spatial.get_features.1.running_mean" in student) == (kind == "stage2_eval")  # drifts in train mode


@needs_background
def test_stage2_state_holds_only_what_changes_and_resumes_bitwise_with_drifting_bn(tmp_path, small_scene_folder):
    checkpoints = {name: tmp_path / f"ck_{name}" for name in ("full", "split")}
    for folder in checkpoints.values():
        torch.manual_seed(7)
        save_fen(band_folder(folder, 50), FEN(50, "resnet18"))
    common = ["--data_path", small_scene_folder, "--spatial_bn", "train", "--selection", "val_loss",
              "--val_fraction", 0.34, *COMMON]
    runs = {name: tmp_path / f"run_{name}" for name in checkpoints}
    _train(stage2_main, [*common, "--epochs", 2, "--run_dir", runs["full"], "--checkpoint_dir", checkpoints["full"]])
    _train(stage2_main, [*common, "--epochs", 1, "--run_dir", runs["split"], "--checkpoint_dir", checkpoints["split"]])
    _train(main, ["--resume", runs["split"], "--epochs", 2, "--no_progress"])

    states = {name: torch.load(run / "state.pt", weights_only=True) for name, run in runs.items()}
    frozen = {name: torch.load(run / FROZEN_FILE, weights_only=True) for name, run in runs.items()}
    student = states["full"]["modules"]["student"]
    assert states["full"]["modules"]["fen"] == {} and "spatial.get_features.0.weight" not in student
    assert "spatial.get_features.1.running_mean" in student  # drifts with --spatial_bn train: saved every epoch
    assert "spatial.get_features.0.weight" in frozen["full"]["student"] and frozen["full"]["fen"]
    assert (runs["full"] / "state.pt").stat().st_size < (runs["full"] / FROZEN_FILE).stat().st_size / 4
    for name in ("fen", "student"):
        _assert_identical([states["full"]["modules"][name]], [states["split"]["modules"][name]])
        _assert_identical([frozen["full"][name]], [frozen["split"][name]])
    for file in ("spa_fen.pt", "restoration.pt"):
        _assert_identical([read_checkpoint(band_folder(checkpoints["full"], 50) / file)["state_dict"]],
                          [read_checkpoint(band_folder(checkpoints["split"], 50) / file)["state_dict"]])


def test_resume_refuses_a_frozen_file_of_another_run(tmp_path, capsys):
    from fers.errors import FersError
    from fers.training import load_frozen

    (tmp_path / FROZEN_FILE).write_bytes(b"not the run's file")
    with pytest.raises(FersError, match="frozen.pt: does not belong to this run's state.pt"):
        load_frozen(tmp_path, "0" * 64)
    with pytest.raises(FersError, match="frozen.pt: missing"):
        load_frozen(tmp_path / "absent", "0" * 64)
