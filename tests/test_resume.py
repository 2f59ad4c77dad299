"""Runs that can be continued as printed (issue 12): absolute paths and the working folder in
config.json, flags given with --resume honoured or refused (never ignored), diverging runs flagged,
frozen weights written once (state.pt holds what training changes, resume stays bitwise).

Small configurations only (ResNet-18 teacher, 32×32 crops, random init, 1-3 epochs), run in-process.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from conftest import needs_background
from fers.checkpoints import band_folder, read_checkpoint
from fers.cli.train import main, stage1_main
from test_training import SMALL, _expect_error, small_scene_folder  # noqa: F401

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
