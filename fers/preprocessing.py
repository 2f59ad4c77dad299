"""Pure functions that turn a raw cube into the network input: validation, band policy,
and the reference normalisation."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from .bands import BAND_POLICIES, STATISTIC_POLICIES, band_mapping, select_bands  # noqa: F401 (BAND_POLICIES re-exported)
from .errors import FersError, ParameterError

INPUT_SCALE = 0.1
# The reference input scaling in words, as model cards record it (reference_scaling computes it).
NORMALISATION = {"formula": f"{INPUT_SCALE:g} * (2 * (x - min) / (max - min) - 1)",
                 "description": f"min-max to [-1, 1] over the whole cube (all pixels and bands), times {INPUT_SCALE:g}"}
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


def reference_scaling(values: np.ndarray, low, high, out: np.ndarray | None = None) -> np.ndarray:
    """The reference input scaling: ``[low, high]`` to [-1, 1], times ``INPUT_SCALE``, computed in
    float64 (:func:`minmax_scale`'s arithmetic, step by step) and stored in ``out`` (any float
    dtype; default a new float64 array). ``low``/``high`` are numbers. It runs in blocks of pixels
    that stay in one core's L2 cache (:func:`fers.tuning.scaling_block_values`): the same values as
    whole-array arithmetic, about 3× faster than five passes over a float64 copy of the cube."""
    from .tuning import scaling_block_values

    values = np.asarray(values)
    out = np.empty(values.shape, dtype=np.float64) if out is None else out
    span = high - low
    bands = values.shape[-1] if values.ndim else 1
    if out.shape != values.shape or not out.flags.c_contiguous:
        raise ValueError("`out` must be a C-contiguous array of the shape of `values`")
    pixels, targets = values.reshape(-1, bands), out.reshape(-1, bands)
    step = max(1, scaling_block_values() // bands)
    block = np.empty((min(step, len(pixels)), bands), dtype=np.float64)
    for start in range(0, len(pixels), step):
        part = block[:len(pixels) - start] if start + step > len(pixels) else block
        part[...] = pixels[start:start + len(part)]
        if span > 0:
            part -= low
            part /= span
        else:  # minmax_scale's zero-span rule
            part[...] = 0.0
        part *= 2.0
        part -= 1.0
        part *= INPUT_SCALE
        targets[start:start + len(part)] = part
    return out


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


def invalid_pixels(cube: np.ndarray, low=None, high=None) -> tuple[int, int]:
    """``(pixels holding NaN/Inf, pixels holding a no-data fill value)`` of a ``(rows, cols, bands)``
    cube or row chunk; a pixel counts once, whichever of its bands holds the value. ``low``/``high``:
    the chunk's ``np.min``/``np.max`` if the caller has them (NaN and ±Inf show in them, so a finite
    pair spares the per-value finiteness pass)."""
    if low is None or high is None:
        low, high = (float(np.min(cube)), float(np.max(cube))) if cube.size else (math.inf, -math.inf)
    if cube.dtype.kind == "f" and cube.size and not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~np.isfinite(cube)).any(axis=2).sum())
        if bad:
            return bad, 0
    nodata = np.zeros(cube.shape[:2], dtype=bool)
    for hit in nodata_pixels(cube, low, high).values():
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
    return reference_scaling(data, low, high, out=np.empty(data.shape, dtype=np.float32))


def apply_band_policy(cube: np.ndarray, channels: int, policy: str = "interp", name: str = "cube", **options):
    """``(cube with channels bands, description)``: :func:`fers.bands.select_bands` (every policy
    of :data:`fers.bands.BAND_POLICIES`; ``options``: ``wavelengths``, ``model_wavelengths``)."""
    selected, mapping = select_bands(cube, channels, policy, name=name, **options)
    return selected, mapping.description


def chunk_rows(cube_shape, chunk_bytes: int = None, itemsize: int = 8) -> int:
    """Rows of a ``(rows, cols, bands)`` cube per chunk of about ``chunk_bytes`` (``CHUNK_BYTES``)."""
    _, cols, bands = cube_shape
    return max(1, (chunk_bytes or CHUNK_BYTES) // max(1, cols * bands * itemsize))


@dataclass
class CubeScan:
    """What the first pass over a raw cube found, and how :meth:`prepare` turns any window of it
    into the network input: the band ``mapping`` (:class:`fers.bands.BandMapping`, fixed for the
    whole scene), the bounds of the selected bands over the valid pixels (the reference scaling's
    min and max), and with a :class:`NodataRule` the valid-pixel mask ``(rows, cols)`` (None: every
    pixel valid), the number of masked pixels and the fill of masked pixels (the scaled mean
    spectrum of the valid ones)."""

    channels: int
    mapping: object
    low: float
    high: float
    valid: np.ndarray | None = None
    masked: int = 0
    fill: np.ndarray | None = None
    selected: np.ndarray | None = field(default=None, repr=False)  # the whole selection, when one chunk

    @property
    def description(self) -> str:
        return self.mapping.description

    def prepare(self, raw: np.ndarray, valid: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """``(rows, cols, C)`` network input of a raw window ``(rows, cols, bands)``; pixels where
        ``valid`` is False get :attr:`fill` (they only feed the networks, never a statistic)."""
        raw = np.asarray(raw)
        partial = valid is not None and not valid.all()
        if partial:
            raw = np.where(valid[..., None], raw, np.zeros((), raw.dtype))  # finite stand-in, replaced below
        selected = self.mapping.apply(raw)
        prepared = reference_scaling(selected, self.low, self.high, out=np.empty(selected.shape, dtype=dtype))
        if partial:
            prepared[~valid] = self.fill
        return prepared


NOT_SCANNED = object()  # `valid` of scan_cube/prepare_source: the no-data mask is still to be computed


def scan_cube(cube, channels: int, policy: str = "interp", name: str = "cube", nodata: NodataRule | None = None,
              chunk_bytes: int | None = None, hint: str = "", *, wavelengths=None, model_wavelengths=None,
              mapping=None, valid=NOT_SCANNED) -> CubeScan:
    """The first pass over a raw ``(rows, cols, bands)`` cube (an array, a memory map or a
    :class:`fers.rasters.Raster`), in row chunks of about ``chunk_bytes``: the value checks, the
    band policy (:func:`fers.bands.band_mapping`, or the precomputed ``mapping``; ``wavelengths``/
    ``model_wavelengths`` in nm for ``wavelength``) and the bounds of the reference scaling.

    ``nodata`` None: NaN/Inf, fill values and a constant cube are refused (:func:`validate_cube`'s
    checks, in its order; ``hint`` is appended to those errors). With a :class:`NodataRule` the
    pixels it names are masked instead: left out of the bounds and of the band statistics, counted,
    and recorded in :attr:`CubeScan.valid`; a cube with fewer than two valid pixels is refused.
    ``valid``: that rule's mask from :func:`valid_pixels` if the caller has it (not scanned again)."""
    if cube.ndim != 3:
        raise FersError(f"{name}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    rows = chunk_rows(cube.shape, chunk_bytes)
    bad = nodata_count = 0
    low = selected_low = math.inf
    high = selected_high = -math.inf
    policy_error = None
    known = valid if nodata is not None else None  # the mask given, or NOT_SCANNED
    if mapping is None:
        # the band statistics leave out no-data pixels: one more pass, only for those policies
        if known is NOT_SCANNED and policy in STATISTIC_POLICIES:
            known = valid_pixels(cube, nodata, name, chunk_bytes)
        try:
            mapping = band_mapping(cube, channels, policy, wavelengths, model_wavelengths, name, chunk_bytes,
                                   valid=None if known is NOT_SCANNED else known)
        except FersError as error:  # raised after the value checks, as validate_cube runs first
            policy_error = error
    whole = None  # the selected bands when the cube is one chunk: not computed twice
    valid = np.ones(cube.shape[:2], dtype=bool) if nodata is not None else None
    band_sum, count = 0.0, 0
    for start in range(0, cube.shape[0], rows):
        chunk = np.asarray(cube[start:start + rows])
        chunk_range = None
        if nodata is None:
            chunk_range = (float(np.min(chunk)), float(np.max(chunk))) if chunk.size else None
            chunk_bad, chunk_nodata = invalid_pixels(chunk, *(chunk_range or (None, None)))
            bad, nodata_count = bad + chunk_bad, nodata_count + chunk_nodata
            if bad:
                continue
        else:
            if known is NOT_SCANNED:
                keep = ~invalid_mask(chunk, nodata)
            else:
                keep = valid[start:start + rows] if known is None else known[start:start + rows]
            valid[start:start + rows] = keep
            if not keep.all():
                chunk = chunk[keep][None]  # the valid pixels as one (1, P, bands) row
            if not chunk.size:
                continue
        chunk_low, chunk_high = chunk_range or (float(np.min(chunk)), float(np.max(chunk)))
        low, high = min(low, chunk_low), max(high, chunk_high)
        if policy_error is None:
            selected = mapping.apply(chunk)
            if mapping.keeps_every_band:  # the same values: the same range
                selected_low, selected_high = min(selected_low, chunk_low), max(selected_high, chunk_high)
            else:
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
    return CubeScan(channels, mapping, selected_low, selected_high, valid if masked else None, masked, fill,
                    whole)


def prepare_cube(cube: np.ndarray, channels: int, policy: str = "interp", name: str = "cube",
                 chunk_bytes: int | None = None, *, wavelengths=None, model_wavelengths=None, mapping=None,
                 dtype=np.float32):
    """Validate, apply the band policy and normalise: the network input ``(rows, cols, C)`` float32
    and a description of the band policy used.

    The checks and their order are :func:`validate_cube`'s, then the band policy, then a constant
    selection is rejected; the scaling is :func:`normalize_cube`'s with the whole cube's range. It
    runs in row chunks of about ``chunk_bytes`` in float64 (two passes: :func:`scan_cube`, then
    :meth:`CubeScan.prepare`), so a scene of ``H·W·C`` values needs ``H·W·C`` float32 plus one
    chunk, not several float64 copies; ``cube`` may be a read-only memory map.

    The band policy is :func:`fers.bands.band_mapping` (``wavelengths``/``model_wavelengths`` in nm
    for ``wavelength``), or the precomputed ``mapping`` of this cube. ``dtype`` float64 keeps the
    scaled values exact (plain RX), at twice the memory.
    """
    scan = scan_cube(cube, channels, policy, name, chunk_bytes=chunk_bytes, wavelengths=wavelengths,
                     model_wavelengths=model_wavelengths, mapping=mapping)
    return _prepare_all(cube, scan, chunk_bytes, dtype), scan.description


def _prepare_all(cube, scan: CubeScan, chunk_bytes: int | None = None, dtype=np.float32) -> np.ndarray:
    """The whole network input of ``cube`` in memory, row chunk by row chunk."""
    prepared = np.empty(cube.shape[:2] + (scan.channels,), dtype=dtype)
    if scan.selected is not None:
        return reference_scaling(scan.selected, scan.low, scan.high, out=prepared)
    rows = chunk_rows(cube.shape, chunk_bytes)
    for start in range(0, cube.shape[0], rows):
        part = slice(start, start + rows)
        prepared[part] = scan.prepare(cube[part], None if scan.valid is None else scan.valid[part], dtype)
    return prepared


class PreparedView:
    """The network input of a cube computed window by window on access (``view[rows, cols]`` →
    ``(h, w, C)``, :meth:`CubeScan.prepare`): a scene read from disk is never held whole. Has
    ``shape``, ``ndim`` and ``dtype`` like the array :func:`prepare_cube` would return, and gives
    the same values."""

    ndim = 3

    def __init__(self, cube, scan: CubeScan, dtype=np.float32):
        self.cube, self.scan, self.dtype = cube, scan, np.dtype(dtype)
        self.shape = tuple(cube.shape[:2]) + (scan.channels,)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (key + (slice(None), slice(None)))[:2]
        valid = None if self.scan.valid is None else self.scan.valid[rows, cols]
        prepared = self.scan.prepare(self.cube[rows, cols], valid, self.dtype)
        return prepared[(slice(None), slice(None)) + key[2:]] if len(key) > 2 else prepared


@dataclass
class PreparedSource:
    """A scene ready for detection: ``cube`` the network input ``(rows, cols, C)`` (an array, or a
    :class:`PreparedView` for a scene read from disk), ``valid`` the valid-pixel mask (None: all),
    ``masked`` the no-data pixel count, ``mapping`` the band mapping used, ``rule`` the no-data rule."""

    cube: object
    mapping: object
    valid: np.ndarray | None
    masked: int
    rule: NodataRule | None

    @property
    def description(self) -> str:
        return self.mapping.description


def prepare_source(cube, channels: int, policy: str = "interp", name: str = "cube", nodata=None,
                   chunk_bytes: int | None = None, *, mapping=None, dtype=np.float32,
                   valid=NOT_SCANNED) -> PreparedSource:
    """:func:`scan_cube` with the no-data rule of ``nodata`` (``None``/``"none"``, ``"auto"`` or a
    value, :func:`nodata_rule`; ``auto`` also takes the value the file declares, ``cube.nodata``),
    then the network input: in memory for an array, window by window (:class:`PreparedView`) for
    a raster read from disk. ``mapping``: a precomputed band
    mapping of this cube; ``dtype`` as for :func:`prepare_cube`; ``valid`` as for :func:`scan_cube`."""
    rule = nodata_rule(nodata, getattr(cube, "nodata", None))
    hint = "; or mask them with `nodata` auto" if rule is None else ""
    scan = scan_cube(cube, channels, policy, name, rule, chunk_bytes, hint, mapping=mapping, valid=valid)
    from_disk = not isinstance(cube, np.ndarray)
    prepared = PreparedView(cube, scan, dtype) if from_disk else _prepare_all(cube, scan, chunk_bytes, dtype)
    return PreparedSource(prepared, scan.mapping, scan.valid, scan.masked, rule)


def to_chw(cube: np.ndarray) -> np.ndarray:
    """``(rows, cols, bands)`` → ``(bands, rows, cols)``: the one place where the layout changes."""
    return np.ascontiguousarray(np.transpose(cube, (2, 0, 1)))


def to_batch(cubes) -> "torch.Tensor":  # noqa: F821 (torch is imported on use)
    """Equal-shape ``(rows, cols, bands)`` cubes → one ``(N, C, H, W)`` tensor whose memory is
    channels-last (a view of the stacked cubes): the layout the networks run in on the CPU, so no
    transposed copy is made there (``Detector.score`` makes the layout contiguous on a GPU)."""
    import torch

    return torch.from_numpy(np.stack(cubes)).permute(0, 3, 1, 2)
