"""Read finished or running experiments from disk: labkit's run folders and the course framework's."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from labkit import runfolder

COURSE_RESULTS = "result_outputs"
SUMMARY_COLUMNS = ["train_acc", "train_loss", "val_acc", "val_loss"]


class RunNotFoundError(FileNotFoundError):
    """A folder that contains no run this module can read."""


@dataclass
class Run:
    """Metrics of one experiment read from disk.

    ``summary`` has one row per epoch (index from 1) with the course's
    columns; ``grads`` is the tidy gradient table or None when the run has
    none (the course's folders record no gradients).
    """

    path: Path
    name: str
    kind: str  # "labkit" or "course"
    summary: pd.DataFrame
    test: dict[str, float] = field(default_factory=dict)
    grads: pd.DataFrame | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config", {})

    @property
    def data_source(self) -> str:
        """``CIFAR-100``, ``synthetic`` or another source; course runs are CIFAR-100."""
        return self.record.get("data_source", "CIFAR-100" if self.kind == "course" else "unknown")

    @property
    def synthetic(self) -> bool:
        return self.data_source == "synthetic"

    @property
    def status(self) -> str:
        return self.record.get("status", "finished" if self.test else "unknown")

    @property
    def lr(self) -> float | None:
        return self.config.get("lr")

    @property
    def num_parameters(self) -> int | None:
        """Trainable parameters; for course runs, counted on the network their name describes."""
        if "num_parameters" in self.record:
            return self.record["num_parameters"]
        return parameters_from_name(self.name)

    @property
    def label(self) -> str:
        """Name for legends and titles, marked when the data is synthetic."""
        return f"{self.name} (synthetic data)" if self.synthetic else self.name


_COURSE_NAME = re.compile(r"^VGG_(?P<depth>\d+)(?P<tags>(?:[ _+-]*(?:BN|RC))*)$", re.IGNORECASE)


def parameters_from_name(name: str) -> int | None:
    """Count the parameters of the network a course experiment name such as ``VGG_38_BN_RC`` describes.

    Returns None for names that do not follow the ``VGG_<depth>`` pattern or
    whose depth no 3-stage network has.
    """
    from labkit.networks import build_network, count_parameters

    match = _COURSE_NAME.match(name.strip())
    if match is None:
        return None
    blocks, remainder = divmod(int(match["depth"]) - 8, 6)
    if blocks < 0 or remainder:
        return None
    tags = match["tags"].upper()
    return count_parameters(build_network(blocks, bn="BN" in tags, residual="RC" in tags))


def _read_summary(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [column for column in SUMMARY_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(missing)}; expected {','.join(SUMMARY_COLUMNS)}")
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
    return frame[SUMMARY_COLUMNS]


def _read_test(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    return {column: float(frame[column].iloc[0]) for column in ("test_acc", "test_loss") if column in frame}


def results_folder(path: str | Path) -> tuple[Path, str]:
    """Return the folder holding ``summary.csv`` and whether it is a labkit or a course run."""
    path = Path(path)
    if (path / runfolder.SUMMARY).is_file():
        return path, "course" if path.name == COURSE_RESULTS or not (path / runfolder.RECORD).is_file() else "labkit"
    if (path / COURSE_RESULTS / runfolder.SUMMARY).is_file():
        return path / COURSE_RESULTS, "course"
    raise RunNotFoundError(
        f"{path} contains no run: expected {runfolder.SUMMARY} there or in {COURSE_RESULTS}/ (a course result folder)"
    )


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a labkit run folder, or a course experiment folder with ``result_outputs/``.

    Raises:
        RunNotFoundError: the folder has no ``summary.csv``.
    """
    folder, kind = results_folder(path)
    record: dict[str, Any] = {}
    if (folder / runfolder.RECORD).is_file():
        record = json.loads((folder / runfolder.RECORD).read_text())
    grads = None
    if (folder / runfolder.GRADS).is_file():
        grads = pd.read_csv(folder / runfolder.GRADS)
    experiment = folder.parent if kind == "course" and folder.name == COURSE_RESULTS else folder
    default_name = record.get("name") or experiment.name
    return Run(path=experiment, name=name or default_name, kind=kind, summary=_read_summary(folder / runfolder.SUMMARY),
               test=_read_test(folder / runfolder.TEST_SUMMARY), grads=grads, record=record)


def find_runs(root: str | Path) -> list[Run]:
    """Load every run below ``root`` (labkit and course folders), sorted by path."""
    root = Path(root)
    folders = {p.parent for p in root.rglob(runfolder.SUMMARY)}
    runs = []
    for folder in sorted(folders):
        if folder.name == COURSE_RESULTS:
            folder = folder.parent
        runs.append(load_run(folder))
    return runs


def reference_root() -> Path:
    """Folder of the course's published VGG_08 and VGG_38 results on CIFAR-100 (real GPU runs)."""
    return Path(__file__).resolve().parent / "reference" / "course-runs"
