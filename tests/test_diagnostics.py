"""Diagnostics: probes, per-epoch recorders in fit, the verdict, figures and the diagnose command."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from labkit import ExperimentConfig, build_network, fit
from labkit.data import from_arrays
from labkit.cli import main
from labkit.diagnostic_plots import (
    compare_activation_stats, heatmap_data, plot_activation_stats, plot_grad_heatmap, plot_grad_heatmaps,
    plot_skip_vs_branch, plot_update_ratios,
)
from labkit.diagnostics import (
    DIVERGED, HEALTHY, STUCK, TRAINS, TRAINS_DESPITE, VANISHING, VANISHING_RATIO, ActivationRecorder, SkipRecorder,
    UpdateRecorder, activation_layers, activation_stats, collapse_depth, diagnose, diagnose_model, diagnose_run,
    residual_blocks, skip_gradients, standard_recorders,
)
from labkit.hooks import tracked_layers
from labkit.plots import save_figure
from labkit.runs import load_run, reference_root

TINY = dict(num_blocks_per_stage=1, num_stages=1, num_filters=8, epochs=2, batch_size=50, progress=False,
            data="synthetic")


def _batch(n=16, classes=100, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, classes, (n,), generator=generator)


@pytest.fixture(scope="module")
def tiny_arrays(synthetic_arrays):
    """200 training images (10 of them for validation) and 50 test images of the synthetic set."""
    arrays = synthetic_arrays
    return from_arrays(arrays.train_images[:200], arrays.train_labels[:200], arrays.test_images[:50],
                       arrays.test_labels[:50], arrays.class_names, source="synthetic")


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
    assert not optimizer._optimizer_step_pre_hooks
    assert not optimizer._optimizer_step_post_hooks


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
        return len(steps) > 4  # 190 images in batches of 50 make four steps per epoch

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


# The verdict.

@pytest.mark.parametrize("blocks, bn, residual, flagged", [
    (5, False, False, True),  # VGG_38
    (0, False, False, False),  # VGG_08
    (5, True, False, False),  # VGG_38 BN
    (5, True, True, False),  # VGG_38 BN+RC
])
def test_diagnose_model_at_initialization(blocks, bn, residual, flagged):
    torch.manual_seed(0)
    model = build_network(blocks, bn=bn, residual=residual)
    state = _state(model)
    diagnosis = diagnose_model(model, *_batch(8), name="net")

    assert diagnosis.vanishing is flagged
    assert diagnosis.verdict == (VANISHING if flagged else HEALTHY)
    assert diagnosis.evidence == ["gradients", "activations"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    if flagged:
        # Measured 5.7e-15 on a batch of 100; the first layer's gradient is many decades below the last's.
        assert diagnosis.attenuation_init < 1e-10
        assert diagnosis.collapse_init is not None
    else:
        assert diagnosis.attenuation_init > VANISHING_RATIO
        assert diagnosis.collapse_init is None


def test_course_reference_verdicts():
    vgg38 = diagnose_run(reference_root() / "VGG_38")
    assert vgg38.verdict == STUCK
    assert vgg38.evidence == ["loss"]
    assert vgg38.vanishing is None
    assert vgg38.chance_loss == pytest.approx(math.log(100))
    assert vgg38.min_train_loss == pytest.approx(4.6052, abs=1e-4)
    assert "loss alone" in vgg38.text()

    vgg08 = diagnose_run(load_run(reference_root() / "VGG_08"))
    assert vgg08.verdict == TRAINS
    assert vgg08.loss_moved is True
    assert vgg08.final_val_acc == pytest.approx(0.4848)
    assert "loss alone" in vgg08.text()


@pytest.fixture(scope="module")
def depth_runs(tiny_arrays, tmp_path_factory):
    """One-epoch runs of VGG_38, VGG_08 and VGG_38 BN with activation records."""
    root = tmp_path_factory.mktemp("depth")
    runs = {}
    for name, blocks, bn in (("deep", 5, False), ("shallow", 0, False), ("deep_bn", 5, True)):
        config = ExperimentConfig(**{**TINY, "num_stages": 3, "num_blocks_per_stage": blocks, "bn": bn, "epochs": 1})
        fit(config, root / name, data=tiny_arrays, recorders=[ActivationRecorder(), UpdateRecorder(every=3)])
        runs[name] = load_run(root / name)
    return runs


def test_diagnose_run_flags_deep_plain_only(depth_runs):
    deep = diagnose_run(depth_runs["deep"])
    assert deep.verdict == VANISHING
    assert deep.evidence == ["gradients", "loss", "activations", "updates"]
    assert deep.attenuation_init < 1e-10
    assert deep.end_epoch == 1
    assert deep.loss_moved is False
    assert deep.collapse_init is not None
    assert deep.frozen_layers[0] == "entry.conv"

    for name in ("shallow", "deep_bn"):
        diagnosis = diagnose_run(depth_runs[name])
        assert diagnosis.vanishing is False, name
        assert diagnosis.verdict in (TRAINS, STUCK), name
        assert diagnosis.collapse_init is None, name
        assert diagnosis.frozen_layers == [], name


def test_verdict_combinations():
    summary = lambda loss: pd.DataFrame({"train_loss": [4.7, loss], "val_loss": [4.7, loss], "val_acc": [0.01, 0.2]})
    grads = lambda first: pd.DataFrame({"epoch": [0, 0], "layer": ["a", "b"], "mean_abs_grad": [first, 1.0]})
    assert diagnose(summary(2.0), grads(1e-2)).verdict == TRAINS
    assert diagnose(summary(2.0), grads(1e-6)).verdict == TRAINS_DESPITE
    assert diagnose(summary(4.6), grads(1e-6)).verdict == VANISHING
    assert diagnose(summary(4.6), grads(1e-2)).verdict == STUCK
    assert diagnose(summary(4.6), grads(1e-2), status="diverged").verdict == DIVERGED
    assert diagnose(summary(4.6)).verdict == STUCK
    assert diagnose(grads=grads(0.0)).verdict == VANISHING  # a gradient that underflowed to zero
    # 0.1 nats below chance is the boundary: just above it the loss has not moved.
    assert diagnose(summary(math.log(100) - 0.09)).loss_moved is False
    assert diagnose(summary(math.log(10) - 0.2), num_classes=10).loss_moved is True
    with pytest.raises(ValueError, match="nothing to diagnose"):
        diagnose(name="empty")


def test_diagnosis_dict_and_text():
    frame = pd.DataFrame({"train_loss": [4.61], "val_loss": [4.61], "val_acc": [0.01]})
    diagnosis = diagnose(frame, name="VGG_38")
    values = diagnosis.to_dict()
    assert values["verdict"] == STUCK
    assert values["thresholds"]["vanishing_ratio"] == VANISHING_RATIO
    assert values["vanishing"] is None
    lines = diagnosis.text().splitlines()
    assert lines[0] == "VGG_38: stuck at chance"
    assert "over 1 epoch against chance ln(100) = 4.605" in lines[2]


def test_collapse_depth_uses_spread_over_rms():
    rows = pd.DataFrame({"epoch": 0, "layer": ["a", "b", "c"], "depth": [1, 2, 3], "mean": [0.0, 1.0, 0.0],
                         "std": [1.0, 1e-3, 0.0], "batch_std": [1.0, 1e-7, 0.0]})
    assert collapse_depth(rows, 0) == (2, "b")
    assert collapse_depth(rows.iloc[[0, 2]], 0) == (3, "c")  # all zeros carries no signal
    assert collapse_depth(rows.iloc[[0]], 0) is None
    with pytest.raises(ValueError, match="recorded epochs are"):
        collapse_depth(rows, 5)


# Figures.

def test_heatmap_data_matches_grads_csv(probed_pair):
    _, probed = probed_pair
    grads = pd.read_csv(probed.run_dir / "grads.csv")
    data = heatmap_data(grads)
    assert list(data.index) == list(dict.fromkeys(grads["layer"]))
    assert list(data.columns) == [0, 1, 2]
    for row in grads.itertuples():
        assert data.loc[row.layer, row.epoch] == pytest.approx(math.log10(row.mean_abs_grad))


def test_heatmap_zero_gradient_is_a_gap():
    grads = pd.DataFrame({"epoch": [0, 0], "layer": ["a", "b"], "mean_abs_grad": [0.0, 1e-3]})
    data = heatmap_data(grads)
    assert math.isnan(data.loc["a", 0])
    assert data.loc["b", 0] == pytest.approx(-3)


def test_figures_save_pdf_and_png(probed_pair, depth_runs, tmp_path):
    import matplotlib.pyplot as plt

    _, probed = probed_pair
    folder = probed.run_dir
    activations = pd.read_csv(folder / "activations.csv")
    figures = {
        "heatmap": plot_grad_heatmap(pd.read_csv(folder / "grads.csv")),
        "heatmaps": plot_grad_heatmaps([depth_runs["deep"], depth_runs["deep_bn"]]),
        "activations": plot_activation_stats(activations),
        "compare": compare_activation_stats({"plain": pd.read_csv(depth_runs["deep"].path / "activations.csv"),
                                             "BN": pd.read_csv(depth_runs["deep_bn"].path / "activations.csv")}),
        "updates": plot_update_ratios(pd.read_csv(folder / "updates.csv")),
        "skip": plot_skip_vs_branch(pd.read_csv(folder / "skip.csv")),
    }
    heatmaps = figures["heatmaps"]
    limits = [ax.collections[0].get_clim() for ax in heatmaps.axes if ax.get_title()]
    assert len(limits) == 2
    assert limits[0] == limits[1]  # one colour scale for both runs
    assert "synthetic data" in heatmaps._suptitle.get_text()
    for name, fig in figures.items():
        paths = save_figure(fig, tmp_path / name)
        assert [path.suffix for path in paths] == [".pdf", ".png"]
        assert all(path.stat().st_size > 0 for path in paths)
        plt.close(fig)


def test_figures_reject_missing_records():
    with pytest.raises(ValueError, match="no gradient records for VGG_38"):
        plot_grad_heatmaps([load_run(reference_root() / "VGG_38")])
    activations = pd.DataFrame({"epoch": [0], "layer": ["a"], "depth": [1], "mean": [0.0], "std": [1.0],
                                "batch_std": [1.0], "frac_negative": [0.5]})
    with pytest.raises(ValueError, match="recorded epochs are \\[0\\]"):
        plot_activation_stats(activations, epochs=[3])


# The diagnose command.

def test_diagnose_command_on_course_and_labkit_runs(depth_runs, capsys, tmp_path):
    status = main(["diagnose", str(reference_root()), str(depth_runs["deep"].path), "--figures", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "VGG_08: trains normally" in out
    assert "VGG_38: stuck at chance" in out
    assert "VGG_38 (synthetic data): vanishing gradients" in out
    assert "rests on the loss alone" in out
    assert sorted(path.name for path in tmp_path.glob("*.pdf")) == [
        "03-deep-activations.pdf", "03-deep-grad-heatmap.pdf", "03-deep-updates.pdf"]


def test_diagnose_command_json(capsys):
    import json

    assert main(["diagnose", str(reference_root() / "VGG_38"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["verdict"] == STUCK
    assert entry["path"].endswith("VGG_38")


def test_diagnose_command_bad_paths(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path)]) == 1
    assert "no run found" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.csv").write_text("epoch,loss\n1,2\n")
    assert main(["diagnose", str(tmp_path / "broken")]) == 1
    assert "missing columns" in capsys.readouterr().err
