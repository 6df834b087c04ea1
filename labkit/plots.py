"""Figures for reports: training curves and gradient flow, saved as vector PDF and PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.runs import Run

# One column of a two-column LaTeX article is about 3.4 inches wide.
COLUMN_WIDTH = 3.4
FULL_WIDTH = 7.0


def use_style() -> None:
    """Apply labkit's report style: seaborn's paper context with readable fonts."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.0)
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "pdf.fonttype": 42, "axes.titlesize": 9,
                                "legend.fontsize": 7, "savefig.bbox": "tight"})


def save_figure(fig: plt.Figure, path: str | Path) -> list[Path]:
    """Save ``fig`` as ``<path>.pdf`` (vector, for LaTeX) and ``<path>.png``; return both paths."""
    stem = Path(path).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".pdf", ".png"):
        target = stem.with_suffix(suffix)
        fig.savefig(target, metadata={"CreationDate": None} if suffix == ".pdf" else None)
        written.append(target)
    return written


def data_note(runs: Iterable[Run]) -> str:
    """Return `` (synthetic data)`` when any run used the synthetic stand-in, for titles."""
    return " (synthetic data)" if any(run.synthetic for run in runs) else ""


def plot_curves(runs: Sequence[Run], title: str | None = None, reference: Sequence[Run] = ()) -> plt.Figure:
    """Plot loss and accuracy per epoch, train dashed and validation solid, one colour per run.

    ``reference`` runs (the course's published results) are drawn in grey.
    """
    use_style()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(FULL_WIDTH, 2.6), constrained_layout=True)
    palette = sns.color_palette("colorblind", max(len(runs), 1))
    grey = sns.color_palette("Greys", max(len(reference), 1) + 2)[2:]
    for colors, group, prefix in ((palette, runs, ""), (grey, reference, "course: ")):
        for color, run in zip(colors, group):
            epochs = run.summary.index
            for split, style in (("train", "--"), ("val", "-")):
                label = f"{prefix}{run.label} {split}"
                ax_loss.plot(epochs, run.summary[f"{split}_loss"], style, color=color, label=label, lw=1.2)
                ax_acc.plot(epochs, 100 * run.summary[f"{split}_acc"], style, color=color, label=label, lw=1.2)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.legend(loc="best", frameon=True)
    names = ", ".join(run.name for run in runs)
    fig.suptitle(title or f"Training curves: {names}{data_note(runs)}", fontsize=10)
    return fig


def plot_grad_flow(
    grads: pd.DataFrame,
    epochs: Sequence[int] | None = None,
    title: str = "Gradient flow",
    log: bool = True,
    value: str = "mean_abs_grad",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """Plot a per-layer gradient statistic in forward order, one line per epoch.

    Args:
        grads: tidy records with columns epoch, layer and ``value``.
        epochs: epochs to draw; default the first, middle and last recorded.
        log: logarithmic y axis, which shows vanishing gradients over many decades.
    """
    use_style()
    recorded = sorted(grads["epoch"].unique())
    if epochs is None:
        epochs = sorted({recorded[0], recorded[len(recorded) // 2], recorded[-1]}) if recorded else []
    missing = [epoch for epoch in epochs if epoch not in recorded]
    if missing:
        raise ValueError(f"no gradient records for epochs {missing}; recorded epochs are {recorded}")
    if ax is None:
        width = max(FULL_WIDTH, 0.16 * grads["layer"].nunique())
        fig, ax = plt.subplots(figsize=(width, 3.2), constrained_layout=True)
    else:
        fig = ax.figure
    layers = list(dict.fromkeys(grads["layer"]))
    colors = sns.color_palette("viridis", len(epochs))
    for color, epoch in zip(colors, epochs):
        rows = grads[grads["epoch"] == epoch].set_index("layer").reindex(layers)
        label = "initialization" if epoch == 0 else f"epoch {epoch}"
        ax.plot(range(len(layers)), rows[value], marker="o", ms=2.5, lw=1.2, color=color, label=label)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    ax.set(xlabel="layer (forward order)", ylabel="mean |gradient|" if value == "mean_abs_grad" else "gradient L2 norm",
           title=title, yscale="log" if log else "linear")
    ax.legend(loc="best")
    return fig
