"""Real flight lines (issue 15): no-data borders masked instead of refused, scenes read window by
window in bounded memory (.npy, ENVI, GeoTIFF), and maps written in the scene's georeferencing
(GeoTIFF, ENVI map info), with a detection mask and GeoJSON of connected detections."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from conftest import ABU_DIR, call_main, needs_abu
from test_api import numpy_rx
from fers import preprocessing, scene_detection
from fers.errors import FersError
from fers.map_outputs import detection_mask, detections_geojson, write_map
from fers.preprocessing import invalid_mask, nodata_rule, prepare_cube, prepare_source
from fers.rasters import Georeference, envi_map_transform, open_raster

rasterio = pytest.importorskip("rasterio")
envi = pytest.importorskip("spectral.io.envi")

UTM_MAP_INFO = "{UTM, 1.000, 1.000, 500000.000, 4100000.000, 5.0000, 5.0000, 11, North, WGS-84, units=Meters}"
BORDER = 5


def _abu_crop(size=60, bands=60):
    data = scipy.io.loadmat(ABU_DIR / "abu-airport-1.mat")
    return (data["data"][:size, :size, :bands].astype(np.float32), data["map"][:size, :size] != 0)


def _bordered(cube, border=BORDER, value=-9999.0):
    rows, cols, bands = cube.shape
    out = np.full((rows + 2 * border, cols + 2 * border + 3, bands), value, dtype=np.float32)
    out[border:border + rows, border:border + cols] = cube
    return out


def _inside(array, shape, border=BORDER):
    return array[border:border + shape[0], border:border + shape[1]]


# --------------------------------------------------------------------------- the no-data rule


def test_nodata_rules_and_the_one_scan():
    auto = nodata_rule("auto", declared=65535)
    assert auto.values[0] == 65535 and -9999.0 in auto.values and auto.zero_pixels
    assert nodata_rule("none") is None and nodata_rule(None) is None
    assert nodata_rule("-1").values == (-1.0,) and not nodata_rule(-1).zero_pixels
    with pytest.raises(FersError, match="`nodata` must be auto, none or a number"):
        nodata_rule("sometimes")
    cube = np.random.default_rng(0).uniform(0.1, 1.0, (4, 5, 3))
    cube[0, 0, 1] = np.nan          # NaN in one band
    cube[1, 1, 2] = -9999.0         # a common fill value in one band
    cube[2, 2] = 0.0                # 0 in every band
    cube[3, 3, 0] = 0.0             # 0 in one band only: a valid pixel
    expected = np.zeros((4, 5), bool)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = True
    np.testing.assert_array_equal(invalid_mask(cube, nodata_rule("auto")), expected)
    only = expected.copy()
    only[1, 1] = only[2, 2] = False  # a given value masks NaN/Inf and that value only
    np.testing.assert_array_equal(invalid_mask(cube, nodata_rule(0.5)), only)
    integers = np.full((3, 3, 2), 40, np.uint16)
    integers[0, 0] = 65535  # a declared fill of an unsigned sensor product
    assert invalid_mask(integers, nodata_rule("auto", 65535)).sum() == 1


def test_masked_pixels_never_enter_the_preparation():
    rng = np.random.default_rng(1)
    cube = rng.uniform(100, 900, (12, 10, 8)).astype(np.float32)
    bordered = _bordered(cube, 2, np.nan)
    scene = prepare_source(bordered, 8, "first", "line", "auto")
    expected, _ = prepare_cube(cube, 8, "first", "crop")
    np.testing.assert_array_equal(_inside(scene.cube, cube.shape, 2), expected)  # the valid part's own scaling
    assert scene.masked == bordered.shape[0] * bordered.shape[1] - 120 and scene.valid.sum() == 120
    assert _inside(scene.valid, cube.shape, 2).all()
    fill = scene.cube[0, 0]
    np.testing.assert_allclose(fill, expected.reshape(-1, 8).mean(0), rtol=1e-5)  # the valid mean spectrum
    with pytest.raises(FersError, match="or mask them with `nodata` auto"):
        prepare_source(bordered, 8, "first", "line")
    with pytest.raises(FersError, match="fewer than two valid pixels"):
        prepare_source(np.full((4, 4, 3), -9999.0), 3, "first", "empty", "auto")


# --------------------------------------------------------------------------- RX and detect.py on a real scene


@needs_abu
def test_global_rx_of_a_bordered_scene_equals_the_cropped_scene():
    cube, _ = _abu_crop()
    expected = numpy_rx(cube)
    for value in (-9999.0, np.nan, 0.0):
        scores = scene_detection.rx_map(_bordered(cube, value=value), nodata="auto")
        np.testing.assert_allclose(_inside(scores, cube.shape), expected, rtol=1e-8, atol=1e-8 * expected.max())
        border = np.ones(scores.shape, bool)
        _inside(border, cube.shape)[:] = False
        assert np.isnan(scores[border]).all() and np.isfinite(_inside(scores, cube.shape)).all()
    with pytest.raises(ValueError, match="global RX only"):
        scene_detection.rx_map(cube, background="local", nodata="auto")


def _write_envi_line(path: Path, cube, interleave="bil", crs_string=True):
    metadata = {"map info": UTM_MAP_INFO, "data ignore value": -9999, "wavelength": list(range(cube.shape[2]))}
    if crs_string:
        metadata["coordinate system string"] = "{" + rasterio.crs.CRS.from_epsg(32611).to_wkt(version="WKT1_ESRI") + "}"
    envi.save_image(str(path), cube, metadata=metadata, interleave=interleave, ext=".img", force=True)
    return path


@needs_abu
def test_detect_an_envi_flight_line_with_a_nodata_border(tmp_path, capsys):
    cube, gt = _abu_crop()
    bordered = _bordered(cube)
    line = _write_envi_line(tmp_path / "line.hdr", bordered)
    mask = np.zeros(bordered.shape[:2], bool)
    _inside(mask, cube.shape)[:] = gt
    np.save(tmp_path / "gt.npy", mask)
    out = tmp_path / "out"
    code, stdout, stderr = call_main("fers.cli.detect", "main", [
        line, "--branches", "none", "--background", "global", "--input_channel", 60, "--nodata", "auto",
        "--gt", tmp_path / "gt.npy", "--far", 0.002, "--geojson", "--save_dir", out, "--no_progress"], capsys)
    assert code == 0, stderr
    masked = bordered.shape[0] * bordered.shape[1] - cube.shape[0] * cube.shape[1]
    assert f"line: {masked} of {bordered.shape[0] * bordered.shape[1]} pixels" in stdout
    scores = np.load(out / "line_scores.npy")
    # detect.py of the cropped scene: plain global RX of its scaled input (float64, as plain RX runs)
    expected = numpy_rx(prepare_cube(cube, 60, dtype=np.float64)[0])
    np.testing.assert_allclose(_inside(scores, cube.shape), expected, rtol=1e-8, atol=1e-8 * expected.max())
    assert np.isnan(scores).sum() == masked
    row = json.loads((out / "results.json").read_text())["scenes"][0]
    from fers.metrics import auc

    assert row["nodata_pixels"] == masked and row["auc"] == auc(_inside(scores, cube.shape), gt)  # valid pixels only

    # GeoTIFF: same CRS, transform and shape as the input (as GDAL reads it), nodata NaN, float32
    with rasterio.open(tmp_path / "line.img") as source, rasterio.open(out / "line_scores.tif") as result:
        assert result.crs == source.crs and result.transform == source.transform and result.shape == source.shape
        assert result.dtypes == ("float32",) and np.isnan(result.nodata)
        np.testing.assert_array_equal(result.read(1), scores.astype(np.float32))
    # ENVI: the map info and coordinate system string kept verbatim; GDAL reads the same georeferencing
    header, written = envi.open(str(line)).metadata, envi.open(str(out / "line_scores.hdr")).metadata
    assert written["map info"] == header["map info"]
    assert written["coordinate system string"] == header["coordinate system string"]
    with rasterio.open(tmp_path / "line.img") as source, rasterio.open(out / "line_scores.img") as result:
        assert result.crs == source.crs and result.transform == source.transform and np.isnan(result.nodata)
        np.testing.assert_array_equal(result.read(1), scores.astype(np.float32))

    # the mask at the false-alarm rate and its connected detections
    valid_scores = scores[np.isfinite(scores)]
    count = int(np.ceil(0.002 * valid_scores.size))
    threshold = np.sort(valid_scores)[-count]
    expected_mask = np.nan_to_num(scores, nan=-np.inf) >= threshold
    with rasterio.open(out / "line_mask.tif") as result:
        band, nodata = result.read(1), result.nodata
    assert nodata == 255 and (band == 255).sum() == masked
    np.testing.assert_array_equal(band == 1, expected_mask)
    features = json.loads((out / "line_detections.geojson").read_text())
    labels, components = ndimage.label(expected_mask, structure=np.ones((3, 3)))
    assert len(features["features"]) == components == row["detections"]
    assert features["crs"]["properties"]["name"].endswith("EPSG::32611")
    strongest = features["features"][0]["properties"]
    label = labels[strongest["peak_row"], strongest["peak_col"]]
    rows, cols = np.nonzero(labels == label)
    assert strongest["peak_score"] == pytest.approx(np.nanmax(scores)) and strongest["area_pixels"] == len(rows)
    assert strongest["area_map_units"] == pytest.approx(25.0 * len(rows))
    assert strongest["centroid_x"] == pytest.approx(500000.0 + 5.0 * (cols.mean() + 0.5))
    assert strongest["centroid_y"] == pytest.approx(4100000.0 - 5.0 * (rows.mean() + 0.5))


@needs_abu
def test_a_geotiff_line_keeps_its_georeferencing(tmp_path, capsys):
    cube, _ = _abu_crop(40, 30)
    bordered = _bordered(cube, value=-32768)
    transform = rasterio.transform.Affine(2.5, 0.0, 300000.0, 0.0, -2.5, 5200000.0)
    with rasterio.open(tmp_path / "line.tif", "w", driver="GTiff", height=bordered.shape[0], width=bordered.shape[1],
                       count=bordered.shape[2], dtype="float32", crs="EPSG:32633", transform=transform,
                       nodata=-32768) as target:
        target.write(np.moveaxis(bordered, 2, 0))
    raster = open_raster(tmp_path / "line.tif")
    assert raster.shape == bordered.shape and raster.nodata == -32768
    np.testing.assert_array_equal(raster[3:17, 20:41], bordered[3:17, 20:41])
    code, _, stderr = call_main("fers.cli.detect", "main", [
        tmp_path / "line.tif", "--branches", "none", "--input_channel", 30, "--nodata", "auto", "--tile", 100,
        "--rx_precision", "float64",
        "--save_dir", tmp_path / "out", "--no_progress"], capsys)
    assert code == 0, stderr
    with rasterio.open(tmp_path / "out" / "line_scores.tif") as result:
        assert result.crs == rasterio.crs.CRS.from_epsg(32633) and result.transform == transform
        assert result.shape == bordered.shape[:2]
        scores = result.read(1)
    # plain RX defaults to global RX of the float64 scaled input: RX of the valid pixels alone
    expected = numpy_rx(prepare_cube(cube, 30, dtype=np.float64)[0])
    # a float32 map
    np.testing.assert_allclose(_inside(scores, cube.shape), expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert np.isnan(scores).sum() == bordered.shape[0] * bordered.shape[1] - cube.size // cube.shape[2]


@needs_abu
def test_networks_see_the_fill_but_no_statistic_does(ferd50, caplog):
    """FERD with a global background: features are local (ResNet-18 layer1: 4 px) and blended away
    from tile edges, so the map inside must not depend on the border's width or values."""
    from fers.evaluation import Detector
    from fers.scene_detection import TileGrid, tile_starts

    cube, _ = _abu_crop(48, 50)
    detector = Detector.from_checkpoints(ferd50, 50, "spectral", rx_precision="float64")
    seen = []
    features = detector.features
    detector.features = lambda cubes: seen.append(len(cubes)) or features(cubes)
    narrow = detector.detect(_bordered(cube, 5, -9999.0), tile=32, overlap=16, background="global", nodata="auto")
    seen.clear()
    with caplog.at_level(logging.INFO, logger="fers"):
        wide = detector.detect(_bordered(cube, 30, np.nan), tile=32, overlap=16, background="global", nodata="auto")
    inner_narrow, inner_wide = _inside(narrow, cube.shape, 5), _inside(wide, cube.shape, 30)
    np.testing.assert_allclose(inner_wide, inner_narrow, rtol=1e-5, atol=1e-6 * inner_narrow.max())
    assert np.isfinite(inner_wide).all() and np.isnan(wide).sum() == wide.size - 48 * 48
    # tiles holding no valid pixel are not scored (counted here with plain loops)
    shape = _bordered(cube, 30).shape
    valid = np.zeros(shape[:2], bool)
    valid[30:78, 30:78] = True
    grid = TileGrid(shape[0], shape[1], 32, 16)
    empty = sum(not valid[r:r + 32, c:c + 32].any() for r in tile_starts(shape[0], 32, 16)
                for c in tile_starts(shape[1], 32, 16))
    assert empty > 0 and sum(seen) == len(grid) - empty
    assert f"{empty} of {len(grid)} tile(s) hold no valid pixel" in caplog.text
    tiled = detector.detect(_bordered(cube, 5, -9999.0), tile=32, overlap=16, nodata="auto")  # tile background
    assert np.isnan(tiled).sum() == tiled.size - 48 * 48 and np.isfinite(_inside(tiled, cube.shape, 5)).all()


# --------------------------------------------------------------------------- reading from disk


def test_envi_windows_in_every_interleave_and_byte_order(tmp_path):
    cube = np.random.default_rng(3).random((13, 11, 6)).astype(np.float32)
    for interleave in ("bsq", "bil", "bip"):
        for order in ("<", ">"):
            path = tmp_path / f"{interleave}{order == '>'}.hdr"
            envi.save_image(str(path), cube.astype(f"{order}f4"), interleave=interleave, ext=".img",
                            byteorder=int(order == ">"))
            raster = open_raster(path)
            assert raster.shape == cube.shape
            np.testing.assert_array_equal(raster[2:9, 3:11], cube[2:9, 3:11])
            np.testing.assert_array_equal(raster.read(), cube)


def test_envi_map_info_reads_as_gdal_does(tmp_path):
    cube = np.zeros((4, 5, 2), np.float32)
    for map_info in (UTM_MAP_INFO, "{UTM, 3.5, 7, 500000, 4100000, 5, 4, 11, North, WGS-84, rotation=30}",
                     "{Geographic Lat/Lon, 1, 1, -117.5, 34.2, 0.0001, 0.0002, WGS-84, units=Degrees}"):
        envi.save_image(str(tmp_path / "m.hdr"), cube, metadata={"map info": map_info}, ext=".img", force=True)
        with rasterio.open(tmp_path / "m.img") as source:
            np.testing.assert_allclose(envi_map_transform(map_info), tuple(source.transform)[:6], rtol=1e-12)
        write_map(tmp_path / "copy.hdr", np.ones((4, 5)), open_raster(tmp_path / "m.hdr").georeference)
        with rasterio.open(tmp_path / "m.img") as source, rasterio.open(tmp_path / "copy.img") as copy:
            assert copy.crs == source.crs and copy.transform == source.transform


def test_npy_read_tile_by_tile_in_bounded_memory(tmp_path, monkeypatch):
    """A 32 MB scene through RX from disk: numpy's allocations stay a small fraction of the scene
    (the two passes read row chunks), the result equals the in-memory RX, and no map of the file
    is left open (its pages leave the resident set)."""
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((20, 20))
    path = tmp_path / "scene.npy"
    scene = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(400, 500, 40))
    for start in range(0, 400, 50):
        block = rng.standard_normal((50, 500, 20)) @ mixing
        scene[start:start + 50] = np.concatenate([block, block[..., :20] ** 2], axis=2)
    del scene
    size = path.stat().st_size
    monkeypatch.setattr(scene_detection, "CHUNK_BYTES", 2 ** 20)  # row chunks of 1 MB (float64)
    monkeypatch.setattr(preprocessing, "CHUNK_BYTES", 2 ** 20)
    raster = open_raster(path)
    tracemalloc.start()
    try:
        scores = scene_detection.rx_map(raster, nodata="auto")
        prepared = prepare_source(raster, 40, "first", "scene", "auto")
        window = prepared.cube[100:164, 200:264]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"peak {peak / 2 ** 20:.1f} MiB for a {size / 2 ** 20:.1f} MiB scene"
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the file is not mapped any more
        assert str(path) not in maps.read_text()
    expected = scene_detection.rx_map(np.load(path))
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9 * expected.max())
    np.testing.assert_array_equal(window, prepare_cube(np.load(path), 40, "first")[0][100:164, 200:264])


# --------------------------------------------------------------------------- outputs


def test_detection_mask_and_geojson_hand_case():
    scores = np.zeros((6, 8))
    scores[0, 0] = np.nan
    scores[1:3, 1:3] = [[5.0, 6.0], [7.0, 9.0]]  # one 2×2 detection
    scores[4, 6] = 8.0                            # and a single pixel
    mask, threshold = detection_mask(scores, far=5 / 47)  # 47 valid pixels: the 5 highest
    assert threshold == 5.0 and mask.sum() == 5 and not mask[0, 0]
    georeference = Georeference(None, (2.0, 0.0, 100.0, 0.0, -2.0, 50.0))
    features = detections_geojson(scores, mask, georeference)["features"]
    first, second = (feature["properties"] for feature in features)
    assert (first["area_pixels"], first["peak_score"], first["area_map_units"]) == (4, 9.0, 16.0)
    assert (first["centroid_x"], first["centroid_y"]) == (100.0 + 2 * 2.0, 50.0 - 2 * 2.0)
    assert (second["area_pixels"], second["peak_row"], second["peak_col"]) == (1, 4, 6)
    assert features[1]["geometry"]["coordinates"] == [100.0 + 2 * 6.5, 50.0 - 2 * 4.5]
    with pytest.raises(FersError, match="`far`"):
        detection_mask(scores, 1.5)


def test_missing_rasterio_is_named(tmp_path, monkeypatch, capsys):
    import sys

    cube = np.random.default_rng(6).random((20, 20, 5)).astype(np.float32)
    line = _write_envi_line(tmp_path / "line.hdr", cube, crs_string=False)
    (tmp_path / "x.tif").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(FersError, match=r"x.tif: GeoTIFF files need the optional 'rasterio' package: "
                                        r"pip install rasterio"):
        open_raster(tmp_path / "x.tif")
    code, out, err = call_main("fers.cli.detect", "main", [line, "--branches", "none", "--input_channel", 5,
                                                          "--save_dir", tmp_path / "out", "--no_progress"], capsys)
    assert code == 0 and "pip install rasterio" in err and "line_scores.tif not written" in err
    assert (tmp_path / "out" / "line_scores.hdr").exists() and not (tmp_path / "out" / "line_scores.tif").exists()


def test_detect_flag_errors(tmp_path, capsys):
    np.save(tmp_path / "scene.npy", np.random.default_rng(7).random((10, 10, 4)).astype(np.float32))
    for extra, message in ((["--nodata", "often"], "--nodata must be auto, none or a number"),
                           (["--geojson"], "--geojson needs --far"), (["--far", "2"], "--far must be")):
        code, _, err = call_main("fers.cli.detect", "main", [tmp_path / "scene.npy", "--branches", "none",
                                                            "--input_channel", 4, "--save_dir", tmp_path / "out",
                                                            *extra], capsys)
        assert code == 2 and message in err, (extra, err)
    assert not (tmp_path / "out").exists()
