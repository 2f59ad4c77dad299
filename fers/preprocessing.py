"""Pure functions that turn a raw cube into the network input: validation, band policy,
and the reference normalisation."""

from __future__ import annotations

import math
import sys

import numpy as np

from .bands import BAND_POLICIES, band_mapping, select_bands  # noqa: F401 (BAND_POLICIES re-exported)
from .errors import FersError

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


def nodata_pixels(cube: np.ndarray, low=None, high=None) -> dict:
    """The one no-data scan: ``{fill value: (rows, cols) mask of the pixels holding it in any band}``
    for the :data:`NODATA_VALUES` present (within ``rtol`` 1e-6); values outside ``[low, high]``
    (default: the cube's range) are skipped without a scan."""
    low = np.min(cube) if low is None else low
    high = np.max(cube) if high is None else high
    found = {}
    for value in NODATA_VALUES:
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


def raise_invalid(name: str, bad: int, nodata: int) -> None:
    """The one-line errors for :func:`invalid_pixels` counts (no-op when both are 0)."""
    if bad:
        raise FersError(f"{name}: {bad} pixel(s) hold NaN or Inf values; "
                        "fill or crop them before detection (FERS does not guess missing data)")
    if nodata:
        raise FersError(f"{name}: {nodata} pixel(s) hold a no-data fill value "
                        f"(one of {', '.join(f'{v:g}' for v in NODATA_VALUES)}); "
                        "crop them out or fill them before detection")


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


def prepare_cube(cube: np.ndarray, channels: int, policy: str = "interp", name: str = "cube",
                 chunk_bytes: int | None = None, *, wavelengths=None, model_wavelengths=None, mapping=None,
                 dtype=np.float32):
    """Validate, apply the band policy and normalise: the network input ``(rows, cols, C)`` float32
    and a description of the band policy used.

    The checks and their order are :func:`validate_cube`'s, then the band policy, then a constant
    selection is rejected; the scaling is :func:`normalize_cube`'s with the whole cube's range. It
    runs in row chunks of about ``chunk_bytes`` in float64 (two passes), so a scene of ``H·W·C``
    values needs ``H·W·C`` float32 plus one chunk, not several float64 copies; ``cube`` may be a
    read-only memory map.

    The band policy is :func:`fers.bands.band_mapping` (``wavelengths``/``model_wavelengths`` in nm
    for ``wavelength``), or the precomputed ``mapping`` of this cube. ``dtype`` float64 keeps the
    scaled values exact (plain RX), at twice the memory.
    """
    if cube.ndim != 3:
        raise FersError(f"{name}: expected a 3-D cube (rows, cols, bands), got shape {tuple(cube.shape)}")
    rows = chunk_rows(cube.shape, chunk_bytes)
    bad = nodata = 0
    low = selected_low = math.inf
    high = selected_high = -math.inf
    policy_error = None
    if mapping is None:
        try:
            mapping = band_mapping(cube, channels, policy, wavelengths, model_wavelengths, name, chunk_bytes)
        except FersError as error:  # raised after the value checks, as validate_cube runs first
            policy_error = error
    whole = None  # the selected bands when the cube is one chunk: not computed twice
    for start in range(0, cube.shape[0], rows):
        chunk = np.asarray(cube[start:start + rows])
        chunk_bad, chunk_nodata = invalid_pixels(chunk)
        bad, nodata = bad + chunk_bad, nodata + chunk_nodata
        if bad:
            continue
        low, high = min(low, float(np.min(chunk))), max(high, float(np.max(chunk)))
        if policy_error is None:
            selected = mapping.apply(chunk)
            selected_low = min(selected_low, float(np.min(selected)))
            selected_high = max(selected_high, float(np.max(selected)))
            whole = selected if rows >= cube.shape[0] else None
    raise_invalid(name, bad, nodata)
    if not high > low:
        raise FersError(f"{name}: the cube is constant (every value is {low:g}); "
                        "it holds no signal to detect anomalies in")
    if policy_error is not None:
        raise policy_error
    if not selected_high > selected_low:
        raise FersError(f"{name}: the selected {channels} bands are constant; nothing to detect")
    prepared = np.empty(cube.shape[:2] + (channels,), dtype=dtype)
    for start in range(0, cube.shape[0], rows):
        selected = whole if whole is not None else mapping.apply(np.asarray(cube[start:start + rows]))
        reference_scaling(selected, selected_low, selected_high, out=prepared[start:start + rows])
    return prepared, mapping.description


def to_chw(cube: np.ndarray) -> np.ndarray:
    """``(rows, cols, bands)`` → ``(bands, rows, cols)``: the one place where the layout changes."""
    return np.ascontiguousarray(np.transpose(cube, (2, 0, 1)))


def to_batch(cubes) -> "torch.Tensor":  # noqa: F821 (torch is imported on use)
    """Equal-shape ``(rows, cols, bands)`` cubes → one ``(N, C, H, W)`` tensor whose memory is
    channels-last (a view of the stacked cubes): the layout the networks run in on the CPU, so no
    transposed copy is made there (``Detector.score`` makes the layout contiguous on a GPU)."""
    import torch

    return torch.from_numpy(np.stack(cubes)).permute(0, 3, 1, 2)
