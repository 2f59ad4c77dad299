"""Released weights by name (issue 16): the pinned table, hash and git-blob verification, download,
cache, refusal of corrupt files, interrupted and offline downloads, the commands' --weights and
torch.hub. Offline: a loopback HTTP server serves test-made files under the repositories' layout,
with the pinned digests replaced by those of the test files."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import json
import socket
import subprocess
import threading

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, call_main
from fers import weights as released
from fers.checkpoints import band_folder, save_fen
from fers.errors import FersError
from fers.evaluation import Detector
from fers.fen import FEN
from fers.weights import GIT_BLOB, NAMED_WEIGHTS, SHA256, PinnedFile


# --------------------------------------------------------------------------- the pinned table

FERS_COMMIT = "7911a857044053eb6ed16d102e8a1b8484c90e54"
FERD_COMMIT = "0e021faf9646a4c95ff975c300d4af9ecd3488b7"
# Issue 16, copied from its text.
ISSUE_SHA256 = {
    50: ("64859f3aa3b65352bc881e6c103e6d5131a765adf45cadff6ebea405f0649540",
         "adc3601bfe865cb5d60734ce32a2359d50a64671644aa418687fa118e494bf8d"),
    100: ("08e837f7e04c5f4982edb25a29f69877f7b7387404ffac3722682b52875adcda",
          "ac04ef92c5ace09365d60f7e729385eca9149299a3c6d3981c8c0d3b62c1f0a5"),
    200: ("18cebf832b4d740c7b34c2ab049f505e0e418c316940bbadd143131cc4f36da5",
          "e15f12739cbca0cf7eead7e9adeee785fe70e62ca36266178edc9891d50d7b56"),
}
ISSUE_ENC = "c333f48607543486a380ba900a57ea20559b40ef2e7f25dd246de3369371978c"
ISSUE_AVIRIS = {"convh.pt": "ccd4286945c93829fdb3ccce4bb27599adf9f3e01c303cb3ea09827100e58ee4",
                "enc.pt": "142e80d8d16893a279cbece11bb1c4520e5f178a54207e5d628e3da826e71fe5",
                "pc.pt": "1351abeb56ccdece61c0fbac7ecc2f5f53f8d5714af77087114615f9fe263e57"}
ISSUE_BLOBS = {"fers-had100-50": "30d1c7b4df477c4dc55f9da4189c8358e2a67cd5",
               "fers-had100-100": "0e74bb9282b301ee00d2e9f7fe41a6b3dca35cb0",
               "fers-had100-200": "d4bca8523b97ff1a771537020460e08a75831f6e",
               "fers-aviris-200": "1b1f724ec0718dcb0e4cccaf20911d00e831ff51"}


def _expected_table() -> dict:
    table = {}
    for channels, (convh, pc) in ISSUE_SHA256.items():
        stage1 = {"convh.pt": (SHA256, convh), "enc.pt": (SHA256, ISSUE_ENC), "pc.pt": (SHA256, pc)}
        folder = f"saved_models/{channels}bands"
        table[f"fers-had100-{channels}"] = ("xjpp2016", "FERS", FERS_COMMIT, folder, channels,
                                            {**stage1, "spa_fen.pt": (GIT_BLOB, ISSUE_BLOBS[f"fers-had100-{channels}"])})
        table[f"ferd-had100-{channels}"] = ("cristianoKaKa", "FERD", FERD_COMMIT, folder, channels, stage1)
    table["fers-aviris-200"] = ("xjpp2016", "FERS", FERS_COMMIT, "FERS_ABU/saved_models/aviris/200bands", 200,
                                {**{name: (SHA256, digest) for name, digest in ISSUE_AVIRIS.items()},
                                 "spa_fen.pt": (GIT_BLOB, ISSUE_BLOBS["fers-aviris-200"])})
    return table


def test_the_pinned_table_has_the_issues_exact_values(monkeypatch):
    monkeypatch.delenv(released.BASE_URL_ENV, raising=False)
    actual = {name: (w.repository.owner, w.repository.name, w.repository.commit, w.folder, w.channels,
                     {f.name: (f.algorithm, f.digest) for f in w.files}) for name, w in NAMED_WEIGHTS.items()}
    assert actual == _expected_table()
    assert NAMED_WEIGHTS["fers-had100-50"].url("convh.pt") == (
        f"https://raw.githubusercontent.com/xjpp2016/FERS/{FERS_COMMIT}/saved_models/50bands/convh.pt")
    assert NAMED_WEIGHTS["ferd-had100-200"].url("pc.pt") == (
        f"https://raw.githubusercontent.com/cristianoKaKa/FERD/{FERD_COMMIT}/saved_models/200bands/pc.pt")
    assert [NAMED_WEIGHTS[n].default_branches for n in ("fers-aviris-200", "ferd-had100-100")] == ["both", "spectral"]


def test_git_blob_id_is_what_git_hash_object_computes(tmp_path):
    for size in (0, 1, 70_001):
        path = tmp_path / f"blob{size}.bin"
        path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
        by_git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert released.git_blob_id(path) == by_git.stdout.strip()
    assert released.git_blob_id(tmp_path / "blob0.bin") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob


# --------------------------------------------------------------------------- the loopback server

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        path = server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path.endswith(tuple(server.truncate)):  # the connection drops after half the bytes
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.truncate = tmp_path / "served", [], []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch, server):
    """torch.hub's cache in tmp_path, the base URL on the loopback server, and a way to serve files."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv(released.BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}")

    def serve(name: str, contents: dict) -> released.NamedWeights:
        """Put ``contents`` ({file: bytes}) at the weights' paths on the server and pin their digests."""
        weights = NAMED_WEIGHTS[name]
        pinned = []
        for pin in weights.files:
            data = contents[pin.name]
            path = server.root / weights.url(pin.name).split("/", 3)[3]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            digest = (hashlib.sha1(b"blob %d\0" % len(data) + data) if pin.algorithm == GIT_BLOB
                      else hashlib.sha256(data)).hexdigest()
            pinned.append(PinnedFile(pin.name, pin.algorithm, digest))
        monkeypatch.setitem(NAMED_WEIGHTS, name, dataclasses.replace(weights, files=tuple(pinned)))
        return NAMED_WEIGHTS[name]

    serve.server = server
    return serve


def _random_bytes(seed: int, size: int = 3000) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def fen_files(tmp_path_factory) -> dict:
    """Loadable stage-1 files of a random 50-band FEN: {file name: bytes}."""
    folder = tmp_path_factory.mktemp("fen")
    torch.manual_seed(3)
    fen = FEN(50)
    with torch.no_grad():
        for parameter in fen.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    save_fen(folder, fen)
    return {name: (folder / name).read_bytes() for name in ("convh.pt", "enc.pt", "pc.pt")}


def _cached(weights) -> list[str]:
    folder = band_folder(weights.cache_dir(), weights.channels)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- download, verification, cache

def test_download_verifies_and_a_second_use_is_a_cache_hit(hub, fen_files):
    weights = hub("ferd-had100-50", fen_files)
    root = released.fetch("ferd-had100-50")
    assert root == weights.cache_dir() and str(root).startswith(torch.hub.get_dir())
    assert _cached(weights) == ["convh.pt", "enc.pt", "pc.pt"]
    for name, data in fen_files.items():
        assert (band_folder(root, 50) / name).read_bytes() == data
    assert len(hub.server.requests) == 3
    detector = Detector.from_pretrained("ferd-had100-50", device="cpu")
    assert len(hub.server.requests) == 3  # verified from the cache, not fetched again
    assert (detector.channels, detector.branches) == (50, "spectral")
    served = torch.load(band_folder(root, 50) / "pc.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(detector.fen.classifier.conv3.weight, served["conv3.weight"])


def test_spatial_file_is_verified_by_its_git_blob_id(hub):
    contents = {name: _random_bytes(index) for index, name in enumerate(("convh.pt", "enc.pt", "pc.pt", "spa_fen.pt"))}
    weights = hub("fers-had100-50", contents)
    released.fetch("fers-had100-50", "spatial")  # the spatial branch alone: spa_fen.pt only
    assert _cached(weights) == ["spa_fen.pt"]
    # the same bytes under their SHA-256 instead of the blob id: refused (the blob id is what is pinned)
    sha256_only = dataclasses.replace(weights.files[3], digest=hashlib.sha256(contents["spa_fen.pt"]).hexdigest())
    NAMED_WEIGHTS["fers-had100-50"] = dataclasses.replace(weights, files=weights.files[:3] + (sha256_only,))
    with pytest.raises(FersError, match="does not match|refused"):
        released.fetch("fers-had100-50", "spatial")
    assert _cached(weights) == []


def test_a_mismatching_download_is_refused_and_not_cached(hub, fen_files):
    weights = hub("ferd-had100-50", fen_files)
    wrong = dataclasses.replace(weights.files[2], digest="0" * 64)
    NAMED_WEIGHTS["ferd-had100-50"] = dataclasses.replace(weights, files=weights.files[:2] + (wrong,))
    with pytest.raises(FersError) as error:
        released.fetch("ferd-had100-50")
    message = str(error.value)
    assert weights.url("pc.pt") in message and "refused" in message and "0" * 64 in message
    assert hashlib.sha256(fen_files["pc.pt"]).hexdigest() in message
    assert _cached(weights) == ["convh.pt", "enc.pt"]  # no pc.pt, no temporary file


def test_a_corrupted_cached_file_is_removed_and_fetched_again(hub, fen_files, caplog):
    weights = hub("ferd-had100-50", fen_files)
    root = released.fetch("ferd-had100-50")
    cached = band_folder(root, 50) / "enc.pt"
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")  # substituted after the download
    with caplog.at_level("WARNING", logger="fers"):
        released.fetch("ferd-had100-50")
    assert "does not match" in caplog.text and str(cached) in caplog.text
    assert cached.read_bytes() == fen_files["enc.pt"]
    assert hub.server.requests.count(hub.server.requests[1]) == 2  # enc.pt fetched twice, the others once
    assert len(hub.server.requests) == 4


def test_an_interrupted_download_leaves_no_partial_file(hub, fen_files):
    weights = hub("ferd-had100-50", fen_files)
    hub.server.truncate.append("/enc.pt")
    size = len(fen_files["enc.pt"])
    with pytest.raises(FersError, match=rf"interrupted after {size // 2} of {size} bytes \(nothing kept\)") as error:
        released.fetch("ferd-had100-50")
    assert weights.url("enc.pt") in str(error.value)
    assert str(band_folder(weights.cache_dir(), 50) / "enc.pt") in str(error.value)
    assert _cached(weights) == ["convh.pt"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_the_command_names_the_url_and_the_folder_in_one_line(hub, capsys, monkeypatch):
    weights = NAMED_WEIGHTS["ferd-had100-50"]
    monkeypatch.setenv(released.BASE_URL_ENV, f"http://127.0.0.1:{_closed_port()}")
    code, out, err = call_main("fers.cli.evaluate", "had100_main", ["--weights", "ferd-had100-50"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    url, target = weights.url("convh.pt"), band_folder(weights.cache_dir(), 50) / "convh.pt"
    assert err.startswith(f"error: cannot download {url} (") and f"put it at {target}" in err
    assert _cached(weights) == []


def test_weights_and_checkpoint_dir_exclude_each_other_and_band_counts_must_agree(hub, capsys):
    for argv, expected in ((["--weights", "ferd-had100-50", "--checkpoint_dir", "x"], "not allowed with"),
                           (["--weights", "fers-had100-200", "--input_channel", "50"], "contradicts --weights"),
                           (["--weights", "ferd-had100-50", "--branches", "both"],
                            "--weights ferd-had100-50 holds the stage-1 (FERD) files only, not spa_fen.pt: use "
                            "--branches spectral"),
                           (["--weights", "fers-had100-7"], "invalid choice")):
        code, out, err = call_main("fers.cli.evaluate", "had100_main", argv, capsys)
        assert code == 2 and expected in err, (argv, err)
    assert hub.server.requests == []


# --------------------------------------------------------------------------- the commands and torch.hub

@pytest.fixture
def small_layout(tmp_path):
    """Two 32×32×50 HAD100-layout test scenes with a small square anomaly each."""
    from fers.io import save_mask_png

    root = tmp_path / "HAD100Dataset"
    (root / "test" / "aviris_ng").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(2):
        cube = rng.uniform(0.2, 0.3, (32, 32, 50)) + 0.01 * rng.standard_normal((32, 32, 50))
        mask = np.zeros((32, 32), bool)
        mask[10 + index:13 + index, 12:15] = True
        cube[mask] = rng.uniform(0.1, 1.0, 50)
        np.save(root / "test" / "aviris_ng" / f"scene{index}.npy", cube.astype(np.float32))
        save_mask_png(root / "ground_truth" / "aviris_ng" / f"scene{index}.png", mask)
    return root


def test_test_detect_and_compare_with_weights_score_as_with_the_same_files_on_disk(hub, fen_files, small_layout,
                                                                                    tmp_path, capsys):
    had100_layout = small_layout
    weights = hub("ferd-had100-50", fen_files)
    on_disk = band_folder(tmp_path / "disk", 50)
    on_disk.mkdir(parents=True)
    for name, data in fen_files.items():
        (on_disk / name).write_bytes(data)
    common = ["--data_path", had100_layout, "--no_progress"]
    runs = {}
    for label, source in (("named", ["--weights", "ferd-had100-50"]),
                          ("disk", ["--checkpoint_dir", tmp_path / "disk", "--input_channel", 50,
                                    "--branches", "spectral"])):
        code, out, err = call_main("fers.cli.evaluate", "had100_main",
                                   [*common, *source, "--save_dir", tmp_path / label], capsys)
        assert code == 0, err
        runs[label] = json.loads((tmp_path / label / "results.json").read_text())
    assert runs["named"]["config"]["weights"] == "ferd-had100-50"
    assert runs["named"]["config"]["checkpoint_dir"] == str(weights.cache_dir())
    assert (runs["named"]["config"]["branches"], runs["named"]["config"]["input_channel"]) == ("spectral", 50)
    assert [r["auc"] for r in runs["named"]["scenes"]] == [r["auc"] for r in runs["disk"]["scenes"]]

    scene = had100_layout / "test" / "aviris_ng" / "scene0.npy"
    code, out, err = call_main("fers.cli.detect", "main", [scene, "--weights", "ferd-had100-50", "--gt", "none",
                                                           "--no_progress", "--save_dir", tmp_path / "detect"], capsys)
    assert code == 0 and "branches=spectral" in out, err
    code, out, err = call_main("fers.cli.compare", "main",
                               ["--layout", "had100", "--data_path", had100_layout, "--methods", "ferd,fers",
                                "--weights", "ferd-had100-50", "--no_progress", "--save_dir", tmp_path / "cmp"], capsys)
    assert code == 0, err
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["auc"] for r in comparison["rows"]] == [r["auc"] for r in runs["disk"]["scenes"]]
    assert comparison["skipped"] == {"fers": "checkpoints missing"}  # FERD's release has no spatial branch
    assert len(hub.server.requests) == 3


def test_hubconf_loads_the_named_weights_through_torch_hub(hub, fen_files):
    hub("ferd-had100-50", fen_files)
    detector = torch.hub.load(str(REPO_ROOT), "ferd-had100-50", source="local", device="cpu")
    assert isinstance(detector, Detector) and (detector.channels, detector.branches) == (50, "spectral")
    same = torch.hub.load(str(REPO_ROOT), "ferd_had100_50", source="local")
    torch.testing.assert_close(same.fen.convh.convh.weight, detector.fen.convh.convh.weight)
    spec = importlib.util.spec_from_file_location("hubconf", REPO_ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies[:2] == ["torch", "numpy"]
    assert all(callable(getattr(hubconf, name)) for name in released.NAMES)
    assert len(hub.server.requests) == 3
