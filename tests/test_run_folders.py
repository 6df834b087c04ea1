"""Run folders: atomic writes survive kills, the lock keeps runs apart, and results are not mixed."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import ExperimentConfig, fit, runfolder
from labkit.cli import main
from labkit.data import read_cifar100, write_synthetic_cifar100
from labkit.runfolder import RunFolderError, RunLock
from labkit.trainer import SUMMARY_COLUMNS, load_checkpoint

TINY = dict(num_blocks_per_stage=0, num_filters=8, epochs=1, batch_size=50, progress=False, device="cpu")


@pytest.fixture(scope="module")
def tiny_arrays(tmp_path_factory):
    """Synthetic data of 400 train and 100 test images."""
    return read_cifar100(write_synthetic_cifar100(tmp_path_factory.mktemp("tiny"), train_size=400, test_size=100))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_arrays) -> Path:
    """A folder containing a finished one-epoch run; tests copy it before changing it."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    fit(ExperimentConfig(**TINY), folder, data=tiny_arrays)
    return folder


def copy_run(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def start_python(code: str, *args: str) -> subprocess.Popen:
    """Start a Python process that runs ``code`` and reports progress on stdout."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, expected: str) -> None:
    line = process.stdout.readline()
    if line.strip() != expected:
        process.kill()
        raise AssertionError(f"expected {expected!r} from the child process, got {line!r}; stderr: {process.stderr.read()}")


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()


# Atomic writes.

def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "summary.csv"
    runfolder.write_text(path, "old\n")

    def fail_half_way(handle):
        handle.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runfolder.atomic_write(path, fail_half_way)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


WRITE_THEN_HANG = """
import sys, time
from labkit.runfolder import atomic_write

def write(handle):
    handle.write(b"torn")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)

atomic_write(sys.argv[1], write)
"""


def test_kill_mid_write_keeps_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "latest.pt"
    runfolder.save_torch(path, {"epoch": 1, "model": {"weight": torch.ones(3)}})
    process = start_python(WRITE_THEN_HANG, str(path))
    wait_for_line(process, "writing")
    kill(process)

    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 1
    assert torch.equal(checkpoint["model"]["weight"], torch.ones(3))
    leftovers = list(path.parent.glob(f".latest.pt.*{runfolder.PARTIAL_SUFFIX}"))
    assert len(leftovers) == 1
    assert leftovers[0].read_bytes() == b"torn"


WRITE_FOREVER = """
import sys, torch
from pathlib import Path
from labkit import runfolder
from labkit.trainer import SUMMARY_COLUMNS, save_checkpoint

folder = Path(sys.argv[1])
rows = []
for epoch in range(1, 100000):
    save_checkpoint(folder / "checkpoints" / "latest.pt", {"epoch": epoch, "model": {"weight": torch.full((512, 512), float(epoch))}})
    rows.append({"train_acc": epoch / 1e5, "train_loss": 1 / epoch, "val_acc": epoch / 1e5, "val_loss": 2 / epoch})
    runfolder.write_csv(folder / "summary.csv", SUMMARY_COLUMNS, rows)
    if epoch == 3:
        print("running", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.037])
def test_kill_while_writing_leaves_intact_files(tmp_path, delay):
    process = start_python(WRITE_FOREVER, str(tmp_path))
    wait_for_line(process, "running")
    time.sleep(delay)
    kill(process)

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    epoch = checkpoint["epoch"]
    assert torch.equal(checkpoint["model"]["weight"], torch.full((512, 512), float(epoch)))
    text = (tmp_path / "summary.csv").read_text()
    assert text.endswith("\n")
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == SUMMARY_COLUMNS
    assert all(len(row) == len(SUMMARY_COLUMNS) for row in rows)
    # The CSV is written after the checkpoint, so it lags it by at most one epoch.
    assert len(rows) - 1 in (epoch - 1, epoch)
    assert [float(row[1]) for row in rows[1:]] == [1 / e for e in range(1, len(rows))]


def test_written_files_follow_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        runfolder.write_text(tmp_path / "run.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644


def test_partial_writes_removed_on_next_run(tmp_path, tiny_arrays):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    stale = [folder / f".summary.csv.0a1b2c{runfolder.PARTIAL_SUFFIX}",
             folder / "checkpoints" / f".latest.pt.3d4e5f{runfolder.PARTIAL_SUFFIX}"]
    for path in stale:
        path.write_bytes(b"torn")
    fit(ExperimentConfig(**TINY), folder, data=tiny_arrays)
    assert not any(path.exists() for path in stale)
    assert (folder / "summary.csv").is_file()


# The lock.

HOLD_LOCK = """
import sys, time
from labkit.runfolder import RunLock

RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_rejects_second_run_until_owner_dies(tmp_path, tiny_arrays):
    folder = tmp_path / "run"
    process = start_python(HOLD_LOCK, str(folder))
    try:
        wait_for_line(process, "locked")
        with pytest.raises(RunFolderError, match="in use by another run") as error:
            fit(ExperimentConfig(**TINY), folder, data=tiny_arrays)
        assert f"pid {process.pid} on {socket.gethostname()}" in str(error.value)
        assert not (folder / "summary.csv").exists()
    finally:
        kill(process)

    # The killed owner leaves its lock file behind; the next run takes it over.
    assert (folder / ".lock").is_file()
    result = fit(ExperimentConfig(**TINY), folder, data=tiny_arrays)
    assert result.status == "finished"
    assert not (folder / ".lock").exists()


def test_lock_rejects_same_process_twice(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()} "):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def test_lock_with_reused_pid_taken_over(tmp_path):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("process start times come from /proc, which this system lacks")
    lock = tmp_path / ".lock"
    # A live process that started after the lock was written cannot be its owner.
    newer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"pid {newer.pid} on {socket.gethostname()}\n")
        an_hour_ago = time.time() - 3600
        os.utime(lock, (an_hour_ago, an_hour_ago))
        with RunLock(tmp_path) as taken:
            assert taken.held
            assert lock.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    finally:
        newer.kill()
        newer.wait(timeout=30)


def test_lock_from_other_host_kept(tmp_path):
    (tmp_path / ".lock").write_text("pid 1 on some-other-host\n")
    with pytest.raises(RunFolderError, match="pid 1 on some-other-host") as error:
        RunLock(tmp_path).acquire()
    assert f"delete {tmp_path / '.lock'}" in str(error.value)
    assert (tmp_path / ".lock").read_text() == "pid 1 on some-other-host\n"


def test_unreadable_lock_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("")
    with RunLock(tmp_path) as taken:
        assert taken.held


# Guards against mixing runs.

def test_folder_with_results_rejected(tmp_path, finished_run, tiny_arrays):
    folder = copy_run(finished_run, tmp_path / "run")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(RunFolderError) as error:
        fit(ExperimentConfig(**{**TINY, "lr": 1e-2}), folder, data=tiny_arrays)
    message = str(error.value)
    assert str(folder) in message
    assert "summary.csv" in message
    assert "--resume" in message
    assert "--overwrite" in message
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_cli_rejects_folder_with_results(tmp_path, finished_run, capsys):
    folder = copy_run(finished_run, tmp_path / "run")
    status = main(["train", "num_blocks_per_stage=0", "progress=false", "--out", str(folder)])
    assert status == 1
    error = capsys.readouterr().err
    assert f"labkit train: error: {folder} already" in error
    assert "--resume" in error


def test_overwrite_replaces_results(tmp_path, finished_run, tiny_arrays):
    folder = copy_run(finished_run, tmp_path / "run")
    old_summary = (folder / "summary.csv").read_text()
    result = fit(ExperimentConfig(**{**TINY, "lr": 1e-2}), folder, data=tiny_arrays, overwrite=True)
    assert result.status == "finished"
    assert load_checkpoint(folder / "checkpoints" / "latest.pt")["config"]["lr"] == 1e-2
    assert json.loads((folder / "run.json").read_text())["config"]["lr"] == 1e-2
    summary = (folder / "summary.csv").read_text()
    assert summary != old_summary
    assert len(summary.splitlines()) == 2


def test_resume_with_other_settings_rejected(tmp_path, finished_run, tiny_arrays):
    folder = copy_run(finished_run, tmp_path / "run")
    latest = (folder / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(RunFolderError, match=r"other settings \(lr: 0.001 -> 0.01, seed: 0 -> 1\)"):
        fit(ExperimentConfig(**{**TINY, "lr": 1e-2, "seed": 1}), folder, data=tiny_arrays, resume=True)
    assert (folder / "checkpoints" / "latest.pt").read_bytes() == latest


def test_resume_allows_display_settings(tmp_path, finished_run, tiny_arrays):
    folder = copy_run(finished_run, tmp_path / "run")
    summary = (folder / "summary.csv").read_text()
    config = ExperimentConfig(**{**TINY, "eval_batch_size": 37, "log_every": 3, "name": "renamed"})
    result = fit(config, folder, data=tiny_arrays, resume=True)
    assert result.status == "finished"
    assert (folder / "summary.csv").read_text() == summary


def test_resume_without_checkpoint_rejected(tmp_path, finished_run, tiny_arrays):
    folder = copy_run(finished_run, tmp_path / "run")
    (folder / "checkpoints" / "latest.pt").unlink()
    with pytest.raises(RunFolderError, match="has no checkpoints/latest.pt"):
        fit(ExperimentConfig(**TINY), folder, data=tiny_arrays, resume=True)
