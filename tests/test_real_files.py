"""Real files that were refused or misread (issue 12): unlabelled scenes with wavelength vectors,
user PNG masks, bands-first cubes, a single scene file as --data_path, no empty folder after a failed
run, per-scene and summary results of detect.py, honest per-scene seconds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import ABU_DIR, BACKGROUND_DIR, call_main, error_line, needs_abu, needs_background, run_detect
from fers.errors import FersError
from fers import io as fio


_call = call_main


def _evaluation_model(checkpoints):
    return ["--branches", "spectral", "--input_channel", 50, "--checkpoint_dir", checkpoints, "--device", "cpu",
            "--no_progress"]


_detect = run_detect


def _scene(rows=24, cols=20, bands=12, seed=0):
    """A cube with a 3×3 anomaly and its mask."""
    rng = np.random.default_rng(seed)
    cube = rng.random((rows, cols, bands)).astype(np.float32)
    mask = np.zeros((rows, cols), bool)
    mask[8:11, 5:8] = True
    cube[mask] += 1.5
    return cube, mask


_error_line = error_line


# --------------------------------------------------------------------------- ground truth inside a scene file


def test_wavelength_vector_is_not_a_ground_truth(tmp_path):
    cube, mask = _scene()
    scipy.io.savemat(tmp_path / "bg.mat", {"data": cube, "wavelengths": np.linspace(400, 2500, 12)[None]})
    scipy.io.savemat(tmp_path / "abu.mat", {"data": cube, "map": mask.astype(np.uint8),
                                            "bands": np.arange(1, 13)[None]})
    np.savez(tmp_path / "scene.npz", data=cube, bands=np.arange(12)[None], truth=mask.astype(np.uint8))
    unlabelled = fio.read_scene(tmp_path / "bg.mat")
    assert unlabelled.mask is None and unlabelled.cube.shape == (24, 20, 12)
    np.testing.assert_array_equal(fio.read_scene(tmp_path / "abu.mat").mask, mask)
    np.testing.assert_array_equal(fio.read_scene(tmp_path / "scene.npz").mask, mask)  # the only array of its size
    assert fio.read_scene(tmp_path / "abu.mat", gt=None).mask is None  # --gt none


def test_several_candidate_ground_truths_need_gt_key(tmp_path):
    cube, mask = _scene()
    scipy.io.savemat(tmp_path / "two.mat", {"data": cube, "targets": mask.astype(np.uint8),
                                            "shadows": np.eye(24, 20)})
    with pytest.raises(FersError, match=r"two.mat: several 2-D variables of the scene's size 24×20 "
                                        r"\(shadows, targets\); name the ground truth with `gt_key`"):
        fio.read_scene(tmp_path / "two.mat")
    np.testing.assert_array_equal(fio.read_scene(tmp_path / "two.mat", gt_key="targets").mask, mask)
    with pytest.raises(FersError, match="no 2-D variable 'nothing'"):
        fio.read_scene(tmp_path / "two.mat", gt_key="nothing")


def test_a_map_of_another_size_is_still_an_error(tmp_path):
    cube, _ = _scene()
    scipy.io.savemat(tmp_path / "bad.mat", {"data": cube, "map": np.zeros((24, 16), np.uint8)})
    with pytest.raises(FersError, match="bad.mat: ground truth is 24×16 but the cube bad.mat is 24×20; they must match"):
        fio.read_scene(tmp_path / "bad.mat")


@needs_background
def test_detect_runs_an_unlabelled_real_scene_without_metrics(tmp_path, capsys):
    scene = BACKGROUND_DIR / "aviris-lacumbre-90x90x224.mat"
    code, out, err = _detect([scene, "--branches", "none", "--tile", 90, "--save_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "no ground truth" in out and "AUC" not in out
    scores = np.load(tmp_path / "out" / "aviris-lacumbre-90x90x224_scores.npy")
    assert scores.shape == (90, 90) and np.isfinite(scores).all() and scores.std() > 0
    row = json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]
    assert row["labelled"] is False and "auc" not in row


@needs_abu
def test_detect_gt_none_skips_the_map_inside_the_file(tmp_path, capsys):
    code, out, err = _detect([ABU_DIR / "abu-beach-3.mat", "--gt", "none", "--branches", "none", "--tile", 100,
                              "--save_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "--gt none" in out
    assert "auc" not in json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]


def test_detect_reads_gt_npz_and_gt_key(tmp_path, capsys):
    cube, mask = _scene()
    np.save(tmp_path / "scene.npy", cube)
    np.savez(tmp_path / "gt.npz", coarse=np.zeros((24, 20)), fine=mask.astype(np.uint8))
    base = [tmp_path / "scene.npy", "--branches", "none", "--input_channel", 12, "--tile", 32]
    code, _, err = _detect([*base, "--gt", tmp_path / "gt.npz", "--save_dir", tmp_path / "a"], capsys)
    assert "cannot tell which variable is the ground truth" in _error_line(code, err)
    code, out, err = _detect([*base, "--gt", tmp_path / "gt.npz", "--gt_key", "fine", "--save_dir", tmp_path / "b"],
                             capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "results.json").read_text())["scenes"][0]["auc"] > 0.99


# --------------------------------------------------------------------------- PNG masks


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


def test_user_png_masks_follow_the_documented_rule(tmp_path):
    _, mask = _scene()
    grey01 = mask.astype(np.uint8)  # a 0/1 grey PNG
    red = np.zeros(mask.shape + (3,), np.uint8)
    red[mask, 0] = 255  # red on black
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count
    rgba[mask, 2] = 200
    _png(tmp_path / "grey01.png", grey01)
    _png(tmp_path / "red.png", red)
    _png(tmp_path / "rgba.png", rgba)
    palette = Image.fromarray(np.where(mask, 0, 1).astype(np.uint8), mode="P")  # index 0 = white anomaly
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    for name in ("grey01", "red", "rgba", "palette"):
        np.testing.assert_array_equal(fio.load_mask(tmp_path / f"{name}.png"), mask, err_msg=name)
    # the HAD100 rule stays for the HAD100 layout: channel 1 >= 128
    assert not fio.load_mask(tmp_path / "red.png", rule="had100").any()
    assert not fio.load_mask(tmp_path / "grey01.png", rule="had100").any()


def test_detect_with_a_red_on_black_png_gets_metrics(tmp_path, capsys):
    cube, mask = _scene()
    np.save(tmp_path / "scene.npy", cube)
    red = np.zeros(mask.shape + (3,), np.uint8)
    red[mask, 0] = 255
    _png(tmp_path / "gt.png", red)
    code, out, err = _detect([tmp_path / "scene.npy", "--gt", tmp_path / "gt.png", "--branches", "none",
                              "--input_channel", 12, "--tile", 32, "--save_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "no anomaly pixel" not in out
    assert json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]["auc"] > 0.99


def test_had100_layout_keeps_the_channel_one_rule(had100_layout, tmp_path):
    from fers.datasets import had100_manifest, load_scene

    gt = had100_layout / "ground_truth" / "aviris_ng" / "scene0.png"
    mask = fio.load_mask(gt)
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    rgb[mask, 1] = 255
    rgb[0:2, 0:2, 0] = 90  # red noise the HAD100 rule ignores
    _png(gt, rgb)
    scene = had100_manifest(had100_layout)[0]
    assert scene.mask_rule == "had100"
    np.testing.assert_array_equal(load_scene(scene)[1], mask)


# --------------------------------------------------------------------------- bands-first cubes


def test_bands_first_heuristic():
    assert fio.looks_bands_first((205, 100, 100))
    assert not fio.looks_bands_first((100, 100, 205))
    assert not fio.looks_bands_first((100, 100, 100))
    assert not fio.looks_bands_first((224, 512, 614))  # no evidence without a ground truth
    assert fio.looks_bands_first((224, 512, 614), [(512, 614)])
    assert not fio.looks_bands_first((205, 100, 100), [(205, 100)])  # the ground truth says rows, cols


def test_bands_first_cube_is_refused_or_transposed(tmp_path):
    cube, mask = _scene(20, 20, 12)
    np.save(tmp_path / "bhw.npy", np.transpose(cube, (2, 0, 1)))
    with pytest.raises(FersError, match=r"bhw.npy: the cube 12×20×20 looks bands-first.*`layout` bhw"):
        fio.load_cube(tmp_path / "bhw.npy", layout="check")
    for layout in ("bhw", "auto"):
        np.testing.assert_array_equal(fio.load_cube(tmp_path / "bhw.npy", layout=layout), cube)
    assert fio.load_cube(tmp_path / "bhw.npy", layout="hwb").shape == (12, 20, 20)
    scipy.io.savemat(tmp_path / "bhw.mat", {"data": np.transpose(cube, (2, 0, 1)), "map": mask.astype(np.uint8)})
    with pytest.raises(FersError, match=r"looks bands-first.*its ground truth is 20×20"):
        fio.read_scene(tmp_path / "bhw.mat")
    loaded = fio.read_scene(tmp_path / "bhw.mat", layout="auto")
    np.testing.assert_array_equal(loaded.cube, cube)
    np.testing.assert_array_equal(loaded.mask, mask)
    assert loaded.layout == "bhw"


def test_detect_bands_first_message_and_layout_flag(tmp_path, capsys):
    cube, mask = _scene(40, 40, 12)
    np.save(tmp_path / "hwb.npy", cube)
    np.save(tmp_path / "bhw.npy", np.ascontiguousarray(np.transpose(cube, (2, 0, 1))))
    np.save(tmp_path / "gt.npy", mask)
    base = ["--gt", tmp_path / "gt.npy", "--branches", "none", "--input_channel", 12, "--tile", 32]
    code, _, err = _detect([tmp_path / "bhw.npy", *base, "--save_dir", tmp_path / "refused"], capsys)
    line = _error_line(code, err)
    assert "bhw.npy" in line and "looks bands-first" in line and "--cube_layout bhw" in line
    assert not (tmp_path / "refused").exists()
    code, _, err = _detect([tmp_path / "hwb.npy", *base, "--save_dir", tmp_path / "a"], capsys)
    assert code == 0, err
    code, out, err = _detect([tmp_path / "bhw.npy", *base, "--layout", "bhw", "--save_dir", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "stored bands-first (transposed)" in out
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "bhw_scores.npy"), np.load(tmp_path / "a" / "hwb_scores.npy"))


def test_fers_abu_bands_first_mat_names_the_layout_not_the_size(tmp_path, capsys, ferd50):
    cube, mask = _scene(30, 30, 60)
    scipy.io.savemat(tmp_path / "scene.mat", {"data": np.transpose(cube, (2, 0, 1)), "map": mask.astype(np.uint8)})
    argv = ["--data_path", tmp_path / "scene.mat", *_evaluation_model(ferd50), "--save_dir", tmp_path / "out"]
    code, _, err = _call("fers.cli.evaluate", "abu_main", argv, capsys)
    line = _error_line(code, err)
    assert "looks bands-first" in line and "they must match" not in line
    code, out, err = _call("fers.cli.evaluate", "abu_main", [*argv, "--cube_layout", "auto"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["scenes"][0]["auc"] > 0.9


# --------------------------------------------------------------------------- one scene file as --data_path


@needs_abu
def test_fers_abu_takes_a_single_mat_file(tmp_path, capsys, ferd50):
    argv = ["--data_path", ABU_DIR / "abu-beach-3.mat", *_evaluation_model(ferd50), "--save_dir", tmp_path / "out"]
    code, out, err = _call("fers.cli.evaluate", "abu_main", argv, capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["scenes"]
    assert [row["name"] for row in rows] == ["abu-beach-3"] and 0.5 < rows[0]["auc"] <= 1.0


@needs_background
def test_fers_abu_runs_unlabelled_scenes_without_metrics(tmp_path, capsys, ferd50):
    argv = ["--data_path", BACKGROUND_DIR / "aviris-moffett-50x50x189.mat", *_evaluation_model(ferd50),
            "--save_dir", tmp_path / "out"]
    code, out, err = _call("fers.cli.evaluate", "abu_main", argv, capsys)
    assert code == 0, err
    assert "no ground truth" in out and "(1 without ground truth left out)" in out
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["scenes_labelled"] == 0 and payload["scenes"][0]["labelled"] is False
    assert np.isnan(payload["scenes"][0]["auc"])
    assert scipy.io.loadmat(tmp_path / "out" / "scores.mat")["scores"].shape == (1, 50, 50)


def test_compare_takes_a_single_mat_file_and_test_py_explains_a_file(tmp_path, capsys):
    cube, mask = _scene(30, 30, 60)
    scipy.io.savemat(tmp_path / "scene.mat", {"data": cube, "map": mask.astype(np.uint8)})
    code, out, err = _call("fers.cli.compare", "main", ["--data_path", tmp_path / "scene.mat", "--methods", "grx",
                                                        "--input_channel", 50, "--device", "cpu", "--no_progress",
                                                        "--save_dir", tmp_path / "cmp"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["auc"] > 0.99
    code, _, err = _call("fers.cli.evaluate", "had100_main", ["--data_path", tmp_path / "scene.mat",
                                                              "--save_dir", tmp_path / "t"], capsys)
    assert "a single file, not the HAD100 root" in _error_line(code, err)


# --------------------------------------------------------------------------- a failed run leaves nothing


def test_failed_runs_leave_no_results_folder(had100_layout, tmp_path, capsys):
    missing = tmp_path / "no_checkpoints"
    cases = {
        "test": ("fers.cli.evaluate", "had100_main", ["--data_path", had100_layout, "--input_channel", 64]),
        "abu": ("fers.cli.evaluate", "abu_main", ["--data_path", had100_layout]),
        "compare": ("fers.cli.compare", "main", ["--data_path", had100_layout, "--layout", "had100",
                                                 "--methods", "ferd"]),
        "detect": ("fers.cli.detect", "main", [had100_layout / "test" / "aviris_ng" / "scene0.npy"]),
    }
    for name, (module, function, argv) in cases.items():
        save_dir = tmp_path / "results" / name
        code, _, err = _call(module, function, [*argv, "--checkpoint_dir", missing, "--save_dir", save_dir,
                                                "--no_progress"], capsys)
        _error_line(code, err)
        assert not (tmp_path / "results").exists(), name


def test_output_helpers_remove_the_folders_they_created(tmp_path):
    fio.check_writable_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError):
        with fio.OutputFolder(tmp_path / "c" / "d") as staging:
            fio.write_text(staging / "x.txt", "x")
            raise ValueError("detector failed")
    assert not (tmp_path / "c").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with fio.OutputFolder(tmp_path / "kept"):
            raise ValueError("failed")
    assert (tmp_path / "kept").is_dir()  # a folder that was there before stays


# --------------------------------------------------------------------------- results of several scenes


def test_detect_into_one_folder_keeps_every_scene(tmp_path, capsys):
    out = tmp_path / "out"
    aucs = {}
    for seed in (1, 2):
        cube, mask = _scene(seed=seed)
        if seed == 2:
            mask[0, 0] = True  # a different ground truth: a different AUC
        np.save(tmp_path / f"s{seed}.npy", cube)
        np.save(tmp_path / f"g{seed}.npy", mask)
        code, _, err = _detect([tmp_path / f"s{seed}.npy", "--gt", tmp_path / f"g{seed}.npy", "--branches", "none",
                                "--input_channel", 12, "--tile", 32, "--save_dir", out], capsys)
        assert code == 0, err
        aucs[f"s{seed}"] = json.loads((out / f"s{seed}_results.json").read_text())["scene"]["auc"]
    assert aucs["s1"] != aucs["s2"]
    summary = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in summary["scenes"]] == ["s1", "s2"]
    assert [row["auc"] for row in summary["scenes"]] == [aucs["s1"], aucs["s2"]]
    assert summary["mean_auc"] == pytest.approx(np.mean(list(aucs.values())))
    assert summary["scenes_covered"] == 2 and "warning" not in summary
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [row["name"] for row in rows] == ["s1", "s2", "mean"]
    assert float(rows[2]["auc"]) == pytest.approx(summary["mean_auc"])
    assert sorted(p.name for p in out.glob("*_scores.npy")) == ["s1_scores.npy", "s2_scores.npy"]


# --------------------------------------------------------------------------- honest seconds


def test_batch_seconds_are_labelled_as_batch_averages(had100_layout, tmp_path, capsys, ferd50):
    argv = ["--data_path", had100_layout, *_evaluation_model(ferd50), "--batch_size", 2, "--save_dir", tmp_path / "out"]
    code, out, err = _call("fers.cli.evaluate", "had100_main", argv, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = payload["scenes"]
    assert [row["batch_scenes"] for row in rows] == [2, 2, 1]  # three 64×64 scenes in batches of 2
    assert rows[0]["seconds_batch_average"] == rows[1]["seconds_batch_average"] == rows[0]["seconds"]
    assert "not measured one by one" in payload["seconds_note"]
    assert "averaged over a batch of 2" in out
