"""Pure functions that turn a raw cube into the network input: validation, band policy,
and the reference normalisation."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from .errors import FersError, ParameterError

INPUT_SCALE = 0.1
BAND_POLICIES = ("first", "interp", "error")
# Fill values that sensors and processing chains write for missing pixels.
CHUNK_BYTES = 64 * 2 ** 20  # float64 working set of one row chunk (prepare_cube, chunked RX)
NODATA_VALUES = (-9999.0, -32768.0, 1e-34, -1e34, -3.4028234663852886e38)


def minmax_scale(values, low=None, high=None, per_item: bool = False):
    """Min-max scale NumPy ``values`` or a torch tensor to [0, 1]: ``(values − low) / (high − low)``
    with the one zero-span rule of FERS: where ``high − low`` is not positive (a constant map or
    cube) the result is 0. ``low``/``high`` default to the minimum/maximum of all values, or of each
    item along the first axis with ``per_item``; arrays broadcast (per-channel bounds)."""
    torch = sys.modules.get("torch")
    is_tensor = torch is not None and isinstance(values, torch.Tensor)
    if low is None or high is None:
        if per_item:
            flat = values.reshape(values.shape[0], -1)
            shape = (-1,) + (1,) * (values.ndim - 1)
            if is_tensor:
                found = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
            else:
                found = flat.min(1).reshape(shape), flat.max(1).reshape(shape)
        else:
            found = values.min(), values.max()
        low = found[0] if low is None else low
        high = found[1] if high is None else high
    span = high - low
    if is_tensor:
        return (values - low) / torch.where(span > 0, span, torch.ones_like(span))
    if np.ndim(span) == 0:
        return (values - low) / span if span > 0 else np.zeros_like(values)
    return (values - low) / np.where(span > 0, span, 1.0)


def reference_scaling(values: np.ndarray, low, high) -> np.ndarray:
    """The reference input scaling: ``[low, high]`` to [-1, 1], times ``INPUT_SCALE`` (float64)."""
    return INPUT_SCALE * (2.0 * minmax_scale(np.asarray(values, dtype=np.float64), low, high) - 1.0)


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of the finite values (``(inf, -inf)`` when there is none)."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return (float(np.min(values)), float(np.max(values))) if values.size else (math.inf, -math.inf)
    finite = np.isfinite(values)
    return (float(np.min(values, where=finite, initial=math.inf)),
            float(np.max(values, where=finite, initial=-math.inf)))


def nodata_pixels(cube: np.ndarray, low=None, high=None, values=NODATA_VALUES) -> dict:
    """The one no-data scan: ``{fill value: (rows, cols) mask of the pixels holding it in any band}``
    for the fill ``values`` present (default :data:`NODATA_VALUES`; within ``rtol`` 1e-6); values
    outside ``[low, high]`` (default: the range of the cube's finite values) are skipped without a scan."""
    if low is None or high is None:
        found_low, found_high = finite_range(cube)
        low = found_low if low is None else low
        high = found_high if high is None else high
    found = {}
    for value in values:
        if low - 1e-6 * abs(value) <= value <= high + 1e-6 * abs(value):  # skip values out of range
            hit = np.isclose(cube, value, rtol=1e-6, atol=0).any(axis=2)
            if hit.any():
                found[value] = hit
    return found


def invalid_pixels(cube: np.ndarray) -> tuple[int, int]:
    """``(pixels holding NaN/Inf, pixels holding a no-data fill value)`` of a ``(rows, cols, bands)``
    cube or row chunk; a pixel counts once, whichever of its bands holds the value."""
    if cube.dtype.kind == "f":
        bad = int((~np.isfinite(cube)).any(axis=2).sum())
        if bad:
            return bad, 0
    nodata = np.zeros(cube.shape[:2], dtype=bool)
    for hit in nodata_pixels(cube).values():
        nodata |= hit
    return 0, int(nodata.sum())


@dataclass(frozen=True)
class NodataRule:
    """Which pixels are no-data, to be masked instead of refused: NaN/Inf in any band always, a
    fill value of ``values`` in any band, and with ``zero_pixels`` a pixel that is 0 in every band
    (the fill of many orthorectified flight lines). ``declared``: the file's own value, if any."""

    values: tuple
    zero_pixels: bool
    declared: float | None = None

    def describe(self) -> str:
        parts = ["NaN/Inf"]
        if self.declared is not None:
            parts.append(f"{self.declared:g} (declared by the file)")
        parts += [f"{value:g}" for value in self.values if value != self.declared]
        return ", ".join(parts + (["0 in every band"] if self.zero_pixels else []))


def nodata_rule(nodata, declared: float | None = None) -> NodataRule | None:
    """The rule of a ``nodata`` setting: ``None``/``"none"`` → None (no pixel is masked; NaN/Inf and
    fill values are refused, as the benchmark commands do); ``"auto"`` → NaN/Inf, the ``declared``
    value (ENVI ``data ignore value``, GeoTIFF nodata), the :data:`NODATA_VALUES` and pixels that
    are 0 in every band; a number (or its text) → NaN/Inf and that value."""
    if nodata is None or (isinstance(nodata, str) and nodata.strip().lower() == "none"):
        return None
    declared = None if declared is None or not math.isfinite(float(declared)) else float(declared)
    if isinstance(nodata, str) and nodata.strip().lower() == "auto":
        values = tuple(dict.fromkeys(((declared,) if declared is not None else ()) + NODATA_VALUES))
        return NodataRule(values, True, declared)
    try:
        value = float(nodata)
    except (TypeError, ValueError):
        raise ParameterError(f"`nodata` must be auto, none or a number, got {nodata!r}") from None
    return NodataRule((value,) if math.isfinite(value) else (), False, None)


def invalid_mask(cube: np.ndarray, rule: NodataRule) -> np.ndarray:
    """``(rows, cols)`` True where a pixel of a ``(rows, cols, bands)`` cube or row chunk is no-data
    under ``rule`` (:class:`NodataRule`), through the one scan (:func:`nodata_pixels`)."""
    cube = np.asarray(cube)
    invalid = (~np.isfinite(cube)).any(axis=2) if cube.dtype.kind == "f" else np.zeros(cube.shape[:2], bool)
    for hit in nodata_pixels(cube, values=rule.values).values():
        invalid |= hit
    if rule.zero_pixels:
        invalid |= ~cube.any(axis=2)
    return invalid


def valid_pixels(cube, rule: NodataRule, name: str = "cube", chunk_bytes: int | None = None) -> np.ndarray | None:
    """The ``(rows, cols)`` valid-pixel mask of a cube under ``rule``, scanned in row chunks
    (:func:`invalid_mask`); None when every pixel is valid. Fewer than two valid pixels: an error."""
    valid = np.ones(cube.shape[:2], dtype=bool)
    rows = chunk_rows(cube.shape, chunk_bytes)
    for start in range(0, cube.shape[0], rows):
        valid[start:start + rows] = ~invalid_mask(cube[start:start + rows], rule)
    _require_valid(valid, rule, name)
    return None if valid.all() else valid


def _require_valid(valid: np.ndarray, rule: NodataRule, name: str) -> None:
    count = int(valid.sum())
    if count < 2:
        raise FersError(f"{name}: {valid.size - count} of {valid.size} pixels are no-data (`nodata`: "
                        f"{rule.describe()}); fewer than two valid pixels are left to detect anomalies in")


def raise_invalid(name: str, bad: int, nodata: int, hint: str = "") -> None:
    """The one-line errors for :func:`invalid_pixels` counts (no-op when both are 0); ``hint`` is
    appended (e.g. the option that masks them instead)."""
    if bad:
        raise FersError(f"{name}: {bad} pixel(s) hold NaN or Inf values; "
                        f"fill or crop them before detection (FERS does not guess missing data){hint}")
    if nodata:
        raise FersError(f"{name}: {nodata} pixel(s) hold a no-data fill value "
                        f"(one of {', '.join(f'{v:g}' for v in NODATA_VALUES)}); "
                        f"crop them out or fill them before detection{hint}")


def validate_cube(cube: np.ndarray, name: str) -> None:
    """Reject cubes that would silently poison the statistics: NaN/Inf, no-data fill values,
    or a constant cube (max = min). FERS rejects such cubes instead of masking them, so a
    number it reports is never computed on partly invalid data."""
    if cube.ndim != 3:
        raise FersError(f"{name}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    raise_invalid(name, *invalid_pixels(cube))
    low, high = np.min(cube), np.max(cube)
    if not high > low:
        raise FersError(f"{name}: the cube is constant (every value is {float(low):g}); "
                        "it holds no signal to detect anomalies in")


def normalize_cube(cube: np.ndarray) -> np.ndarray:
    """Min-max scale the whole cube to [-1, 1], then multiply by 0.1 (the reference input scaling).

    Statistics are computed in float64 so float32 data with a large offset keeps its precision.
    Returns float32 of the same shape.
    """
    data = np.asarray(cube, dtype=np.float64)
    low, high = data.min(), data.max()
    if not high > low:
        raise ValueError("cannot normalise a constant cube")
    return reference_scaling(data, low, high).astype(np.float32)


def apply_band_policy(cube: np.ndarray, channels: int, policy: str = "interp", name: str = "cube"):
    """Bring a ``(rows, cols, bands)`` cube to ``channels`` bands.

    - ``first``: the first ``channels`` bands; an error if the cube has fewer.
    - ``interp``: the first ``channels`` bands when there are enough, otherwise linear
      interpolation along the band axis to ``channels`` bands, keeping the first and last band.
    - ``error``: the cube must have exactly ``channels`` bands.

    Returns ``(cube, description)``; the description is logged per scene.
    """
    if policy not in BAND_POLICIES:
        raise ValueError(f"band_policy must be one of {BAND_POLICIES}, got {policy!r}")
    bands = cube.shape[2]
    if policy == "error" and bands != channels:
        raise FersError(f"{name}: has {bands} bands but the model takes {channels} "
                        "(`band_policy` error); use `band_policy` first or interp, or a model for "
                        f"{bands} bands")
    if bands >= channels:
        return cube[:, :, :channels], (f"first {channels} of {bands} bands" if bands > channels
                                       else f"all {bands} bands")
    if policy == "first":
        raise FersError(f"{name}: has {bands} bands, fewer than the model's {channels}; "
                        "use `band_policy` interp or a model for fewer bands")
    return interpolate_bands(cube, channels), f"{bands} bands linearly interpolated to {channels}"


def interpolate_bands(cube: np.ndarray, channels: int) -> np.ndarray:
    """Linear interpolation along the band axis to ``channels`` bands, end bands kept exactly."""
    bands = cube.shape[2]
    positions = np.linspace(0.0, bands - 1, channels)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, bands - 1)
    weight = (positions - lower).astype(np.float64)
    data = np.asarray(cube, dtype=np.float64)
    result = data[:, :, lower] * (1.0 - weight) + data[:, :, upper] * weight
    return result.astype(np.result_type(cube.dtype, np.float32))


def chunk_rows(cube_shape, chunk_bytes: int = None, itemsize: int = 8) -> int:
    """Rows of a ``(rows, cols, bands)`` cube per chunk of about ``chunk_bytes`` (``CHUNK_BYTES``)."""
    _, cols, bands = cube_shape
    return max(1, (chunk_bytes or CHUNK_BYTES) // max(1, cols * bands * itemsize))


@dataclass
class CubeScan:
    """What the first pass over a raw cube found, and how :meth:`prepare` turns any window of it
    into the network input: the band policy's description, the bounds of the selected bands over
    the valid pixels (the reference scaling's min and max), and with a :class:`NodataRule` the
    valid-pixel mask ``(rows, cols)`` (None: every pixel valid), the number of masked pixels and
    the fill of masked pixels (the scaled mean spectrum of the valid ones)."""

    channels: int
    policy: str
    name: str
    low: float
    high: float
    description: str
    valid: np.ndarray | None = None
    masked: int = 0
    fill: np.ndarray | None = None
    selected: np.ndarray | None = field(default=None, repr=False)  # the whole selection, when one chunk

    def prepare(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``(rows, cols, C)`` float32 network input of a raw window ``(rows, cols, bands)``; pixels
        where ``valid`` is False get :attr:`fill` (they only feed the networks, never a statistic)."""
        raw = np.asarray(raw)
        partial = valid is not None and not valid.all()
        if partial:
            raw = np.where(valid[..., None], raw, np.zeros((), raw.dtype))  # finite stand-in, replaced below
        selected = apply_band_policy(raw, self.channels, self.policy, self.name)[0]
        prepared = reference_scaling(selected, self.low, self.high).astype(np.float32)
        if partial:
            prepared[~valid] = self.fill
        return prepared


def scan_cube(cube, channels: int, policy: str = "interp", name: str = "cube", nodata: NodataRule | None = None,
              chunk_bytes: int | None = None, hint: str = "") -> CubeScan:
    """The first pass over a raw ``(rows, cols, bands)`` cube (an array, a memory map or a
    :class:`fers.rasters.Raster`), in row chunks of about ``chunk_bytes``: the value checks, the
    band policy and the bounds of the reference scaling.

    ``nodata`` None: NaN/Inf, fill values and a constant cube are refused (:func:`validate_cube`'s
    checks, in its order; ``hint`` is appended to those errors). With a :class:`NodataRule` the
    pixels it names are masked instead: left out of the bounds, counted, and recorded in
    :attr:`CubeScan.valid`; a cube with fewer than two valid pixels is refused."""
    if cube.ndim != 3:
        raise FersError(f"{name}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    rows = chunk_rows(cube.shape, chunk_bytes)
    bad = nodata_count = 0
    low = selected_low = math.inf
    high = selected_high = -math.inf
    description, policy_error = "", None
    whole = None  # the selected bands when the cube is one chunk: not computed twice
    valid = np.ones(cube.shape[:2], dtype=bool) if nodata is not None else None
    band_sum, count = 0.0, 0
    for start in range(0, cube.shape[0], rows):
        chunk = np.asarray(cube[start:start + rows])
        if nodata is None:
            chunk_bad, chunk_nodata = invalid_pixels(chunk)
            bad, nodata_count = bad + chunk_bad, nodata_count + chunk_nodata
            if bad:
                continue
        else:
            keep = ~invalid_mask(chunk, nodata)
            valid[start:start + rows] = keep
            if not keep.all():
                chunk = chunk[keep][None]  # the valid pixels as one (1, P, bands) row
            if not chunk.size:
                continue
        low, high = min(low, float(np.min(chunk))), max(high, float(np.max(chunk)))
        if policy_error is None:
            try:
                selected, description = apply_band_policy(chunk, channels, policy, name)
            except FersError as error:  # raised after the value checks, as validate_cube runs first
                policy_error = error
                continue
            selected_low = min(selected_low, float(np.min(selected)))
            selected_high = max(selected_high, float(np.max(selected)))
            if nodata is not None:
                band_sum = band_sum + selected.reshape(-1, channels).sum(0, dtype=np.float64)
                count += selected.shape[0] * selected.shape[1]
            whole = selected if rows >= cube.shape[0] and nodata is None else None
    raise_invalid(name, bad, nodata_count, hint)
    masked = int(valid.size - valid.sum()) if valid is not None else 0
    if valid is not None:
        _require_valid(valid, nodata, name)
    if not high > low:
        raise FersError(f"{name}: the cube is constant (every value is {low:g}); "
                        "it holds no signal to detect anomalies in")
    if policy_error is not None:
        raise policy_error
    if not selected_high > selected_low:
        raise FersError(f"{name}: the selected {channels} bands are constant; nothing to detect")
    fill = None
    if masked:
        fill = reference_scaling(band_sum / count, selected_low, selected_high).astype(np.float32)
    return CubeScan(channels, policy, name, selected_low, selected_high, description,
                    valid if masked else None, masked, fill, whole)


def prepare_cube(cube: np.ndarray, channels: int, policy: str = "interp", name: str = "cube",
                 chunk_bytes: int | None = None):
    """Validate, apply the band policy and normalise: the network input ``(rows, cols, C)`` float32
    and a description of the band policy used.

    The checks and their order are :func:`validate_cube`'s, then the band policy, then a constant
    selection is rejected; the scaling is :func:`normalize_cube`'s with the whole cube's range. It
    runs in row chunks of about ``chunk_bytes`` in float64 (two passes: :func:`scan_cube`, then
    :meth:`CubeScan.prepare`), so a scene of ``H·W·C`` values needs ``H·W·C`` float32 plus one
    chunk, not several float64 copies; ``cube`` may be a read-only memory map.
    """
    scan = scan_cube(cube, channels, policy, name, chunk_bytes=chunk_bytes)
    return _prepare_all(cube, scan, chunk_bytes), scan.description


def _prepare_all(cube, scan: CubeScan, chunk_bytes: int | None = None) -> np.ndarray:
    """The whole network input of ``cube`` in memory, row chunk by row chunk."""
    if scan.selected is not None:
        return reference_scaling(scan.selected, scan.low, scan.high).astype(np.float32)
    rows = chunk_rows(cube.shape, chunk_bytes)
    prepared = np.empty(cube.shape[:2] + (scan.channels,), dtype=np.float32)
    for start in range(0, cube.shape[0], rows):
        part = slice(start, start + rows)
        prepared[part] = scan.prepare(cube[part], None if scan.valid is None else scan.valid[part])
    return prepared


class PreparedView:
    """The network input of a cube computed window by window on access (``view[rows, cols]`` →
    ``(h, w, C)`` float32, :meth:`CubeScan.prepare`): a scene read from disk is never held whole.
    Has ``shape``, ``ndim`` and ``dtype`` like the array :func:`prepare_cube` would return, and
    gives the same values."""

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, cube, scan: CubeScan):
        self.cube, self.scan = cube, scan
        self.shape = tuple(cube.shape[:2]) + (scan.channels,)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (key + (slice(None), slice(None)))[:2]
        valid = None if self.scan.valid is None else self.scan.valid[rows, cols]
        prepared = self.scan.prepare(self.cube[rows, cols], valid)
        return prepared[(slice(None), slice(None)) + key[2:]] if len(key) > 2 else prepared


@dataclass
class PreparedScene:
    """A scene ready for detection: ``cube`` the network input ``(rows, cols, C)`` (an array, or a
    :class:`PreparedView` for a scene read from disk), ``valid`` the valid-pixel mask (None: all),
    ``masked`` the no-data pixel count, ``description`` the band policy used, ``rule`` the no-data rule."""

    cube: object
    description: str
    valid: np.ndarray | None
    masked: int
    rule: NodataRule | None


def prepare_source(cube, channels: int, policy: str = "interp", name: str = "cube", nodata=None,
                   chunk_bytes: int | None = None, lazy: bool | None = None) -> PreparedScene:
    """:func:`scan_cube` with the no-data rule of ``nodata`` (``None``/``"none"``, ``"auto"`` or a
    value, :func:`nodata_rule`; ``auto`` also takes the value the file declares, ``cube.nodata``),
    then the network input: in memory for an array, window by window (:class:`PreparedView`) for
    a raster read from disk (``lazy`` None: whichever ``cube`` is)."""
    rule = nodata_rule(nodata, getattr(cube, "nodata", None))
    hint = "; or mask them with `nodata` auto" if rule is None else ""
    scan = scan_cube(cube, channels, policy, name, rule, chunk_bytes, hint)
    lazy = not isinstance(cube, np.ndarray) if lazy is None else lazy
    prepared = PreparedView(cube, scan) if lazy else _prepare_all(cube, scan, chunk_bytes)
    return PreparedScene(prepared, scan.description, scan.valid, scan.masked, rule)


def to_chw(cube: np.ndarray) -> np.ndarray:
    """``(rows, cols, bands)`` → ``(bands, rows, cols)``: the one place where the layout changes."""
    return np.ascontiguousarray(np.transpose(cube, (2, 0, 1)))
