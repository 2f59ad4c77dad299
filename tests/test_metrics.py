"""Metrics against scikit-learn, hand-derived cases, an independent brute-force 3D-ROC, and the
independent float64 RX reference values of the shared ABU scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import ABU_DIR, REFERENCE_DIR, assert_matches_published, needs_abu, needs_reference
from fers.detectors import rx_scores
from fers.io import load_cube, load_mask
from fers.metrics import (METRIC_NAMES, auc, detection_metrics, f1_optimal_threshold, mean_ignoring_nan,
                          roc3d_metrics, tie_sensitivity)


def brute_force_3d_roc(scores, mask) -> dict:
    """Chang's 3D-ROC straight from the definitions: scores min-max scaled, for each unique τ
    P_D(τ) = mean(s ≥ τ | target), P_F(τ) = mean(s ≥ τ | background), trapezoid areas."""
    scores = np.asarray(scores, float).ravel()
    mask = np.asarray(mask, bool).ravel()
    s = (scores - scores.min()) / (scores.max() - scores.min())
    taus = np.unique(s)
    pd = np.array([(s[mask] >= t).mean() for t in taus])
    pf = np.array([(s[~mask] >= t).mean() for t in taus])
    # ROC from the highest threshold: starts at (0, 0).
    roc_pf = np.r_[0.0, pf[::-1]]
    roc_pd = np.r_[0.0, pd[::-1]]
    df = np.trapezoid(roc_pd, roc_pf)
    dtau = np.trapezoid(pd, taus)
    ftau = np.trapezoid(pf, taus)
    return {"auc_df": df, "auc_dtau": dtau, "auc_ftau": ftau, "auc_td": df + dtau, "auc_bs": df - ftau,
            "auc_tdbs": dtau - ftau, "auc_odp": dtau + 1 - ftau, "auc_od": df + dtau - ftau,
            "snpr_db": 10 * math.log10(dtau / ftau)}


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=500), 1)  # many ties
    mask = rng.random(500) < 0.1
    mask[:2] = True
    np.testing.assert_allclose(auc(scores, mask), roc_auc_score(mask, scores), rtol=1e-12)


def test_auc_hand_derived_with_ties():
    # positives {0.4, 0.8}, negatives {0.1, 0.4}: pairs 1 + ½ (tie) + 1 + 1 = 3.5 of 4.
    assert auc([0.1, 0.4, 0.4, 0.8], [False, True, False, True]) == pytest.approx(0.875, abs=1e-15)


def test_roc3d_hand_derived():
    # s = [0, .5, .5, 1], targets {.5, 1}: τ ∈ {0, .5, 1}; P_D = 1, 1, ½; P_F = 1, ½, 0.
    metrics = roc3d_metrics([0.0, 0.5, 0.5, 1.0], [False, False, True, True])
    expected = {"auc_df": 0.875, "auc_dtau": 0.875, "auc_ftau": 0.5, "auc_td": 1.75, "auc_bs": 0.375,
                "auc_tdbs": 0.375, "auc_odp": 1.375, "auc_od": 1.25, "snpr_db": 10 * math.log10(1.75)}
    assert set(metrics) == set(METRIC_NAMES)
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_roc3d_equals_brute_force_on_random_scores():
    rng = np.random.default_rng(5)
    scores = np.round(rng.gamma(2.0, size=800), 2) * 3 + 7  # ties, offset and scale
    mask = rng.random(800) < 0.05
    scores[mask] += 2
    mine, reference = roc3d_metrics(scores, mask), brute_force_3d_roc(scores, mask)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(mine[name], reference[name], rtol=1e-10, err_msg=name)


def test_adaptive_variant_clips_at_the_median_target_score():
    scores = np.array([0.0, 1.0, 2.0, 10.0, 30.0, 4.0])
    mask = np.array([False, False, True, True, True, False])
    adaptive = roc3d_metrics(scores, mask, adaptive=True)
    clipped = np.minimum(scores, 10.0)  # median of the target scores {2, 10, 30}
    reference = brute_force_3d_roc(clipped, mask)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(adaptive[name], reference[name], rtol=1e-12, err_msg=name)
    # Clipping ties the two brightest targets at τ = 1, raising AUC(D, τ) against the plain variant.
    assert adaptive["auc_dtau"] > roc3d_metrics(scores, mask)["auc_dtau"]
    assert adaptive["auc_df"] == pytest.approx(auc(clipped, mask))


def test_f1_optimal_threshold_hand_derived():
    # s ≥ .2 flags {.2, .3, .4, .5}: TP 3, FP 1 → P ¾, R 1, F1 6/7, the best of the five thresholds.
    best = f1_optimal_threshold([0.1, 0.2, 0.3, 0.4, 0.5], [False, True, False, True, True])
    assert best == pytest.approx({"threshold": 0.2, "f1": 6 / 7, "precision": 0.75, "recall": 1.0})


def test_no_anomaly_gives_nan_and_a_warning():
    scores, mask = np.arange(9.0), np.zeros(9, bool)
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        assert math.isnan(auc(scores, mask))
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        assert all(math.isnan(v) for v in roc3d_metrics(scores, mask).values())
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        row = detection_metrics(scores, mask, adaptive=True)
    assert all(math.isnan(v) for v in row.values())
    assert {"auc", "f1", "f1_threshold", "adaptive_auc_dtau"} <= set(row)
    assert mean_ignoring_nan([0.5, math.nan, 1.0]) == (0.75, 2)


def test_detection_metrics_row_is_consistent():
    rng = np.random.default_rng(2)
    scores = rng.random(300)
    mask = scores + 0.3 * rng.random(300) > 1.0
    row = detection_metrics(scores, mask, adaptive=True)
    assert row["auc"] == pytest.approx(roc_auc_score(mask, scores), abs=1e-12)
    assert row["auc_df"] == pytest.approx(row["auc"], abs=1e-12)
    assert row["f1"] == pytest.approx(f1_optimal_threshold(scores, mask)["f1"])
    assert row["adaptive_auc_dtau"] == pytest.approx(roc3d_metrics(scores, mask, adaptive=True)["auc_dtau"])


def test_tie_sensitivity_bounds_every_way_of_breaking_ties():
    # 40 distinct levels, each taken by several pixels of both classes: any split of the ties by
    # sub-ulp-like offsets must stay within the bound, and the bound must not be vacuous
    rng = np.random.default_rng(4)
    levels = np.sort(rng.random(40))
    tied = levels[rng.integers(0, 40, 600)]
    mask = rng.random(600) < 0.4 * tied + 0.05
    bound = tie_sensitivity(tied, mask)
    exact = {"auc": auc(tied, mask), **roc3d_metrics(tied, mask)}
    worst = dict.fromkeys(exact, 0.0)
    for draw in range(60):
        split = tied + 1e-12 * rng.random(600)  # far below the gaps between levels
        moved = {"auc": auc(split, mask), **roc3d_metrics(split, mask)}
        for name in exact:
            worst[name] = max(worst[name], abs(moved[name] - exact[name]))
    for name in exact:
        assert worst[name] <= bound[name] * (1 + 1e-9) + 1e-12, name
    assert worst["auc_dtau"] > 0.1 * bound["auc_dtau"] > 0  # the bound is of the size of the effect


def test_tie_sensitivity_is_zero_without_ties():
    rng = np.random.default_rng(5)
    scores = rng.permutation(np.linspace(0.0, 1.0, 500))
    mask = scores > 0.9
    assert all(value == 0.0 for value in tie_sensitivity(scores, mask).values())


def _reference():
    return json.loads((REFERENCE_DIR / "abu-rx-reference.json").read_text())


ABU_SCENES = sorted(p.stem for p in ABU_DIR.glob("*.mat")) if ABU_DIR.is_dir() else []


@needs_abu
@needs_reference
@pytest.mark.parametrize("scene", ABU_SCENES)
def test_rx_metrics_match_the_abu_reference(scene):
    expected = _reference()[scene]
    cube = load_cube(ABU_DIR / f"{scene}.mat")
    mask = load_mask(ABU_DIR / f"{scene}.mat")
    assert list(cube.shape) == expected["shape"] and int(mask.sum()) == expected["anomaly_pixels"]

    def rx(bands):
        data = torch.from_numpy(np.ascontiguousarray(np.transpose(cube[:, :, :bands], (2, 0, 1))).astype(np.float64))
        return rx_scores(data[None], "float64")[0].numpy()

    scores = rx(cube.shape[2])
    metrics = roc3d_metrics(scores, mask)
    for name in METRIC_NAMES:  # tolerances per measure: see fers.metrics.tie_sensitivity
        assert_matches_published(metrics[name], expected["rx_3droc_all"][name], scores, mask, name)
    assert_matches_published(auc(scores, mask), expected["rx_auc_all"], scores, mask)
    for bands in (50, 100, 200):
        if cube.shape[2] >= bands:
            scores = rx(bands)
            assert_matches_published(auc(scores, mask), expected[f"rx_auc_first{bands}"], scores, mask,
                                     what=f"first {bands} bands")
        else:
            assert expected.get(f"rx_auc_first{bands}") is None, f"reference has first {bands} for a shorter cube"
