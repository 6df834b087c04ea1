"""Figures behind a diagnosis: gradient heatmaps, activations, update ratios, skip vs branch and seed bands.

Every function applies ``labkit.plots.use_style`` and returns a figure sized
for one column of a two-column report. Side-by-side panels take the full
width. ``labkit.plots.save_figure`` writes a figure as PDF and PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from labkit.plots import COLUMN_WIDTH, FULL_WIDTH, data_note, save_figure, use_style
from labkit.runs import Run

HEATMAP_LABEL = "log10 mean |gradient|"
# Tick labels per axis at most, so that layer names stay readable at one-column width.
MAX_LAYER_TICKS = 14


def heatmap_data(grads: pd.DataFrame, value: str = "mean_abs_grad") -> pd.DataFrame:
    """Pivot gradient records into log10 values: layers (rows, forward order) by epochs (columns).

    A gradient of exactly zero has no logarithm and becomes NaN, drawn as a gap.
    """
    if grads.empty:
        raise ValueError("no gradient records to draw")
    layers = list(dict.fromkeys(grads["layer"]))
    table = grads.pivot(index="layer", columns="epoch", values=value).reindex(layers)
    with np.errstate(divide="ignore"):
        logged = np.log10(table.astype(float))
    return logged.replace(-np.inf, np.nan)


def _layer_ticks(count: int) -> int:
    return max(1, math.ceil(count / MAX_LAYER_TICKS))


def _draw_heatmap(data: pd.DataFrame, ax: plt.Axes, vmin: float, vmax: float, cbar: bool,
                  cbar_ax: plt.Axes | None = None, show_layers: bool = True, xlabel: bool = True) -> None:
    sns.heatmap(data, ax=ax, cmap="viridis", vmin=vmin, vmax=vmax, cbar=cbar, cbar_ax=cbar_ax,
                cbar_kws={"label": HEATMAP_LABEL}, xticklabels="auto",
                yticklabels=_layer_ticks(len(data)) if show_layers else False)
    ax.set_xlabel("epoch (0 = initialization)" if xlabel else "")
    ax.set_ylabel("layer (forward order)" if show_layers else "")
    ax.tick_params(axis="y", labelsize=6)
    ax.tick_params(axis="x", labelsize=7, rotation=0)


def _finite_range(frames: Sequence[pd.DataFrame]) -> tuple[float, float]:
    values = np.concatenate([frame.to_numpy(dtype=float).ravel() for frame in frames])
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("every gradient record is zero or missing, so there is no colour scale")
    return float(values.min()), float(values.max())


def plot_grad_heatmap(grads: pd.DataFrame, title: str = "Gradient flow", ax: plt.Axes | None = None,
                      vmin: float | None = None, vmax: float | None = None) -> plt.Figure:
    """Draw one run's log10 mean |gradient| per layer (rows) and epoch (columns)."""
    use_style()
    data = heatmap_data(grads)
    low, high = _finite_range([data])
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, max(2.4, 0.07 * len(data) + 1.0)), constrained_layout=True)
    fig = ax.figure
    _draw_heatmap(data, ax, low if vmin is None else vmin, high if vmax is None else vmax, cbar=True)
    ax.set_title(title)
    return fig


def _named_grads(runs: Sequence[Run] | Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    if isinstance(runs, Mapping):
        return dict(runs)
    missing = [run.label for run in runs if run.grads is None or run.grads.empty]
    if missing:
        raise ValueError(f"no gradient records for {', '.join(missing)}; course folders have none, "
                         "labkit run folders keep them in grads.csv")
    # Panel titles stay short; plot_grad_heatmaps notes synthetic data in the figure title.
    return {run.name: run.grads for run in runs}


def plot_grad_heatmaps(runs: Sequence[Run] | Mapping[str, pd.DataFrame], title: str = "Gradient flow") -> plt.Figure:
    """Draw several runs' gradient heatmaps side by side on one colour scale, e.g. plain, BN, RC and BN+RC.

    Args:
        runs: runs with gradient records, or a mapping of panel title to gradient records.
    """
    use_style()
    named = _named_grads(runs)
    if not named:
        raise ValueError("no runs to draw")
    data = {name: heatmap_data(grads) for name, grads in named.items()}
    vmin, vmax = _finite_range(list(data.values()))
    same_layers = len({tuple(frame.index) for frame in data.values()}) == 1
    rows = max(len(frame) for frame in data.values())
    fig = plt.figure(figsize=(FULL_WIDTH, max(2.4, 0.07 * rows + 1.2)), constrained_layout=True)
    grid = fig.add_gridspec(1, len(data) + 1, width_ratios=[1] * len(data) + [0.06])
    cbar_ax = fig.add_subplot(grid[0, -1])
    for index, (name, frame) in enumerate(data.items()):
        ax = fig.add_subplot(grid[0, index])
        last = index == len(data) - 1
        _draw_heatmap(frame, ax, vmin, vmax, cbar=last, cbar_ax=cbar_ax if last else None,
                      show_layers=index == 0 or not same_layers, xlabel=False)
        ax.set_title(name, fontsize=8)
    fig.supxlabel("epoch (0 = initialization)", fontsize=9)
    note = "" if isinstance(runs, Mapping) else data_note(runs)
    fig.suptitle(f"{title}{note}", fontsize=10)
    return fig


# Activation panels: column, axis label, y scale. Spreads span many decades in a plain deep network.
_ACTIVATION_PANELS = [
    ("mean", "mean", "linear"),
    ("std", "standard deviation", "log"),
    ("batch_std", "std across images", "log"),
    ("frac_negative", "fraction negative", "linear"),
]


def _select_epochs(records: pd.DataFrame, epochs: Sequence[int] | None, what: str) -> list[int]:
    """Return the requested epochs, by default the first and last recorded; reject unrecorded ones."""
    recorded = sorted(int(epoch) for epoch in records["epoch"].unique())
    if not recorded:
        raise ValueError(f"no {what} records to draw")
    if epochs is None:
        return sorted({recorded[0], recorded[-1]})
    missing = [epoch for epoch in epochs if epoch not in recorded]
    if missing:
        raise ValueError(f"no {what} records for epochs {missing}; recorded epochs are {recorded}")
    return list(epochs)


def _epoch_label(epoch: int) -> str:
    return "initialization" if epoch == 0 else f"epoch {epoch}"


def _activation_figure(lines: list[tuple[str, pd.DataFrame]], title: str) -> plt.Figure:
    use_style()
    fig, axes = plt.subplots(2, 2, figsize=(COLUMN_WIDTH, 3.6), sharex=True, constrained_layout=True)
    colors = sns.color_palette("viridis" if len(lines) > 4 else "colorblind", len(lines))
    for (column, label, scale), ax in zip(_ACTIVATION_PANELS, axes.flat):
        for (name, rows), color in zip(lines, colors):
            ax.plot(rows["depth"], rows[column], marker="o", ms=2, lw=1.0, color=color, label=name)
        ax.set(ylabel=label, yscale=scale)
    fig.supxlabel("depth (activation layer, forward order)", fontsize=9)
    axes[0, 0].legend(loc="best", fontsize=6)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_activation_stats(activations: pd.DataFrame, epochs: Sequence[int] | None = None,
                          title: str = "Activations") -> plt.Figure:
    """Draw one run's activation mean, spreads and fraction negative against depth, one line per epoch."""
    chosen = _select_epochs(activations, epochs, "activation")
    lines = [(_epoch_label(epoch), activations[activations["epoch"] == epoch].sort_values("depth")) for epoch in chosen]
    return _activation_figure(lines, title)


def compare_activation_stats(runs: Mapping[str, pd.DataFrame], epoch: int = 0,
                             title: str | None = None) -> plt.Figure:
    """Draw several runs' activation statistics at one epoch, one line per run (plain against BN, say)."""
    lines = []
    for name, activations in runs.items():
        _select_epochs(activations, [epoch], f"{name} activation")
        lines.append((name, activations[activations["epoch"] == epoch].sort_values("depth")))
    return _activation_figure(lines, title or f"Activations at {_epoch_label(epoch)}")


def _layer_axis(ax: plt.Axes, names: list[str], xlabel: str) -> None:
    step = _layer_ticks(len(names))
    positions = list(range(len(names)))
    ax.set_xticks(positions[::step], names[::step], rotation=90, fontsize=6)
    ax.set_xlabel(xlabel)


def plot_update_ratios(updates: pd.DataFrame, epochs: Sequence[int] | None = None, title: str = "Update-to-weight ratio",
                       ax: plt.Axes | None = None) -> plt.Figure:
    """Draw each layer's |weight update| / |weight| per Adam step, one line per epoch; a layer near 0 does not learn."""
    use_style()
    chosen = _select_epochs(updates, epochs, "update")
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6), constrained_layout=True)
    layers = list(dict.fromkeys(updates["layer"]))
    colors = sns.color_palette("viridis", len(chosen))
    for epoch, color in zip(chosen, colors):
        rows = updates[updates["epoch"] == epoch].set_index("layer").reindex(layers)
        ax.plot(range(len(layers)), rows["update_ratio"], marker="o", ms=2, lw=1.0, color=color, label=_epoch_label(epoch))
    _layer_axis(ax, layers, "layer (forward order)")
    ax.set(ylabel="|update| / |weight|", yscale="log", title=title)
    ax.legend(loc="best", fontsize=6)
    return ax.figure


def plot_skip_vs_branch(skip: pd.DataFrame, epochs: Sequence[int] | None = None,
                        title: str = "Gradient through skip and branch", ax: plt.Axes | None = None) -> plt.Figure:
    """Draw the gradient norm reaching each residual block through its skip path (dashed) and its branch (solid)."""
    use_style()
    chosen = _select_epochs(skip, epochs, "skip")
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6), constrained_layout=True)
    blocks = list(dict.fromkeys(skip["block"]))
    colors = sns.color_palette("colorblind", len(chosen))
    for epoch, color in zip(chosen, colors):
        rows = skip[skip["epoch"] == epoch].set_index("block").reindex(blocks)
        ax.plot(range(len(blocks)), rows["branch_grad_norm"], "-o", ms=2, lw=1.0, color=color,
                label=f"branch, {_epoch_label(epoch)}")
        ax.plot(range(len(blocks)), rows["skip_grad_norm"], "--s", ms=2, lw=1.0, color=color,
                label=f"skip, {_epoch_label(epoch)}")
    _layer_axis(ax, blocks, "residual block (forward order)")
    ax.set(ylabel="gradient L2 norm", yscale="log", title=title)
    ax.legend(loc="best", fontsize=6)
    return ax.figure


def plot_seed_band(runs: Sequence[Run], metric: str = "val_acc", title: str | None = None,
                   ax: plt.Axes | None = None) -> plt.Figure:
    """Draw each experiment's mean ``metric`` over seeds per epoch, with a band of one standard deviation."""
    from labkit.report import seed_curves

    use_style()
    curves = seed_curves(runs, metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4), constrained_layout=True)
    scale = 100 if metric.endswith("_acc") else 1
    models = list(dict.fromkeys(curves["Model"]))
    for model, color in zip(models, sns.color_palette("colorblind", len(models))):
        rows = curves[curves["Model"] == model]
        seeds = int(rows["seeds"].max())
        ax.plot(rows["epoch"], scale * rows["mean"], color=color, lw=1.2, label=f"{model} ({seeds} seeds)")
        spread = rows["std"].fillna(0)
        ax.fill_between(rows["epoch"], scale * (rows["mean"] - spread), scale * (rows["mean"] + spread),
                        color=color, alpha=0.25, lw=0)
    unit = " (%)" if scale == 100 else ""
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " ") + unit,
           title=title or f"{metric.replace('_', ' ')}: mean ± std over seeds{data_note(runs)}")
    ax.legend(loc="best", fontsize=6)
    return ax.figure


def write_run_figures(run: Run, stem: str | Path) -> list[Path]:
    """Save every figure that a run's records allow as ``<stem>-<figure>.pdf`` and ``.png``; return the files."""
    from labkit.diagnostics import load_records

    records = load_records(run)
    written = []
    figures = []
    if run.grads is not None and not run.grads.empty:
        figures.append(("grad-heatmap", plot_grad_heatmap(run.grads, title=f"Gradient flow: {run.label}")))
    if "activations" in records:
        figures.append(("activations", plot_activation_stats(records["activations"], title=f"Activations: {run.label}")))
    if "updates" in records:
        figures.append(("updates", plot_update_ratios(records["updates"], title=f"Updates: {run.label}")))
    if "skip" in records:
        figures.append(("skip", plot_skip_vs_branch(records["skip"], title=f"Skip vs branch: {run.label}")))
    for name, fig in figures:
        written.extend(save_figure(fig, f"{stem}-{name}"))
        plt.close(fig)
    return written
