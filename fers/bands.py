"""Band policies in one place: how a scene's ``B`` bands become the ``C`` bands a model takes.

``band_policy`` (the commands' ``--band_policy``):

- by position: ``first`` (the first C bands; an error with fewer), ``interp`` (the first C when
  there are enough, else linear interpolation along the band axis to C, end bands kept),
  ``error`` (exactly C bands required);
- by the scene's own statistics (AETNet's "any scene" choices), the C chosen bands kept in their
  spectral (file) order; computed in float64 over every pixel whose bands are all finite, in row
  chunks (bounded memory):

  - ``std``: the C bands of highest variance (ties: the lower band index first);
  - ``entropy``: the C bands of highest Shannon entropy ``−Σ p log₂ p`` of the band's histogram,
    :data:`ENTROPY_BINS` equal-width bins between the band's own minimum and maximum (the last
    bin closed, as ``np.histogram``); a constant band has entropy 0;
  - ``low_correlation``: greedy: first the band with the lowest mean absolute correlation to the
    other bands, then, C − 1 times, the band whose highest absolute correlation with the bands
    chosen so far is lowest (ties: the lower index). Constant bands (correlation undefined) come
    last, only when there are not C others;

- ``wavelength``: linear interpolation **in wavelength** to the model's band centres (nm), from
  the scene's band centres (the ENVI header's ``wavelength``, a ``wavelengths``/``wavelength``
  vector in a ``.mat``/``.npz``, or a file given by the user) — ``np.interp`` per pixel over the
  scene bands sorted by wavelength (an exactly repeated wavelength keeps its first band). A model
  centre more than :data:`WAVELENGTH_TOLERANCE_NM` outside the scene's range is refused (it
  cannot be made up); within the tolerance it takes the end band. A model centre between two
  neighbouring scene bands more than :data:`GAP_FACTOR` × the scene's median band spacing apart
  (a gap, e.g. removed water-absorption bands) is interpolated across the gap, with a warning.

Every policy returns a :class:`BandMapping`: the rule (indices or two-band blends) applied to any
row chunk, its description, a record for ``results.json`` and a warning when the scene is not the
model's band set (another band count, or band centres more than the tolerance away).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FersError, ParameterError

POSITION_POLICIES = ("first", "interp", "error")
STATISTIC_POLICIES = ("std", "entropy", "low_correlation")
BAND_POLICIES = POSITION_POLICIES + STATISTIC_POLICIES + ("wavelength",)
ENTROPY_BINS = 256
WAVELENGTH_TOLERANCE_NM = 10.0  # about one AVIRIS band width: a centre this close is still seen by the band
GAP_FACTOR = 2.0  # neighbouring scene bands farther apart than this × the median spacing: a gap


@dataclass(frozen=True)
class BandMapping:
    """How ``scene_bands`` bands become ``model_bands``: ``indices`` (chosen scene bands, in order)
    or two-band blends ``lower``/``upper``/``weight`` (output band ``c`` = ``(1 − w)·x[lower] +
    w·x[upper]``), with a ``description`` for the log and a ``warning`` when the scene is not the
    model's band set."""

    policy: str
    scene_bands: int
    model_bands: int
    description: str
    indices: tuple | None = None
    blend: tuple | None = None  # (lower, upper, weight) arrays of length model_bands
    model_wavelengths: tuple | None = None
    scene_wavelengths: tuple | None = None
    warning: str | None = None

    @property
    def keeps_every_band(self) -> bool:
        """True when :meth:`apply` returns the scene's own bands unchanged, in order."""
        return self.indices == tuple(range(self.scene_bands))

    def apply(self, cube) -> np.ndarray:
        """The ``(rows, cols, C)`` bands of a ``(rows, cols, B)`` cube or row chunk (a contiguous
        selection stays a view; blends are float64, cast to at least float32)."""
        if self.indices is not None:
            start = self.indices[0]
            if self.indices == tuple(range(start, start + len(self.indices))):
                return cube[:, :, start:start + len(self.indices)]
            return np.take(cube, self.indices, axis=2)
        lower, upper, weight = self.blend
        data = np.asarray(cube, dtype=np.float64)
        result = data[:, :, lower] * (1.0 - weight) + data[:, :, upper] * weight
        return result.astype(np.result_type(cube.dtype, np.float32))

    def record(self) -> dict:
        """What ``results.json`` keeps of the mapping (``band_mapping``)."""
        record = {"policy": self.policy, "scene_bands": self.scene_bands, "model_bands": self.model_bands,
                  "description": self.description}
        if self.indices is not None:
            record["selected_bands"] = list(self.indices)
        if self.scene_wavelengths is not None:
            record["scene_wavelength_range_nm"] = [min(self.scene_wavelengths), max(self.scene_wavelengths)]
        if self.model_wavelengths is not None:
            record["model_wavelengths_nm"] = list(self.model_wavelengths)
        record["warning"] = self.warning
        return record


# --------------------------------------------------------------------------- statistics of the scene

NO_STATISTICS = "fewer than two pixels have finite values in every band: no band statistics to choose bands by"


def _pixel_chunks(cube, chunk_bytes: int | None, valid=None):
    """A callable giving fresh ``(pixels, B)`` float64 row chunks of ``cube``, pixels with a
    non-finite band, and where the ``(rows, cols)`` mask ``valid`` is False (no-data), left out
    (they must not poison the statistics)."""
    from .preprocessing import chunk_rows

    rows = chunk_rows(cube.shape, chunk_bytes)

    def chunks():
        for start in range(0, cube.shape[0], rows):
            pixels = np.asarray(cube[start:start + rows], dtype=np.float64).reshape(-1, cube.shape[2])
            finite = np.isfinite(pixels).all(axis=1)
            if valid is not None:
                finite &= np.asarray(valid[start:start + rows]).reshape(-1)
            yield pixels if finite.all() else pixels[finite]

    return chunks


def _moments(chunks) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band ``(mean, variance (n − 1), count)``, two passes (mean, then centred squares)."""
    count, total = 0, 0.0
    for pixels in chunks():
        count += len(pixels)
        total = total + pixels.sum(0)
    if count < 2:
        raise FersError(NO_STATISTICS)
    mean = total / count
    squares = sum(((pixels - mean) ** 2).sum(0) for pixels in chunks())
    return mean, squares / (count - 1), count


def band_statistic(cube, policy: str, chunk_bytes: int | None = None, valid=None) -> np.ndarray:
    """The per-band figure a statistics policy ranks: ``std`` the variance, ``entropy`` the histogram
    entropy in bits, ``low_correlation`` the ``(B, B)`` correlation matrix (0 where a band is constant)."""
    chunks = _pixel_chunks(cube, chunk_bytes, valid)
    if policy == "std":
        return _moments(chunks)[1]
    if policy == "entropy":
        return _entropies(chunks, cube.shape[2])
    if policy == "low_correlation":
        from .rx import rx_statistics

        with np.errstate(divide="ignore", invalid="ignore"):
            _, covariance, count = rx_statistics(chunks)
        if count < 2:
            raise FersError(NO_STATISTICS)
        spread = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        scale = np.where(spread > 0, spread, np.inf)
        return covariance / scale[:, None] / scale[None, :]
    raise ValueError(f"policy must be one of {STATISTIC_POLICIES}, got {policy!r}")


def _entropies(chunks, bands: int) -> np.ndarray:
    low, high = np.full(bands, np.inf), np.full(bands, -np.inf)
    for pixels in chunks():
        if len(pixels):
            low, high = np.minimum(low, pixels.min(0)), np.maximum(high, pixels.max(0))
    span = high - low
    scale = np.where(span > 0, ENTROPY_BINS / np.where(span > 0, span, 1.0), 0.0)
    counts = np.zeros(bands * ENTROPY_BINS, dtype=np.int64)
    offsets = np.arange(bands) * ENTROPY_BINS
    for pixels in chunks():
        bins = np.minimum(((pixels - low) * scale).astype(np.int64), ENTROPY_BINS - 1)
        counts += np.bincount((bins + offsets).ravel(), minlength=bands * ENTROPY_BINS)
    counts = counts.reshape(bands, ENTROPY_BINS).astype(np.float64)
    total = counts.sum(1, keepdims=True)
    share = counts / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(share > 0, share * np.log2(share), 0.0).sum(1)


def top_bands(values: np.ndarray, channels: int) -> tuple:
    """The ``channels`` bands of highest ``values`` (ties: lower index), in spectral order."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return tuple(sorted(int(i) for i in order[:channels]))


def low_correlation_bands(correlation: np.ndarray, channels: int, constant=None) -> tuple:
    """The greedy weakly-correlated selection of the module docstring, in spectral order."""
    magnitude = np.abs(np.asarray(correlation, dtype=np.float64))
    bands = len(magnitude)
    constant = np.zeros(bands, bool) if constant is None else np.asarray(constant, bool)
    candidates = np.flatnonzero(~constant)
    chosen: list[int] = []
    if len(candidates):
        block = magnitude[np.ix_(candidates, candidates)]
        mean_to_others = (block.sum(1) - np.diag(block)) / max(1, len(candidates) - 1)
        chosen.append(int(candidates[np.argmin(mean_to_others)]))
        worst = magnitude[chosen[0]].copy()  # highest |r| of each band with the chosen ones
        while len(chosen) < min(channels, len(candidates)):
            free = np.setdiff1d(candidates, chosen, assume_unique=True)
            pick = int(free[np.argmin(worst[free])])
            chosen.append(pick)
            worst = np.maximum(worst, magnitude[pick])
    chosen += [int(i) for i in np.flatnonzero(constant)[:channels - len(chosen)]]
    return tuple(sorted(chosen))


# --------------------------------------------------------------------------- wavelengths


def wavelength_blend(scene_wavelengths, model_wavelengths, name: str = "cube",
                     tolerance: float = WAVELENGTH_TOLERANCE_NM):
    """``((lower, upper, weight), gap warning or None)``: linear interpolation in wavelength of
    scene bands (centres ``scene_wavelengths``, any order) to ``model_wavelengths``, equal to
    ``np.interp(model, sorted scene centres, pixel values)``; refused where a model centre lies
    more than ``tolerance`` nm outside the scene's range."""
    scene = np.asarray(scene_wavelengths, dtype=np.float64)
    model = np.asarray(model_wavelengths, dtype=np.float64)
    order = np.argsort(scene, kind="stable")
    centres = scene[order]
    keep = np.concatenate([[True], np.diff(centres) > 0])  # an exactly repeated wavelength: its first band
    order, centres = order[keep], centres[keep]
    outside = (model < centres[0] - tolerance) | (model > centres[-1] + tolerance)
    if outside.any():
        shown = ", ".join(f"{v:g}" for v in model[outside][:5]) + (" ..." if outside.sum() > 5 else "")
        raise FersError(f"{name}: the scene covers {centres[0]:g}–{centres[-1]:g} nm but {int(outside.sum())} of the "
                        f"model's {len(model)} band centres lie more than {tolerance:g} nm outside ({shown} nm); "
                        "`band_policy` wavelength cannot make those bands up: use a model trained on this "
                        "sensor's range, or another `band_policy`")
    if len(centres) == 1:
        index = np.zeros(len(model), dtype=int)
        return (order[index], order[index], np.zeros(len(model))), None
    upper = np.clip(np.searchsorted(centres, model, side="right"), 1, len(centres) - 1)
    lower = upper - 1
    weight = np.clip((model - centres[lower]) / (centres[upper] - centres[lower]), 0.0, 1.0)
    width = centres[upper] - centres[lower]
    gaps = (width > GAP_FACTOR * np.median(np.diff(centres))) & (model > centres[lower]) & (model < centres[upper])
    warning = None
    if gaps.any():
        shown = ", ".join(f"{v:g}" for v in model[gaps][:5]) + (" ..." if gaps.sum() > 5 else "")
        warning = (f"{int(gaps.sum())} of the model's band centres fall in gaps of the scene's spectrum (neighbouring "
                   f"scene bands more than {GAP_FACTOR:g}× the median band spacing apart: {shown} nm); they are "
                   "interpolated across the gap")
    return (order[lower], order[upper], weight), warning


def _check_wavelengths(values, count: int, what: str, name: str, fix: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) != count:
        raise FersError(f"{name}: {len(values)} {what} wavelengths for {count} bands; {fix}")
    if not np.isfinite(values).all() or (values <= 0).any():
        raise FersError(f"{name}: the {what} wavelengths must be positive numbers (nm); {fix}")
    return values


# --------------------------------------------------------------------------- the mapping


def band_mapping(cube, channels: int, policy: str = "interp", wavelengths=None, model_wavelengths=None,
                 name: str = "cube", chunk_bytes: int | None = None, compare_to_model: bool = True,
                 valid=None) -> BandMapping:
    """The :class:`BandMapping` of ``policy`` (:data:`BAND_POLICIES`) from a ``(rows, cols, B)``
    cube (a memory map works: statistics are read in row chunks) to ``channels`` bands.

    ``wavelengths``: the scene's band centres in nm (B values), ``model_wavelengths`` the model's
    (C values); ``wavelength`` needs both (other policies ignore a vector of the wrong length, with
    a note). ``compare_to_model``: warn when the scene is not the model's band set (another band
    count, or centres more than the tolerance away); False for plain RX, which has no model.
    ``valid``: a ``(rows, cols)`` mask of the pixels the statistics policies may use (no-data out).
    Raises :class:`FersError` naming the file (``name``) and the fix."""
    if policy not in BAND_POLICIES:
        raise ParameterError(f"`band_policy` {policy!r}: choose one of {', '.join(BAND_POLICIES)}")
    bands = cube.shape[2]
    indices, blend, notes = None, None, []
    checks = ((wavelengths, bands, "scene", "give one band centre per band of the scene (`wavelengths`)"),
              (model_wavelengths, channels, "model", "give one band centre per band the model takes "
                                                     "(`model_wavelengths`)"))
    checked = []
    for values, count, what, fix in checks:
        try:
            checked.append(None if values is None else _check_wavelengths(values, count, what, name, fix))
        except FersError as error:
            if policy == "wavelength":
                raise
            notes.append(f"{what} wavelengths ignored ({str(error).split(': ', 1)[1]})")
            checked.append(None)
    wavelengths, model_wavelengths = checked
    if policy == "error" and bands != channels:
        raise FersError(f"{name}: has {bands} bands but the model takes {channels} "
                        "(`band_policy` error); use `band_policy` first or interp, or a model for "
                        f"{bands} bands")
    if policy in POSITION_POLICIES:
        if bands >= channels:
            indices = tuple(range(channels))
            description = f"first {channels} of {bands} bands" if bands > channels else f"all {bands} bands"
        elif policy == "first":
            raise FersError(f"{name}: has {bands} bands, fewer than the model's {channels}; "
                            "use `band_policy` interp or a model for fewer bands")
        else:
            positions = np.linspace(0.0, bands - 1, channels)
            lower = np.floor(positions).astype(int)
            blend = (lower, np.minimum(lower + 1, bands - 1), positions - lower)
            description = f"{bands} bands linearly interpolated to {channels}"
    elif policy in STATISTIC_POLICIES:
        if bands < channels:
            raise FersError(f"{name}: has {bands} bands, fewer than the model's {channels}; `band_policy` {policy} "
                            "chooses among the scene's bands: use `band_policy` interp or wavelength, or a model for "
                            "fewer bands")
        try:
            statistic = band_statistic(cube, policy, chunk_bytes, valid) if bands > channels else None
        except FersError as error:
            raise FersError(f"{name}: {error}") from None
        if statistic is None:
            indices = tuple(range(channels))
        elif policy == "low_correlation":
            indices = low_correlation_bands(statistic, channels, np.diag(statistic) == 0)
        else:
            indices = top_bands(statistic, channels)
        rule = {"std": "highest variance", "entropy": f"highest histogram entropy ({ENTROPY_BINS} bins)",
                "low_correlation": "greedy low correlation"}[policy]
        description = f"{channels} of {bands} bands by {rule}" if bands > channels else f"all {bands} bands"
    else:
        if wavelengths is None:
            raise FersError(f"{name}: `band_policy` wavelength needs the scene's band centres, and the scene file "
                            "carries none (ENVI header 'wavelength', a 'wavelengths' vector in a .mat/.npz); pass "
                            "them with `wavelengths` FILE, or use another `band_policy`")
        if model_wavelengths is None:
            raise FersError(f"{name}: `band_policy` wavelength needs the band centres the model was trained on, and "
                            "its checkpoints record none (released checkpoints, or trained without `wavelengths`); "
                            "pass them with `model_wavelengths` FILE (C values, nm), retrain with `wavelengths`, "
                            "or use another `band_policy`")
        blend, gap = wavelength_blend(wavelengths, model_wavelengths, name)
        notes += [gap] if gap else []
        description = (f"{bands} bands resampled in wavelength to the model's {channels} band centres "
                       f"({model_wavelengths.min():g}–{model_wavelengths.max():g} nm)")
    if compare_to_model:
        notes = _sensor_notes(bands, channels, policy, wavelengths, model_wavelengths) + notes
    return BandMapping(policy, bands, channels, description, indices, blend,
                       None if model_wavelengths is None else tuple(float(v) for v in model_wavelengths),
                       None if wavelengths is None else tuple(float(v) for v in wavelengths),
                       "; ".join(notes) or None)


def _sensor_notes(bands, channels, policy, wavelengths, model_wavelengths) -> list:
    """Why the scene is not the model's band set, if it is not (the ``warning`` of a mapping)."""
    notes = []
    if bands != channels:
        notes.append(f"the scene has {bands} bands and the model takes {channels}: another sensor or band set than "
                     f"the model's, mapped by `band_policy` {policy}; scores can differ from those on the model's "
                     "own data")
    if wavelengths is not None and model_wavelengths is not None:
        if bands == channels:
            offset = float(np.max(np.abs(wavelengths - model_wavelengths)))
        else:
            offset = float(np.max(np.min(np.abs(model_wavelengths[:, None] - wavelengths[None, :]), axis=1)))
        if offset > WAVELENGTH_TOLERANCE_NM:
            notes.append(f"the scene's band centres differ from the model's by up to {offset:.1f} nm"
                         + ("" if policy == "wavelength" else "; `band_policy` wavelength resamples to the model's"))
    return notes


def select_bands(cube, channels: int, policy: str = "interp", wavelengths=None, model_wavelengths=None,
                 name: str = "cube", chunk_bytes: int | None = None, compare_to_model: bool = True):
    """``(bands (rows, cols, C), BandMapping)``: :func:`band_mapping` applied to the whole cube
    (:func:`fers.prepare_cube` then scales it for the networks)."""
    mapping = band_mapping(cube, channels, policy, wavelengths, model_wavelengths, name, chunk_bytes,
                           compare_to_model)
    return mapping.apply(cube), mapping
