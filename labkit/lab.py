"""Helpers the lab's notebooks call: load an experiment, train or load its runs, save figures and tables.

Each notebook runs for one params file. It trains that experiment and the
ones it compares with into their run folders (``<out>/<params stem>/``), or
loads a run folder that already contains a finished run with the same settings,
so a notebook works on its own and ``labkit run`` trains each experiment once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from labkit import runfolder
from labkit.config import ConfigError
from labkit.params import Experiment, load_compared, load_experiment
from labkit.runs import COURSE_RESULTS, Run, load_run, reference_root

logger = logging.getLogger(__name__)

FIGURES = "figures"
TABLE_STEM = "results_table"
# Printed numbers are rounded to these digits, which hides last-bit floating-point
# differences between machines in the notebooks' text output (nbval compares it).
# NOTE: a value that lies close to a rounding boundary can still print differently.
# The CSV and LaTeX files keep the report's precision.
ACC_DIGITS = 1
LOSS_DIGITS = 2


def load(params: str | Path, profile: str = "", out: str = "", data_dir: str = "") -> Experiment:
    """Load and validate a params file for a notebook.

    Args:
        params: the params file, relative to the working folder.
        profile: profile name or file applied on top, e.g. ``smoke``; empty for none.
        out: folder of run folders; empty takes the params file's.
        data_dir: data folder or CIFAR-100 archive; empty takes the params file's.

    ``$VARIABLES`` in ``out`` and ``data_dir`` are expanded.

    Raises:
        ConfigError: an invalid params or profile file, or a folder naming an unset variable.
    """
    return load_experiment(params, profile=profile or None, out=_expand("out", out) or None,
                           data_dir=_expand("data_dir", data_dir) or None)


def _expand(name: str, value: str) -> str:
    expanded = os.path.expandvars(value) if value else ""
    if "$" in expanded:
        raise ConfigError(f"{name}: {value!r} names an environment variable that is not set; set it or give a folder")
    return expanded


def experiments(experiment: Experiment) -> list[Experiment]:
    """Return ``experiment`` and the experiments it compares with, sorted by name.

    The comparison notebook's own params file trains nothing, so it is left out.
    """
    own = [experiment] if experiment.config is not None else []
    return sorted([*own, *load_compared(experiment)], key=lambda item: item.name)


def describe(experiment: Experiment) -> None:
    """Print which experiments the notebook runs, their settings and where the run folders go."""
    profile = f" with profile {experiment.profile.stem}" if experiment.profile else ""
    print(f"{experiment.name}{profile}: notebook {experiment.notebook}")
    print(f"run folders in {experiment.out}")
    rows = []
    for item in experiments(experiment):
        if item.config is None:
            continue
        config = item.config
        data = config.data if config.data != "synthetic" else (
            f"synthetic {config.synthetic_train_size}/{config.synthetic_test_size}")
        rows.append({"experiment": item.name, "model": config.label, "lr": f"{config.lr:g}", "epochs": config.epochs,
                     "batch": config.batch_size, "filters": config.num_filters, "seed": config.seed, "data": data})
    if rows:
        print(pd.DataFrame(rows).to_string(index=False))


def finished_run_matches(experiment: Experiment) -> bool:
    """Tell whether the experiment's run folder contains a finished run with the same settings."""
    from labkit.trainer import RESUMABLE_CHANGES

    record_path = experiment.run_dir / runfolder.RECORD
    if experiment.config is None or not record_path.is_file():
        return False
    record = load_run(experiment.run_dir).record
    saved, wanted = record.get("config", {}), experiment.config.to_dict()
    same = all(saved.get(key) == value for key, value in wanted.items() if key not in RESUMABLE_CHANGES)
    return record.get("status") == "finished" and same


def train_or_load(experiment: Experiment, resume: bool = False, overwrite: bool = False) -> dict[str, Run]:
    """Train each of ``experiments(experiment)`` that has no finished matching run, then load them all.

    Returns runs by experiment name, in name order.

    Raises:
        RunFolderError: a run folder contains another run's results and neither
            ``resume`` nor ``overwrite`` is set.
    """
    from labkit.trainer import fit

    runs = {}
    for item in experiments(experiment):
        if item.config is None:
            raise ConfigError(f"{item.source}: {item.notebook} trains nothing, so it cannot be compared with")
        if overwrite or not finished_run_matches(item):
            logger.info("training %s into %s", item.name, item.run_dir)
            fit(item.config, item.run_dir, resume=resume, overwrite=overwrite)
        runs[item.name] = load_run(item.run_dir)
    name_with_lr(list(runs.values()))
    return runs


def name_with_lr(runs: Sequence[Run]) -> None:
    """Append the learning rate to the names of runs that would otherwise share a legend entry."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1 and run.lr is not None:
            # 1e-2 rather than 0.01 or 1e-02, as the course's table writes learning rates.
            run.name = f"{run.name} lr {run.lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def reference_runs() -> list[Run]:
    """Load the course's published VGG_08 and VGG_38 runs (CIFAR-100, trained on a GPU)."""
    return [load_run(folder) for folder in sorted(reference_root().iterdir()) if folder.is_dir()]


def run_folders(out: str | Path) -> list[Run]:
    """Load every run folder directly inside ``out``: labkit's, and course folders with ``result_outputs/``."""
    runs = []
    for folder in sorted(Path(out).iterdir()) if Path(out).is_dir() else []:
        if (folder / runfolder.SUMMARY).is_file() or (folder / COURSE_RESULTS / runfolder.SUMMARY).is_file():
            runs.append(load_run(folder))
    return runs


def grad_epochs(run: Run, requested: Sequence[int] = ()) -> list[int]:
    """Return the epochs to draw in a gradient-flow plot: ``requested``, or initialization, middle and last.

    Raises:
        ValueError: a requested epoch has no gradient records in the run.
    """
    recorded = sorted(int(epoch) for epoch in run.grads["epoch"].unique())
    if requested:
        missing = [epoch for epoch in requested if epoch not in recorded]
        if missing:
            raise ValueError(f"{run.name}: no gradient records for epochs {missing}; recorded are {recorded}")
        return list(requested)
    return sorted({recorded[0], recorded[len(recorded) // 2], recorded[-1]})


def save_figure(fig: Any, experiment: Experiment, name: str) -> None:
    """Save ``fig`` as PDF and PNG in the run folder's ``figures/`` and print the file names."""
    from labkit.plots import save_figure as save

    paths = save(fig, experiment.run_dir / FIGURES / name)
    print("saved " + ", ".join(str(path.relative_to(experiment.run_dir)) for path in paths))


def rounded_table(table: pd.DataFrame) -> str:
    """Format a results table for printing, with accuracies and losses rounded to stable digits."""
    shown = table.copy()
    shown["LR"] = [f"{value:.0e}" if pd.notna(value) else "" for value in table["LR"]]
    shown["# Params"] = [f"{value:,}" if pd.notna(value) else "" for value in table["# Params"]]
    for column in ("Train loss", "Val loss"):
        shown[column] = [f"{value:.{LOSS_DIGITS}f}" if pd.notna(value) else "" for value in table[column]]
    for column in ("Train acc", "Val acc", "Test acc"):
        shown[column] = [f"{value:.{ACC_DIGITS}f}" if pd.notna(value) else "" for value in table[column]]
    return shown.to_string(index=False)


def best_run(runs: Sequence[Run]) -> Run:
    """Return the run with the highest test accuracy, or validation accuracy where none has a test result.

    Raises:
        ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("no runs to choose from; train some experiments first (labkit run)")
    tested = [run for run in runs if "test_acc" in run.test]
    if tested:
        return max(tested, key=lambda run: run.test["test_acc"])
    return max(runs, key=lambda run: run.summary["val_acc"].max())


def run_title(run: Run) -> str:
    """Name a run with its learning rate and, when synthetic, its data, e.g. ``VGG_38 BN, lr 1e-2 (synthetic data)``."""
    lr = f", lr {run.lr:.0e}".replace("e-0", "e-") if run.lr is not None else ""
    data = " (synthetic data)" if run.synthetic else ""
    return f"{run.name}{lr}{data}"


def diagnosis_text(run: Run) -> str:
    """Diagnose a run (``labkit.diagnostics``) and return the report under the run's ``run_title``."""
    from labkit.diagnostics import diagnose_run

    diagnosis = diagnose_run(run)
    diagnosis.name = run_title(run)
    return diagnosis.text()


def attenuation_table(runs: dict[str, Run]) -> pd.DataFrame:
    """Tabulate each run's first- over last-layer mean |grad| at initialization and at the last epoch."""
    from labkit.diagnostics import attenuation

    rows = []
    for run in runs.values():
        last = int(run.grads["epoch"].max())
        rows.append({"model": run.label, "layers": run.grads["layer"].nunique(),
                     "first/last at init": f"{attenuation(run.grads, 0):.1e}",
                     f"first/last at epoch {last}": f"{attenuation(run.grads, last):.1e}",
                     "val acc (%)": f"{100 * run.summary['val_acc'].iloc[-1]:.{ACC_DIGITS}f}"})
    return pd.DataFrame(rows)


def write_table(table: pd.DataFrame, experiment: Experiment) -> None:
    """Write the results table as CSV, LaTeX and Markdown into the run folder and print the file names."""
    from labkit.report import write_table as write

    paths = write(table, experiment.run_dir / TABLE_STEM)
    print("saved " + ", ".join(str(path.relative_to(experiment.run_dir)) for path in paths))


# ExperimentConfig fields that the notebooks hand to the interactive panel as its starting point.
PANEL_FIELDS = ("num_blocks_per_stage", "bn", "residual", "lr", "epochs", "batch_size", "num_filters", "seed",
                "data", "data_dir", "synthetic_train_size", "synthetic_test_size")


def panel_settings(experiment: Experiment) -> dict[str, Any]:
    """Return the experiment's settings that the interactive panel starts from."""
    if experiment.config is None:
        raise ConfigError(f"{experiment.source}: {experiment.notebook} has no experiment settings for the panel")
    return {name: getattr(experiment.config, name) for name in PANEL_FIELDS}
