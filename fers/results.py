"""Per-scene results in one schema, shared by ``test.py``/``FERS_ABU/test.py``, ``detect.py`` and
``compare.py`` (see docs/detection.md, "Results files").

A row is ``{"name", "auc" (when measured), <the command's fields: seconds, bands, height, width,
labelled, ...>, <the other metrics of fers.metrics.detection_metrics>}``; a summary adds
``mean_auc``/``scenes_covered`` (over the scenes with a defined AUC), ``scenes_total``,
``scenes_labelled`` and ``mean_metrics`` (every metric's mean over its defined values).
"""

from __future__ import annotations

import math
import warnings

from .metrics import detection_metrics, mean_ignoring_nan
from .outputs import write_csv, write_json

METRIC_PREFIXES = ("auc_", "adaptive_", "snpr", "f1")


def measure(scores, mask, adaptive: bool = False) -> dict:
    """:func:`fers.metrics.detection_metrics` without the warnings of undefined measures (the row
    holds NaN, and the commands say why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return detection_metrics(scores, mask, adaptive=adaptive)


def scene_row(name: str, metrics: dict | None = None, **fields) -> dict:
    """One per-scene row: ``name``, ``auc`` (if measured), ``fields`` in order, then the other metrics."""
    metrics = dict(metrics or {})
    row = {"name": name}
    if "auc" in metrics:
        row["auc"] = metrics.pop("auc")
    row.update(fields)
    row.update(metrics)
    return row


def metric_keys(rows: list) -> list:
    """The metric columns of ``rows`` (``auc``, ``auc_*``, ``adaptive_*``, ``snpr*``, ``f1*``), in order."""
    return list(dict.fromkeys(key for row in rows for key in row
                              if key == "auc" or key.startswith(METRIC_PREFIXES)))


def metric_means(rows: list) -> dict:
    """Every metric's mean over the rows where it is defined."""
    return {key: mean_ignoring_nan(row.get(key, math.nan) for row in rows)[0] for key in metric_keys(rows)}


def summary(rows: list) -> dict:
    """The summary keys of ``results.json`` for per-scene ``rows``."""
    mean_auc, covered = mean_ignoring_nan(row.get("auc", math.nan) for row in rows)
    return {"scenes": rows, "mean_auc": mean_auc, "scenes_covered": covered, "scenes_total": len(rows),
            "scenes_labelled": sum(bool(row.get("labelled", "auc" in row)) for row in rows),
            "mean_metrics": metric_means(rows)}


def write_results(folder, payload: dict, rows: list, mean_rows: list, stem: str = "results") -> None:
    """``<stem>.json`` (``payload``) and ``<stem>.csv`` (``rows``, then ``mean_rows``) into ``folder``."""
    write_json(folder / f"{stem}.json", payload)
    write_csv(folder / f"{stem}.csv", rows, mean_rows)
