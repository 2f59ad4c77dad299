"""Detection metrics: per-scene AUC and Chang's 3D-ROC measures (pure NumPy).

3D-ROC (C.-I Chang, "An effective evaluation tool for hyperspectral target detection: 3D
receiver operating characteristic curve analysis", IEEE TGRS 59(6), 2021). With the scores
min-max scaled to [0, 1] and one threshold τ per unique score,
``P_D(τ) = P(s ≥ τ | target)`` and ``P_F(τ) = P(s ≥ τ | background)``; areas by the trapezoid rule:

- ``auc_df``  = AUC(D, F), the usual ROC area (equals the rank statistic, ties counted ½);
- ``auc_dtau`` = AUC(D, τ), target detectability; ``auc_ftau`` = AUC(F, τ), false-alarm area;
- ``auc_td``  = AUC(D, F) + AUC(D, τ)  (target detection);
- ``auc_bs``  = AUC(D, F) − AUC(F, τ)  (background suppression);
- ``auc_tdbs`` = AUC(D, τ) − AUC(F, τ);
- ``auc_odp`` = AUC(D, τ) + 1 − AUC(F, τ)  (overall detection probability);
- ``auc_od``  = AUC(D, F) + AUC(D, τ) − AUC(F, τ)  (overall detection);
- ``snpr_db`` = 10 · log10(AUC(D, τ) / AUC(F, τ))  (signal-to-noise probability ratio).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import rankdata

METRIC_NAMES = ("auc_df", "auc_dtau", "auc_ftau", "auc_td", "auc_bs", "auc_tdbs", "auc_odp", "auc_od",
                "snpr_db")


def _split(scores, mask):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    if scores.shape != mask.shape:
        raise ValueError(f"scores ({scores.size} values) and mask ({mask.size} values) differ in size")
    return scores, mask


def auc(scores, mask) -> float:
    """Area under the ROC curve of ``scores`` against the boolean ``mask`` (Mann-Whitney U,
    ties counted ½). NaN, with a warning, when the mask has no anomaly or no background pixel."""
    scores, mask = _split(scores, mask)
    positives = int(mask.sum())
    negatives = mask.size - positives
    if positives == 0 or negatives == 0:
        warnings.warn("AUC undefined: the ground truth has no "
                      + ("anomaly" if positives == 0 else "background") + " pixel", RuntimeWarning, stacklevel=2)
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[mask].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(scores, mask):
    """``(false_alarm_rate, detection_rate, thresholds)`` with one threshold per unique score,
    from the highest threshold (plus a point above it: (0, 0)) to the lowest (1, 1)."""
    scores, mask = _split(scores, mask)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    hits = np.cumsum(mask[order])
    alarms = np.cumsum(~mask[order])
    last_of_each = np.r_[np.nonzero(np.diff(sorted_scores))[0], scores.size - 1]
    detection = np.r_[0.0, hits[last_of_each] / max(mask.sum(), 1)]
    false_alarm = np.r_[0.0, alarms[last_of_each] / max((~mask).sum(), 1)]
    thresholds = np.r_[np.inf, sorted_scores[last_of_each]]
    return false_alarm, detection, thresholds


def roc3d_metrics(scores, mask, adaptive: bool = False) -> dict:
    """Chang's 3D-ROC measures (see the module docstring) for one scene.

    ``adaptive``: scores are first clipped from above at the median target score, the
    "adaptive" variant that stops a few very bright targets from dominating AUC(D, τ).
    """
    scores, mask = _split(scores, mask)
    if not mask.any() or mask.all():
        warnings.warn("3D-ROC undefined: the ground truth has no anomaly or no background pixel",
                      RuntimeWarning, stacklevel=2)
        return {name: math.nan for name in METRIC_NAMES}
    if adaptive:
        scores = np.minimum(scores, np.median(scores[mask]))
    span = scores.max() - scores.min()
    scaled = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    false_alarm, detection, thresholds = roc_curve(scaled, mask)
    # Probabilities as functions of τ over [0, 1], from τ = 0 (P = 1) to τ = 1.
    tau = thresholds[1:][::-1]
    pd_tau = detection[1:][::-1]
    pf_tau = false_alarm[1:][::-1]
    auc_df = float(np.trapezoid(detection, false_alarm))
    auc_dtau = float(np.trapezoid(pd_tau, tau))
    auc_ftau = float(np.trapezoid(pf_tau, tau))
    return {
        "auc_df": auc_df,
        "auc_dtau": auc_dtau,
        "auc_ftau": auc_ftau,
        "auc_td": auc_df + auc_dtau,
        "auc_bs": auc_df - auc_ftau,
        "auc_tdbs": auc_dtau - auc_ftau,
        "auc_odp": auc_dtau + 1.0 - auc_ftau,
        "auc_od": auc_df + auc_dtau - auc_ftau,
        "snpr_db": 10.0 * math.log10(auc_dtau / auc_ftau) if auc_ftau > 0 and auc_dtau > 0 else math.inf,
    }


def f1_optimal_threshold(scores, mask) -> dict:
    """The threshold on the scores that maximises F1 (``s ≥ threshold`` is an anomaly), and its F1,
    precision and recall."""
    scores, mask = _split(scores, mask)
    false_alarm, detection, thresholds = roc_curve(scores, mask)
    positives = mask.sum()
    true_pos = detection * positives
    false_pos = false_alarm * (mask.size - positives)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(true_pos + false_pos > 0, true_pos / (true_pos + false_pos), 0.0)
        f1 = np.where(precision + detection > 0, 2 * precision * detection / (precision + detection), 0.0)
    best = int(np.argmax(f1))
    return {"threshold": float(thresholds[best]), "f1": float(f1[best]), "precision": float(precision[best]),
            "recall": float(detection[best])}


def mean_ignoring_nan(values) -> tuple[float, int]:
    """Mean over the defined values and how many scenes it covers."""
    values = np.asarray(list(values), dtype=np.float64)
    defined = values[np.isfinite(values)]
    return (float(defined.mean()) if defined.size else math.nan), int(defined.size)


def detection_metrics(scores, mask, adaptive: bool = False) -> dict:
    """Every per-scene measure in one row: ``auc``, the nine 3D-ROC measures, ``f1`` and
    ``f1_threshold``; with ``adaptive`` also the adaptive 3D-ROC measures prefixed ``adaptive_``.
    A mask without anomaly (or without background) gives NaN everywhere and one warning."""
    scores, mask = _split(scores, mask)
    if not mask.any() or mask.all():
        warnings.warn("metrics undefined: the ground truth has no "
                      + ("anomaly" if not mask.any() else "background") + " pixel", RuntimeWarning, stacklevel=2)
        names = ("auc",) + METRIC_NAMES + ("f1", "f1_threshold")
        names += tuple(f"adaptive_{name}" for name in METRIC_NAMES) if adaptive else ()
        return {name: math.nan for name in names}
    row = {"auc": auc(scores, mask), **roc3d_metrics(scores, mask)}
    best = f1_optimal_threshold(scores, mask)
    row.update({"f1": best["f1"], "f1_threshold": best["threshold"]})
    if adaptive:
        row.update({f"adaptive_{name}": value for name, value in roc3d_metrics(scores, mask, adaptive=True).items()})
    return row
