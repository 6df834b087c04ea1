"""Run folders: atomic writes, a crash-safe lock, and guards against mixing runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

logger = logging.getLogger(__name__)

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
PARTIAL_SUFFIX = ".partial"  # temporary files of atomic_write
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
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
    # os.open with mode 0o666 applies the umask, as open() does; tempfile would make the file 0600.
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder``; return them.

    Call it only while holding the folder's lock, because a live writer's
    temporary file looks the same.
    """
    folder = Path(folder)
    partial = [*folder.glob(f".*{PARTIAL_SUFFIX}"), *folder.glob(f"{CHECKPOINTS}/.*{PARTIAL_SUFFIX}")]
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


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


def _process_start_time(pid: int) -> float | None:
    """Return when process ``pid`` started (Unix time), or None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        # Field 22 of /proc/PID/stat, the start time in clock ticks after boot (proc(5)).
        return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, StopIteration, ValueError):
        return None


class RunLock:
    """An exclusive lock on a run folder, held as a ``.lock`` file with the owner's pid.

    A lock left by a process that has died (killed, crashed) is stale and is
    taken over, and so is one whose pid now belongs to a process that started
    after the lock was written (Linux only, through /proc). The pid check
    covers processes on this host only; a lock made on another host is
    honoured until removed by hand.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            if self._create():
                self.held = True
                return self
            owner = self._owner()
            if self._owner_alive():
                raise RunFolderError(
                    f"{self.path.parent} is in use by another run ({owner}); wait for it to finish, choose "
                    f"another folder, or delete {self.path} if that process is not a labkit run"
                )
            # NOTE: two processes that take over the same stale lock at the same instant can both succeed.
            logger.warning("taking over the stale lock %s (%s)", self.path, owner)
            self.path.unlink(missing_ok=True)
        raise RunFolderError(f"could not take the lock {self.path}; delete it if no run uses the folder")

    def _create(self) -> bool:
        """Create the lock file with its owner already written; return False when it exists."""
        # Linking a complete file creates the lock in one step, so no reader sees it empty and takes it as stale.
        staged = self.path.with_name(f"{LOCK}-{os.getpid()}-{secrets.token_hex(4)}")
        staged.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        try:
            os.link(staged, self.path)
        except FileExistsError:
            return False
        except OSError:
            # A file system without hard links gets an exclusive create, written right after.
            return self._create_exclusive()
        finally:
            staged.unlink()
        return True

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        return True

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip() or "empty lock file"
        except OSError as error:
            return f"unreadable: {error}"

    def _owner_alive(self) -> bool:
        try:
            _, pid, _, host = self.path.read_text().split()
            written = self.path.stat().st_mtime
        except (OSError, ValueError):
            return False  # unreadable, gone, or written by hand
        if host != socket.gethostname():
            return True
        started = _process_start_time(int(pid))
        # /proc/stat gives the boot time in whole seconds, hence the tolerance.
        if started is not None and started > written + 2.0:
            return False
        return _pid_alive(int(pid))

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
    for partial in remove_partial_writes(folder):
        logger.info("removed %s, left by a run killed while writing it", partial)
    present = existing_outputs(folder)
    if not present:
        return False
    if overwrite:
        for name in present:
            (folder / name).unlink()
        return False
    if not resume:
        raise RunFolderError(
            f"{folder} already contains results ({', '.join(present)}); "
            "resume it (resume=True, --resume) or replace it (overwrite=True, --overwrite)"
        )
    if not (folder / CHECKPOINTS / LATEST).exists():
        raise RunFolderError(f"cannot resume {folder}: it has no {CHECKPOINTS}/{LATEST}; use overwrite to start again")
    return True
