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

Sensitivity. Every measure is exact for the scores it is given, but "one threshold per unique
score" makes the τ-areas jump when scores that are equal in exact arithmetic (identical pixels give
identical RX scores) come out of a solver a few ulps apart, or the other way round: whether a group
of k tied pixels is one threshold or k changes the trapezoid above it by up to
``k_class / n_class · gap / 2`` (gap = distance to the next higher score, in [0, 1] units). The
rounding of the solver therefore moves AUC(D, τ) and AUC(F, τ) on scenes with many identical pixels
(ABU urban-4: 975 tied scores, AUC(D, τ) by ~1e-5) far more than it moves the scores (1e-13), and
SNPR in dB amplifies that by ``10 / ln 10 / AUC(F, τ)`` (~380× at AUC(F, τ) ≈ 0.011).
:func:`tie_sensitivity` bounds that movement per measure for a given map: compare results from
different machines or codes within it (plus the rounding of published values), not within one
uniform tolerance.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from .preprocessing import minmax_scale

METRIC_NAMES = ("auc_df", "auc_dtau", "auc_ftau", "auc_td", "auc_bs", "auc_tdbs", "auc_odp", "auc_od",
                "snpr_db")


def _split(scores, mask):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    mask = np.asarray(mask, dtype=bool).ravel()
    if scores.shape != mask.shape:
        raise ValueError(f"scores ({scores.size} values) and mask ({mask.size} values) differ in size")
    return scores, mask


class _Ranked:
    """One scene's scores sorted once, from the highest to the lowest (stable), with the anomaly
    flags in that order: every measure below reads its thresholds from this one sort. A map that
    keeps the order (min-max scaling, clipping from above) is applied to the sorted values
    directly; its ties are at least those of the raw scores, so the counts at the end of each group
    of equal values are those of a fresh sort of the mapped scores (the same numbers, bitwise)."""

    def __init__(self, scores: np.ndarray, mask: np.ndarray):
        order = np.argsort(-scores, kind="mergesort")
        self.values = scores[order]
        self.labels = mask[order]
        self.positives = int(mask.sum())
        self.negatives = mask.size - self.positives
        self.hits = np.cumsum(self.labels)
        self.alarms = np.cumsum(~self.labels)

    def curve(self, values: np.ndarray | None = None):
        """``(false_alarm_rate, detection_rate, thresholds)`` of :func:`roc_curve` for the sorted
        ``values`` (default: the scores), one threshold per group of equal values."""
        values = self.values if values is None else values
        last_of_each = np.r_[np.nonzero(np.diff(values))[0], values.size - 1]
        detection = np.r_[0.0, self.hits[last_of_each] / max(self.positives, 1)]
        false_alarm = np.r_[0.0, self.alarms[last_of_each] / max(self.negatives, 1)]
        thresholds = np.r_[np.inf, values[last_of_each]]
        return false_alarm, detection, thresholds

    def auc(self) -> float:
        """Mann-Whitney AUC from the average ranks of tied groups (exact: half-integers)."""
        if np.isnan(self.values).any():
            return math.nan  # as the rank statistic of NaN scores
        n = self.values.size
        ends = np.r_[np.nonzero(np.diff(self.values))[0], n - 1]
        starts = np.r_[0, ends[:-1] + 1]
        average_rank = n - (starts + ends) / 2.0  # ascending ranks of a descending group, averaged
        anomalies = np.diff(np.r_[0, self.hits[ends]])
        positives, negatives = self.positives, self.negatives
        return float(((average_rank * anomalies).sum() - positives * (positives + 1) / 2) / (positives * negatives))


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
    return _Ranked(scores, mask).auc()


def roc_curve(scores, mask):
    """``(false_alarm_rate, detection_rate, thresholds)`` with one threshold per unique score,
    from the highest threshold (plus a point above it: (0, 0)) to the lowest (1, 1)."""
    return _Ranked(*_split(scores, mask)).curve()


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
    return _roc3d(_Ranked(scores, mask), scores, mask, adaptive)


def _roc3d(ranked: _Ranked, scores: np.ndarray, mask: np.ndarray, adaptive: bool) -> dict:
    values = ranked.values
    if adaptive:
        values = np.minimum(values, np.median(scores[mask]))
    false_alarm, detection, thresholds = ranked.curve(minmax_scale(values))
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
    return _f1(_Ranked(*_split(scores, mask)))


def _f1(ranked: _Ranked) -> dict:
    false_alarm, detection, thresholds = ranked.curve()
    true_pos = detection * ranked.positives
    false_pos = false_alarm * ranked.negatives
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
    ranked = _Ranked(scores, mask)  # one sort for every measure
    row = {"auc": ranked.auc(), **_roc3d(ranked, scores, mask, adaptive=False)}
    best = _f1(ranked)
    row.update({"f1": best["f1"], "f1_threshold": best["threshold"]})
    if adaptive:
        row.update({f"adaptive_{name}": value for name, value in _roc3d(ranked, scores, mask, adaptive=True).items()})
    return row


def _tied_groups(scaled: np.ndarray, mask: np.ndarray, rtol: float):
    """Groups of scores (sorted ascending) whose consecutive gaps are at most ``rtol``: per group
    the anomaly and background counts and the gap to the next higher group."""
    order = np.argsort(scaled, kind="mergesort")
    values, labels = scaled[order], mask[order]
    starts = np.r_[0, np.nonzero(np.diff(values) > rtol)[0] + 1]
    ends = np.r_[starts[1:], values.size]
    anomalies = np.add.reduceat(labels.astype(np.int64), starts)
    sizes = ends - starts
    gaps_above = np.r_[values[starts[1:]] - values[ends[:-1] - 1], 0.0]
    return anomalies, sizes - anomalies, gaps_above


def tie_sensitivity(scores, mask, rtol: float = 1e-9) -> dict:
    """How far each measure of :func:`detection_metrics` (``auc`` and the 3D-ROC measures) can move
    when scores equal to within ``rtol`` of their range are tied or untied in any way: a bound on
    the metric's own noise for one map, the tolerance to use when comparing two implementations
    (or CPUs) whose scores agree to rounding.

    Per group of near-tied scores with ``a`` anomaly and ``b`` background pixels and the gap ``g``
    to the next higher score (scores min-max scaled to [0, 1]): AUC(D, F) moves by at most
    ``a·b / (n_D·n_F)``, AUC(D, τ) by ``a·g / (2 n_D)``, AUC(F, τ) by ``b·g / (2 n_F)``; the sums
    and differences add their parts' bounds, and ``snpr_db`` takes the worst corner of the two
    τ-areas. All zeros when no two scores are near-tied.
    """
    scores, mask = _split(scores, mask)
    n_d, n_f = int(mask.sum()), int((~mask).sum())
    names = ("auc",) + METRIC_NAMES
    if n_d == 0 or n_f == 0:
        return {name: math.nan for name in names}
    scaled = minmax_scale(scores)
    anomalies, background, gaps = _tied_groups(scaled, mask, rtol)
    tied = anomalies + background > 1
    anomalies, background, gaps = anomalies[tied], background[tied], gaps[tied]
    df = float((anomalies * background).sum() / (n_d * n_f))
    dtau = float((anomalies * gaps).sum() / (2 * n_d))
    ftau = float((background * gaps).sum() / (2 * n_f))
    metrics = roc3d_metrics(scores, mask)
    d, f = metrics["auc_dtau"], metrics["auc_ftau"]
    if dtau == 0 and ftau == 0:
        snpr = 0.0
    elif f - ftau > 0 and d - dtau > 0:
        snpr = max(abs(10 * math.log10((d + sd * dtau) / (f + sf * ftau)) - metrics["snpr_db"])
                   for sd in (-1, 1) for sf in (-1, 1))
    else:
        snpr = math.inf
    return {"auc": df, "auc_df": df, "auc_dtau": dtau, "auc_ftau": ftau, "auc_td": df + dtau,
            "auc_bs": df + ftau, "auc_tdbs": dtau + ftau, "auc_odp": dtau + ftau, "auc_od": df + dtau + ftau,
            "snpr_db": snpr}
