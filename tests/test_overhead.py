"""What the end-to-end speed work must not change: commands import only what they use, scenes
read on a reader thread still stop a run cleanly at a bad file, the phase profile, the metrics from
one sort, the blocked input scaling, and chunk sizes chosen from the machine (scores equal to
rounding for any of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, call_main
from fers import profiling, tuning
from fers.datasets import had100_manifest
from fers.evaluation import Detector
from fers.io import sha256_file
from fers.metrics import detection_metrics, roc3d_metrics
from fers.preprocessing import INPUT_SCALE, reference_scaling, to_batch
from fers.scene_reader import SceneReader

HEAVY = ("matplotlib", "scipy", "h5py", "sklearn", "PIL", "spectral", "rasterio")


def _reader_threads() -> list:
    return [thread for thread in threading.enumerate() if thread.name == "fers-scene-reader"]


def test_a_bad_scene_read_on_the_reader_thread_exits_2_and_writes_nothing(had100_layout, random_checkpoints,
                                                                          tmp_path, capsys):
    bad = had100_layout / "test" / "aviris_ng" / "scene1.npy"
    cube = np.load(bad)
    cube[5, 7, 3] = np.nan
    np.save(bad, cube)
    save_dir = tmp_path / "out"
    code, out, err = call_main("fers.cli.evaluate", "had100_main",
                               ["--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                                random_checkpoints, "--branches", "spectral", "--batch_size", 1, "--save_dir",
                                save_dir, "--no_progress", "--device", "cpu"], capsys)
    assert code == 2, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "scene1.npy" in errors[0] and "NaN" in errors[0], err
    assert "Traceback" not in err
    assert not save_dir.exists()  # scene0 was scored before the error: still nothing written
    assert not _reader_threads()


def test_scene_reader_keeps_order_and_stops_when_left_early(had100_layout):
    scenes = had100_manifest(had100_layout)
    with SceneReader(scenes, 50, "interp", log=lambda line: None, ahead=1, hash_files=True) as reader:
        items = list(reader)
    assert [item.index for item in items] == [0, 1, 2]
    assert [entry["name"] for entry in reader.manifest] == [scene.name for scene in scenes]
    assert [entry["cube_sha256"] for entry in reader.manifest] == [sha256_file(s.cube_path) for s in scenes]
    with SceneReader(scenes, 50, "interp", log=lambda line: None, ahead=1) as reader:
        first = next(iter(reader))
    assert first.index == 0 and first.cube.shape == (64, 64, 50)
    assert not _reader_threads()


def test_the_evaluation_commands_read_scenes_before_torch_loads():
    # test.py and FERS_ABU/test.py parse their arguments and start the reader thread first, so the
    # first batch is read on the otherwise idle core while `import torch` runs
    code = ("import sys; import fers.cli.evaluate, fers.cli.common, fers.scene_reader, fers.utils, fers.weights; "
            "print(sorted(m for m in ('torch', 'fers.evaluation', 'fers.checkpoints') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, -9999.0, 1e-34, None])
def test_invalid_pixels_from_the_chunk_range_counts_as_the_full_scan(fill):
    from fers.preprocessing import invalid_pixels

    rng = np.random.default_rng(4)
    cube = rng.random((9, 7, 12)).astype(np.float32)
    if fill is not None:
        cube[2, 3, 5] = cube[4, 1, 0] = cube[4, 1, 7] = fill
    with np.errstate(invalid="ignore"):
        given = invalid_pixels(cube, float(np.min(cube)), float(np.max(cube)))
    finite = np.isfinite(cube)
    expected_bad = int((~finite).any(axis=2).sum())
    expected_fill = 0 if fill is None or expected_bad else int(np.isclose(cube, fill, rtol=1e-6, atol=0).any(2).sum())
    assert given == invalid_pixels(cube) == (expected_bad, expected_fill)


def test_profile_records_every_phase(had100_layout, random_checkpoints, tmp_path, capsys, monkeypatch):
    path = tmp_path / "profile.json"
    monkeypatch.setattr(profiling, "_ACTIVE", profiling.Profile(path))  # as FERS_PROFILE=path at start-up
    code, out, err = call_main("fers.cli.evaluate", "had100_main",
                               ["--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                                random_checkpoints, "--branches", "spectral", "--batch_size", 2, "--save_dir",
                                tmp_path / "out", "--no_progress", "--device", "cpu"], capsys)
    assert code == 0, err
    profile = json.loads(path.read_text())
    main = profile["phases"]
    for name in ("checkpoints", "inference_copies", "networks", "rx", "metrics", "write_outputs"):
        assert main[name]["seconds"] >= 0 and main[name]["calls"] >= 1, name
    assert main["networks"]["calls"] == 2  # 3 scenes in batches of 2 and 1
    reader = profile["threads"]["fers-scene-reader"]
    assert reader["read_validate"]["calls"] == reader["manifest_hash"]["calls"] == 3
    phases = sum(value["seconds"] for value in main.values())
    assert profile["main_thread_other_seconds"] == pytest.approx(profile["main_seconds"] - phases, abs=1e-6)
    assert profile["marks"]["first_batch"] > 0 and profile["command"].endswith("had100_main")


def test_metrics_from_one_sort_where_scaling_merges_scores():
    # scores k·1e-20 next to a minimum of -1: min-max scaling (s + 1) / span merges them into equal
    # values, so the 3D-ROC thresholds (on scaled scores) and the AUC (on raw scores) have other tie groups
    rng = np.random.default_rng(11)
    scores = np.where(rng.random(600) < 0.5, rng.integers(1, 40, 600) * 1e-20, rng.random(600))
    scores[:2] = -1.0, 1.0
    mask = rng.random(600) < 0.1
    scaled = (scores - scores.min()) / (scores.max() - scores.min())
    assert len(np.unique(scaled)) < len(np.unique(scores))
    row = detection_metrics(scores, mask)
    separate = roc3d_metrics(scaled, mask)  # computed from the scaled scores with their own sort
    for name, value in separate.items():
        assert row[name] == value, name
    positives, negatives = scores[mask], scores[~mask]
    pairs = (positives[:, None] > negatives[None]).sum() + 0.5 * (positives[:, None] == negatives[None]).sum()
    np.testing.assert_allclose(row["auc"], pairs / (mask.sum() * (~mask).sum()), rtol=1e-14)


@pytest.mark.parametrize("block", [7, 333, 10 ** 9])  # under one pixel's bands, ragged, the whole cube
def test_blocked_scaling_gives_the_whole_array_arithmetic(block, monkeypatch):
    monkeypatch.setattr(tuning, "scaling_block_values", lambda: block)
    rng = np.random.default_rng(2)
    cube = rng.integers(-300, 9000, size=(13, 11, 205)).astype(np.int16)[:, :, :200]  # a band selection (a view)
    low, high = float(cube.min()), float(cube.max())
    expected = INPUT_SCALE * (2.0 * ((cube.astype(np.float64) - low) / (high - low)) - 1.0)
    np.testing.assert_array_equal(reference_scaling(cube, low, high), expected)  # elementwise: same rounding
    out = np.empty(cube.shape, np.float32)
    reference_scaling(cube, low, high, out=out)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_rules_follow_the_caches_and_threads(monkeypatch):
    # the VM the constants were first measured on: 2 threads, 1 MiB of L2, a 32 MiB L3
    monkeypatch.setattr(tuning, "machine", lambda: {"l2_bytes": 1 << 20, "llc_bytes": 32 << 20, "cores": 2})
    monkeypatch.setattr(tuning, "_threads", lambda: 2)
    assert tuning.network_chunk() == {"fen": {"cpu": 2}, "spatial": {"cpu": 4}}
    assert tuning.pipeline_chunk() == {"cpu": 4}
    assert tuning.rx_scenes_per_solve(64 * 64, 200) == 1
    assert tuning.scaling_block_values() == 65536
    # 16 threads, a 16 MiB L3: the FEN takes what fits in half of it, the spatial branch 2 per thread
    monkeypatch.setattr(tuning, "machine", lambda: {"l2_bytes": 16 << 20, "llc_bytes": 16 << 20, "cores": 16})
    monkeypatch.setattr(tuning, "_threads", lambda: 16)
    assert tuning.network_chunk() == {"fen": {"cpu": 1}, "spatial": {"cpu": 32}}
    assert tuning.rx_scenes_per_solve(32 * 32, 50) == 16 * 2 ** 20 // (8 * (32 * 32 * 50 + 50 * 50))


def test_cache_levels_read_from_sys(tmp_path):
    for cpu in sorted(tuning.usable_cpus()):
        for index, (level, kind, size, shared) in enumerate([(1, "Data", "32K", str(cpu)),
                                                             (1, "Instruction", "32K", str(cpu)),
                                                             (2, "Unified", "512K", str(cpu)),
                                                             (3, "Unified", "32768K", "0-255")]):
            folder = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
            folder.mkdir(parents=True)
            for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
                (folder / name).write_text(f"{value}\n")
    cores = len(tuning.usable_cpus())
    assert tuning.cache_levels(str(tmp_path)) == {1: cores * 32 << 10, 2: cores * 512 << 10, 3: 32 << 20}


def test_a_calibrated_value_is_read_from_the_cache_file(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setenv(tuning.CACHE_ENV, str(path))
    tuning.cached.cache_clear()
    try:
        assert tuning.gram_blocked_min_channels() == 128
        path.write_text(json.dumps({tuning._machine_key(): {"gram_blocked_min_channels": 64},
                                    "another CPU|2 cores|torch 0": {"gram_blocked_min_channels": 999}}))
        tuning.cached.cache_clear()
        assert tuning.gram_blocked_min_channels() == 64
    finally:
        tuning.cached.cache_clear()


def _small_network(channels: int) -> torch.nn.Module:
    """Conv, BatchNorm (non-trivial statistics: folding matters), ReLU, Conv: ``(N, C, H, W)`` → same."""
    network = torch.nn.Sequential(torch.nn.Conv2d(channels, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16),
                                  torch.nn.ReLU(), torch.nn.Conv2d(16, channels, 1))
    network[1].running_mean.uniform_(-0.5, 0.5)
    network[1].running_var.uniform_(0.5, 2.0)
    return network.eval()


def test_scores_do_not_depend_on_the_chosen_chunks(monkeypatch):
    torch.manual_seed(3)
    fen, spatial = _small_network(140), _small_network(140)  # 140 bands: the covariance may be blocked
    rng = np.random.default_rng(4)
    cubes = [(rng.random((12, 12, 140)) * 0.2 - 0.1).astype(np.float32) for _ in range(5)]
    batch = to_batch(cubes)
    detector = Detector(140, fen, spatial, rx_precision="float64", fusion="sum")  # inference copies built once
    results = []
    for chunk, solve, blocked in ((1, 1, 1), (2, 5, 10 ** 9), (5, 2, 128)):
        monkeypatch.setattr(tuning, "rx_scenes_per_solve", lambda pixels, channels, k=solve: k)
        monkeypatch.setattr(tuning, "gram_blocked_min_channels", lambda b=blocked: b)
        detector.network_chunk = {"fen": {"cpu": chunk}, "spatial": {"cpu": chunk}}
        detector.pipeline_chunk = {"cpu": chunk}
        results.append(detector.score(batch))
    for other in results[1:]:  # float32 features: not bitwise across chunkings (oneDNN picks kernels per size)
        torch.testing.assert_close(other, results[0], rtol=1e-4, atol=1e-4 * float(results[0].max()))


def test_mixed_precision_is_refused_on_the_cpu(tmp_path, capsys):
    code, out, err = call_main("fers.cli.train", "main", ["--stage", "1", "--amp", "--device", "cpu", "--data_path",
                                                          tmp_path, "--run_dir", tmp_path / "run"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("error: --amp: mixed precision runs on a CUDA device"), err
    assert not (tmp_path / "run").exists()


def test_initialisation_is_skipped_only_in_the_loading_thread(random_checkpoints):
    from fers.checkpoints import band_folder, load_spatial_branch
    from fers.initialisation import skipped_initialisation

    filled = {}

    def other_thread():
        filled["other"] = bool(torch.nn.init.ones_(torch.zeros(3)).all())

    with skipped_initialisation():
        filled["here"] = bool(torch.nn.init.ones_(torch.zeros(3)).all())
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert filled == {"here": False, "other": True}
    assert bool(torch.nn.init.ones_(torch.zeros(3)).all())  # restored
    detector = Detector.from_checkpoints(random_checkpoints, 50, "spatial")  # built without initialisation
    expected = load_spatial_branch(band_folder(random_checkpoints, 50), 50).state_dict()
    loaded = detector.spatial.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_openmp_threads_wait_passively_when_set_before_torch_loads(monkeypatch):
    environ = {}
    assert tuning.configure_openmp(environ) is None and environ == {}  # torch already loaded: too late
    monkeypatch.delitem(sys.modules, "torch")
    assert tuning.configure_openmp(environ) == "PASSIVE" and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert tuning.configure_openmp({"GOMP_SPINCOUNT": "1000"}) is None  # the user's own setting wins


def test_scripts_end_without_teardown_with_their_exit_code_and_all_output(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    helped = subprocess.run([sys.executable, str(REPO_ROOT / "test.py"), "--help"], capture_output=True, text=True,
                            timeout=300, env=env)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: test.py")
    assert helped.stdout.rstrip().endswith("also write PNG panels and ROC curves")  # flushed to the end
    # a failing command: exit code 2 and its message; atexit handlers still run. The commands import
    # only what they use (scipy.stats alone was 1.3 s of every start-up; plotting, MATLAB and image
    # readers load when a command reads or writes such a file)
    code = ("import atexit, sys; sys.argv = ['test.py', '--data_path', sys.argv[1]]; "
            "import fers.cli.evaluate, fers.cli.detect, fers.cli.compare; from fers.errors import run_command; "
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})); "
            "atexit.register(lambda: print('atexit', heavy)); run_command(fers.cli.evaluate.had100_main)")
    failed = subprocess.run([sys.executable, "-c", code, tmp_path / "missing"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    assert failed.returncode == 2 and failed.stderr.startswith(f"error: {tmp_path / 'missing'}: HAD100 folder not found")
    assert failed.stdout.strip() == "atexit []"
