"""The benchmark harness of ``compare.py``: other methods' maps (``--maps``), mean ± std and the
paired Wilcoxon test against the best method, the protocol manifest (``--protocol``), and the CRD
baseline, each against a plain NumPy/SciPy reference written here."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import scipy.io
import torch

from conftest import ABU_DIR, call_main, needs_abu
from fers.errors import FersError, ParameterError
from fers.method_maps import load_method_maps, load_score_map, match_map_files, parse_map_sources
from fers.metrics import detection_metrics
from fers.statistics import MIN_TEST_SCENES, compare_methods, mean_std, wilcoxon_signed_rank

SCENES = 7  # enough for a p-value (>= MIN_TEST_SCENES differing scenes)
SHAPE = (18, 20)
BANDS = 12


# --------------------------------------------------------------------------- statistics


def _signed_rank_reference(differences: np.ndarray) -> tuple[float, float]:
    """``(W = min(W+, W−), two-sided exact p)`` by enumerating all 2ⁿ sign patterns (no ties)."""
    nonzero = differences[differences != 0]
    ranks = np.empty(nonzero.size)
    ranks[np.argsort(np.abs(nonzero))] = np.arange(1, nonzero.size + 1)
    w_plus = ranks[nonzero > 0].sum()
    observed = min(w_plus, ranks.sum() - w_plus)
    signs = np.array(list(itertools.product((0, 1), repeat=nonzero.size)))
    plus = signs @ ranks
    return observed, float(np.mean(np.minimum(plus, ranks.sum() - plus) <= observed + 1e-9))


def test_mean_std_is_numpys_sample_statistics_over_defined_values():
    values = np.array([0.91, 0.95, math.nan, 0.88, 0.99, math.inf])
    finite = values[np.isfinite(values)]
    result = mean_std(values)
    np.testing.assert_allclose([result["mean"], result["std"]], [np.mean(finite), np.std(finite, ddof=1)], rtol=1e-14)
    assert result["n"] == 4
    assert math.isnan(mean_std([0.5])["std"]) and mean_std([math.nan])["n"] == 0


@pytest.mark.parametrize("seed, n, zeros", [(0, 7, 0), (1, 10, 2), (2, 12, 1)])
def test_wilcoxon_equals_an_exhaustive_sign_enumeration(seed, n, zeros):
    rng = np.random.default_rng(seed)
    reference = rng.uniform(0.8, 1.0, n)
    values = reference + rng.normal(0.01, 0.02, n)
    values[:zeros] = reference[:zeros]  # zero differences: dropped (Wilcoxon's rule)
    values[-1] = math.nan  # an undefined scene: not a pair
    result = wilcoxon_signed_rank(values, reference)
    statistic, p_value = _signed_rank_reference((values - reference)[:-1])
    assert result["pairs"] == n - 1 and result["n"] == n - 1 - zeros
    assert result["zero_method"] == "wilcox" and result["method"] == "exact"
    np.testing.assert_allclose(result["statistic"], statistic, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["p_value"], p_value, rtol=1e-12)
    np.testing.assert_allclose(result["median_difference"], np.median((values - reference)[:-1]), rtol=1e-14)


def test_wilcoxon_below_six_differing_scenes_reports_no_p_and_says_why():
    reference = np.array([0.9, 0.8, 0.95, 0.7, 0.85, 0.99, 0.9])
    values = reference.copy()
    values[:5] += [0.01, -0.02, 0.03, 0.04, 0.05]  # 5 differences, 2 zeros
    result = wilcoxon_signed_rank(values, reference)
    assert result["n"] == 5 < MIN_TEST_SCENES and result["p_value"] is None
    assert result["statistic"] == _signed_rank_reference(values - reference)[0]
    assert "2/2^5 = 0.0625" in result["note"]
    same = wilcoxon_signed_rank(reference, reference)
    assert same["n"] == 0 and same["statistic"] is None and "no scene where the two differ" in same["note"]


def test_compare_methods_tests_each_method_against_the_best_on_shared_scenes():
    rng = np.random.default_rng(4)
    table = {"a": rng.uniform(0.8, 0.9, 8), "b": rng.uniform(0.9, 1.0, 8), "c": rng.uniform(0.7, 1.0, 8)}
    table["c"][2] = math.nan
    rows = [{"scene": f"s{i}", "method": m, "auc": table[m][i], "f1": table[m][i] / 2} for m in table for i in range(8)]
    result = compare_methods(rows, ["a", "b", "c"], ["auc", "f1"])
    assert result["best"] == "b" and result["methods"]["b"]["test"] is None
    for method in ("a", "c"):
        expected = wilcoxon_signed_rank(table[method], table["b"])
        assert result["methods"][method]["test"] == expected
        finite = table[method][np.isfinite(table[method])]
        np.testing.assert_allclose(result["methods"][method]["std"]["f1"], np.std(finite / 2, ddof=1), rtol=1e-14)
    assert result["methods"]["c"]["test"]["pairs"] == 7 and result["methods"]["c"]["n"]["auc"] == 7


# --------------------------------------------------------------------------- CRD


@pytest.mark.parametrize("bands, win_in, win_out, lam", [(30, 3, 7, 1e-2), (12, 3, 9, 1e-6), (40, 1, 5, 1e-4)])
def test_crd_equals_a_per_pixel_numpy_loop(bands, win_in, win_out, lam):
    from fers.detectors import crd_scores, crd_scores_numpy

    cube = np.random.default_rng(bands).random((bands, 16, 18)) + 2.0  # 288 pixels, ring cut at every border
    expected = crd_scores_numpy(np.moveaxis(cube, 0, 2), win_in, win_out, lam)
    scores = crd_scores(torch.from_numpy(cube), win_in, win_out, lam)
    assert scores.shape == (16, 18) and scores.dtype == torch.float64
    # solve-based: the systems' condition (up to ~1e8 at λ = 1e-6) bounds the agreement, not bitwise
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)


@needs_abu
def test_crd_on_a_real_abu_crop_and_through_the_public_api():
    import fers
    from fers.detectors import crd_scores_numpy

    contents = scipy.io.loadmat(ABU_DIR / "abu-beach-3.mat")
    crop = contents["data"][40:56, 30:46, :].astype(np.float64)  # 256 pixels, 188 bands
    expected = crd_scores_numpy(crop, 3, 7, 1e-6)
    np.testing.assert_allclose(fers.crd_scores(crop, 3, 7, 1e-6), expected, rtol=1e-6)


def test_crd_refuses_bad_windows_and_lambda():
    from fers.detectors import crd_scores

    cube = torch.rand(4, 8, 8)
    for kwargs, name in (({"win_in": 2}, "`win_in`"), ({"win_in": 5, "win_out": 5}, "`win_out`"),
                         ({"lam": 0.0}, "`lam`")):
        with pytest.raises(ParameterError, match=name):
            crd_scores(cube, **{"win_in": 3, "win_out": 7, "lam": 1e-3, **kwargs})
    with pytest.raises(FersError, match="no background"):
        crd_scores(torch.rand(4, 2, 2), 3, 5)


# --------------------------------------------------------------------------- maps of other methods


@pytest.fixture
def scenes(tmp_path):
    """SCENES small ABU-style .mat scenes (data, map) with a weak anomaly each: AUCs below 1."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "data"
    folder.mkdir()
    endmembers = rng.uniform(0.2, 1.0, (3, BANDS))
    for index in range(SCENES):
        cube = rng.dirichlet(np.ones(3), SHAPE) @ endmembers + 0.02 * rng.standard_normal(SHAPE + (BANDS,))
        mask = np.zeros(SHAPE, np.uint8)
        mask[5 + index % 4:8 + index % 4, 6:8] = 1
        cube[mask == 1] += rng.uniform(0.0, 0.06, BANDS)
        scipy.io.savemat(folder / f"scene-{index}.mat", {"data": cube, "map": mask})
    return folder


def _other_maps(folder, data, name_of=lambda scene: f"{scene}.mat", seed=9, times=True):
    """A folder of another method's maps: the scene's band energy plus noise, saved as .mat ``R``
    (with a ground-truth ``map`` beside it, as MATLAB scripts often keep) and a time."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    maps = {}
    for path in sorted(data.glob("*.mat")):
        contents = scipy.io.loadmat(path)
        scores = np.linalg.norm(contents["data"] - contents["data"].mean((0, 1)), axis=2) + rng.normal(0, 0.05, SHAPE)
        maps[path.stem] = scores
        scipy.io.savemat(folder / name_of(path.stem), {"R": scores, "map": contents["map"], "time": 0.5})
    return maps


def test_map_files_match_by_stem_common_affix_or_pattern(tmp_path, caplog):
    names = ["scene-0", "scene-1", "scene-10"]
    plain, affixed = tmp_path / "plain", tmp_path / "affixed"
    for folder, template in ((plain, "{}.npy"), (affixed, "CRD_{}_result.mat")):
        folder.mkdir()
        for name in names:
            (folder / template.format(name)).write_bytes(b"")
    (plain / "notes.npy").write_bytes(b"")
    found = match_map_files("M", plain, names)
    assert {scene: path.name for scene, path in found.files.items()} == {n: f"{n}.npy" for n in names}
    assert [p.name for p in found.extras] == ["notes.npy"]
    found = match_map_files("M", affixed, names)
    assert found.files["scene-1"].name == "CRD_scene-1_result.mat" and found.pattern.endswith("CRD_{scene}_result.*")
    found = match_map_files("M", str(affixed / "CRD_{scene}_result.mat"), names)
    assert found.files["scene-10"] == affixed / "CRD_scene-10_result.mat"
    (affixed / "CRD_scene-10_result.mat").unlink()
    with pytest.raises(FersError, match=r"no map of M for scene\(s\) scene-10 .*CRD_\{scene\}_result"):
        match_map_files("M", affixed, names)
    (plain / "scene-1.mat").write_bytes(b"")
    with pytest.raises(FersError, match="2 files for scene scene-1 of M"):
        match_map_files("M", plain, names)


def test_score_maps_are_found_like_cubes_and_checked(tmp_path):
    scores = np.arange(20.0).reshape(4, 5)
    scipy.io.savemat(tmp_path / "a.mat", {"R": scores, "map": scores > 10, "time": 1.25,
                                          "wavelengths": np.ones((1, 9))})
    array, seconds = load_score_map(tmp_path / "a.mat", (4, 5), "M", "a")
    np.testing.assert_array_equal(array, scores)
    assert seconds == 1.25
    scipy.io.savemat(tmp_path / "t.mat", {"R": scores.T})
    with pytest.raises(FersError, match=r"t.mat: the M map of scene t is 5×4 but the scene is 4×5; it looks transp"):
        load_score_map(tmp_path / "t.mat", (4, 5), "M", "t")
    np.save(tmp_path / "small.npy", scores[:3])
    with pytest.raises(FersError, match=r"is 3×5 but the scene is 4×5; save the map at the scene's size"):
        load_score_map(tmp_path / "small.npy", (4, 5), "M", "small")
    bad = scores.copy()
    bad[1, 1] = math.nan
    np.savez(tmp_path / "nan.npz", scores=bad)
    with pytest.raises(FersError, match=r"nan.npz: the M map of scene nan holds 1 NaN or Inf value"):
        load_score_map(tmp_path / "nan.npz", (4, 5), "M", "nan")
    scipy.io.savemat(tmp_path / "two.mat", {"first": scores, "second": scores})
    with pytest.raises(FersError, match="cannot tell which variable is the anomaly map of M.*name it 'scores'"):
        load_score_map(tmp_path / "two.mat", (4, 5), "M", "two")


def test_map_names_are_checked(tmp_path):
    assert parse_map_sources(["CRD=a", "KIFD = b/{scene}.mat"], ["grx"]) == {"CRD": "a", "KIFD": "b/{scene}.mat"}
    with pytest.raises(FersError, match="`maps` crd: the name is given twice"):
        parse_map_sources(["CRD=a", "crd=b"])
    with pytest.raises(FersError, match="`maps` GRX: the name is a built-in method"):
        parse_map_sources(["GRX=a"], ["grx", "GRX"])
    with pytest.raises(FersError, match="expected NAME=FOLDER"):
        parse_map_sources(["just-a-folder"])


def test_times_come_from_the_file_or_times_csv(tmp_path, scenes):
    folder = tmp_path / "maps"
    _other_maps(folder, scenes)
    scipy.io.savemat(folder / "scene-0.mat", {"R": np.ones(SHAPE)})  # no time inside
    (folder / "times.csv").write_text("scene,seconds\nscene-0,2.5\nscene-1,9\n")
    loaded = load_method_maps("M", folder, {f"scene-{i}": SHAPE for i in range(SCENES)})
    assert loaded.seconds["scene-0"] == 2.5 and loaded.seconds["scene-1"] == 0.5  # the file's own time wins
    assert loaded.manifest()["times"]["file"].endswith("times.csv")


# --------------------------------------------------------------------------- compare.py


def _compare(argv, capsys):
    return call_main("fers.cli.compare", "main", ["--input_channel", BANDS, "--no_progress", *argv], capsys)


def _csv(folder) -> list:
    return list(csv.DictReader((folder / "comparison.csv").open()))


def test_compare_scores_other_maps_on_the_same_protocol(tmp_path, scenes, capsys):
    maps = _other_maps(tmp_path / "maps", scenes)
    _other_maps(tmp_path / "noisy", scenes, name_of=lambda s: f"KIFD_{s}.mat", seed=3)
    (tmp_path / "maps" / "readme.npy").write_bytes(b"")
    code, out, err = _compare(["--data_path", scenes, "--methods", "grx", "--maps", f"MINE={tmp_path / 'maps'}",
                               "--maps", f"KIFD={tmp_path / 'noisy'}", "--save_dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "readme.npy" in err and "belong to no scene" in err
    rows = _csv(tmp_path / "out")
    for index in range(SCENES):
        name = f"scene-{index}"
        row = next(r for r in rows if r["scene"] == name and r["method"] == "MINE")
        mask = scipy.io.loadmat(scenes / f"{name}.mat")["map"] != 0
        expected = detection_metrics(maps[name], mask)
        for metric in ("auc", "auc_dtau", "auc_ftau", "auc_od", "snpr_db", "f1"):
            np.testing.assert_allclose(float(row[metric]), expected[metric], rtol=1e-12, err_msg=(name, metric))
        assert float(row["seconds"]) == 0.5 and row["seconds_source"] == "given"
    payload = json.loads((tmp_path / "out" / "comparison.json").read_text())
    statistics = payload["statistics"]
    auc = {m: np.array([float(r["auc"]) for r in rows if r["method"] == m and r["scene"].startswith("scene-")])
           for m in ("grx", "MINE", "KIFD")}
    best = max(auc, key=lambda m: auc[m].mean())
    assert statistics["best"] == best
    for method in set(auc) - {best}:
        test = statistics["methods"][method]["test"]
        statistic, p_value = _signed_rank_reference(auc[method] - auc[best])
        np.testing.assert_allclose([test["statistic"], test["p_value"]], [statistic, p_value], rtol=1e-9)
        mean_row = next(r for r in rows if r["scene"] == "mean" and r["method"] == method)
        assert mean_row["vs_best"] == best and float(mean_row["wilcoxon_p"]) == pytest.approx(p_value, rel=1e-9)
    mean_row = next(r for r in rows if r["scene"] == "mean" and r["method"] == "KIFD")
    np.testing.assert_allclose([float(mean_row["auc"]), float(mean_row["std_auc"])],
                               [np.mean(auc["KIFD"]), np.std(auc["KIFD"], ddof=1)], rtol=1e-9)
    assert any(line.startswith("KIFD") and "±" in line for line in out.splitlines())
    assert "Wilcoxon signed-rank" in out and f"std ({SCENES})" in out
    protocol = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert set(protocol["maps"]) == {"MINE", "KIFD"} and len(protocol["maps"]["KIFD"]["files"]) == SCENES


@pytest.mark.parametrize("problem", ["missing", "size", "nan", "twice", "nothing"])
def test_compare_refuses_bad_maps_cleanly(problem, tmp_path, scenes, capsys):
    folder = tmp_path / "maps"
    _other_maps(folder, scenes)
    extra = []
    if problem == "missing":
        (folder / "scene-3.mat").unlink()
        fragments = ["no map of MINE for scene(s) scene-3"]
    elif problem == "size":
        scipy.io.savemat(folder / "scene-2.mat", {"R": np.ones(SHAPE[::-1])})
        fragments = ["scene-2.mat", f"is {SHAPE[1]}×{SHAPE[0]} but the scene is {SHAPE[0]}×{SHAPE[1]}", "transposed"]
    elif problem == "nan":
        scipy.io.savemat(folder / "scene-1.mat", {"R": np.full(SHAPE, np.inf)})
        fragments = ["scene-1.mat", "NaN or Inf"]
    elif problem == "twice":
        extra = ["--maps", f"Mine={folder}"]
        fragments = ["--maps Mine: the name is given twice (MINE)"]
    else:
        extra = ["--methods", "none"]
        fragments = []
    argv = ["--data_path", scenes, "--methods", "grx", "--maps", f"MINE={folder}", *extra,
            "--save_dir", tmp_path / "out"]
    if problem == "nothing":
        argv = ["--data_path", scenes, "--methods", "none", "--save_dir", tmp_path / "out"]
        fragments = ["--methods none needs at least one --maps"]
    code, out, err = _compare(argv, capsys)
    assert code == 2 and "Traceback" not in err, (code, err)
    assert all(fragment in err for fragment in fragments), err
    assert not (tmp_path / "out").exists()


def test_protocol_round_trip_and_refusals(tmp_path, scenes, capsys):
    _other_maps(tmp_path / "maps", scenes)
    first = tmp_path / "first"
    code, _, err = _compare(["--data_path", scenes, "--methods", "grx,crd", "--crd_windows", "3,7",
                             "--maps", f"MINE={tmp_path / 'maps'}", "--save_dir", first], capsys)
    assert code == 0, err
    protocol = json.loads((first / "protocol.json").read_text())
    assert [s["name"] for s in protocol["scenes"]] == [f"scene-{i}" for i in range(SCENES)]
    assert protocol["scenes"][0]["file"] == "scene-0.mat" and protocol["scenes"][0]["band_indices"] == f"0:{BANDS}"
    assert protocol["options"]["crd_windows"] == [3, 7] and protocol["options"]["methods"] == ["grx", "crd"]
    assert protocol["detectors"]["crd"]["border"] == "cut" and protocol["fers_version"]
    # the data moved: --data_path points to the copy, the hashes say it is the same data
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in scenes.glob("*.mat"):
        (moved / path.name).write_bytes(path.read_bytes())
    second = tmp_path / "second"
    code, out, err = _compare(["--protocol", first / "protocol.json", "--data_path", moved, "--save_dir", second],
                              capsys)
    assert code == 0, err
    assert "CRD" in out
    before, after = _csv(first), _csv(second)
    assert [(r["scene"], r["method"]) for r in before] == [(r["scene"], r["method"]) for r in after]
    for old, new in zip(before, after):
        for metric in ("auc", "auc_od", "snpr_db", "f1"):
            np.testing.assert_allclose(float(new[metric]), float(old[metric]), rtol=1e-9,
                                       err_msg=(old["scene"], metric))

    def refused(argv, *fragments):
        code, _, err = _compare(["--protocol", first / "protocol.json", "--save_dir", tmp_path / "refused", *argv],
                                capsys)
        assert code == 2 and "Traceback" not in err, err
        assert all(fragment in err for fragment in fragments), err
        assert not (tmp_path / "refused").exists()

    refused(["--crd_windows", "5,11"], "--crd_windows 5,11 conflicts with the protocol's 3,7")
    contents = scipy.io.loadmat(moved / "scene-4.mat")
    scipy.io.savemat(moved / "scene-4.mat", {"data": contents["data"] * 1.01, "map": contents["map"]})
    refused(["--data_path", moved], "scene-4.mat", "scene file of scene scene-4 differs from the protocol", "SHA-256")
    (moved / "scene-4.mat").unlink()
    refused(["--data_path", moved], "scene-4 of the protocol", "are not there")
    scipy.io.savemat(tmp_path / "maps" / "scene-6.mat", {"R": np.ones(SHAPE)})
    refused([], "scene-6.mat", "the MINE map of scene scene-6 differs from the protocol")
