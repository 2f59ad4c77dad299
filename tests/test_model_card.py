"""Model cards in the checkpoints we write, and ``python -m fers.checkpoints info`` on our folders
and on reference-format ones (issue 16)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform

import numpy as np
import pytest
import torch

import fers
from conftest import REFERENCE_DIR, call_main, needs_reference
from fers.checkpoints import band_folder, read_checkpoint
from fers.training import TrainConfig, train
from fers.weights import NAMED_WEIGHTS, SHA256

SMALL = {"input_channel": 8, "img_size": 16, "backbone": "resnet18", "no_pretrained": True, "no_progress": True,
         "device": "cpu", "epochs": 1, "batch_size": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of stage 1 on two 16×16×10 scenes in the HAD100 layout (train/aviris_ng)."""
    root = tmp_path_factory.mktemp("card")
    scenes = root / "HAD100Dataset" / "train" / "aviris_ng"
    scenes.mkdir(parents=True)
    for index in range(2):
        np.save(scenes / f"s{index}.npy", np.random.default_rng(index).random((16, 16, 10)).astype(np.float32))
    checkpoints = root / "checkpoints"
    train(TrainConfig(stage="1", data_path=str(root / "HAD100Dataset"), run_dir=str(root / "run"),
                      checkpoint_dir=str(checkpoints), seed=7, **SMALL))
    return scenes, checkpoints


def test_the_checkpoints_we_write_carry_a_model_card(trained):
    scenes, checkpoints = trained
    cards = [read_checkpoint(band_folder(checkpoints, 8) / name)["config"]["model_card"]  # weights_only=True
             for name in ("convh.pt", "enc.pt", "pc.pt")]
    assert cards[0] == cards[1] == cards[2]
    card = cards[0]
    assert (card["channels"], card["sensor"], card["seed"]) == (8, "aviris_ng", 7)
    assert card["method"].startswith("FERD (stage 1")
    assert card["training_data"]["source"] == "HAD100 train/aviris_ng"
    assert [(f["file"], f["sha256"], f["shape"]) for f in card["training_data"]["files"]] == [
        (p.name, hashlib.sha256(p.read_bytes()).hexdigest(), [16, 16, 10]) for p in sorted(scenes.glob("*.npy"))]
    assert card["selection"] == {"rule": "last", "uses_test_labels": False, "epoch": 1, "epochs": 1}
    assert card["normalisation"]["formula"] == "0.1 * (2 * (x - min) / (max - min) - 1)"
    assert card["versions"]["fers"] == fers.__version__ and card["versions"]["torch"] == torch.__version__
    assert card["versions"]["numpy"] == np.__version__ and card["versions"]["python"] == platform.python_version()


def test_info_prints_our_model_card(trained, capsys):
    _, checkpoints = trained
    code, out, err = call_main("fers.checkpoints", "main", ["info", checkpoints], capsys)
    assert code == 0, err
    assert f"{band_folder(checkpoints, 8)}: 8 bands" in out
    assert "model card of convh.pt, enc.pt, pc.pt:" in out
    assert "bands: 8; sensor: aviris_ng" in out and "training data: HAD100 train/aviris_ng, 2 file(s): s0.npy" in out
    assert "seed: 7" in out and "selection: last, epoch 1 of 1; uses test labels: no" in out
    assert f"torch {torch.__version__}" in out
    code, out, err = call_main("fers.checkpoints", "main", ["info", band_folder(checkpoints, 8), "--json"], capsys)
    folders = json.loads(out)
    assert [f["file"] for f in folders[0]["files"]] == ["convh.pt", "enc.pt", "pc.pt"]
    assert folders[0]["files"][0]["model_card"]["seed"] == 7


@needs_reference
def test_info_on_reference_files_infers_bands_hashes_and_the_named_weights(tmp_path, capsys, monkeypatch):
    shapes = json.loads((REFERENCE_DIR / "checkpoint-format.json").read_text())["files"]
    folder = tmp_path / "release" / "100bands"
    folder.mkdir(parents=True)
    for name in ("convh.pt", "pc.pt"):
        torch.save({"state_dict": {k: torch.randn(s) if s else torch.tensor(3)
                                   for k, s in shapes[f"100bands/{name}"].items()}}, folder / name)
    digest = hashlib.sha256((folder / "convh.pt").read_bytes()).hexdigest()
    for name in ("fers-had100-100", "ferd-had100-100"):  # pin this convh.pt as the released one
        weights = NAMED_WEIGHTS[name]
        files = tuple(dataclasses.replace(f, digest=digest) if f.name == "convh.pt" else f for f in weights.files)
        monkeypatch.setitem(NAMED_WEIGHTS, name, dataclasses.replace(weights, files=files))
    code, out, err = call_main("fers.checkpoints", "main", ["info", tmp_path / "release"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{folder}: 100 bands"
    convh = lines.index(next(line for line in lines if line.strip().startswith("convh.pt")))
    assert lines[convh + 1].split()[:2] == ["sha256", digest]
    assert lines[convh + 2].strip() == "= fers-had100-100/convh.pt, ferd-had100-100/convh.pt"
    assert "no named released weights" in lines[convh + 5]  # pc.pt: random, matches nothing
    assert "no model card: convh.pt, pc.pt" in out
    assert all(f.algorithm == SHA256 for f in NAMED_WEIGHTS["ferd-had100-100"].files)


def test_info_on_a_folder_without_checkpoints_is_one_line(tmp_path, capsys):
    code, out, err = call_main("fers.checkpoints", "main", ["info", tmp_path], capsys)
    assert code == 2 and err == f"error: {tmp_path}: no checkpoint files (*.pt) here or in <C>bands/ folders below it\n"
