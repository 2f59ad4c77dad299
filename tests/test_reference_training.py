"""Faithful training: every item of ../shared/reference/training-reference.md against formulas.

D1 the SFAM classifier loss, D2 the bias-free reconstruction head, D3 the unbiased std of the
cross-covariance, D4 the per-sample variance, D5 the bias-free channel attention, the reference
initialisation of every trained module, the seed table, the DataLoader order, the selection metric,
and one training step of each stage in reference mode (float64) against the loss the formulas give.
Pure arithmetic in float64 is compared at 1e-10 relative; nothing relies on bitwise BLAS results.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ABU_DIR, needs_abu, run_script
from fers import losses
from fers.fen import FEN, PixelClassifier
from fers.reference import (STAGE2_REFERENCE_SEEDS, dataloader_permutation, end_of_epoch_draws,
                            epoch_permutation, reference_seed, resolve_protocol)
from fers.restoration import ChannelAttention, RestorationNetwork, drop_legacy_attention_biases
from fers.reverse_distillation import FERDNetwork
from fers.spatial_branch import Conv2RGB, LightSPP, SpatialBranch
from fers.training import Stage1, Stage2

RTOL = 1e-10


def softplus(z):
    return np.logaddexp(0.0, z)


def conv1x1(weight: torch.Tensor, bias, x: np.ndarray) -> np.ndarray:
    """A 1×1 convolution of ``x`` (N, C, H, W) in NumPy."""
    w = weight.detach().double().numpy()[:, :, 0, 0]
    out = np.einsum("oc,nchw->nohw", w, x)
    if bias is not None:
        out = out + bias.detach().double().numpy()[None, :, None, None]
    return out


def relu(x):
    return np.maximum(x, 0.0)


# --------------------------------------------------------------------------- D1: the SFAM classifier loss


def _numpy_classifier(classifier: PixelClassifier, x1: np.ndarray, x2: np.ndarray):
    def project(x):
        return relu(conv1x1(classifier.conv2.weight, classifier.conv2.bias,
                            relu(conv1x1(classifier.conv1.weight, classifier.conv1.bias, x))))

    p1, p2 = project(x1), project(x2)
    return conv1x1(classifier.conv3.weight, classifier.conv3.bias, np.abs(p2 - p1)), p1


@pytest.mark.parametrize("bce_input", ["logits", "sigmoid"])
def test_d1_one_classifier_on_the_absolute_difference_of_the_projections(bce_input):
    torch.manual_seed(1)
    classifier = PixelClassifier(16, 6).double()
    x1, x2 = torch.randn(2, 2, 16, 5, 4, dtype=torch.float64)
    logits, p1 = classifier.difference_logits(x1, x2)
    expected_logits, expected_p1 = _numpy_classifier(classifier, x1.numpy(), x2.numpy())
    np.testing.assert_allclose(logits.detach().numpy(), expected_logits, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(p1.detach().numpy(), expected_p1, rtol=RTOL, atol=1e-14)
    # BCE-with-logits against 0 is mean(softplus(input)); the reference's input is sigmoid(logits)
    z = expected_logits if bce_input == "logits" else 1.0 / (1.0 + np.exp(-expected_logits))
    got = losses.pixel_classifier_bce(logits, bce_input).item()
    np.testing.assert_allclose(got, softplus(z).mean(), rtol=RTOL)


def test_d1_identical_inputs_give_a_zero_difference_and_the_test_time_projection():
    classifier = PixelClassifier(16, 6).double()
    x = torch.randn(1, 16, 3, 3, dtype=torch.float64)
    logits, p1 = classifier.difference_logits(x, x)
    bias = classifier.conv3.bias.item()
    torch.testing.assert_close(logits, torch.full_like(logits, bias))  # conv3(0) = its bias
    torch.testing.assert_close(p1, classifier.project(x))


# --------------------------------------------------------------------------- D3, D4


def test_d3_cross_covariance_with_the_unbiased_std():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 5, 4, 6))
    b = 0.4 * a + rng.standard_normal(a.shape) * 2 + 1
    # the reference's formula on (b, f, h·w): centre and scale per channel over (0, 2), einsum, / (b·h·w)
    fa, fb = a.reshape(3, 5, -1), b.reshape(3, 5, -1)
    za = (fa - fa.mean((0, 2), keepdims=True)) / (fa.std((0, 2), ddof=1, keepdims=True) + 1e-6)
    zb = (fb - fb.mean((0, 2), keepdims=True)) / (fb.std((0, 2), ddof=1, keepdims=True) + 1e-6)
    expected = (np.einsum("bik,bjk->ij", za, zb) / (3 * 24)) ** 2
    got = losses.cross_covariance_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
    np.testing.assert_allclose(got, expected.sum(), rtol=RTOL)


def test_d4_variance_over_each_samples_pixels_then_the_batch_mean():
    rng = np.random.default_rng(5)
    spatial = rng.standard_normal((4, 6, 5, 3)) * rng.uniform(0.2, 2.0, (4, 6, 1, 1))
    variance = spatial.reshape(4, 6, -1).var(2, ddof=1).mean(0)
    expected = relu(1.0 - variance).mean() + np.abs(spatial).mean()
    got = losses.variance_preservation_loss(torch.from_numpy(spatial)).item()
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    # not the variance over batch and pixels together
    pooled = relu(1.0 - spatial.transpose(1, 0, 2, 3).reshape(6, -1).var(1, ddof=1)).mean() + np.abs(spatial).mean()
    assert abs(pooled - expected) > 1e-3


# --------------------------------------------------------------------------- D2, D5: parameter sets


def test_d2_d5_heads_have_the_reference_parameter_sets():
    net = FERDNetwork(8, "resnet18")
    assert net.reconstruction_head.bias is None  # de_ConvH, bias=False
    assert all(getattr(net.fen.classifier, name).bias is not None for name in ("conv1", "conv2", "conv3"))
    assert net.fen.convh.convh.bias is None
    channels = 50
    restoration = RestorationNetwork(channels)
    attentions = [m for m in restoration.modules() if isinstance(m, ChannelAttention)]
    assert len(attentions) == 3
    for attention in attentions:
        convs = [m for m in attention.modules() if isinstance(m, nn.Conv2d)]
        assert [c.bias for c in convs] == [None, None]
        assert [tuple(c.weight.shape[:2]) for c in convs] == [(channels // 8, channels), (channels, channels // 8)]
    assert restoration.head.bias is not None  # final_conv keeps its bias
    residual = 3 * (2 * 9 * channels ** 2 + 4 * channels)
    attention = 3 * 2 * channels * (channels // 8)
    assert sum(p.numel() for p in restoration.parameters()) == residual + attention + channels ** 2 + channels
    assert not any(name.endswith("bias") and ".fc." in name for name in restoration.state_dict())


def test_legacy_attention_biases_are_dropped_with_a_note():
    state = RestorationNetwork(16).state_dict()
    legacy = dict(state, **{"body.1.fc.1.bias": torch.zeros(2), "body.1.fc.3.bias": torch.zeros(16)})
    notes = []
    cleaned = drop_legacy_attention_biases(legacy, notes.append, "old/restoration.pt")
    assert cleaned.keys() == state.keys()
    assert len(notes) == 1 and "dropped 2" in notes[0] and "old/restoration.pt" in notes[0]
    RestorationNetwork(16).load_state_dict(cleaned, strict=True)


def test_old_restoration_file_loads_and_old_run_state_is_refused(tmp_path):
    from fers.checkpoints import RESTORATION_FILE, load_restoration
    from fers.errors import FersError
    from fers.reference import check_run_state_layout

    network = RestorationNetwork(16)
    state = dict(network.state_dict(), **{"body.3.fc.1.bias": torch.zeros(2), "body.3.fc.3.bias": torch.zeros(16)})
    torch.save({"state_dict": state}, tmp_path / RESTORATION_FILE)
    notes = []
    loaded = load_restoration(tmp_path, 16, log=notes.append)
    torch.testing.assert_close(loaded.head.weight, network.head.weight)
    assert notes and "older version" in notes[0]
    with pytest.raises(FersError, match="older version"):
        check_run_state_layout({"modules": {"net": {"reconstruction_head.bias": torch.zeros(3)}}})
    check_run_state_layout({"modules": {"net": {"reconstruction_head.weight": torch.zeros(3)}}})


# --------------------------------------------------------------------------- initialisation


def _check_normal(weight: torch.Tensor, std: float):
    """Sample mean and std of ``weight`` against N(0, std²), with 6-sigma tolerances of the estimators."""
    values = weight.detach().double().flatten()
    n = values.numel()
    assert abs(values.mean().item()) < 6 * std / math.sqrt(n)
    assert abs(values.std().item() / std - 1) < 6 / math.sqrt(2 * n)


def _check_uniform(tensor: torch.Tensor, bound: float):
    values = tensor.detach().double().flatten()
    n = values.numel()
    assert values.abs().max().item() <= bound
    assert abs(values.mean().item()) < 6 * bound / math.sqrt(3 * n)
    assert abs(values.std().item() / (bound / math.sqrt(3)) - 1) < 6 * math.sqrt(0.2 / n)  # var of U² known
    if n >= 200:
        assert values.abs().max().item() > bound * (1 - 10 / n)  # the whole interval is used


def _xavier_std(weight):
    fan_out, fan_in = weight.shape[0] * weight[0, 0].numel(), weight.shape[1] * weight[0, 0].numel()
    return math.sqrt(2.0 / (fan_in + fan_out))


def test_stage1_reference_initialisation():
    torch.manual_seed(3)
    net = FERDNetwork(200, "resnet18")
    for conv in (net.fen.convh.convh, net.fen.classifier.conv1, net.fen.classifier.conv2, net.reconstruction_head):
        _check_normal(conv.weight, _xavier_std(conv.weight))
    for conv in (net.fen.classifier.conv1, net.fen.classifier.conv2, net.fen.classifier.conv3):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    conv3 = net.fen.classifier.conv3.weight  # 200 values: a looser but still 6-sigma check
    _check_normal(conv3, _xavier_std(conv3))
    checked = 0
    for module in (net.bottleneck, net.decoder):
        for child in module.modules():
            if isinstance(child, nn.Conv2d):
                fan_out = child.weight.shape[0] * child.weight[0, 0].numel()
                _check_normal(child.weight, math.sqrt(2.0 / fan_out))
                checked += 1
            elif isinstance(child, nn.BatchNorm2d):
                assert torch.equal(child.weight, torch.ones_like(child.weight))
                assert torch.equal(child.bias, torch.zeros_like(child.bias))
            elif isinstance(child, nn.ConvTranspose2d):  # left at torch's default U(±1/√fan_in)
                fan_in = child.weight.shape[1] * child.weight[0, 0].numel()
                _check_uniform(child.weight, 1 / math.sqrt(fan_in))
    assert checked > 10


def test_stage2_reference_initialisation():
    torch.manual_seed(4)
    branch = SpatialBranch(100)
    restoration = RestorationNetwork(100)
    trunk_conv = branch.get_features[0].weight.clone()
    for module in (branch.initial_conv, branch.spp, restoration):
        for child in module.modules():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                _check_uniform(child.weight, 0.1)
                if child.bias is not None:
                    fan_in = child.weight.shape[1] * child.weight[0, 0].numel()
                    _check_uniform(child.bias, 1 / math.sqrt(fan_in))
            elif isinstance(child, nn.BatchNorm2d):
                assert torch.equal(child.weight, torch.ones_like(child.weight))
                assert torch.equal(child.bias, torch.zeros_like(child.bias))
    assert isinstance(branch.initial_conv, Conv2RGB) and isinstance(branch.spp, LightSPP)
    # the ResNet-34 trunk keeps its own (ImageNet in training) initialisation: std √(2/fan_out), not U(±0.1)
    _check_normal(trunk_conv, math.sqrt(2.0 / (64 * 49)))


def test_fen_parameter_count_is_unchanged_by_the_classifier_structure():
    counts = {c: sum(p.numel() for p in FEN(c).parameters()) for c in (50, 100, 200)}
    assert counts == {50: 676_965, 100: 686_665, 200: 764_561}


# --------------------------------------------------------------------------- seeds and protocol


def test_reference_seed_table():
    assert reference_seed("stage1", 50) == reference_seed("stage1", 200, "aviris") == 10
    assert STAGE2_REFERENCE_SEEDS == {(50, "aviris_ng"): 370, (100, "aviris_ng"): 810, (200, "aviris_ng"): 820,
                                      (200, "aviris"): 850}
    assert [reference_seed("stage2", c) for c in (50, 100, 200)] == [370, 810, 820]
    assert reference_seed("stage2", 200, "aviris") == 850
    assert reference_seed("stage2", 64) is None


def test_protocol_resolution_and_explicit_flags_win():
    reference = resolve_protocol("stage1", "reference", 50, "aviris_ng")
    assert (reference["seed"], reference["bce_input"], reference["selection"], reference["data_order"],
            reference["test_sensor"]) == (10, "sigmoid", "test_auc", "reference", "aviris_ng")
    stage2 = resolve_protocol("stage2", "reference", 200, "aviris")
    assert (stage2["seed"], stage2["spatial_bn"], stage2["test_sensor"]) == (850, "train", "aviris_ng")
    default = resolve_protocol("stage2", "default", 50, "aviris_ng")
    assert (default["seed"], default["spatial_bn"], default["selection"], default["data_order"]) == (
        0, "eval", "last", "seeded")
    explicit = resolve_protocol("stage1", "reference", 50, "aviris_ng", seed=3, bce_input="logits",
                                selection="val_loss", data_order="seeded")
    assert (explicit["seed"], explicit["seed_source"], explicit["bce_input"], explicit["selection"],
            explicit["data_order"]) == (3, "--seed", "logits", "val_loss", "seeded")
    missing = resolve_protocol("stage2", "reference", 64, "aviris_ng")
    assert missing["seed"] == 0 and "no stage-2 seed" in missing["notes"][0]


# --------------------------------------------------------------------------- data order


def test_reference_order_is_that_of_a_shuffling_dataloader_with_a_test_loader_between_epochs():
    """Two epochs of DataLoader(shuffle=True, last partial batch kept), each followed by one pass over a
    test DataLoader, drawn from the global generator: the same orders and the same generator state."""
    n, batch = 11, 4
    train = torch.utils.data.DataLoader(list(range(n)), batch_size=batch, shuffle=True)
    test = torch.utils.data.DataLoader(list(range(3)), batch_size=1, shuffle=False)
    torch.manual_seed(10)
    expected = []
    for _ in range(2):
        expected.append(torch.cat([b for b in train]).tolist())
        _ = [b for b in test]
    after_expected = torch.rand(3)
    torch.manual_seed(10)
    got = []
    for _ in range(2):
        got.append(epoch_permutation("reference", n, torch.Generator()).tolist())
        end_of_epoch_draws("reference")
    torch.testing.assert_close(torch.rand(3), after_expected)
    assert got == expected
    assert len(expected[0]) == n  # the last partial batch (3 crops) is kept


def test_sampler_of_the_installed_torch_draws_as_assumed():
    torch.manual_seed(5)
    sampler = list(torch.utils.data.RandomSampler(range(9)))
    torch.manual_seed(5)
    seed = int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler: its seed, then randperm
    sampler_seed = seed
    torch.manual_seed(5)
    torch.empty((), dtype=torch.int64).random_()  # a DataLoader iterator first draws its base seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    assert seed != sampler_seed
    assert sampler == torch.randperm(9, generator=torch.Generator().manual_seed(sampler_seed)).tolist()
    torch.manual_seed(5)
    expected = torch.randperm(9, generator=torch.Generator().manual_seed(seed)).tolist()
    assert dataloader_permutation(9).tolist() == expected


def test_seeded_order_does_not_touch_the_global_generator():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epoch_permutation("seeded", 10, torch.Generator().manual_seed(1))
    end_of_epoch_draws("seeded")
    assert torch.equal(before, torch.get_rng_state())


# --------------------------------------------------------------------------- one training step, float64


def _cosine_term(teacher: np.ndarray, student: np.ndarray) -> float:
    t, s = teacher.reshape(len(teacher), -1), student.reshape(len(student), -1)
    cos = (t * s).sum(1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1))
    return float((1 - cos).mean())


def _trainable_names(module: nn.Module, trainable) -> set:
    ids = {id(p) for p in trainable}
    return {name for name, p in module.named_parameters() if id(p) in ids}


def _adam_step_changes_exactly(module, trainable, loss):
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    optimizer = torch.optim.Adam(trainable, lr=0.005, betas=(0.5, 0.999))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed == _trainable_names(module, trainable)


def test_one_stage1_step_in_reference_mode_gives_the_formula_loss():
    torch.manual_seed(10)
    stage = Stage1(8, "resnet18", "cpu", bce_input="sigmoid", pretrained=False)
    stage.net.double()
    stage.train_mode()
    x = torch.randn(3, 8, 32, 32, dtype=torch.float64) * 0.05
    outputs = stage.net(x)
    total, terms = losses.stage1_loss(x, outputs, "sigmoid")
    # independently, from the same module outputs: the heads, the classifier and the three terms in NumPy
    teacher = [t.detach().numpy() for t in outputs["teacher"]]
    student = [s.detach().numpy() for s in outputs["student"]]
    crop = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    reconstruction = conv1x1(stage.net.reconstruction_head.weight, None, student[0])[crop]
    logits, _ = _numpy_classifier(stage.net.fen.classifier, teacher[0][crop], student[0][crop])
    bce = softplus(1.0 / (1.0 + np.exp(-logits))).mean()
    mse = ((reconstruction - x.numpy()) ** 2).mean()
    distillation = sum(_cosine_term(t, s) for t, s in zip(teacher, student))
    for name, value in (("bce", bce), ("mse", mse), ("distillation", distillation)):
        np.testing.assert_allclose(terms[name].item(), value, rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(total.item(), 0.1 * bce + 0.1 * mse + distillation, rtol=RTOL)
    _adam_step_changes_exactly(stage.net, stage.trainable_parameters(), total)
    trained = _trainable_names(stage.net, stage.trainable_parameters())
    assert {n.split(".")[0] for n in trained} == {"fen", "bottleneck", "decoder", "reconstruction_head"}
    assert not any(n.startswith("fen.encoder.") for n in trained)


def test_one_stage2_step_in_reference_mode_gives_the_formula_loss():
    from test_losses import _numpy_ssim

    torch.manual_seed(370)
    stage = Stage2(16, FEN(16, "resnet18"), "cpu", spatial_bn="train", pretrained=False)
    stage.fen.double()
    stage.student.double()
    stage.train_mode()
    assert stage.spatial.get_features.training  # reference: the frozen ResNet-34 in train mode
    x = torch.randn(2, 16, 32, 32, dtype=torch.float64) * 0.05
    with torch.no_grad():
        spectral = stage.fen(x)
    spatial, restored = stage.student(x, spectral)
    total, terms = losses.stage2_loss(x, restored, spectral, spatial)
    spe, spa, rec, cube = (t.detach().numpy() for t in (spectral, spatial, restored, x))
    n, c = spa.shape[:2]
    fa, fb = spe.reshape(n, c, -1), spa.reshape(n, c, -1)
    za = (fa - fa.mean((0, 2), keepdims=True)) / (fa.std((0, 2), ddof=1, keepdims=True) + 1e-6)
    zb = (fb - fb.mean((0, 2), keepdims=True)) / (fb.std((0, 2), ddof=1, keepdims=True) + 1e-6)
    cross = ((np.einsum("bik,bjk->ij", za, zb) / fa.shape[2] / n) ** 2).sum()
    cos = (spe * spa).sum(1) / np.maximum(np.linalg.norm(spe, axis=1) * np.linalg.norm(spa, axis=1), 1e-8)
    variance = relu(1 - fb.var(2, ddof=1).mean(0)).mean() + np.abs(spa).mean()
    ssim = np.clip((1 - _numpy_ssim(rec, cube)) / 2, 0, 1).mean()
    expected = {"cross_covariance": cross, "cosine": 1 + cos.mean(), "variance": variance,
                "mse": ((rec - cube) ** 2).mean(), "ssim": ssim}
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name].item(), value, rtol=1e-9 if name == "ssim" else RTOL, err_msg=name)
    weighted = (expected["cross_covariance"] + 0.1 * expected["cosine"] + 0.1 * expected["variance"]
                + expected["mse"] + 0.01 * expected["ssim"])
    np.testing.assert_allclose(total.item(), weighted, rtol=1e-9)
    _adam_step_changes_exactly(stage.student, stage.trainable_parameters(), total)
    trained = _trainable_names(stage.student, stage.trainable_parameters())
    assert not any(n.startswith("spatial.get_features.") for n in trained)
    assert {n.split(".")[1] for n in trained if n.startswith("spatial.")} == {"initial_conv", "spp"}


# --------------------------------------------------------------------------- selection metric


def test_stage1_selection_metric_is_float64_rx_of_x_plus_p1_at_every_band_count(had100_layout):
    from fers.datasets import had100_manifest, load_scene
    from fers.detectors import rx_scores_numpy
    from fers.metrics import auc
    from fers.preprocessing import prepare_cube
    from fers.selection import TestSelectionSet

    torch.manual_seed(0)
    fen = FEN(20, "resnet18").eval()
    scenes = had100_manifest(had100_layout)
    test_set = TestSelectionSet(scenes, 20)
    got = test_set.scene_aucs("stage1", fen)
    for scene, value in zip(scenes, got):
        raw, mask = load_scene(scene)
        cube, _ = prepare_cube(raw, 20, "first", scene.name)
        with torch.no_grad():
            features = fen(torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1)))[None])[0]
        enhanced = cube + features.numpy().transpose(1, 2, 0)
        assert value == pytest.approx(auc(rx_scores_numpy(enhanced), mask), abs=1e-6)
    assert TestSelectionSet.describe("stage1", 50) == {"rx_precision": "float64"}
    assert TestSelectionSet.describe("stage2", 50) == {"rx_precision": "float32", "fusion": "product"}
    assert TestSelectionSet.describe("stage2", 100) == {"rx_precision": "float64", "fusion": "sum"}


def test_the_test_set_is_read_once_per_run(had100_layout, tmp_path, monkeypatch):
    from fers import io, scene_reader
    from fers.datasets import had100_manifest
    from fers.selection import TestSelectionSet
    from fers.training import Distributed, TrainingOptions, fit
    from fers.training_data import TrainingData

    reads = []
    original = scene_reader.load_scene  # scenes are read and hashed by fers.scene_reader
    monkeypatch.setattr(scene_reader, "load_scene", lambda scene: reads.append(scene.name) or original(scene))
    hashes = []
    original_hash = io.sha256_file
    for module in (io, scene_reader):
        monkeypatch.setattr(module, "sha256_file", lambda path: hashes.append(path) or original_hash(path))
    test_set = TestSelectionSet(had100_manifest(had100_layout), 8)
    assert len(reads) == 3
    torch.manual_seed(0)
    stage = Stage1(8, "resnet18", "cpu", pretrained=False)
    crops = np.random.default_rng(0).standard_normal((2, 8, 16, 16)).astype(np.float32) * 0.05
    (tmp_path / "run").mkdir()
    options = TrainingOptions(epochs=2, batch_size=2, selection="test_auc", progress=False, data_order="reference")
    summary = fit(stage, TrainingData(crops), options, tmp_path / "run", Distributed(), None, None, test_set,
                  log=lambda *a: None)
    assert len(reads) == 3 and not hashes  # nothing read or hashed again in the two epochs
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(0 <= r["test_auc"] <= 1 for r in log)
    best = max(log, key=lambda r: r["test_auc"])
    assert summary["selected_epoch"] == best["epoch"]  # first strictly better wins ties


# --------------------------------------------------------------------------- command line


def test_protocol_reference_is_recorded_in_the_run_and_the_checkpoints(had100_layout, tmp_path):
    rng = np.random.default_rng(2)
    train = had100_layout / "train" / "aviris_ng"
    train.mkdir(parents=True)
    for index in range(2):  # two crops: one step of batch 2 per stage
        np.save(train / f"bg{index}.npy", rng.random((32, 32, 60)).astype(np.float32))
    checkpoints = tmp_path / "ck"
    result = run_script("train.py", "--stage", "all", "--protocol", "reference", "--data_path", had100_layout,
                        "--input_channel", 50, "--epochs", 1, "--batch_size", 2, "--checkpoint_dir", checkpoints,
                        "--run_dir", tmp_path / "run", "--img_size", "32", "--backbone", "resnet18",
                        "--no_pretrained", "--no_progress", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "protocol reference, seed 10 (reference)" in result.stdout
    assert "protocol reference, seed 370 (reference)" in result.stdout
    expected = {"stage1": {"seed": 10, "bce_input": "sigmoid"}, "stage2": {"seed": 370, "spatial_bn": "train"}}
    for stage, values in expected.items():
        config = json.loads((tmp_path / "run" / stage / "config.json").read_text())
        protocol = config["protocol"]
        assert protocol["protocol"] == "reference" and protocol["data_order"] == "reference"
        assert protocol["selection"] == "test_auc" and protocol["test_sensor"] == "aviris_ng"
        assert {k: protocol[k] for k in values} == values
        assert config["seed"] == values["seed"] and config["selection_uses_test_labels"] is True
        assert config["args"]["seed"] is None  # what was given; the resolved values are in "protocol"
    from fers.checkpoints import band_folder, read_checkpoint

    for name, stage in (("pc.pt", "stage1"), ("spa_fen.pt", "stage2")):
        training = read_checkpoint(band_folder(checkpoints, 50) / name)["config"]["training"]
        assert training["protocol"]["protocol"] == "reference" and training["seed"] == expected[stage]["seed"]
        assert training["data_order"] == "reference"


# --------------------------------------------------------------------------- FERS_ABU scoring


def test_fers_abu_scores_like_the_reference_fers_abu_and_test_py_keeps_its_rule():
    from fers.cli.evaluate import abu_parser, had100_parser

    abu = abu_parser().parse_args([])
    assert (abu.fusion, abu.rx_precision) == ("sum", "float64")
    had100 = had100_parser().parse_args([])
    assert (had100.fusion, had100.rx_precision) == ("auto", "reference")


@needs_abu
def test_fers_abu_at_50_bands_is_float64_rx_of_x_plus_spectral(tmp_path):
    """The reference FERS_ABU: RX(x + spe) in float64 at 50 bands (no float32 path)."""
    from fers.checkpoints import band_folder, save_fen
    from fers.datasets import abu_manifest, load_scene
    from fers.detectors import rx_scores_numpy
    from fers.metrics import auc
    from fers.preprocessing import prepare_cube

    torch.manual_seed(0)
    fen = FEN(50).eval()
    save_fen(band_folder(tmp_path / "ck", 50), fen)
    data = tmp_path / "abu"
    data.mkdir()
    (data / "abu-beach-3.mat").symlink_to(ABU_DIR / "abu-beach-3.mat")
    result = run_script("FERS_ABU/test.py", "--data_path", data, "--checkpoint_dir", tmp_path / "ck",
                        "--input_channel", 50, "--branches", "spectral", "--save_dir", tmp_path / "out",
                        "--no_progress", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["config"]["rx_precision"] == "float64"
    scene = abu_manifest(data)[0]
    cube, mask = load_scene(scene)
    prepared, _ = prepare_cube(cube, 50, "interp", str(scene.cube_path))
    with torch.no_grad():
        features = fen(torch.from_numpy(np.ascontiguousarray(prepared.transpose(2, 0, 1)))[None])[0].numpy()
    expected = auc(rx_scores_numpy(prepared + features.transpose(1, 2, 0)), mask)
    assert payload["scenes"][0]["auc"] == pytest.approx(expected, abs=1e-6)
