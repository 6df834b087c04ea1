"""Trainer: learning on synthetic data, run-folder records, schedule, best model and resume."""

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch

from labkit import ConfigError, ExperimentConfig, fit
from labkit.data import to_device_data
from labkit.trainer import evaluate, load_checkpoint

# A tiny network keeps these tests to seconds on two cores.
TINY = dict(num_blocks_per_stage=1, num_stages=1, num_filters=8, epochs=3, batch_size=50, progress=False,
            data="synthetic")


@pytest.fixture(scope="module")
def tiny_data(synthetic_arrays):
    # Twelve steps per epoch keep these tests to seconds on two shared cores.
    arrays = dataclasses.replace(
        synthetic_arrays,
        train_images=synthetic_arrays.train_images[:600],
        train_labels=synthetic_arrays.train_labels[:600],
        test_images=synthetic_arrays.test_images[:200],
        test_labels=synthetic_arrays.test_labels[:200],
    )
    return to_device_data(arrays, "cpu")


def test_shallow_network_beats_chance(synthetic_arrays):
    config = ExperimentConfig(num_blocks_per_stage=0, lr=1e-2, epochs=3, progress=False, data="synthetic")
    result = fit(config, data=synthetic_arrays)
    # Chance is 1% with 100 classes; measured about 10% after three epochs.
    assert result.test["test_acc"] > 0.04
    assert result.history[-1]["train_loss"] < math.log(100) - 0.3
    assert result.status == "finished"


def test_run_folder_records(tmp_path, tiny_data):
    config = ExperimentConfig(**TINY)
    result = fit(config, tmp_path / "run", data=tiny_data)
    folder = tmp_path / "run"

    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary.columns) == ["train_acc", "train_loss", "val_acc", "val_loss"]
    assert len(summary) == 3
    assert summary["val_acc"].tolist() == pytest.approx([row["val_acc"] for row in result.history])

    test = pd.read_csv(folder / "test_summary.csv")
    assert list(test.columns) == ["test_acc", "test_loss"]
    assert test["test_acc"][0] == pytest.approx(result.test["test_acc"])

    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["data_source"] == "synthetic"
    assert record["synthetic"] is True
    assert record["num_parameters"] == result.num_parameters
    assert record["seed"] == 0
    assert record["device"] == "cpu"
    assert record["config"]["num_filters"] == 8
    assert set(record["versions"]) >= {"labkit", "torch", "torchvision", "numpy", "python"}
    assert len(record["epochs"]) == 3

    grads = pd.read_csv(folder / "grads.csv")
    assert list(grads.columns) == ["epoch", "layer", "mean_abs_grad", "grad_norm"]
    assert sorted(grads["epoch"].unique()) == [0, 1, 2, 3]
    assert grads.groupby("epoch").size().tolist() == [6, 6, 6, 6]
    assert (grads["mean_abs_grad"] > 0).all()
    assert (folder / "checkpoints" / "latest.pt").is_file()
    assert (folder / "checkpoints" / "best.pt").is_file()
    assert not (folder / ".lock").exists()


def test_cosine_schedule_per_epoch(tiny_data):
    config = ExperimentConfig(**{**TINY, "epochs": 4, "lr": 1e-3, "eta_min": 2e-5})
    result = fit(config, data=tiny_data)
    expected = [2e-5 + (1e-3 - 2e-5) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [row["lr"] for row in result.history] == pytest.approx(expected)


def test_test_set_uses_best_validation_model(tmp_path, tiny_data):
    result = fit(ExperimentConfig(**TINY), tmp_path, data=tiny_data)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    val_accs = [row["val_acc"] for row in result.history]
    assert best["epoch"] == result.best_epoch == 1 + val_accs.index(max(val_accs))
    result.model.load_state_dict(best["model"])
    again = evaluate(result.model, tiny_data.test, 1000)
    assert again["acc"] == pytest.approx(result.test["test_acc"])


def test_resume_equals_uninterrupted(tmp_path, tiny_data):
    config = ExperimentConfig(**TINY)
    full = fit(config, tmp_path / "full", data=tiny_data)

    # Stop at the first step of epoch 3, then resume from the epoch-2 checkpoint.
    steps = {"count": 0}
    per_epoch = -(-len(tiny_data.train) // config.batch_size)

    def stop_in_third_epoch():
        steps["count"] += 1
        return steps["count"] > 2 * per_epoch

    stopped = fit(config, tmp_path / "resumed", data=tiny_data, should_stop=stop_in_third_epoch)
    assert stopped.status == "stopped"
    assert len(stopped.history) == 2
    resumed = fit(config, tmp_path / "resumed", data=tiny_data, resume=True)

    assert resumed.status == "finished"
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [row[column] for row in resumed.history] == [row[column] for row in full.history], column
    assert resumed.test == full.test
    full_grads = pd.read_csv(tmp_path / "full" / "grads.csv")
    resumed_grads = pd.read_csv(tmp_path / "resumed" / "grads.csv")
    pd.testing.assert_frame_equal(full_grads, resumed_grads)


def test_epoch_callback_sees_each_epoch(tiny_data):
    seen = []
    fit(ExperimentConfig(**{**TINY, "epochs": 2}), data=tiny_data, on_epoch_end=lambda result, row: seen.append(row["epoch"]))
    assert seen == [1, 2]


def test_same_seed_same_run(tiny_data):
    config = ExperimentConfig(**{**TINY, "epochs": 1})
    first = fit(config, data=tiny_data)
    second = fit(config, data=tiny_data)
    other = fit(config.replace(seed=1), data=tiny_data)
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.history[0]["train_loss"] != other.history[0]["train_loss"]


def test_more_classes_in_data_than_network_rejected(tiny_data):
    with pytest.raises(ValueError, match="num_classes"):
        fit(ExperimentConfig(**{**TINY, "num_classes": 10}), data=tiny_data)


def test_cuda_request_without_cuda_is_explained():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        fit(ExperimentConfig(**{**TINY, "device": "cuda"}))
