"""Synthetic hyperspectral scenes for the demo and the tests, deterministic by seed.

A scene is a linear mixture of a few smooth endmember spectra over a 400–2500 nm grid
(vegetation, soil, water, asphalt, roof), with spatially structured abundances, illumination
variation, an atmospheric transmission with water-vapour absorptions, band-dependent sensor
noise, and implanted targets:

- sub-pixel targets: one pixel holding a target spectrum at a fraction of 0.1–0.5;
- multi-pixel targets: elliptical blobs 2–5 px across, full abundance inside and partial
  abundance on the rim.

The ground truth marks every pixel with a non-zero target abundance. Outside the mask a scene is
bitwise equal to :func:`make_background` with the same seed (targets come from their own random
stream), which is what the tests check. Cubes are ``(rows, cols, bands)`` float32 reflectance-like
values (mostly 0–0.6).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from .errors import FersError
from .outputs import staged_layout

WAVELENGTH_RANGE_NM = (400.0, 2500.0)
BACKGROUND_MATERIALS = ("vegetation", "dry_grass", "soil", "water", "asphalt", "roof")
TARGET_MATERIALS = ("red_paint", "blue_plastic", "metal_panel", "green_tarp")
# Defaults calibrated so that plain global RX reaches a mean AUC of about 0.94 on 64×64×100 scenes
# (see docs/data.md for the measured figure): detectable, but not trivially.
DEFAULT_NOISE = 0.012
DEFAULT_TARGETS = 6


def wavelengths(bands: int) -> np.ndarray:
    """Band centres in nm, evenly spaced over 400–2500 nm, ``(bands,)``."""
    return np.linspace(*WAVELENGTH_RANGE_NM, bands)


def _bump(lam, centre, width):
    return np.exp(-0.5 * ((lam - centre) / width) ** 2)


def _step(lam, centre, width):
    return 1.0 / (1.0 + np.exp(-(lam - centre) / width))


def _water_absorption(lam, depth_1450, depth_1940):
    """Liquid-water absorptions of moist materials (around 980, 1200, 1450 and 1940 nm)."""
    return (1.0 - 0.06 * _bump(lam, 980, 30) - 0.12 * _bump(lam, 1200, 45)
            - depth_1450 * _bump(lam, 1450, 70) - depth_1940 * _bump(lam, 1940, 80))


def material_spectrum(name: str, lam: np.ndarray) -> np.ndarray:
    """Reflectance ``(bands,)`` of a named material at wavelengths ``lam`` (nm): smooth shapes with
    the absorption features that make each material recognisable."""
    if name == "vegetation":  # green peak, chlorophyll well, red edge, NIR plateau, water bands
        visible = 0.03 + 0.06 * _bump(lam, 550, 35) - 0.02 * _bump(lam, 670, 25)
        nir = 0.45 * _step(lam, 715, 14) * (1.0 - 0.35 * _step(lam, 1330, 60) - 0.3 * _step(lam, 1900, 60))
        return (visible + nir) * _water_absorption(lam, 0.45, 0.6)
    if name == "dry_grass":  # weak red edge, cellulose/lignin feature at 2100 nm
        base = 0.08 + 0.22 * _step(lam, 650, 60) + 0.08 * _step(lam, 1000, 150)
        return base * _water_absorption(lam, 0.2, 0.3) * (1.0 - 0.12 * _bump(lam, 2100, 40))
    if name == "soil":  # slowly rising, clay (2200 nm) and iron-oxide (900 nm) features
        base = 0.07 + 0.26 * _step(lam, 750, 220) - 0.05 * _step(lam, 2300, 80)
        return base * _water_absorption(lam, 0.15, 0.25) * (1.0 - 0.1 * _bump(lam, 2200, 30)
                                                             - 0.05 * _bump(lam, 900, 60))
    if name == "water":  # bright only in the blue-green, nearly black beyond 900 nm
        return 0.005 + 0.07 * np.exp(-np.clip(lam - 420, 0, None) / 170) + 0.015 * _bump(lam, 570, 40)
    if name == "asphalt":  # dark and nearly flat, hydrocarbon feature at 1730 and 2310 nm
        base = 0.06 + 0.05 * (lam - 400) / 2100
        return base * (1.0 - 0.08 * _bump(lam, 1730, 30) - 0.1 * _bump(lam, 2310, 30))
    if name == "roof":  # bright concrete/tile, carbonate feature at 2340 nm
        base = 0.18 + 0.12 * _step(lam, 600, 90) + 0.04 * (lam - 400) / 2100
        return base * (1.0 - 0.12 * _bump(lam, 2340, 40) - 0.04 * _bump(lam, 1900, 60))
    if name == "red_paint":  # sharp rise at 600 nm, binder features
        base = 0.05 + 0.4 * _step(lam, 600, 12) - 0.1 * _step(lam, 1100, 200)
        return base * (1.0 - 0.15 * _bump(lam, 1730, 25) - 0.2 * _bump(lam, 2300, 35))
    if name == "blue_plastic":  # blue peak, polymer C-H features at 1210, 1730, 2310 nm
        base = 0.05 + 0.25 * _bump(lam, 460, 45) + 0.35 * _step(lam, 800, 60)
        return base * (1.0 - 0.2 * _bump(lam, 1210, 20) - 0.3 * _bump(lam, 1730, 25)
                       - 0.25 * _bump(lam, 2310, 30))
    if name == "metal_panel":  # bright and spectrally flat with a slight slope
        return 0.42 + 0.06 * (lam - 400) / 2100 - 0.03 * _bump(lam, 880, 100)
    if name == "green_tarp":  # vegetation-like colour, but no red edge (a camouflage material)
        visible = 0.04 + 0.07 * _bump(lam, 540, 40)
        return visible + 0.16 * _step(lam, 760, 40) * (1.0 - 0.25 * _bump(lam, 1730, 40))
    raise ValueError(f"unknown material {name!r}; choose from {BACKGROUND_MATERIALS + TARGET_MATERIALS}")


def atmospheric_transmission(lam: np.ndarray) -> np.ndarray:
    """Two-way transmission ``(bands,)``: deep water-vapour bands at 1400 and 1900 nm, weaker ones at
    940 and 1140 nm, the oxygen line at 760 nm. Observed signal = reflectance × transmission."""
    return (1.0 - 0.85 * _bump(lam, 1400, 35) - 0.9 * _bump(lam, 1890, 45) - 0.35 * _bump(lam, 940, 20)
            - 0.3 * _bump(lam, 1140, 25) - 0.25 * _bump(lam, 762, 6))


def noise_profile(lam: np.ndarray) -> np.ndarray:
    """Relative noise standard deviation per band ``(bands,)``: higher at the detector ends and in the
    absorption bands, as for a pushbroom imaging spectrometer."""
    edges = 1.0 + 1.5 * np.exp(-(lam - 400) / 60) + 1.2 * np.exp((lam - 2500) / 120)
    swir = 1.0 + 0.6 * _step(lam, 1800, 80)
    return edges * swir * (1.0 + 1.5 * (1.0 - atmospheric_transmission(lam)))


def _smooth_curve(rng: np.random.Generator, lam: np.ndarray, amplitude: float) -> np.ndarray:
    """A random smooth multiplicative perturbation ``1 + amplitude·(low-frequency cosines)``."""
    x = (lam - lam[0]) / max(lam[-1] - lam[0], 1.0)
    curve = sum(rng.normal() / k * np.cos(np.pi * k * x + rng.uniform(0, 2 * np.pi)) for k in range(1, 5))
    return 1.0 + amplitude * curve / 1.5


def _smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, ``shape``."""
    smoothed = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return smoothed / max(smoothed.std(), 1e-12)


@dataclass
class SyntheticScene:
    """A generated scene: ``cube`` (H, W, B) float32, ``mask`` (H, W) bool, the target abundance
    (H, W) float64 and one record per implanted target."""

    cube: np.ndarray
    mask: np.ndarray
    target_abundance: np.ndarray
    targets: list = field(default_factory=list)
    materials: list = field(default_factory=list)


def _background(height, width, bands, rng, n_materials, noise, illumination):
    """Background reflectance (H, W, B) and the additive noise (H, W, B), both float64."""
    lam = wavelengths(bands)
    materials = list(rng.choice(BACKGROUND_MATERIALS, size=n_materials, replace=False))
    spectra = np.stack([material_spectrum(m, lam) * _smooth_curve(rng, lam, 0.08) for m in materials])
    # Abundances: smooth random fields through a softmax give fields with soft boundaries.
    scale = max(height, width)
    logits = np.stack([_smooth_field(rng, (height, width), sigma=scale / rng.uniform(6, 12))
                       for _ in materials], axis=-1)
    sharpness = rng.uniform(2.5, 4.0)
    weights = np.exp(sharpness * (logits - logits.max(-1, keepdims=True)))
    abundances = weights / weights.sum(-1, keepdims=True)
    # Within-class variability: each material's spectrum varies smoothly over the scene along a
    # few random spectral directions (leaf water, soil moisture, ageing), plus fine texture.
    reflectance = np.zeros((height, width, bands))
    for index, spectrum in enumerate(spectra):
        variation = 1.0 + sum(0.04 * _smooth_field(rng, (height, width), sigma=rng.uniform(1.0, 4.0))[..., None]
                              * (_smooth_curve(rng, lam, 1.0) - 1.0)[None, None, :] for _ in range(3))
        reflectance += abundances[..., index:index + 1] * spectrum * variation
    texture = 1.0 + 0.02 * rng.standard_normal((height, width, 1))
    shading = 1.0 + 0.12 * _smooth_field(rng, (height, width), sigma=scale / 8)[..., None] if illumination else 1.0
    reflectance = reflectance * texture * np.clip(shading, 0.5, 1.5)
    noise_std = noise * noise_profile(lam)
    sensor_noise = rng.standard_normal((height, width, bands)) * noise_std
    return reflectance, sensor_noise, [str(m) for m in materials], np.clip(shading, 0.5, 1.5) * texture


def _place_targets(height, width, bands, n_targets, rng, subpixel_fraction, fraction_range):
    """Target abundance (H, W), target reflectance (H, W, B) and records of the implanted targets."""
    lam = wavelengths(bands)
    abundance = np.zeros((height, width))
    target_spectra = np.zeros((height, width, bands))
    occupied = np.zeros((height, width), dtype=bool)
    records = []
    margin = 3
    if n_targets and (height <= 2 * margin + 5 or width <= 2 * margin + 5):
        raise ValueError(f"scene {height}×{width} is too small for targets (need more than {2 * margin + 5} px)")
    yy, xx = np.mgrid[0:height, 0:width]
    for index in range(n_targets):
        material = str(rng.choice(TARGET_MATERIALS))
        spectrum = material_spectrum(material, lam) * _smooth_curve(rng, lam, 0.05)
        subpixel = index < round(n_targets * subpixel_fraction)
        for _ in range(200):  # rejection sampling: targets keep two free pixels between them
            row = int(rng.integers(margin, height - margin))
            col = int(rng.integers(margin, width - margin))
            if subpixel:
                footprint = np.zeros((height, width))
                footprint[row, col] = rng.uniform(*fraction_range)
                diameter = 1
            else:
                diameter = int(rng.integers(2, 6))  # 2–5 px across
                footprint = _blob(yy, xx, row, col, diameter, rng)
            halo = gaussian_filter((footprint > 0).astype(float), 1.5) > 0.01
            if not (halo & occupied).any():
                break
        else:
            continue  # scene full: fewer targets than asked
        occupied |= footprint > 0
        abundance = np.maximum(abundance, footprint)
        target_spectra[footprint > 0] = spectrum
        pixels = np.argwhere(footprint > 0)
        records.append({"material": material, "kind": "sub-pixel" if subpixel else "multi-pixel",
                        "row": row, "col": col, "diameter_px": diameter, "pixels": int(len(pixels)),
                        "max_fraction": float(footprint.max()), "min_fraction": float(footprint[footprint > 0].min())})
    return abundance, target_spectra, records


def _blob(yy, xx, row, col, diameter, rng):
    """Abundance of an elliptical blob at most ``diameter`` px across: the fraction of each pixel it
    covers (4×4 sub-samples) times a peak abundance of 0.7–1; rims covering less than a quarter
    of a pixel are dropped."""
    peak = rng.uniform(0.7, 1.0)
    radius_y = diameter / 2 * rng.uniform(0.8, 1.0)
    radius_x = diameter / 2 * rng.uniform(0.8, 1.0)
    centre_y = row + (0.5 if diameter % 2 == 0 else 0.0) + rng.uniform(-0.25, 0.25)
    centre_x = col + (0.5 if diameter % 2 == 0 else 0.0) + rng.uniform(-0.25, 0.25)
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    coverage = np.zeros(yy.shape)
    for dy in offsets:
        for dx in offsets:
            coverage += (((yy + dy - centre_y) / radius_y) ** 2 + ((xx + dx - centre_x) / radius_x) ** 2) <= 1.0
    coverage /= 16
    top, left = row - (diameter - 1) // 2, col - (diameter - 1) // 2
    inside = (yy >= top) & (yy < top + diameter) & (xx >= left) & (xx < left + diameter)
    return np.where(inside & (coverage >= 0.25), coverage * peak, 0.0)


def _streams(seed: int):
    """Independent random streams for the background and the targets of one scene."""
    background_seq, target_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(background_seq), np.random.default_rng(target_seq)


def _check_size(height, width, bands):
    if height < 8 or width < 8 or bands < 3:
        raise ValueError(f"scene must be at least 8×8 with 3 bands, got {height}×{width}×{bands}")


def generate_scene(height: int = 64, width: int = 64, bands: int = 100, seed: int = 0,
                   n_targets: int = DEFAULT_TARGETS, n_materials: int = 4, noise: float = DEFAULT_NOISE,
                   illumination: bool = True, subpixel_fraction: float = 0.5,
                   fraction_range: tuple = (0.1, 0.5)) -> SyntheticScene:
    """A scene with implanted targets and its ground truth (see the module docstring).

    ``subpixel_fraction`` of the ``n_targets`` are single-pixel targets at a fraction drawn from
    ``fraction_range``; the rest are 2–5 px blobs. ``noise`` is the sensor noise standard deviation
    (reflectance units) at the quietest band.
    """
    _check_size(height, width, bands)
    background_rng, target_rng = _streams(seed)
    reflectance, sensor_noise, materials, illumination_map = _background(
        height, width, bands, background_rng, n_materials, noise, illumination)
    lam = wavelengths(bands)
    transmission = atmospheric_transmission(lam)
    background = reflectance * transmission + sensor_noise
    abundance, target_spectra, records = _place_targets(height, width, bands, n_targets, target_rng,
                                                        subpixel_fraction, fraction_range)
    fraction = abundance[..., None]
    # Targets replace part of the background and see the same illumination and atmosphere.
    mixed = ((1.0 - fraction) * reflectance + fraction * target_spectra * illumination_map) * transmission
    mask = abundance > 0
    cube = np.where(mask[..., None], mixed + sensor_noise, background).astype(np.float32)
    return SyntheticScene(cube, mask, abundance, records, materials)


def make_scene(height: int = 64, width: int = 64, bands: int = 100, seed: int = 0,
               n_targets: int = DEFAULT_TARGETS, **options) -> tuple[np.ndarray, np.ndarray]:
    """``(cube (H, W, B) float32, mask (H, W) bool)``: a test scene with implanted targets.
    ``options`` go to :func:`generate_scene`."""
    scene = generate_scene(height, width, bands, seed, n_targets, **options)
    return scene.cube, scene.mask


def make_background(height: int = 64, width: int = 64, bands: int = 100, seed: int = 0,
                    n_materials: int = 4, noise: float = DEFAULT_NOISE, illumination: bool = True) -> np.ndarray:
    """An anomaly-free scene ``(H, W, B)`` float32 for training; equal, outside the target mask, to
    :func:`make_scene` with the same seed and options."""
    _check_size(height, width, bands)
    background_rng, _ = _streams(seed)
    reflectance, sensor_noise, _, _ = _background(height, width, bands, background_rng, n_materials, noise,
                                                  illumination)
    return (reflectance * atmospheric_transmission(wavelengths(bands)) + sensor_noise).astype(np.float32)


def write_ground_truth_png(path, mask: np.ndarray) -> None:
    """The HAD100 ground-truth format: an RGB PNG, anomalies (255, 255, 255), background 0."""
    from PIL import Image

    grey = np.asarray(mask, bool).astype(np.uint8) * 255
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB").save(path, format="PNG")


def write_had100_layout(root, n_train: int = 20, n_test: int = 10, size: int = 64, bands: int = 100,
                        seed: int = 0, sensor: str = "aviris_ng", n_targets: int = DEFAULT_TARGETS,
                        noise: float = DEFAULT_NOISE, overwrite: bool = False, progress=None) -> dict:
    """Write a synthetic dataset in the HAD100 layout under ``root``:

    ``train/<sensor>/train_NNNN.npy`` (anomaly-free backgrounds), ``test/<sensor>/test_NNNN.npy``
    and ``ground_truth/<sensor>/test_NNNN.png`` (RGB, anomalies 255), and
    ``synthetic_<sensor>.json`` (parameters and the implanted targets of every test scene).

    All or nothing: files are staged in a hidden folder inside ``root`` and moved into place at the
    end. Existing ``<split>/<sensor>`` folders are an error unless ``overwrite``. Scene ``i`` of the
    training set uses seed ``seed·1_000_003 + i``, test scenes ``seed·1_000_003 + 500_000 + i``, so
    training and test scenes never share a background. Returns the parameters and target records.
    """
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise FersError(f"need at least one scene (n_train={n_train}, n_test={n_test})")
    parts = [Path("train") / sensor, Path("test") / sensor, Path("ground_truth") / sensor]
    info = {"generator": "fers.synthetic", "seed": seed, "size": size, "bands": bands, "sensor": sensor,
            "n_train": n_train, "n_test": n_test, "n_targets": n_targets, "noise": noise,
            "wavelengths_nm": [float(WAVELENGTH_RANGE_NM[0]), float(WAVELENGTH_RANGE_NM[1])], "test_scenes": {}}
    base = seed * 1_000_003
    with staged_layout(root, parts, overwrite) as staging:
        for index in range(n_train):
            np.save(staging / parts[0] / f"train_{index:04d}.npy", make_background(size, size, bands, base + index,
                                                                                  noise=noise))
            if progress:
                progress()
        for index in range(n_test):
            name = f"test_{index:04d}"
            scene = generate_scene(size, size, bands, base + 500_000 + index, n_targets, noise=noise)
            np.save(staging / parts[1] / f"{name}.npy", scene.cube)
            write_ground_truth_png(staging / parts[2] / f"{name}.png", scene.mask)
            info["test_scenes"][name] = {"materials": scene.materials, "targets": scene.targets,
                                         "anomaly_pixels": int(scene.mask.sum())}
            if progress:
                progress()
        (staging / f"synthetic_{sensor}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# --------------------------------------------------------------------------- the data command


def make_synthetic(output, n_train: int, n_test: int, size: int, bands: int, seed: int, sensor: str = "aviris_ng",
                   n_targets: int | None = None, noise: float | None = None, overwrite: bool = False) -> dict:
    """Write a synthetic HAD100-layout dataset (:func:`write_had100_layout`), the command's options."""
    options = {}
    if n_targets is not None:
        options["n_targets"] = n_targets
    if noise is not None:
        options["noise"] = noise
    return write_had100_layout(output, n_train, n_test, size, bands, seed, sensor,
                                         overwrite=overwrite, **options)


def rx_baseline(root, sensor: str = "aviris_ng") -> list[tuple[str, float]]:
    """Plain global RX AUC (float64) per test scene of a HAD100-layout folder."""
    import torch

    from .datasets import had100_manifest, load_scene
    from .detectors import rx_scores
    from .metrics import auc
    from .preprocessing import to_chw

    results = []
    for scene in had100_manifest(root, sensor):
        cube, mask = load_scene(scene)
        cubes = torch.from_numpy(to_chw(cube))[None]
        results.append((scene.name, auc(rx_scores(cubes)[0].numpy(), mask)))
    return results
