"""Data tools: prepare_abu round trip and acceptance, the dataset checker, make_synthetic."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import ABU_DIR, needs_abu, run_script
from fers import data_tools, synthetic
from fers.cli.data import check_main, make_synthetic_main
from fers.datasets import abu_manifest, had100_manifest, load_scene
from fers.errors import FersError
from fers.io import load_mask

SCENES = ("abu-airport-4", "abu-beach-4", "abu-urban-1")  # uint16 191 bands, float64 102, int16 204


def _copy_abu(folder, names=SCENES):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(ABU_DIR / f"{name}.mat", folder / f"{name}.mat")  # copyfile: writable copies
    return folder


def _write_mat(path, cube, mask):
    scipy.io.savemat(path, {"data": cube, "map": mask.astype(np.uint8)})


# --------------------------------------------------------------------------- prepare_abu


@needs_abu
def test_prepare_abu_round_trip_keeps_cube_bytes_and_masks(tmp_path):
    output = tmp_path / "FERS_ABU"
    records = data_tools.prepare_abu(ABU_DIR, output)
    mats = sorted(ABU_DIR.glob("*.mat"))
    assert [r["name"] for r in records] == [p.stem for p in mats]
    for path in mats:
        original = scipy.io.loadmat(path)
        cube = np.load(output / "test" / "aviris" / f"{path.stem}.npy")
        assert cube.dtype == original["data"].dtype and cube.shape == original["data"].shape
        np.testing.assert_array_equal(cube, original["data"])
        png = output / "ground_truth" / "aviris" / f"{path.stem}.png"
        with Image.open(png) as image:
            assert image.mode == "L"
            assert set(np.unique(np.asarray(image))) <= {0, 255}
        np.testing.assert_array_equal(load_mask(png), original["map"] != 0)
    manifest = abu_manifest(output)
    assert [scene.name for scene in manifest] == [p.stem for p in mats]
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


def test_prepare_abu_is_all_or_nothing(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "mats"
    source.mkdir()
    _write_mat(source / "a.mat", rng.random((10, 12, 5)), np.eye(10, 12, dtype=bool))
    _write_mat(source / "b.mat", rng.random((10, 12, 5)), np.zeros((8, 12), dtype=bool))  # wrong map size
    output = tmp_path / "out"
    with pytest.raises(FersError, match=r"b\.mat: ground truth 'map' is 8×12 but the cube is 10×12"):
        data_tools.prepare_abu(source, output)
    assert list(output.iterdir()) == []  # nothing half-written, no staging left
    (source / "b.mat").write_bytes((source / "a.mat").read_bytes()[:300])  # truncated file
    with pytest.raises(FersError, match=r"b\.mat: not a readable \.mat file"):
        data_tools.prepare_abu(source, output)
    assert list(output.iterdir()) == []
    (source / "b.mat").unlink()
    data_tools.prepare_abu(source, output)
    with pytest.raises(FersError, match="already exists; choose an empty `output` or pass `overwrite`"):
        data_tools.prepare_abu(source, output)
    data_tools.prepare_abu(source, output, overwrite=True)
    assert [p.name for p in (output / "test" / "aviris").iterdir()] == ["a.npy"]


@needs_abu
def test_prepared_abu_gives_the_same_aucs_as_the_mat_files(tmp_path, random_checkpoints):
    names = ("abu-beach-4", "abu-urban-1")  # float64 with 102 bands (interpolated to 200), int16 with 204
    mats = _copy_abu(tmp_path / "mat", names)
    prepared = tmp_path / "prepared"
    result = run_script("data/prepare_abu.py", "--abu_dir", mats, "--output", prepared)
    assert result.returncode == 0, result.stderr
    assert "2 scenes written" in result.stdout
    aucs = {}
    for label, folder in (("mat", mats), ("prepared", prepared)):
        save_dir = tmp_path / f"results_{label}"
        result = run_script("FERS_ABU/test.py", "--data_path", folder, "--branches", "spectral",
                            "--input_channel", 200, "--checkpoint_dir", random_checkpoints,
                            "--save_dir", save_dir, "--device", "cpu", "--no_progress", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        scenes = json.loads((save_dir / "results.json").read_text())["scenes"]
        aucs[label] = {row["name"]: row["auc"] for row in scenes}
    assert sorted(aucs["mat"]) == sorted(names)
    assert aucs["prepared"].keys() == aucs["mat"].keys()
    for name in names:
        assert 0.0 < aucs["mat"][name] < 1.0
        np.testing.assert_allclose(aucs["prepared"][name], aucs["mat"][name], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- check


def test_inspect_cube_counts_against_hand_made_cubes():
    cube = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    stats, problems = data_tools.inspect_cube(cube)
    assert problems == [] and stats["minimum"] == 0.0 and stats["maximum"] == 59.0
    cube[:, :, 1] = np.nan  # a NaN band: 20 values
    cube[0, 0, 2] = np.inf
    stats, problems = data_tools.inspect_cube(cube)
    assert (stats["nan_values"], stats["inf_values"]) == (20, 1)
    assert problems == ["20 NaN and 1 Inf value(s) in 2 band(s), 1 band(s) entirely"]
    assert stats["maximum"] == 59.0  # range over finite values
    ints = np.full((3, 3, 2), 100, dtype=np.int16)
    ints[1, 2, 0] = -9999
    ints[2, 2, 1] = -9999
    stats, problems = data_tools.inspect_cube(ints)
    assert stats["nodata_pixels"] == 2 and problems == ["no-data value -9999 in 2 pixel(s)"]
    _, problems = data_tools.inspect_cube(np.full((3, 3, 2), 7.0))
    assert problems == ["constant cube (every value is 7)"]


def test_check_reports_each_problem_of_a_had100_folder(tmp_path):
    root = tmp_path / "had"
    synthetic.write_had100_layout(root, n_train=2, n_test=5, size=16, bands=8, seed=1, n_targets=2)
    test, gt = root / "test" / "aviris_ng", root / "ground_truth" / "aviris_ng"
    clean = data_tools.check_dataset(root)
    assert clean.layout == "had100" and not clean.problems and len(clean.scenes) == 7

    cube = np.load(test / "test_0000.npy")
    cube[3, 4, :] = -9999.0
    np.save(test / "test_0000.npy", cube)
    np.save(test / "test_0001.npy", np.ones((16, 16, 8), np.float32))
    (gt / "test_0002.png").unlink()
    (gt / "test_0003.png").write_bytes((gt / "test_0004.png").read_bytes()[:40])
    shutil.copyfile(gt / "test_0004.png", gt / "extra.png")
    np.save(root / "train" / "aviris_ng" / "train_0001.npy", np.zeros((16, 16), np.float32))  # 2-D
    report = data_tools.check_dataset(root)
    status = {f"{s.group}/{s.name}": s.status for s in report.scenes}
    assert status["test/aviris_ng/test_0000"] == "no-data value -9999 in 1 pixel(s)"
    assert status["test/aviris_ng/test_0001"].startswith("constant cube (every value is 1)")
    assert status["test/aviris_ng/test_0002"] == f"no ground truth (expected {gt / 'test_0002.png'})"
    assert status["test/aviris_ng/test_0003"].startswith("unreadable ground truth: not a readable image")
    assert status["test/aviris_ng/test_0004"] == "OK"
    assert status["test/aviris_ng/extra"] == "ground truth without a cube"
    assert status["train/aviris_ng/train_0001"].startswith("unreadable cube: expected a 3-D cube")
    assert status["train/aviris_ng/train_0000"] == "OK"
    assert len(report.problems) == 6


def test_check_command_passes_a_clean_copy_of_abu_scenes(tmp_path):
    # The checker must accept real data; a synthetic stand-in keeps this test independent of /work/shared.
    folder = tmp_path / "mats"
    folder.mkdir()
    for index in range(2):
        cube, mask = synthetic.make_scene(20, 20, 6, seed=index, n_targets=2)
        _write_mat(folder / f"scene{index}.mat", cube, mask)
    result = run_script("data/check.py", folder, "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 scene(s) OK" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["layout"] == "abu"
    assert [s["anomaly_pixels"] for s in report["scenes"]] == [
        int(synthetic.make_scene(20, 20, 6, seed=i, n_targets=2)[1].sum()) for i in range(2)]


@needs_abu
def test_check_command_reports_corrupted_copies_of_real_scenes(tmp_path, capsys):
    root = tmp_path / "FERS_ABU"
    data_tools.prepare_abu(_copy_abu(tmp_path / "mat", SCENES + ("abu-urban-3", "abu-airport-1")), root)
    assert check_main([str(root)]) == 0
    assert "all 5 scene(s) OK" in capsys.readouterr().out
    assert check_main([str(tmp_path / "mat")]) == 0

    test, gt = root / "test" / "aviris", root / "ground_truth" / "aviris"
    truncated = test / "abu-airport-4.npy"
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(gt / "abu-beach-4.png")  # mismatched mask
    nan_band = np.load(test / "abu-urban-1.npy").astype(np.float32)
    nan_band[:, :, 10] = np.nan
    np.save(test / "abu-urban-1.npy", nan_band)
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(gt / "abu-urban-3.png")  # no anomaly pixel
    result = run_script("data/check.py", root, "--layout", "abu")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    problems = result.stdout.split("scene(s) have problems:")[1]
    expected = {
        f"{truncated}: unreadable cube: not a readable .npy file": "truncated",
        f"{test / 'abu-beach-4.npy'} / {gt / 'abu-beach-4.png'}: ground truth is 50×50 but the cube is 100×100": "",
        f"{test / 'abu-urban-1.npy'}: 10000 NaN and 0 Inf value(s) in 1 band(s), 1 band(s) entirely": "",
        f"{test / 'abu-urban-3.npy'} / {gt / 'abu-urban-3.png'}: ground truth has no anomaly pixel": "",
    }
    for start, word in expected.items():
        line = next((line for line in problems.splitlines() if line.strip().startswith(start)), None)
        assert line is not None, f"missing {start!r} in\n{result.stdout}"
        assert word in line
    assert "4 of 5 scene(s) have problems" in result.stdout
    assert "test/aviris/abu-airport-1" in result.stdout and "abu-airport-1.npy:" not in problems


def test_check_folder_errors_are_one_line(tmp_path, capsys):
    for path, message in ((tmp_path / "missing", "dataset folder not found"),
                          (tmp_path, "neither a HAD100/FERS_ABU folder")):
        with pytest.raises(SystemExit) as exit_info:
            check_main([str(path)])
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith(f"error: {path}: ") and stderr.count("\n") == 1 and message in stderr


# --------------------------------------------------------------------------- make_synthetic


def test_make_synthetic_command_writes_the_generator_dataset(tmp_path, capsys):
    output = tmp_path / "syn"
    result = run_script("data/make_synthetic.py", "--output", output, "--n_train", 2, "--n_test", 2, "--size", 32,
                        "--bands", 20, "--seed", 3)
    assert result.returncode == 0, result.stderr
    assert "plain RX mean AUC" in result.stdout
    reference = tmp_path / "reference"
    synthetic.write_had100_layout(reference, n_train=2, n_test=2, size=32, bands=20, seed=3)
    for split in ("train", "test"):
        for path in sorted((reference / split / "aviris_ng").glob("*.npy")):
            assert (output / split / "aviris_ng" / path.name).read_bytes() == path.read_bytes()
    for scene, expected in zip(had100_manifest(output), had100_manifest(reference)):
        np.testing.assert_array_equal(load_scene(scene)[1], load_scene(expected)[1])
    assert check_main([str(output)]) == 0
    for argv, message in ((["--output", str(output), "--n_test", "1", "--n_train", "0"], "already exists"),
                          (["--output", str(tmp_path / "x"), "--size", "4"], "--size must be at least 16")):
        with pytest.raises(SystemExit) as exit_info:
            make_synthetic_main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
