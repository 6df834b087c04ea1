"""Run folders: atomic writes, a crash-safe lock, and guards against mixing runs."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

SUMMARY = "summary.csv"
TEST_SUMMARY = "test_summary.csv"
GRADS = "grads.csv"
RECORD = "run.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest.pt"
BEST = "best.pt"
LOCK = ".lock"
# Records of the probes in labkit.diagnostics, written when fit is given recorders.
ACTIVATIONS = "activations.csv"
UPDATES = "updates.csv"
SKIP = "skip.csv"
# Files that a training run writes; overwriting a run removes exactly these.
RUN_OUTPUTS = (SUMMARY, TEST_SUMMARY, GRADS, RECORD, ACTIVATIONS, UPDATES, SKIP,
               f"{CHECKPOINTS}/{LATEST}", f"{CHECKPOINTS}/{BEST}")


class RunFolderError(RuntimeError):
    """A run folder that is locked or holds another run's results."""


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file through ``write`` into a temporary sibling, then rename it over ``path``.

    A reader, or a process killed at any moment, sees either the old file or
    the complete new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: str | Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, held as a ``.lock`` file with the owner's pid.

    A lock left by a process that has died (killed, crashed) is stale and is
    taken over. The pid check covers processes on this host only; a lock made
    on another host is honoured until removed by hand.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._owner_alive():
                    raise RunFolderError(
                        f"{self.path.parent} is in use by another run ({self.path.read_text().strip()}); "
                        "wait for it to finish or choose another folder"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            self.held = True
            return self
        raise RunFolderError(f"could not take the lock {self.path}; remove it if no run uses the folder")

    def _owner_alive(self) -> bool:
        try:
            _, pid, _, host = self.path.read_text().split()
        except (OSError, ValueError):
            return False  # unreadable or half-written: its owner died while writing it
        return host != socket.gethostname() or _pid_alive(int(pid))

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def existing_outputs(folder: str | Path) -> list[str]:
    """Return the run outputs already present in ``folder``."""
    return [name for name in RUN_OUTPUTS if (Path(folder) / name).exists()]


def prepare_folder(folder: str | Path, config: dict, resume: bool, overwrite: bool) -> bool:
    """Check that a run with ``config`` may write into ``folder``; return whether to resume.

    Raises:
        RunFolderError: the folder holds results and neither ``resume`` nor
            ``overwrite`` was requested, or ``resume`` was requested for a
            run with other settings.
    """
    folder = Path(folder)
    present = existing_outputs(folder)
    if not present:
        return False
    if overwrite:
        for name in present:
            (folder / name).unlink()
        return False
    if not resume:
        raise RunFolderError(
            f"{folder} already holds results ({', '.join(present)}); "
            "resume it (resume=True, --resume) or replace it (overwrite=True, --overwrite)"
        )
    if not (folder / CHECKPOINTS / LATEST).exists():
        raise RunFolderError(f"cannot resume {folder}: it has no {CHECKPOINTS}/{LATEST}; use overwrite to start again")
    return True
