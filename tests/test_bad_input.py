"""The bad-input matrix: every command × every problem that applies to it.

Contract for each case: exit code 2, exactly one ``error:`` line on stderr that names the file (or
folder) and says what to do, no ``Traceback``, and no new or changed file anywhere under the test's
folder (empty folders are allowed). ``data/check.py`` is a validator: for bad *data* its contract
is exit code 2 with its table naming the file and the problem (no ``error:`` line); folder-level
problems are ``error:`` lines like everywhere else. A ground truth without an anomaly pixel is not
an error (exit 0): the AUC is NaN with a warning and the mean says how many scenes it covers.

Commands (short names in the test ids): ``test`` (test.py, HAD100 layout), ``abu``
(FERS_ABU/test.py, a folder of .mat scenes or the FERS_ABU layout), ``train1``/``train2``
(train.py --stage 1/2, tiny ResNet-18 32×32 configuration), ``prepare`` (data/prepare_abu.py),
``check`` (data/check.py), ``detect`` (detect.py), ``compare`` (compare.py).

Which problems apply to which command (a dash: the problem cannot arise there):

====================  ====  ===  ======  ======  =======  =====  ======  =======
problem               test  abu  train1  train2  prepare  check  detect  compare
====================  ====  ===  ======  ======  =======  =====  ======  =======
missing path           x     x     x       x       x        x      x       x
empty folder           x     x     x       -       x        x      -       x
truncated .npy         x     x     x       -       -        x      x       -
truncated .mat         -     x     x       -       x        x      x       x
truncated .png         x     x     -       -       -        x      x       x
2-D / 4-D cube         x     x     x       -       x        x      x       -
NaN / Inf              x     x     x       x       -        x      x       x
no-data -9999 / 1e-34  x     x     x       -       -        x      x       x
constant cube          x     x     x       -       -        x      x       x
fewer bands            x     x     x       x       -        -      x       x
gt of another size     x     x     -       -       x        x      x       x
gt without anomaly     -*    0     -       -       -        x      0       0
gt missing             x     x     -       -       -        x      x       -
checkpoint missing     x     x     -       -*      -        -      x       x
checkpoint wrong/bad   x     x     -       x       -        -      x       x
output not writable    x     x     -*      x       x        x      x       x
disk full (EFBIG)      x     x     x       -       x        x      x       x
====================  ====  ===  ======  ======  =======  =====  ======  =======

``0``: the success case (exit 0). ``-*``: covered by tests/test_training.py (training) or
tests/test_evaluation_cli.py (test.py without anomaly pixels). prepare_abu copies
values as they are (check.py is the validator), so value problems do not apply to it; training
reads no ground truth; compare.py runs the same loader for every scene, so one format per
problem is enough there. Stage 2 shares stage 1's data loading: only its own inputs (stage-1
checkpoint, run folder) and a couple of data cases are repeated. Also ``--resume`` with a corrupt
``config.json`` or ``state.pt``.

Most cases call the command's ``main(argv)`` in this process (the top-level scripts are two-line
wrappers around it); the disk-full cases run the real scripts in a subprocess whose file size is
limited with ``RLIMIT_FSIZE``, so every write beyond it fails with EFBIG.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from conftest import REPO_ROOT, call_main
from fers.checkpoints import band_folder, save_fen, save_spatial_branch
from fers.fen import FEN
from fers.io import save_mask_png
from fers.spatial_branch import SpatialBranch

SIZE, BANDS, CHANNELS = 32, 60, 50
SENSOR = "aviris_ng"

ENTRIES = {  # command → (script, module, function)
    "test": ("test.py", "fers.cli.evaluate", "had100_main"),
    "abu": ("FERS_ABU/test.py", "fers.cli.evaluate", "abu_main"),
    "train1": ("train.py", "fers.cli.train", "main"),
    "train2": ("train.py", "fers.cli.train", "main"),
    "prepare": ("data/prepare_abu.py", "fers.cli.data", "prepare_abu_main"),
    "check": ("data/check.py", "fers.cli.data", "check_main"),
    "detect": ("detect.py", "fers.cli.detect", "main"),
    "compare": ("compare.py", "fers.cli.compare", "main"),
}


# --------------------------------------------------------------------------- shared inputs


def _cube(seed: int, bands: int = BANDS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cube = (rng.random((SIZE, SIZE, bands)) * 0.5 + 0.2).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:13, 14:17] = True
    cube[mask] += 0.3
    return cube, mask


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Read-only originals, copied by each case: a HAD100 layout (2 test scenes, 1 training scene),
    a folder of 2 ABU-style .mat scenes, FERD/FERS checkpoints for 50 bands (ResNet-18 FEN) and a
    40-band set filed under ``50bands/``."""
    root = tmp_path_factory.mktemp("bad_input_base")
    for index in range(2):
        cube, mask = _cube(index)
        (root / "had100" / "test" / SENSOR).mkdir(parents=True, exist_ok=True)
        np.save(root / "had100" / "test" / SENSOR / f"scene{index}.npy", cube)
        save_mask_png(root / "had100" / "ground_truth" / SENSOR / f"scene{index}.png", mask)
        (root / "mats").mkdir(exist_ok=True)
        scipy.io.savemat(root / "mats" / f"scene{index}.mat", {"data": cube.astype(np.float64),
                                                                "map": mask.astype(np.uint8)})
    (root / "had100" / "train" / SENSOR).mkdir(parents=True)
    np.save(root / "had100" / "train" / SENSOR / "train0.npy", _cube(5)[0])
    torch.manual_seed(0)
    for name, channels in (("ck", CHANNELS), ("ck_wrong", 40)):
        save_fen(band_folder(root / name, CHANNELS), FEN(channels, "resnet18"))
        save_spatial_branch(band_folder(root / name, CHANNELS), SpatialBranch(channels))
    return root


@dataclass
class World:
    """One case's folder: copies of the originals on demand, and the command lines."""

    tmp: Path
    base: Path
    copies: dict = field(default_factory=dict)

    def copy(self, name: str) -> Path:
        if name not in self.copies:
            self.copies[name] = Path(shutil.copytree(self.base / name, self.tmp / name))
        return self.copies[name]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def blocked(self) -> Path:
        """An output path that goes through a regular file (not writable even as root)."""
        blocker = self.tmp / "a_file"
        blocker.write_text("not a folder")
        return blocker / "sub"

    def cube(self, layout: str = "had100") -> Path:
        return self.copy(layout) / ("test/aviris_ng/scene1.npy" if layout == "had100" else "scene1.mat")

    def gt(self) -> Path:
        return self.copy("had100") / "ground_truth" / SENSOR / "scene1.png"

    def train_cube(self) -> Path:
        return self.copy("had100") / "train" / SENSOR / "train0.npy"

    # command lines -------------------------------------------------------------------------
    def args(self, command: str, data=None, out=None, ck=None, extra=()) -> list:
        out = self.out if out is None else out
        ck = ck if ck is not None else (self.base / "ck" if command != "train2" else self.copy("ck"))
        model = ["--input_channel", CHANNELS, "--checkpoint_dir", ck, "--device", "cpu", "--no_progress"]
        if command == "test":
            return ["--data_path", data or self.copy("had100"), *model, "--branches", "spectral",
                    "--save_dir", out, *extra]
        if command == "abu":
            return ["--data_path", data or self.copy("mats"), *model, "--branches", "spectral",
                    "--save_dir", out, *extra]
        if command in ("train1", "train2"):
            return ["--stage", command[-1], "--data_path", data or self.copy("had100"), *model, "--epochs", 1,
                    "--batch_size", 2, "--img_size", SIZE, "--backbone", "resnet18", "--no_pretrained",
                    "--run_dir", out if command == "train2" else self.tmp / "run",
                    *(["--checkpoint_dir", out] if command == "train1" else []), *extra]
        if command == "prepare":
            return ["--abu_dir", data or self.copy("mats"), "--output", out, *extra]
        if command == "check":
            return [data or self.copy("had100"), *extra]
        if command == "detect":
            return [data or self.cube(), *model, "--branches", "spectral", "--tile", SIZE, "--save_dir", out,
                    *extra]
        if command == "compare":
            return ["--data_path", data or self.copy("mats"), *model, "--methods", "grx,ferd",
                    "--save_dir", out, *extra]
        raise KeyError(command)


def _edit_cube(path: Path, edit) -> None:
    """Apply ``edit(cube) -> cube`` to a .npy or a .mat (``data``) scene file."""
    if path.suffix == ".npy":
        np.save(path, edit(np.load(path)))
    else:
        contents = scipy.io.loadmat(path)
        scipy.io.savemat(path, {"data": edit(contents["data"]), "map": contents["map"]})


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:max(40, int(len(data) * keep))])


def _set_pixels(value):
    def edit(cube):
        cube = cube.copy()
        cube[3:5, 6, :] = value  # 2 pixels
        return cube
    return edit


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    argv: list
    fragments: tuple  # must appear in the error line (or, for check.py, in its table)
    expect: str = "error"  # error | table (check.py's report) | success


def _missing(w, c):
    nowhere = w.tmp / "nowhere"
    argv = {"test": w.args(c, data=nowhere), "abu": w.args(c, data=nowhere), "train1": w.args(c, data=nowhere),
            "train2": w.args(c, data=nowhere), "prepare": w.args(c, data=nowhere), "check": w.args(c, data=nowhere),
            "detect": w.args(c, data=nowhere / "scene.npy"), "compare": w.args(c, data=nowhere)}[c]
    words = {"detect": "no such scene file", "check": "dataset folder not found", "prepare": "ABU folder not found",
             "abu": "ABU folder not found", "test": "HAD100 folder not found"}
    return Case(argv, ("nowhere", words.get(c, "not found")))


def _empty(w, c):
    empty = w.tmp / "empty"
    empty.mkdir()
    words = {"test": "test folder not found", "abu": "no scenes", "train1": "no training scenes",
             "prepare": "no .mat files", "check": "neither a HAD100/FERS_ABU folder", "compare": "no scenes"}
    return Case(w.args(c, data=empty), (str(empty), words[c]))


def _truncated(kind):
    def make(w, c):
        if kind == "npy":
            path = w.train_cube() if c == "train1" else w.cube("had100")
            data = w.copy("had100")
        elif kind == "mat":
            path = w.cube("mats")
            data = w.copy("mats") if c != "detect" else path
        else:
            path = w.gt()
            data = w.copy("had100")
        _truncate(path)
        if c == "detect":
            argv = w.args(c, data=path if kind != "png" else w.cube("had100"),
                          extra=["--gt", path] if kind == "png" else [])
        elif c == "compare" and kind == "png":
            argv = w.args(c, data=data, extra=["--layout", "had100", "--sensor", SENSOR])
        else:
            argv = w.args(c, data=data)
        if c == "check":
            return Case(argv, (path.name, "unreadable"), "table")
        return Case(argv, (path.name, {"npy": "truncated", "mat": "not a readable .mat file",
                                       "png": "not a readable image"}[kind]))
    return make


def _values(kind):
    """2-D, 4-D, NaN, Inf, no-data (-9999, 1e-34) or constant cube in one scene."""
    edits = {"2d": lambda cube: cube[:, :, 0], "4d": lambda cube: cube[..., None],
             "nan": _set_pixels(np.nan), "inf": _set_pixels(np.inf), "nodata_9999": _set_pixels(-9999.0),
             "nodata_1e-34": _set_pixels(1e-34), "constant": lambda cube: np.full_like(cube, 0.5)}
    words = {"2d": "expected a 3-D cube", "4d": "expected a 3-D cube", "nan": "2 pixel(s) hold NaN or Inf",
             "inf": "2 pixel(s) hold NaN or Inf", "nodata_9999": "2 pixel(s) hold a no-data fill value",
             "nodata_1e-34": "2 pixel(s) hold a no-data fill value", "constant": "constant"}
    table_words = {"2d": "expected a 3-D cube", "4d": "expected a 3-D cube", "nan": "120 NaN and 0 Inf value(s)",
                   "inf": "0 NaN and 120 Inf value(s)",
                   "nodata_9999": "no-data value -9999 in 2 pixel(s)",
                   "nodata_1e-34": "no-data value 1e-34 in 2 pixel(s)", "constant": "constant cube"}

    def make(w, c):
        # FERS_ABU/test.py: .mat scenes for NaN and no-data, the FERS_ABU (.npy) layout otherwise
        mats = c in ("compare", "prepare") or (c == "abu" and kind in ("nan", "nodata_9999"))
        path = w.train_cube() if c in ("train1", "train2") else w.cube("mats" if mats else "had100")
        _edit_cube(path, edits[kind])
        data = path if c == "detect" else (w.copy("had100") if c == "abu" and not mats else None)
        argv = w.args(c, data=data)
        if c == "check":
            return Case(argv, (path.name, table_words[kind]), "table")
        if c == "prepare":  # a .mat without a 3-D array
            return Case(argv, (path.name, "cannot tell which variable is the cube"))
        return Case(argv, (path.name, words[kind]))
    return make


def _fewer_bands(w, c):
    layout = "mats" if c in ("abu", "compare") else "had100"
    path = w.train_cube() if c in ("train1", "train2") else w.cube(layout)
    _edit_cube(path, lambda cube: cube[:, :, :40])
    policy = {"test": "first", "abu": "first", "detect": "error", "compare": "first"}
    extra = ["--band_policy", policy[c]] if c in policy else []
    argv = w.args(c, data=path if c == "detect" else None, extra=extra)
    words = {"first": "has 40 bands, fewer than the model's 50", "error": "has 40 bands but the model takes 50"}
    return Case(argv, (path.name, words.get(policy.get(c), "has 40 bands, fewer than --input_channel 50")))


def _gt_size(w, c):
    if c in ("prepare", "abu", "compare"):
        path = w.cube("mats")
        contents = scipy.io.loadmat(path)
        scipy.io.savemat(path, {"data": contents["data"], "map": np.zeros((SIZE, SIZE - 4), np.uint8)})
        data = path if c == "detect" else None
    else:
        path = w.gt()
        save_mask_png(path, np.ones((SIZE - 4, SIZE), bool))
        data = w.cube("had100") if c == "detect" else None
    extra = ["--gt", path] if c == "detect" else []
    argv = w.args(c, data=data, extra=extra)
    if c == "check":
        return Case(argv, (path.name, f"ground truth is {SIZE - 4}×{SIZE}"), "table")
    return Case(argv, (path.name, "they must match" if c != "prepare" else "fix or remove this file"))


def _no_anomaly(w, c):
    if c == "check":
        save_mask_png(w.gt(), np.zeros((SIZE, SIZE), bool))
        return Case(w.args(c), ("scene1", "ground truth has no anomaly pixel"), "table")
    path = w.cube("mats")
    contents = scipy.io.loadmat(path)
    scipy.io.savemat(path, {"data": contents["data"], "map": np.zeros((SIZE, SIZE), np.uint8)})
    return Case(w.args(c, data=path if c == "detect" else None), ("scene1", "no anomaly pixel"), "success")


def _checkpoint(problem):
    def make(w, c):
        ck = w.copy("ck_wrong") if problem == "wrong_bands" else w.copy("ck")
        name = {"test": "enc.pt", "abu": "convh.pt", "train2": "convh.pt", "detect": "pc.pt", "compare": "enc.pt"}[c]
        if problem == "corrupt":
            _truncate(band_folder(ck, CHANNELS) / name, 0.3)
            words = (name, "corrupt or unreadable checkpoint")
        else:
            words = ("convh.pt", "checkpoint is for 40 bands but --input_channel is 50")
        argv = w.args(c, ck=ck, out=w.tmp / "run2" if c == "train2" else None)
        return Case(argv, words)
    return make


def _gt_missing(w, c):
    path = w.gt()
    path.unlink()
    if c == "check":
        return Case(w.args(c), ("scene1.npy", f"no ground truth (expected {path})"), "table")
    if c == "detect":
        return Case(w.args(c, extra=["--gt", path]), (path.name, "no such ground-truth file"))
    return Case(w.args(c, data=w.copy("had100")), ("scene1.npy", f"no ground truth at {path}"))


def _checkpoint_missing(w, c):
    ck = w.copy("ck")
    folder = band_folder(ck, CHANNELS)
    if c == "detect":  # no <C>bands folder at all
        shutil.rmtree(folder)
        return Case(w.args(c, ck=ck), (str(folder), "checkpoint folder not found"))
    if c == "compare":  # only the FERD method asked, and its files are gone
        (folder / "enc.pt").unlink()
        return Case(w.args(c, ck=ck, extra=["--methods", "ferd"]), (str(folder), "no method can run"))
    name = "spa_fen.pt" if c == "abu" else "enc.pt"
    (folder / name).unlink()
    return Case(w.args(c, ck=ck, extra=["--branches", "both"] if c == "abu" else []),
                (name, "checkpoint not found"))


def _unwritable(w, c):
    out = w.blocked()
    if c == "check":
        return Case(w.args(c, extra=["--json", out / "report.json"]), (str(out.parent), "--json"))
    return Case(w.args(c, out=out), (str(out), "not writable" if c != "prepare" else "cannot create the output"))


def _resume(problem):
    def make(w, c):
        from fers.cli.train import main_parser

        run = w.tmp / "old_run"
        run.mkdir()
        args = vars(main_parser().parse_args([str(a) for a in w.args("train1")]))
        (run / "config.json").write_text(json.dumps({"stage": "stage1", "args": args}))
        if problem == "config":
            (run / "config.json").write_text("{not json")
            words = ("config.json", "unreadable run configuration")
        else:
            (run / "state.pt").write_bytes(b"PK\x03\x04 truncated")
            words = ("state.pt", "unreadable training state")
        return Case(["--resume", run, "--no_progress", "--device", "cpu"], words)
    return make


PROBLEMS = {
    "missing_path": (_missing, "test abu train1 train2 prepare check detect compare"),
    "empty_folder": (_empty, "test abu train1 prepare check compare"),
    "truncated_npy": (_truncated("npy"), "test abu train1 check detect"),
    "truncated_mat": (_truncated("mat"), "abu train1 prepare check detect compare"),
    "truncated_png": (_truncated("png"), "test abu check detect compare"),
    "cube_2d": (_values("2d"), "test abu train1 prepare check detect"),
    "cube_4d": (_values("4d"), "test abu train1 prepare check detect"),
    "nan": (_values("nan"), "test abu train1 train2 check detect compare"),
    "inf": (_values("inf"), "test abu train1 check detect"),
    "nodata_9999": (_values("nodata_9999"), "test abu train1 check detect compare"),
    "nodata_1e-34": (_values("nodata_1e-34"), "test abu train1 check detect"),
    "constant": (_values("constant"), "test abu train1 check detect compare"),
    "fewer_bands": (_fewer_bands, "test abu train1 train2 detect compare"),
    "gt_size": (_gt_size, "test abu prepare check detect compare"),
    "gt_no_anomaly": (_no_anomaly, "abu check detect compare"),
    "gt_missing": (_gt_missing, "test abu check detect"),
    "checkpoint_missing": (_checkpoint_missing, "test abu detect compare"),
    "checkpoint_wrong_bands": (_checkpoint("wrong_bands"), "test abu train2 detect compare"),
    "checkpoint_corrupt": (_checkpoint("corrupt"), "test abu train2 detect compare"),
    "output_not_writable": (_unwritable, "test abu train2 prepare check detect compare"),
    "resume_bad_config": (_resume("config"), "train1"),
    "resume_bad_state": (_resume("state"), "train1"),
}
MATRIX = [(command, problem) for problem, (_, commands) in PROBLEMS.items() for command in commands.split()]


# --------------------------------------------------------------------------- running and checking


def _files(root: Path) -> dict:
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*") if path.is_file()}


def _call(command: str, argv: list, capsys) -> tuple[int, str, str]:
    _, module, function = ENTRIES[command]
    return call_main(module, function, argv, capsys)


def assert_clean_failure(code, out, err, fragments, before: dict, after: dict):
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    changed = {path for path in after if before.get(path) != after[path]}
    assert not changed, sorted(map(str, changed))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("command, problem", MATRIX, ids=[f"{c}-{p}" for c, p in MATRIX])
def test_bad_input(command, problem, base, tmp_path, capsys):
    world = World(tmp_path, base)
    case = PROBLEMS[problem][0](world, command)
    before = _files(tmp_path)
    code, out, err = _call(command, case.argv, capsys)
    after = _files(tmp_path)
    if case.expect == "error":
        assert_clean_failure(code, out, err, case.fragments, before, after)
    elif case.expect == "table":  # check.py: exit 2, the problem on the file's row, no error line
        assert code == 2 and "Traceback" not in err and "error:" not in err, (code, out, err)
        problem_lines = [line for line in out.split("have problems:")[1].splitlines() if case.fragments[0] in line]
        assert len(problem_lines) == 1 and case.fragments[1] in problem_lines[0], out
        assert set(after) == set(before)
    else:
        _assert_no_anomaly_success(command, code, out, err, world)


def _assert_no_anomaly_success(command, code, out, err, world):
    assert code == 0, (code, out, err)
    warnings = [line for line in out.splitlines() if line.startswith("warning:") and "no anomaly pixel" in line]
    assert len(warnings) == 1 and "scene1" in warnings[0], out
    if command == "abu":
        assert "mean AUC" in out and "over 1 of 2 scenes (1 without anomaly pixels left out)" in out
        payload = json.loads((world.out / "results.json").read_text())
        aucs = {s["name"]: s["auc"] for s in payload["scenes"]}
        assert np.isnan(aucs["scene1"]) and 0.0 <= aucs["scene0"] <= 1.0
        assert payload["scenes_covered"] == 1 and payload["mean_auc"] == aucs["scene0"]
    elif command == "detect":
        row = json.loads((world.out / "results.json").read_text())["scenes"][0]
        assert np.isnan(row["auc"]) and np.load(world.out / "scene1_scores.npy").shape == (SIZE, SIZE)
    else:  # compare: every method's mean covers 1 scene and equals scene0's value
        payload = json.loads((world.out / "comparison.json").read_text())
        for method in ("grx", "ferd"):
            rows = {r["scene"]: r["auc"] for r in payload["rows"] if r["method"] == method}
            assert np.isnan(rows["scene1"]) and payload["means"][method]["scenes_covered"] == 1
            assert payload["means"][method]["auc"] == rows["scene0"]
        assert "mean (1)" in out


# --------------------------------------------------------------------------- disk full


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # every file write beyond 1 KiB: EFBIG


DISK_FULL = ["test", "abu", "train1", "prepare", "check", "detect", "compare"]


@pytest.mark.parametrize("command", DISK_FULL)
def test_disk_full_exits_2_naming_the_folder_and_leaves_nothing(command, base, tmp_path):
    world = World(tmp_path, base)
    if command == "check":
        argv, folder = world.args(command, extra=["--json", world.out / "report.json"]), world.out
    else:
        argv, folder = world.args(command), (tmp_path / "run" if command == "train1" else world.out)
    for name in ("had100", "mats"):
        world.copy(name)
    before = _files(tmp_path)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    result = subprocess.run([sys.executable, str(REPO_ROOT / ENTRIES[command][0]), *map(str, argv)],
                            capture_output=True, text=True, timeout=300, env=env, preexec_fn=_limit_file_size)
    after = {path: value for path, value in _files(tmp_path).items() if not path.is_relative_to(tmp_path / "mpl")}
    assert_clean_failure(result.returncode, result.stdout, result.stderr, (str(folder),), before, after)
    assert "free disk space" in result.stderr
