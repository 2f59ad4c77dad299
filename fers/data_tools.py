"""Data preparation and validation, kept importable under one name: ABU ``.mat`` → FERS_ABU layout
(:mod:`fers.abu`), the dataset checker (:mod:`fers.dataset_check`) and the synthetic HAD100-layout
dataset (:mod:`fers.synthetic`). Layouts: docs/data.md."""

from __future__ import annotations

from .abu import CUBE_SUFFIX, MASK_SUFFIX, prepare_abu  # noqa: F401
from .dataset_check import (LAYOUTS, CheckReport, SceneCheck, check_dataset, check_scene,  # noqa: F401
                            detect_layout, inspect_cube, report_lines)
from .outputs import staged_layout  # noqa: F401


def make_synthetic(*args, **kwargs) -> dict:
    """:func:`fers.synthetic.make_synthetic` (imported on use: it loads scipy.ndimage)."""
    from .synthetic import make_synthetic

    return make_synthetic(*args, **kwargs)


def rx_baseline(*args, **kwargs) -> list:
    """:func:`fers.synthetic.rx_baseline` (imported on use)."""
    from .synthetic import rx_baseline

    return rx_baseline(*args, **kwargs)
