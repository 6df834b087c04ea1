"""The results table of a set of runs, as a DataFrame, CSV, LaTeX booktabs and Markdown.

Runs of the same experiment with different seeds can be pooled into one row
of mean and standard deviation (``seed_table``) and one curve with a band
(``seed_curves``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from labkit.runs import Run

TABLE_COLUMNS = ["Model", "LR", "# Params", "Train loss", "Train acc", "Val loss", "Val acc", "Test acc"]
METRIC_COLUMNS = ["Train loss", "Train acc", "Val loss", "Val acc", "Test acc"]
STD_SUFFIX = " std"


def results_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Tabulate each run's last-epoch train and validation metrics and its test accuracy.

    Accuracies are in percent. ``Model`` names the data source when it is
    synthetic, so a synthetic number never passes as a CIFAR-100 one.
    Missing values (a course folder records no learning rate) stay empty.
    """
    rows = []
    for run in runs:
        last = run.summary.iloc[-1]
        rows.append({
            "Model": run.label,
            "LR": run.lr,
            "# Params": run.num_parameters,
            "Train loss": last["train_loss"],
            "Train acc": 100 * last["train_acc"],
            "Val loss": last["val_loss"],
            "Val acc": 100 * last["val_acc"],
            "Test acc": 100 * run.test["test_acc"] if "test_acc" in run.test else None,
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["# Params"] = table["# Params"].astype("Int64")
    return table


def experiment_key(run: Run) -> str:
    """Identify the experiment a run repeats: its label and settings, without seed and execution settings.

    Course folders record no settings, so their name alone identifies them.
    """
    from labkit.trainer import RESUMABLE_CHANGES

    settings = {key: value for key, value in run.config.items() if key != "seed" and key not in RESUMABLE_CHANGES}
    return json.dumps([run.label, settings], sort_keys=True, default=str)


def group_seeds(runs: Sequence[Run]) -> list[list[Run]]:
    """Group runs of the same experiment, in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(experiment_key(run), []).append(run)
    return list(groups.values())


def seed_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Pool the runs of each experiment into one row: the mean of each metric and ``<metric> std``.

    The standard deviation is the sample one (ddof=1) and is empty for an
    experiment with one run; ``Seeds`` counts the runs pooled.
    """
    rows = []
    for group in group_seeds(runs):
        table = results_table(group)
        row = {"Model": table["Model"].iloc[0], "LR": table["LR"].iloc[0], "# Params": table["# Params"].iloc[0],
               "Seeds": len(group)}
        for column in METRIC_COLUMNS:
            row[column] = table[column].mean()
            row[column + STD_SUFFIX] = table[column].std(ddof=1)
        rows.append(row)
    columns = ["Model", "LR", "# Params", "Seeds", *METRIC_COLUMNS, *(c + STD_SUFFIX for c in METRIC_COLUMNS)]
    pooled = pd.DataFrame(rows, columns=columns)
    pooled["# Params"] = pooled["# Params"].astype("Int64")
    return pooled


def seed_curves(runs: Sequence[Run], metric: str = "val_acc") -> pd.DataFrame:
    """Return per experiment and epoch the mean, sample standard deviation and count of ``metric`` over seeds."""
    frames = []
    for group in group_seeds(runs):
        if metric not in group[0].summary.columns:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(group[0].summary.columns)}")
        values = pd.concat([run.summary[metric] for run in group], axis=1)
        frames.append(pd.DataFrame({"Model": group[0].label, "epoch": values.index, "mean": values.mean(axis=1).values,
                                    "std": values.std(axis=1, ddof=1).values, "seeds": values.count(axis=1).values}))
    return pd.concat(frames, ignore_index=True)


def _format_column(table: pd.DataFrame, column: str, digits: int, plus_minus: str) -> list[str]:
    spread = table.get(column + STD_SUFFIX)
    texts = []
    for index, value in enumerate(table[column]):
        text = f"{value:.{digits}f}" if pd.notna(value) else ""
        if spread is not None and pd.notna(spread.iloc[index]) and text:
            text += f" {plus_minus} {spread.iloc[index]:.{digits}f}"
        texts.append(text)
    return texts


def _formatted(table: pd.DataFrame, plus_minus: str = "±") -> pd.DataFrame:
    out = table[[column for column in table.columns if not column.endswith(STD_SUFFIX)]].copy()
    out["LR"] = [f"{value:.0e}" if pd.notna(value) else "" for value in table["LR"]]
    out["# Params"] = [f"{value:,}" if pd.notna(value) else "" for value in table["# Params"]]
    for column in ("Train loss", "Val loss"):
        out[column] = _format_column(table, column, 3, plus_minus)
    for column in ("Train acc", "Val acc", "Test acc"):
        out[column] = _format_column(table, column, 2, plus_minus)
    return out


def to_latex(table: pd.DataFrame, caption: str = "Results", label: str = "tab:results") -> str:
    """Return the table as a LaTeX booktabs ``table`` environment (needs ``\\usepackage{booktabs}``).

    A ``seed_table`` shows each metric as mean $\\pm$ standard deviation.
    """
    formatted = _formatted(table, plus_minus=r"$\pm$")
    formatted.columns = [column.replace("#", r"\#") for column in formatted.columns]
    formatted = formatted.map(lambda text: str(text).replace("_", r"\_").replace("%", r"\%"))
    return formatted.to_latex(index=False, escape=False, caption=caption, label=label,
                              column_format="l" + "r" * (len(formatted.columns) - 1), position="t")


def to_markdown(table: pd.DataFrame) -> str:
    """Return the table as a GitHub-flavoured Markdown table."""
    formatted = _formatted(table)
    return formatted.to_markdown(index=False, disable_numparse=True,
                                 colalign=["left"] + ["right"] * (len(formatted.columns) - 1))


def write_table(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.tex`` and ``<stem>.md``; return their paths."""
    from labkit.runfolder import write_text

    stem = Path(stem)
    paths = [stem.with_suffix(suffix) for suffix in (".csv", ".tex", ".md")]
    write_text(paths[0], table.to_csv(index=False))
    write_text(paths[1], to_latex(table))
    write_text(paths[2], to_markdown(table) + "\n")
    return paths
