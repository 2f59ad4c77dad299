"""Faults: SIGTERM/SIGINT during training stop after a resumable state and ``--resume`` ends
bitwise where an uninterrupted run ends (CPU, same seed); the run folder records config, seed,
versions and the data manifest; a failed checkpoint export leaves the old files untouched; and
numerical robustness of the RX paths (rank-deficient covariances in the chunked scene RX, float32
inputs with a large offset).

SIGKILL mid-epoch is tested in tests/test_training.py, whose helpers are reused here.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from fers import checkpoints, training
from fers.checkpoints import band_folder, read_checkpoint, save_fen
from fers.detectors import rx_scores
from fers.errors import FersError
from fers.fen import FEN
from fers.preprocessing import normalize_cube, to_chw
from fers.preprocessing import prepare_cube
from fers import scene_detection
from fers.scene_detection import global_rx_scores
from test_performance_paths import numpy_pinv_rx
from test_training import SMALL, _assert_identical, _start

EPOCHS = 4


@pytest.fixture
def scene_folder(tmp_path):
    """One synthetic 40×40×60 scene (smooth mixtures plus noise) as .npy."""
    rng = np.random.default_rng(3)
    abundances = rng.dirichlet(np.ones(3), size=(40, 40))
    cube = abundances @ rng.uniform(0.1, 1.0, (3, 60)) + 0.01 * rng.standard_normal((40, 40, 60))
    folder = tmp_path / "scenes"
    folder.mkdir()
    np.save(folder / "scene.npy", cube.astype(np.float32))
    return folder


def _wait_for_first_epoch(process, run_dir, timeout=120):
    log = run_dir / "log.jsonl"
    deadline = time.monotonic() + timeout
    while not (log.is_file() and log.read_text().strip()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()  # still running: the signal lands mid-run


def test_sigterm_and_sigint_stop_resumably_and_resume_bitwise(tmp_path, scene_folder):
    # 3 random crops: 1 held out (--selection val_loss), 2 trained on (one step per epoch)
    common = ["--data_path", scene_folder, "--input_channel", 50, "--epochs", EPOCHS, "--batch_size", 2,
              "--crop", "random", "--crops_per_scene", 3, "--selection", "val_loss", "--val_fraction", 0.34, *SMALL]
    names = {"full": None, "term": signal.SIGTERM, "int": signal.SIGINT}
    runs = {name: (tmp_path / f"run_{name}", tmp_path / f"checkpoints_{name}") for name in names}
    script = "train_FERD/train.py"
    processes = {name: _start(script, [*common, "--run_dir", run, "--checkpoint_dir", ck], REPO_ROOT)
                 for name, (run, ck) in runs.items()}
    for name in ("term", "int"):
        _wait_for_first_epoch(processes[name], runs[name][0])
        processes[name].send_signal(names[name])
    for name in ("term", "int"):
        out, err = processes[name].communicate(timeout=300)
        assert processes[name].returncode == 128 + names[name], err
        assert "Traceback" not in err
        assert f"interrupted by signal {int(names[name])}" in err and f"--resume {runs[name][0]}" in err, err
        state = torch.load(runs[name][0] / "state.pt", weights_only=True)
        assert EPOCHS > state["epoch"] >= 1  # a completed epoch, not the end
        assert f"the last completed epoch ({state['epoch']})" in err
        assert not band_folder(runs[name][1], 50).exists() or not any(band_folder(runs[name][1], 50).iterdir())
    resumed = {name: _start("train.py", ["--resume", runs[name][0], "--no_progress"], tmp_path) for name in ("term", "int")}
    for name, process in resumed.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert f"resuming {runs[name][0]}" in out
    out, err = processes["full"].communicate(timeout=300)
    assert processes["full"].returncode == 0, err

    full_state = torch.load(runs["full"][0] / "state.pt", weights_only=True)
    full_log = (runs["full"][0] / "log.jsonl").read_text()
    for name in ("term", "int"):
        state = torch.load(runs[name][0] / "state.pt", weights_only=True)
        assert state["epoch"] == full_state["epoch"] == EPOCHS
        for module in full_state["modules"]:
            _assert_identical([full_state["modules"][module]], [state["modules"][module]])
        # the frozen teacher is written once to frozen.pt, not to every state.pt
        assert not any(k.startswith(("fen.encoder.", "layer2.", "layer3.")) for k in state["modules"]["net"])
        assert state["frozen_sha256"] == hashlib.sha256((runs[name][0] / "frozen.pt").read_bytes()).hexdigest()
        _assert_identical([torch.load(runs["full"][0] / "frozen.pt", weights_only=True)["net"]],
                          [torch.load(runs[name][0] / "frozen.pt", weights_only=True)["net"]])
        for file in ("convh.pt", "enc.pt", "pc.pt"):
            _assert_identical([read_checkpoint(band_folder(runs["full"][1], 50) / file)["state_dict"]],
                              [read_checkpoint(band_folder(runs[name][1], 50) / file)["state_dict"]])
        logs = [[json.loads(line) for line in text.splitlines()]
                for text in (full_log, (runs[name][0] / "log.jsonl").read_text())]
        for key in ("loss", "val_loss", "selected"):
            assert [r[key] for r in logs[0]] == [r[key] for r in logs[1]], key

    config = json.loads((runs["full"][0] / "config.json").read_text())
    # args record what was given (no --seed); the resolved seed and protocol settings are recorded beside them
    assert config["seed"] == 0 and config["args"]["seed"] is None and config["stage"] == "stage1"
    assert config["protocol"]["protocol"] == "default" and config["protocol"]["seed_source"] == "default"
    assert config["args"]["epochs"] == EPOCHS and config["args"]["input_channel"] == 50
    assert {"fers", "python", "torch", "numpy", "platform"} <= set(config["versions"])
    assert config["versions"]["torch"] == torch.__version__ and config["versions"]["numpy"] == np.__version__
    digest = hashlib.sha256((scene_folder / "scene.npy").read_bytes()).hexdigest()
    assert config["data"]["manifest"] == [{"file": "scene.npy", "sha256": digest, "shape": [40, 40, 60]}]


def test_failed_export_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    folder = band_folder(tmp_path, 8)
    torch.manual_seed(0)
    save_fen(folder, FEN(8, "resnet18"))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    stage = training.Stage1(8, "resnet18", "cpu", pretrained=False)
    real_save = checkpoints.save_state
    written = []

    def save_state_then_fail(path, module, config=None):  # the second file hits a full disk
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        real_save(path, module, config)

    monkeypatch.setattr(checkpoints, "save_state", save_state_then_fail)
    with pytest.raises(FersError, match=r"8bands: cannot write the checkpoints \(No space left on device\); free disk space or choose another `checkpoint_dir`"):
        stage.export(tmp_path, {"epoch": 1})
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # no mix, no leftovers


# --------------------------------------------------------------------------- numerical robustness


def _scene_with_chunks(monkeypatch):
    monkeypatch.setattr(scene_detection, "CHUNK_BYTES", 3000)  # several row chunks on small cubes


@pytest.mark.parametrize("case", ["duplicated_bands", "more_bands_than_pixels"])
def test_chunked_scene_rx_on_rank_deficient_covariance_equals_pinv(case, monkeypatch):
    _scene_with_chunks(monkeypatch)
    rng = np.random.default_rng(5)
    if case == "duplicated_bands":
        base = rng.random((20, 15, 12))
        cube = np.concatenate([base, base[:, :, :6], 2.0 * base[:, :, 6:9]], axis=2)  # rank 12 of 21
    else:
        cube = rng.random((6, 5, 40))  # 30 pixels, 40 bands: rank <= 29
    expected = numpy_pinv_rx(to_chw(cube))
    scores = global_rx_scores(cube.astype(np.float64), "float64")
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9 * expected.max())


def _offset_cube(seed=6, offset=1e6):
    """float32 cube ``offset + signal``; the signal (std ≈ 3) spans ~100 float32 steps at 1e6."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((24, 20, 16)) * 3.0 + rng.standard_normal(16) * 5.0
    signal[5, 7] += 25.0  # one anomaly
    return (offset + signal).astype(np.float32)


def test_rx_of_float32_with_a_large_offset_matches_float64():
    cube = _offset_cube()
    expected = numpy_pinv_rx(to_chw(cube.astype(np.float64)))  # the same float32 values, all in float64
    scores = rx_scores(torch.from_numpy(to_chw(cube))[None], "float64")[0].numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-8)
    assert np.unravel_index(scores.argmax(), scores.shape) == (5, 7)
    np.testing.assert_allclose(global_rx_scores(cube, "float64"), expected, rtol=1e-8)


def test_chunked_preparation_of_float32_with_a_large_offset_keeps_its_precision(monkeypatch):
    _scene_with_chunks(monkeypatch)
    cube = _offset_cube()
    data = cube.astype(np.float64)
    expected = 0.1 * (2.0 * (data - data.min()) / (data.max() - data.min()) - 1.0)  # float64 reference
    prepared, _ = prepare_cube(cube, 16, "first", "scene", chunk_bytes=scene_detection.CHUNK_BYTES)
    np.testing.assert_allclose(prepared, expected, rtol=0, atol=1e-7)  # float32 output rounding only
    np.testing.assert_array_equal(prepared, normalize_cube(cube))
    # the RX of the normalised cube still finds the same scores (RX is invariant to the affine scaling)
    scores = rx_scores(torch.from_numpy(to_chw(prepared))[None].double(), "float64")[0].numpy()
    np.testing.assert_allclose(scores, numpy_pinv_rx(to_chw(data)), rtol=1e-5)


def test_interrupt_before_the_first_epoch_says_no_state_was_saved(tmp_path, capsys):
    from fers.cli.train import _interrupted
    from fers.training import TrainingInterrupted

    assert _interrupted(TrainingInterrupted(signal.SIGTERM, tmp_path, 0)) == 143
    err = capsys.readouterr().err
    assert "no epoch had completed yet" in err and "state.pt holds" not in err
    assert f"--resume {tmp_path}" in err


def test_report_is_all_or_nothing_on_a_failed_write(had100_layout, tmp_path, monkeypatch):
    from fers import report
    from fers.datasets import had100_manifest, load_scene

    scenes = had100_manifest(had100_layout)
    masks = [load_scene(scene)[1] for scene in scenes]
    maps = {"RX": [np.random.default_rng(i).random(mask.shape) for i, mask in enumerate(masks)]}
    real_save, saved = report._save, []

    def save_then_fail(figure, path):  # the second figure hits a full disk
        if saved:
            raise OSError(27, "File too large")
        saved.append(path)
        real_save(figure, path)

    monkeypatch.setattr(report, "_save", save_then_fail)
    with pytest.raises(FersError, match=r"report: cannot write the results \(File too large\); free disk space"):
        report.write_method_report(tmp_path / "out" / "report", scenes, masks, maps, log=lambda *a: None)
    assert saved and not (tmp_path / "out").exists()  # the folders this failed write created are gone too
