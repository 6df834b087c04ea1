"""Interrupted training loses nothing: kills and Ctrl-C resume exactly, divergence and OOM keep the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import ExperimentConfig, fit
from labkit.data import read_cifar100, write_synthetic_cifar100
from labkit.trainer import TrainingDiverged, TrainingOutOfMemory, load_checkpoint

TINY = dict(num_blocks_per_stage=0, num_filters=8, epochs=2, batch_size=50, progress=False, device="cpu")
RESULT_FILES = ("summary.csv", "test_summary.csv", "grads.csv")


@pytest.fixture(scope="module")
def tiny_arrays(tmp_path_factory):
    """Synthetic data of 400 train and 100 test images: 380 train, 20 validation."""
    return read_cifar100(write_synthetic_cifar100(tmp_path_factory.mktemp("tiny"), train_size=400, test_size=100))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_arrays) -> Path:
    """The folder of an uninterrupted run with the TINY settings."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    fit(ExperimentConfig(**TINY), folder, data=tiny_arrays)
    return folder


def assert_same_results(folder: Path, reference: Path) -> None:
    for name in RESULT_FILES:
        assert (folder / name).read_text() == (reference / name).read_text(), name


# Resume after a kill or an interrupt.

CLI_SETTINGS = ["data=synthetic", "synthetic_train_size=400", "synthetic_test_size=100", "num_blocks_per_stage=0",
                "num_filters=16", "epochs=2", "batch_size=20", "progress=false", "device=cpu"]


def labkit_train(data_dir: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "labkit.cli", "train", *CLI_SETTINGS, f"data_dir={data_dir}", "--out", str(out), *flags]


def wait_for_epochs(folder: Path, process: subprocess.Popen, epochs: int, timeout: float = 300.0) -> None:
    """Return once run.json, the last record written after each epoch's checkpoint, lists ``epochs`` epochs."""
    record = folder / "run.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.is_file() and len(json.loads(record.read_text())["epochs"]) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited with {process.returncode}: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError(f"{record} did not reach {epochs} epochs within {timeout} s")


@pytest.mark.slow
def test_killed_cli_run_resumes_exactly(tmp_path):
    data_dir = tmp_path / "data"
    reference = tmp_path / "reference"
    subprocess.run(labkit_train(data_dir, reference), check=True, capture_output=True, timeout=600)

    folder = tmp_path / "killed"
    process = subprocess.Popen(labkit_train(data_dir, folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_epochs(folder, process, 1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)

    # Killed during epoch 2 (of 19 steps), after epoch 1's checkpoint and records.
    assert load_checkpoint(folder / "checkpoints" / "latest.pt")["epoch"] == 1
    assert json.loads((folder / "run.json").read_text())["status"] == "running"
    assert not (folder / "test_summary.csv").exists()
    assert (folder / ".lock").is_file()

    resumed = subprocess.run(labkit_train(data_dir, folder, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert_same_results(folder, reference)
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    assert not (folder / ".lock").exists()


def test_interrupted_fit_resumes_exactly(tmp_path, tiny_arrays, reference_run):
    config = ExperimentConfig(**TINY)

    steps_per_epoch = -(-380 // config.batch_size)
    steps = {"count": 0}

    def interrupt_in_second_epoch() -> bool:
        # A notebook's interrupt button raises KeyboardInterrupt wherever the kernel is.
        steps["count"] += 1
        if steps["count"] == steps_per_epoch + 3:
            raise KeyboardInterrupt
        return False

    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(config, folder, data=tiny_arrays, should_stop=interrupt_in_second_epoch)
    assert load_checkpoint(folder / "checkpoints" / "latest.pt")["epoch"] == 1
    assert not (folder / ".lock").exists()

    resumed = fit(config, folder, data=tiny_arrays, resume=True)
    assert resumed.status == "finished"
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert_same_results(folder, reference_run)


def test_resume_without_best_checkpoint(tmp_path, tiny_arrays, reference_run):
    # A kill between writing latest.pt and best.pt after epoch 1 leaves no best.pt. The best
    # model is then latest.pt's own, so the test results must still match an uninterrupted run.
    config = ExperimentConfig(**TINY)
    folder = tmp_path / "run"
    steps = {"count": 0}

    def stop_at_second_epoch() -> bool:
        steps["count"] += 1
        return steps["count"] > -(-380 // config.batch_size)

    fit(config, folder, data=tiny_arrays, should_stop=stop_at_second_epoch)
    latest = load_checkpoint(folder / "checkpoints" / "latest.pt")
    assert (latest["epoch"], latest["best_epoch"]) == (1, 1)
    (folder / "checkpoints" / "best.pt").unlink()

    fit(config, folder, data=tiny_arrays, resume=True)
    assert_same_results(folder, reference_run)


# Divergence.

def test_huge_lr_stops_with_epoch_step_and_lr(tmp_path, tiny_arrays):
    folder = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        fit(ExperimentConfig(**{**TINY, "lr": 1e6}), folder, data=tiny_arrays)
    message = str(error.value)
    assert "loss became NaN or infinite at epoch 1, step " in message
    assert "learning rate 1e+06" in message
    assert "No checkpoint was written" in message
    assert json.loads((folder / "run.json").read_text())["status"] == "diverged"
    assert not (folder / "checkpoints" / "latest.pt").exists()
    assert not (folder / ".lock").exists()


def test_divergence_keeps_last_good_checkpoint(tmp_path, tiny_arrays):
    # eta_min above lr makes the cosine schedule rise: 1e-3 in epoch 1, 2.5e5 in epoch 2.
    config = ExperimentConfig(**{**TINY, "epochs": 3, "lr": 1e-3, "eta_min": 1e6})
    folder = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        fit(config, folder, data=tiny_arrays)
    message = str(error.value)
    assert "at epoch 2, step " in message
    assert "learning rate 250000" in message
    assert f"from epoch 1, stays in {folder / 'checkpoints' / 'latest.pt'}" in message

    latest = load_checkpoint(folder / "checkpoints" / "latest.pt")
    assert latest["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in latest["model"].values())
    assert len((folder / "summary.csv").read_text().splitlines()) == 2
    assert json.loads((folder / "run.json").read_text())["status"] == "diverged"


# Out of memory.

def test_out_of_memory_suggests_smaller_batch(tmp_path, tiny_arrays):
    def run_out_of_memory(result, row) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    folder = tmp_path / "run"
    with pytest.raises(TrainingOutOfMemory) as error:
        fit(ExperimentConfig(**TINY), folder, data=tiny_arrays, on_epoch_end=run_out_of_memory)
    message = str(error.value)
    assert "ran out of memory with batch_size=50" in message
    assert "Tried to allocate 2.00 GiB" in message
    assert "Try batch_size=25" in message
    assert isinstance(error.value, RuntimeError)
    # The failed run's traceback, which references its tensors, is dropped.
    assert error.value.__context__ is None
    assert not (folder / ".lock").exists()
    assert load_checkpoint(folder / "checkpoints" / "latest.pt")["epoch"] == 1
