"""Diagnostics: probes, per-epoch recorders in fit, the verdict, figures and the diagnose command."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labkit import ExperimentConfig, build_network, fit
from labkit.data import from_arrays
from labkit.diagnostics import (
    COLLAPSE_RATIO, HEALTHY, STUCK, TRAINS, VANISHING, VANISHING_RATIO, ActivationRecorder, SkipRecorder,
    UpdateRecorder, activation_layers, activation_stats, diagnose, diagnose_model, diagnose_run, residual_blocks,
    skip_gradients, standard_recorders,
)
from labkit.hooks import tracked_layers
from labkit.runs import reference_root

TINY = dict(num_blocks_per_stage=1, num_stages=1, num_filters=8, epochs=2, batch_size=50, progress=False,
            data="synthetic")


def _batch(n=16, classes=100, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, classes, (n,), generator=generator)


@pytest.fixture(scope="module")
def tiny_arrays(synthetic_arrays):
    """500 training images (25 of them for validation) and 100 test images of the synthetic set."""
    arrays = synthetic_arrays
    return from_arrays(arrays.train_images[:500], arrays.train_labels[:500], arrays.test_images[:100],
                       arrays.test_labels[:100], arrays.class_names, source="synthetic")


@pytest.fixture(scope="module")
def probed_pair(tiny_arrays, tmp_path_factory):
    """The same BN+RC run trained with and without every recorder."""
    config = ExperimentConfig(**TINY, bn=True, residual=True)
    root = tmp_path_factory.mktemp("probed")
    plain = fit(config, root / "plain", data=tiny_arrays)
    probed = fit(config, root / "probed", data=tiny_arrays, recorders=standard_recorders(epochs=[0, 2], update_every=3))
    return plain, probed


def _state(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# Probes on a model.

def test_activation_stats_match_manual():
    torch.manual_seed(0)
    model = build_network(0, num_stages=1, num_filters=4)
    images, _ = _batch(8)
    rows = activation_stats(model, images)

    captured = []
    handle = model.features.entry.act.register_forward_hook(lambda module, inputs, output: captured.append(output))
    model.train()
    with torch.no_grad():
        model(images)
    handle.remove()
    output = captured[0]
    assert [row["layer"] for row in rows] == [label for label, _ in activation_layers(model)]
    assert [row["depth"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["mean"] == pytest.approx(output.mean().item(), rel=1e-5)
    assert rows[0]["std"] == pytest.approx(output.std().item(), rel=1e-5)
    assert rows[0]["batch_std"] == pytest.approx(output.std(dim=0).mean().item(), rel=1e-5)
    assert rows[0]["frac_negative"] == pytest.approx((output < 0).float().mean().item())


def test_activation_stats_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode must be"):
        activation_stats(build_network(0, num_filters=4), _batch(2)[0], mode="inference")


def test_probes_leave_model_bit_identical():
    torch.manual_seed(0)
    model = build_network(1, num_stages=2, num_filters=8, bn=True, residual=True)
    images, labels = _batch(8)
    F.cross_entropy(model(images), labels).backward()  # moves running stats and leaves gradients
    model.train()
    model.features.stage1.eval()  # a mix of modes must survive too
    modes = {name: module.training for name, module in model.named_modules()}
    state = _state(model)
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}

    activation_stats(model, images, mode="train")
    activation_stats(model, images, mode="eval")
    skip_gradients(model, images, labels)

    assert {name: module.training for name, module in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for name, param in model.named_parameters():
        assert torch.equal(param.grad, grads[name]), name


def test_skip_and_branch_sum_to_input_gradient():
    torch.manual_seed(0)
    model = build_network(2, num_stages=1, num_filters=8, residual=True)
    images, labels = _batch(8)
    rows = skip_gradients(model, images, labels)
    assert [row["block"] for row in rows] == ["stage1.block1", "stage1.block2"]

    block = model.features.stage1.block2
    captured = {}
    block.register_forward_pre_hook(lambda module, inputs: captured.update(input=inputs[0]))
    block.bn2.register_forward_hook(lambda module, inputs, output: captured.update(branch=output))
    loss = F.cross_entropy(model(images), labels)
    total, at_sum = torch.autograd.grad(loss, [captured["input"], captured["branch"]])
    assert rows[1]["skip_grad_norm"] == pytest.approx(at_sum.norm().item(), rel=1e-5)
    assert rows[1]["branch_grad_norm"] == pytest.approx((total - at_sum).norm().item(), rel=1e-4)
    assert rows[1]["branch_to_skip"] == pytest.approx(rows[1]["branch_grad_norm"] / rows[1]["skip_grad_norm"])


def test_skip_gradients_empty_without_residual():
    model = build_network(1, num_stages=1, num_filters=4)
    assert residual_blocks(model) == []
    assert skip_gradients(model, *_batch(2)) == []


def test_update_ratio_matches_manual_step():
    torch.manual_seed(0)
    model = build_network(0, num_stages=1, num_filters=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    recorder = UpdateRecorder(every=1)
    recorder.attach(model, optimizer)
    recorder.begin_epoch(1)
    images, labels = _batch(4)
    ratios = []
    for _ in range(2):
        before = model.classifier.weight.detach().clone()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        ratios.append(((model.classifier.weight - before).norm() / before.norm()).item())
    rows = recorder.end_epoch(1)
    recorder.detach()

    assert [row["layer"] for row in rows] == [label for label, _ in tracked_layers(model)]
    assert rows[-1]["update_ratio"] == pytest.approx(sum(ratios) / 2, rel=1e-5)
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_update_recorder_every_and_unrecorded_epochs():
    model = build_network(0, num_stages=1, num_filters=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = UpdateRecorder(epochs=[2], every=2)
    recorder.attach(model, optimizer)
    images, labels = _batch(4)
    for epoch in (1, 2):
        recorder.begin_epoch(epoch)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        rows = recorder.end_epoch(epoch)
        assert bool(rows) == (epoch == 2)
    assert recorder._count == 2  # steps 0 and 2 of three


def test_recorder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        ActivationRecorder(epochs=[-1])
    with pytest.raises(ValueError, match="batch_size"):
        SkipRecorder(batch_size=0)
    with pytest.raises(ValueError, match="every"):
        UpdateRecorder(every=0)


# Recorders inside fit.

def test_fit_writes_records_for_chosen_epochs(probed_pair):
    _, probed = probed_pair
    folder = probed.run_dir
    model = probed.model

    activations = pd.read_csv(folder / "activations.csv")
    assert list(activations.columns) == ["epoch", "layer", "depth", "mean", "std", "batch_std", "frac_negative"]
    assert sorted(activations["epoch"].unique()) == [0, 2]
    expected = [label for label, _ in activation_layers(model)]
    for epoch in (0, 2):
        assert activations[activations["epoch"] == epoch]["layer"].tolist() == expected

    updates = pd.read_csv(folder / "updates.csv")
    assert sorted(updates["epoch"].unique()) == [2]  # epoch 0 has no optimizer step
    assert updates["layer"].tolist() == [label for label, _ in tracked_layers(model)]
    assert (updates["update_ratio"] > 0).all()

    skip = pd.read_csv(folder / "skip.csv")
    assert sorted(skip["epoch"].unique()) == [0, 2]
    assert skip[skip["epoch"] == 0]["block"].tolist() == [label for label, _ in residual_blocks(model)]


def test_probes_never_change_training(probed_pair):
    plain, probed = probed_pair
    without_time = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert without_time(probed.history) == without_time(plain.history)
    assert probed.grads == plain.grads
    assert probed.test == plain.test
    for key, value in plain.model.state_dict().items():
        assert torch.equal(probed.model.state_dict()[key], value), key
    assert not (plain.run_dir / "activations.csv").exists()


def test_resume_keeps_records(tiny_arrays, tmp_path, probed_pair):
    _, uninterrupted = probed_pair
    config = ExperimentConfig(**TINY, bn=True, residual=True)
    steps = []

    def stop_in_second_epoch():
        steps.append(1)
        return len(steps) > 10  # 475 images in batches of 50 make ten steps per epoch

    fit(config, tmp_path, data=tiny_arrays, should_stop=stop_in_second_epoch,
        recorders=standard_recorders(epochs=[0, 2], update_every=3))
    fit(config, tmp_path, data=tiny_arrays, resume=True, recorders=standard_recorders(epochs=[0, 2], update_every=3))
    for name in ("activations.csv", "updates.csv", "skip.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / name), pd.read_csv(uninterrupted.run_dir / name))


def test_overwrite_removes_old_records(tiny_arrays, tmp_path):
    config = ExperimentConfig(**{**TINY, "epochs": 1})
    fit(config, tmp_path, data=tiny_arrays, recorders=[ActivationRecorder()])
    assert (tmp_path / "activations.csv").is_file()
    fit(config, tmp_path, data=tiny_arrays, overwrite=True)
    assert not (tmp_path / "activations.csv").exists()
