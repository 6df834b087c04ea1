"""The results table of a set of runs, as a DataFrame, CSV, LaTeX booktabs and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from labkit.runs import Run

TABLE_COLUMNS = ["Model", "LR", "# Params", "Train loss", "Train acc", "Val loss", "Val acc", "Test acc"]


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


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["LR"] = [f"{value:.0e}" if pd.notna(value) else "" for value in table["LR"]]
    out["# Params"] = [f"{value:,}" if pd.notna(value) else "" for value in table["# Params"]]
    for column in ("Train loss", "Val loss"):
        out[column] = [f"{value:.3f}" if pd.notna(value) else "" for value in table[column]]
    for column in ("Train acc", "Val acc", "Test acc"):
        out[column] = [f"{value:.2f}" if pd.notna(value) else "" for value in table[column]]
    return out


def to_latex(table: pd.DataFrame, caption: str = "Results", label: str = "tab:results") -> str:
    """Return the table as a LaTeX booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    formatted = _formatted(table)
    formatted.columns = [column.replace("#", r"\#") for column in formatted.columns]
    formatted = formatted.map(lambda text: str(text).replace("_", r"\_").replace("%", r"\%"))
    return formatted.to_latex(index=False, escape=False, caption=caption, label=label,
                              column_format="l" + "r" * (len(formatted.columns) - 1), position="t")


def to_markdown(table: pd.DataFrame) -> str:
    """Return the table as a GitHub-flavoured Markdown table."""
    return _formatted(table).to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * (len(table.columns) - 1))


def write_table(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.tex`` and ``<stem>.md``; return their paths."""
    from labkit.runfolder import write_text

    stem = Path(stem)
    paths = [stem.with_suffix(suffix) for suffix in (".csv", ".tex", ".md")]
    write_text(paths[0], table.to_csv(index=False))
    write_text(paths[1], to_latex(table))
    write_text(paths[2], to_markdown(table) + "\n")
    return paths
