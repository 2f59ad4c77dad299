"""Statistics over scenes for comparing methods: mean ± standard deviation per method, and a paired
per-scene test of each method against the best one (pure functions; SciPy for the test).

- :func:`mean_std`: mean and sample standard deviation (``ddof=1``) over the finite values, and
  how many there are (a scene without a defined value is left out, as in the means).
- :func:`wilcoxon_signed_rank`: the two-sided Wilcoxon signed-rank test of paired values
  (``scipy.stats.wilcoxon``). Zero differences are dropped before ranking (``zero_method="wilcox"``,
  Wilcoxon's own rule), so ``n`` is the number of scenes where the two methods differ. The
  statistic is SciPy's two-sided one, ``W = min(W+, W−)``, the smaller of the rank sums of positive
  and negative differences. The p-value is exact (the null distribution of all ``2ⁿ`` sign
  patterns) when ``n ≤ 50`` and no two ``|differences|`` tie; otherwise SciPy's ``method="auto"``
  choice for tied data is recorded as ``auto (ties)``.
  With fewer than :data:`MIN_TEST_SCENES` differing scenes the p-value is reported as None with a
  note: the smallest two-sided p-value ``n`` pairs can give is ``2 / 2ⁿ`` (0.0625 at n = 5), so
  such a test can never reach 0.05 and its p-value only invites misreading.
- :func:`compare_methods`: per method the mean ± std of every metric, the best method (highest mean
  of the test metric, AUC by default; the first listed wins a tie) and each other method's paired
  test against it on the scenes where both have a defined value.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TEST_SCENES = 6
ZERO_METHOD = "wilcox"
TEST_NAME = "Wilcoxon signed-rank, two-sided"


def finite_values(values) -> np.ndarray:
    """The finite values of ``values`` as float64 (NaN/Inf: undefined, left out)."""
    values = np.asarray(list(values), dtype=np.float64)
    return values[np.isfinite(values)]


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` over the finite ``values``: the mean, the sample standard deviation
    (``ddof=1``; NaN below two values) and how many values they cover."""
    defined = finite_values(values)
    n = int(defined.size)
    return {"mean": float(defined.mean()) if n else math.nan,
            "std": float(defined.std(ddof=1)) if n > 1 else math.nan, "n": n}


def wilcoxon_signed_rank(values, reference) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired ``values`` against ``reference`` (one value per
    scene each, NaN where undefined: such pairs are left out). Returns ``statistic`` (W = min(W+, W−)),
    ``p_value`` (None below :data:`MIN_TEST_SCENES` differing pairs, or when all pairs are equal),
    ``pairs`` (pairs with both values defined), ``n`` (pairs that differ: zero differences dropped),
    ``median_difference`` (of ``values − reference`` over the pairs), ``method`` and ``note``."""
    values = np.asarray(list(values), dtype=np.float64)
    reference = np.asarray(list(reference), dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired values differ in length: {values.size} and {reference.size}")
    both = np.isfinite(values) & np.isfinite(reference)
    differences = values[both] - reference[both]
    nonzero = differences[differences != 0]
    n = int(nonzero.size)
    result = {"test": TEST_NAME, "zero_method": ZERO_METHOD, "pairs": int(both.sum()), "n": n,
              "median_difference": float(np.median(differences)) if differences.size else math.nan,
              "statistic": None, "p_value": None, "method": None, "note": ""}
    if n == 0:
        result["note"] = "no scene where the two differ: no test"
        return result
    import scipy.stats

    ties = np.unique(np.abs(nonzero)).size < n
    method = "exact" if n <= 50 and not ties else "auto"
    test = scipy.stats.wilcoxon(nonzero, zero_method=ZERO_METHOD, alternative="two-sided", method=method)
    result["statistic"] = float(test.statistic)
    result["method"] = method if method == "exact" else "auto (ties)" if ties else "auto"
    if n < MIN_TEST_SCENES:
        result["note"] = (f"only {n} differing scene(s): the smallest possible two-sided p is 2/2^{n} = "
                          f"{2 / 2 ** n:.4g}, so no p-value is reported (needs {MIN_TEST_SCENES})")
    else:
        result["p_value"] = float(test.pvalue)
    return result


def compare_methods(rows: list, methods: list, metrics, test_metric: str = "auc") -> dict:
    """Per-method statistics of per-scene ``rows`` (dicts with ``method``, ``scene`` and the metric
    values): ``{"best", "test_metric", "methods": {method: {"mean": {...}, "std": {...}, "n": {...},
    "test": {...} or None}}}``; the best method's ``test`` is None (it is the reference)."""
    scenes = list(dict.fromkeys(row["scene"] for row in rows))

    def column(method, metric):
        by_scene = {row["scene"]: row.get(metric, math.nan) for row in rows if row["method"] == method}
        return [by_scene.get(scene, math.nan) for scene in scenes]

    summary = {}
    for method in methods:
        cells = {metric: mean_std(column(method, metric)) for metric in metrics}
        summary[method] = {key: {metric: cell[key] for metric, cell in cells.items()} for key in ("mean", "std", "n")}
    ranked = [m for m in methods if math.isfinite(mean_std(column(m, test_metric))["mean"])]
    best = max(ranked, key=lambda m: mean_std(column(m, test_metric))["mean"]) if ranked else None
    for method in methods:
        summary[method]["test"] = (None if best is None or method == best
                                   else wilcoxon_signed_rank(column(method, test_metric), column(best, test_metric)))
    return {"best": best, "test_metric": test_metric, "test": TEST_NAME, "zero_method": ZERO_METHOD,
            "min_test_scenes": MIN_TEST_SCENES, "methods": summary}
