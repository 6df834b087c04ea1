"""Blocks and networks: shapes, parameter counts, names and depth."""

import pytest
import torch

from labkit import build_network, count_parameters, model_name, network_depth
from labkit.blocks import EntryBlock, ProcessingBlock, ReductionBlock
from labkit.hooks import tracked_layers


@pytest.mark.parametrize(
    ("blocks", "bn", "residual", "expected"),
    [
        (0, False, False, 59_716),
        (5, False, False, 336_196),
        (5, True, False, 338_500),
        (5, False, True, 336_196),
        (5, True, True, 338_500),
    ],
)
def test_parameter_counts_match_course(blocks, bn, residual, expected):
    assert count_parameters(build_network(blocks, bn=bn, residual=residual)) == expected


@pytest.mark.parametrize("blocks", [0, 1, 5])
@pytest.mark.parametrize("stages", [1, 3])
@pytest.mark.parametrize(("bn", "residual"), [(False, False), (True, True)])
def test_forward_shape_at_several_depths(blocks, stages, bn, residual):
    model = build_network(blocks, num_stages=stages, num_filters=8, num_classes=10, bn=bn, residual=residual)
    logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


def test_depth_counts_weight_layers():
    for blocks in (0, 2, 5):
        model = build_network(blocks)
        assert network_depth(blocks) == len(tracked_layers(model)) == model.depth
    assert network_depth(0) == 8
    assert network_depth(5) == 38


def test_model_names():
    assert model_name(0) == "VGG_08"
    assert model_name(5, bn=True) == "VGG_38 BN"
    assert model_name(5, residual=True) == "VGG_38 RC"
    assert model_name(5, bn=True, residual=True) == "VGG_38 BN+RC"


def test_entry_block_shape():
    out = EntryBlock(3, 16)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32, 32)


def test_processing_block_keeps_shape():
    for bn in (False, True):
        for residual in (False, True):
            out = ProcessingBlock(8, bn=bn, residual=residual)(torch.randn(2, 8, 16, 16))
            assert out.shape == (2, 8, 16, 16)


def test_reduction_block_halves_size():
    out = ReductionBlock(8, 12)(torch.randn(2, 8, 16, 16))
    assert out.shape == (2, 12, 8, 8)


def test_residual_adds_identity():
    torch.manual_seed(0)
    plain = ProcessingBlock(4, residual=False)
    residual = ProcessingBlock(4, residual=True)
    residual.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for conv in (plain.conv2, residual.conv2):
            conv.weight.zero_()
    x = torch.randn(2, 4, 8, 8)
    # With a zero second conv the plain block outputs leaky_relu(0) = 0 and the residual one leaky_relu(x).
    assert torch.equal(plain(x), torch.zeros_like(x))
    assert torch.allclose(residual(x), torch.nn.functional.leaky_relu(x, 0.01))


def test_bn_is_identity_when_off():
    block = ProcessingBlock(4, bn=False)
    assert isinstance(block.bn1, torch.nn.Identity)
    assert isinstance(ProcessingBlock(4, bn=True).bn1, torch.nn.BatchNorm2d)


def test_parameter_names_are_readable():
    names = [name for name, _ in build_network(2, num_stages=2, bn=True).named_parameters()]
    assert names[0] == "features.entry.conv.weight"
    assert "features.stage1.block2.conv1.weight" in names
    assert "features.stage2.reduce.conv2.bias" in names
    assert "features.stage2.block1.bn2.weight" in names
    assert names[-2:] == ["classifier.weight", "classifier.bias"]


def test_conv_bias_by_block_type():
    model = build_network(1, num_stages=1)
    assert model.features.stage1.block1.conv1.bias is None
    assert model.features.stage1.reduce.conv1.bias is not None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "5"])
def test_invalid_depth_rejected(bad):
    with pytest.raises(ValueError, match="num_blocks_per_stage"):
        build_network(bad)
