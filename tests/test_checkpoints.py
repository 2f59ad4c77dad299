"""Checkpoints: the reference key layout, strict round trips, clear errors."""

import hashlib
import json

import pytest
import torch

from conftest import REFERENCE_DIR, needs_reference
from fers import backbones
from fers.checkpoints import (band_folder, load_fen, load_spatial_branch, read_checkpoint, save_fen,
                              save_spatial_branch)
from fers.errors import FersError
from fers.fen import FEN
from fers.spatial_branch import SpatialBranch


def reference_format():
    return json.loads((REFERENCE_DIR / "checkpoint-format.json").read_text())["files"]


def write_reference_file(path, shapes):
    """A file shaped exactly like the released one: {'state_dict': {name: tensor}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: (torch.tensor(3) if shape == [] else torch.randn(shape)) for name, shape in shapes.items()}
    torch.save({"state_dict": state}, path)
    return state


@needs_reference
@pytest.mark.parametrize("channels", [50, 100, 200])
def test_released_stage1_files_load_strictly(tmp_path, channels):
    files = reference_format()
    states = {name: write_reference_file(tmp_path / f"{channels}bands" / name, files[f"{channels}bands/{name}"])
              for name in ("convh.pt", "enc.pt", "pc.pt")}
    fen = load_fen(tmp_path / f"{channels}bands", channels)
    torch.testing.assert_close(fen.convh.convh.weight, states["convh.pt"]["convh.weight"])
    torch.testing.assert_close(fen.encoder.layer1[2].conv3.weight, states["enc.pt"]["layer1.2.conv3.weight"])
    torch.testing.assert_close(fen.classifier.conv3.bias, states["pc.pt"]["conv3.bias"])


@needs_reference
@pytest.mark.parametrize("channels", [50, 100, 200])
def test_released_spatial_file_loads_strictly(tmp_path, channels):
    shapes = reference_format()[f"{channels}bands/spa_fen.pt"]
    state = write_reference_file(tmp_path / f"{channels}bands" / "spa_fen.pt", shapes)
    branch = load_spatial_branch(tmp_path / f"{channels}bands", channels)
    torch.testing.assert_close(branch.spp.se.fc[2].weight, state["spp.se.fc.2.weight"])


@needs_reference
@pytest.mark.parametrize("channels", [50, 100, 200])
def test_files_we_write_have_the_reference_layout(tmp_path, channels):
    folder = band_folder(tmp_path, channels)
    save_fen(folder, FEN(channels))
    save_spatial_branch(folder, SpatialBranch(channels))
    files = reference_format()
    for name in ("convh.pt", "enc.pt", "pc.pt", "spa_fen.pt"):
        key = f"{channels}bands/{name}"
        if key not in files:
            continue
        payload = torch.load(folder / name, weights_only=True)
        assert set(payload) <= {"state_dict", "config"}
        shapes = {k: list(v.shape) for k, v in payload["state_dict"].items()}
        assert shapes == files[key], name


def test_round_trip_is_exact(tmp_path):
    fen, branch = FEN(50), SpatialBranch(50)
    with torch.no_grad():
        for p in list(fen.parameters()) + list(branch.parameters()):
            p.add_(torch.randn_like(p))
    save_fen(tmp_path, fen)
    save_spatial_branch(tmp_path, branch)
    fen2, branch2 = load_fen(tmp_path, 50), load_spatial_branch(tmp_path, 50)
    for a, b in zip(list(fen.state_dict().values()) + list(branch.state_dict().values()),
                    list(fen2.state_dict().values()) + list(branch2.state_dict().values())):
        assert torch.equal(a, b)
    x = torch.randn(1, 50, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fen.eval()(x), fen2(x), rtol=0, atol=0)


def test_small_backbone_is_recorded_and_rebuilt(tmp_path):
    save_fen(tmp_path, FEN(50, "resnet18"))
    assert load_fen(tmp_path, 50).backbone == "resnet18"
    assert read_checkpoint(tmp_path / "enc.pt")["config"]["backbone"] == "resnet18"


def test_wrong_band_count_names_both_counts(tmp_path):
    save_fen(tmp_path, FEN(100))
    save_spatial_branch(tmp_path, SpatialBranch(100))
    with pytest.raises(FersError, match=r"100 bands but `channels` is 50"):
        load_fen(tmp_path, 50)
    with pytest.raises(FersError, match=r"100 bands but `channels` is 200"):
        load_spatial_branch(tmp_path, 200)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FersError, match="convh.pt: checkpoint not found"):
        load_fen(tmp_path, 50)
    save_fen(tmp_path, FEN(50))
    data = (tmp_path / "pc.pt").read_bytes()
    (tmp_path / "pc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FersError, match="pc.pt: corrupt or unreadable checkpoint"):
        load_fen(tmp_path, 50)
    torch.save({"state_dict": {"something.else": torch.zeros(1)}}, tmp_path / "spa_fen.pt")
    with pytest.raises(FersError, match="not a spatial-branch checkpoint"):
        load_spatial_branch(tmp_path, 50)


def test_imagenet_weights_from_a_local_file_are_hash_checked(tmp_path, monkeypatch):
    source = backbones.ResNet("resnet18", stages=3)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    monkeypatch.setitem(backbones.IMAGENET_WEIGHTS, "resnet18", f"https://example.invalid/resnet18-{prefix}.pth")
    target = backbones.ResNet("resnet18", stages=3)
    assert backbones.load_imagenet_weights(target, weights=path) == str(path)
    for a, b in zip(source.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    # The same file found by its torchvision name inside a folder given by the environment.
    named = tmp_path / "dir" / f"resnet18-{prefix}.pth"
    named.parent.mkdir()
    named.write_bytes(path.read_bytes())
    monkeypatch.setenv(backbones.WEIGHTS_DIR_ENV, str(named.parent))
    assert backbones.load_imagenet_weights(backbones.ResNet("resnet18", stages=3)) == str(named)
    # A file whose hash does not match is refused.
    monkeypatch.setitem(backbones.IMAGENET_WEIGHTS, "resnet18", "https://example.invalid/resnet18-00000000.pth")
    with pytest.raises(FersError, match="SHA-256 does not start with 00000000"):
        backbones.load_imagenet_weights(target, weights=path)


def test_no_download_and_no_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(backbones.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setitem(backbones.IMAGENET_WEIGHTS, "resnet18", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(FersError, match="`backbone_weights`"):
        backbones.load_imagenet_weights(backbones.ResNet("resnet18", stages=1))
    with pytest.warns(UserWarning, match="RANDOMLY initialised"):
        assert backbones.load_imagenet_weights(backbones.ResNet("resnet18", stages=1), pretrained=False).startswith("random")
