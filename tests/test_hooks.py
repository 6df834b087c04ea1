"""Gradient recorder: layers, order, values, removal, wrappers and the vanishing-gradient signature."""

import pytest
import torch
from torch import nn

from labkit import build_network
from labkit.hooks import GradientRecorder, gradients_at, layer_label, preserve_state, tracked_layers


def _batch(n=32, classes=100, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def test_one_record_per_weight_in_forward_order():
    model = build_network(1, num_stages=2, num_filters=8)
    images, labels = _batch(8)
    rows = gradients_at(model, images, labels)
    expected = [label for label, _ in tracked_layers(model)]
    assert [row["layer"] for row in rows] == expected
    assert expected[0] == "entry.conv"
    assert expected[-1] == "classifier"
    assert all(row["epoch"] == 0 for row in rows)


def test_values_match_manual_gradients():
    torch.manual_seed(0)
    model = build_network(0, num_filters=8, num_classes=10)
    images, labels = _batch(4, classes=10)
    with GradientRecorder(model) as recorder:
        nn.functional.cross_entropy(model(images), labels).backward()
        rows = recorder.end_epoch(1)
    conv = model.features.entry.conv.weight.grad
    assert rows[0]["mean_abs_grad"] == pytest.approx(conv.abs().mean().item(), rel=1e-6)
    assert rows[0]["grad_norm"] == pytest.approx(conv.norm().item(), rel=1e-6)


def test_averages_over_steps_and_every_k():
    model = nn.Sequential(nn.Linear(3, 2))
    recorder = GradientRecorder(model, every=2)
    for scale in (1.0, 3.0, 5.0):
        model.zero_grad()
        (scale * model(torch.ones(1, 3)).sum()).backward()
    rows = recorder.end_epoch(1)
    # Steps 1 and 3 are recorded (scales 1 and 5); the linear weight's gradient is scale * ones.
    assert rows[0]["mean_abs_grad"] == pytest.approx(3.0)


def test_reorders_by_forward_calls():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(4, 2)
            self.first = nn.Linear(3, 4)

        def forward(self, x):
            return self.second(self.first(x))

    model = Reversed()
    with GradientRecorder(model) as recorder:
        model(torch.randn(2, 3)).sum().backward()
        rows = recorder.end_epoch(1)
    assert [row["layer"] for row in rows] == ["first", "second"]


def test_skips_layers_without_gradient():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    with GradientRecorder(model) as recorder:
        model(torch.randn(2, 3)).sum().backward()
        rows = recorder.end_epoch(1)
    assert [row["layer"] for row in rows] == ["1"]


def test_remove_detaches_hooks():
    model = nn.Sequential(nn.Linear(3, 1))
    recorder = GradientRecorder(model)
    recorder.remove()
    model(torch.randn(2, 3)).sum().backward()
    assert recorder.end_epoch(1) == []


def test_dataparallel_names_are_unwrapped():
    model = nn.DataParallel(build_network(0, num_filters=4, num_classes=10))
    labels = [label for label, _ in tracked_layers(model)]
    assert labels[0] == "entry.conv"
    assert layer_label("_orig_mod.features.stage1.block1.conv1") == "stage1.block1.conv1"


def test_rejects_model_without_tracked_layers():
    with pytest.raises(ValueError, match="no convolution or linear layer"):
        GradientRecorder(nn.ReLU())


def test_deep_plain_network_vanishes_at_init():
    torch.manual_seed(0)
    images, labels = _batch(100)
    deep = gradients_at(build_network(5), images, labels)
    shallow = gradients_at(build_network(0), images, labels)
    deep_ratio = deep[0]["mean_abs_grad"] / deep[-1]["mean_abs_grad"]
    shallow_ratio = shallow[0]["mean_abs_grad"] / shallow[-1]["mean_abs_grad"]
    # Measured: about 3e-14 for VGG_38 and 1e-2 for VGG_08 with these inputs.
    assert deep_ratio < 1e-10
    assert shallow_ratio > 1e-4


def test_bn_and_residual_keep_gradients_at_init():
    torch.manual_seed(0)
    images, labels = _batch(100)
    for bn, residual in ((True, False), (False, True), (True, True)):
        rows = gradients_at(build_network(5, bn=bn, residual=residual), images, labels)
        assert rows[0]["mean_abs_grad"] / rows[-1]["mean_abs_grad"] > 1e-6, (bn, residual)


def test_preserve_state_restores_model_exactly():
    torch.manual_seed(0)
    model = build_network(1, num_stages=1, num_filters=8, bn=True)
    model.eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    images, labels = _batch(8)
    with preserve_state(model):
        model.train()
        nn.functional.cross_entropy(model(images), labels).backward()
    assert not model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(param.grad is None for param in model.parameters())
