"""Network shapes and parameter counts against the reference architecture."""

import pytest
import torch

from fers.backbones import ResNet, layer_channels
from fers.fen import FEN
from fers.restoration import RestorationNetwork
from fers.reverse_distillation import FERDNetwork
from fers.spatial_branch import SpatialBranch

# Parameter counts of the reference networks (FEN = convh.pt + enc.pt + pc.pt; spatial branch
# trainable = spa_fen.pt without the ResNet-34), from the reference checkpoint format.
FEN_PARAMETERS = {50: 676_965, 100: 686_665, 200: 764_561}
SPATIAL_TRAINABLE = {50: 119_131, 100: 140_131, 200: 186_131}
SPATIAL_TOTAL = {50: 8_289_435, 100: 8_310_435, 200: 8_356_435}


def count(parameters):
    return sum(p.numel() for p in parameters)


@pytest.mark.parametrize("channels", [50, 100, 200])
def test_fen_parameter_count_and_shapes(channels):
    fen = FEN(channels).eval()
    assert count(fen.parameters()) == FEN_PARAMETERS[channels]
    assert round(count(fen.parameters()) / 1e6, 3) == {50: 0.677, 100: 0.687, 200: 0.765}[channels]
    with torch.no_grad():
        assert fen(torch.randn(2, channels, 64, 64)).shape == (2, channels, 64, 64)
        assert fen(torch.randn(1, channels, 100, 100)).shape == (1, channels, 100, 100)
        assert fen.classifier(fen.backbone_features(torch.randn(1, channels, 64, 64))).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("channels", [50, 100, 200])
def test_spatial_branch_parameter_counts_and_shapes(channels):
    branch = SpatialBranch(channels).freeze_backbone().eval()
    assert count(branch.trainable_parameters()) == SPATIAL_TRAINABLE[channels]
    assert count(p for p in branch.parameters() if p.requires_grad) == SPATIAL_TRAINABLE[channels]
    assert count(branch.parameters()) == SPATIAL_TOTAL[channels]
    with torch.no_grad():
        out64 = branch(torch.randn(2, channels, 64, 64))
        out100 = branch(torch.randn(1, channels, 100, 100))
    assert out64.shape == (2, channels, 64, 64)
    assert out100.shape == (1, channels, 100, 100)
    assert (out64 >= 0).all()  # ReLU then a sigmoid gate


@pytest.mark.parametrize("channels", [50, 100, 200])
def test_restoration_network_shapes(channels):
    net = RestorationNetwork(channels).eval()
    with torch.no_grad():
        assert net(torch.randn(2, channels, 64, 64)).shape == (2, channels, 64, 64)
        assert net(torch.randn(1, channels, 100, 100)).shape == (1, channels, 100, 100)


@pytest.mark.parametrize("size", [64, 100])
def test_ferd_network_reference_shapes(size):
    net = FERDNetwork(50).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 50, size, size))
    padded = size + 8
    expected = [(256, padded), (512, (padded + 1) // 2), (1024, (padded + 3) // 4)]
    for teacher, student, (channels, side) in zip(out["teacher"], out["student"], expected):
        assert teacher.shape == (1, channels, side, side)
        assert student.shape == teacher.shape
    assert out["reconstruction"].shape == (1, 50, size, size)
    assert out["classifier_logits"].shape == (1, 1, size, size)  # one map: conv3(|p2 − p1|)
    assert out["projection"].shape == (1, 50, size, size)


@pytest.mark.parametrize("channels", [50, 100, 200])
def test_ferd_network_small_backbone_shapes(channels):
    net = FERDNetwork(channels, "resnet18").eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, 64, 64))
    assert [t.shape[1] for t in out["teacher"]] == layer_channels("resnet18")[:3]
    assert out["reconstruction"].shape == (2, channels, 64, 64)


def test_fen_shares_the_teacher_layer1():
    """The pruned FEN is the same ConvH → layer1 → projection as in the training network."""
    net = FERDNetwork(50, "resnet18").eval()
    x = torch.randn(1, 50, 32, 32)
    with torch.no_grad():
        features = net.fen.backbone_features(x)
        teacher = net(x)["teacher"][0][:, :, 4:-4, 4:-4]
    torch.testing.assert_close(features, teacher)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    net = FERDNetwork(50, "resnet18").freeze_teacher().train()
    assert all(not m.training for m in net.frozen_modules())
    trainable = {id(p) for p in net.trainable_parameters()}
    assert all(id(p) not in trainable for m in net.frozen_modules() for p in m.parameters())
    assert all(p.requires_grad for p in net.fen.convh.parameters())


def test_resnet_matches_torchvision_layout():
    """Stage names and channel counts of the torchvision architectures."""
    model = ResNet("wide_resnet101_2", stages=3)
    names = {k.split(".")[0] for k in model.state_dict()}
    assert names == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert len(model.layer3) == 23
    assert model.out_channels == [256, 512, 1024]
    assert model.layer1[0].conv2.weight.shape == (128, 128, 3, 3)  # width doubled
