"""An ipywidgets panel that switches BN, RC and depth, trains, and shows loss and gradient flow live.

``show_panel`` displays the panel in a notebook. Without an interactive
frontend (papermill, nbval, a plain Python process) it prints a static
description of the settings and the architecture instead and returns at
once, so a notebook executed headless never waits for a click.

Training runs ``labkit.trainer.fit`` in a background thread of the kernel,
so the Stop button stays responsive; ``fit`` polls the Stop flag before
every batch.
"""

from __future__ import annotations

import html
import io
import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets
import matplotlib
import torch
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tabulate import tabulate

from labkit import runfolder
from labkit.config import ConfigError, ExperimentConfig
from labkit.data import DataError, ImageArrays, course_split, load_cifar100, load_synthetic, normalize
from labkit.hooks import gradients_at
from labkit.networks import build_network, count_parameters, network_depth
from labkit.params import COMPARE_NOTEBOOK, NOTEBOOKS, load_experiment, project_dir
from labkit.trainer import RunResult, TrainingDiverged, fit

logger = logging.getLogger(__name__)

MODE_ENV = "LABKIT_PANEL"  # "interactive" or "static" overrides the frontend detection
MAX_BLOCKS_PER_STAGE = 8
LR_EXPONENTS = (-6.0, 0.0)  # the learning-rate slider spans 1e-6 to 1
MAX_EPOCHS = 1000
DATA_CHOICES = [("CIFAR-100", "cifar100"), ("synthetic (offline)", "synthetic")]
# Panel control and the ExperimentConfig field it sets.
CONTROL_FIELDS = [("BN", "bn"), ("RC", "residual"), ("blocks per stage", "num_blocks_per_stage"),
                  ("learning rate", "lr"), ("epochs", "epochs"), ("data", "data")]
# The training thread updates the progress bar at most this often (seconds), so
# that fast runs on a GPU do not flood the frontend with widget messages.
PROGRESS_INTERVAL = 0.25
# Notebooks that train an experiment of their own; a saved params file names one of them.
TRAINING_NOTEBOOKS = [name for name in NOTEBOOKS if name != COMPARE_NOTEBOOK]
# Seaborn's "colorblind" palette, the one labkit.plots uses.
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"]


def interactive_frontend() -> bool:
    """Tell whether this code runs in a Jupyter kernel whose frontend can show widgets.

    JupyterLab (3 and later) and Notebook 7 send the executing cell's id as
    ``cellId`` in the metadata of every execute request. nbclient (used by
    papermill and ``jupyter nbconvert --execute``) and nbval send none.
    ``LABKIT_PANEL=interactive`` or ``LABKIT_PANEL=static`` overrides the detection.
    """
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("interactive", "static"):
        return forced == "interactive"
    if forced:
        logger.warning("ignoring %s=%r: expected 'interactive' or 'static'", MODE_ENV, forced)
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    request = kernel.get_parent("shell") or {}
    # NOTE: a frontend that sends no cellId gets the static description; LABKIT_PANEL=interactive forces the panel.
    return bool(request.get("metadata", {}).get("cellId"))


def check_panel_ranges(config: ExperimentConfig, source: str = "panel") -> None:
    """Raise ConfigError when a setting with a control lies outside that control's range."""
    low, high = (10 ** exponent for exponent in LR_EXPONENTS)
    if config.num_blocks_per_stage > MAX_BLOCKS_PER_STAGE:
        raise ConfigError(f"{source}: num_blocks_per_stage must be 0..{MAX_BLOCKS_PER_STAGE} for the panel's "
                          f"depth slider, got {config.num_blocks_per_stage}; use labkit train for deeper networks")
    if not low <= config.lr <= high:
        raise ConfigError(f"{source}: lr must lie in {low:g}..{high:g} for the panel's slider, got {config.lr:g}")
    if config.epochs > MAX_EPOCHS:
        raise ConfigError(f"{source}: epochs must be at most {MAX_EPOCHS} in the panel, got {config.epochs}")


def architecture_rows(config: ExperimentConfig) -> list[dict[str, Any]]:
    """Describe the network of ``config`` part by part: contents, weight layers, output shape, parameters."""
    # The meta device allocates no memory and draws no random numbers.
    with torch.device("meta"):
        model = build_network(config.num_blocks_per_stage, config.num_stages, config.num_filters,
                              config.num_classes, bn=config.bn, residual=config.residual)
    rows = []
    side = 32  # CIFAR images are 32 x 32; every stage's reduction block halves the side.
    for name, part in model.features.named_children():
        if name != "entry":
            side //= 2
        rows.append({"part": name, "contents": _part_contents(name, config), "weight layers": _weight_layers(part),
                     "output": f"{config.num_filters} x {side} x {side}", "parameters": count_parameters(part)})
    rows.append({"part": "classifier", "contents": "global average pool, linear", "weight layers": 1,
                 "output": str(config.num_classes), "parameters": count_parameters(model.classifier)})
    return rows


def _weight_layers(module: torch.nn.Module) -> int:
    return sum(isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)) for child in module.modules())


def _part_contents(name: str, config: ExperimentConfig) -> str:
    norm = ", BN" if config.bn else ""
    if name == "entry":
        return "3x3 conv, BN, leaky ReLU"
    blocks = config.num_blocks_per_stage
    shortcut = ", identity shortcut" if config.residual else ""
    processing = f"{blocks} x (2 conv{norm}{shortcut}), " if blocks else ""
    return f"{processing}reduction (2 conv{norm}, 2x2 avg pool)"


def architecture_summary(config: ExperimentConfig) -> str:
    """Return one line such as ``VGG_38 BN: 38 weight layers, 1,234 parameters``."""
    total = sum(row["parameters"] for row in architecture_rows(config))
    depth = network_depth(config.num_blocks_per_stage, config.num_stages)
    return f"{config.label}: {depth} weight layers, {total:,} parameters"


def describe(config: ExperimentConfig, notebook: str = "") -> str:
    """Describe the panel's settings and architecture as plain text, for runs without a frontend."""
    lines = ["labkit panel: static description (no interactive frontend, e.g. papermill or nbval)", "",
             "Settings (panel control: ExperimentConfig field = value):"]
    for control, name in CONTROL_FIELDS:
        lines.append(f"  {control}: {name} = {getattr(config, name)!r}")
    if config.data == "synthetic":
        lines.append("  The data is labkit's synthetic stand-in, not CIFAR-100.")
    controlled = {name for _, name in CONTROL_FIELDS}
    others = {key: value for key, value in config.to_dict().items() if key not in controlled}
    lines.append("Other settings: " + ", ".join(f"{key}={value!r}" for key, value in others.items()))
    if notebook:
        lines.append(f"Notebook for labkit run: {notebook}")
    rows = [{**row, "parameters": f"{row['parameters']:,}"} for row in architecture_rows(config)]
    lines += ["", f"Architecture: {architecture_summary(config)}",
              tabulate(rows, headers="keys", tablefmt="simple", colalign=("left", "left", "right", "left", "right"))]
    return "\n".join(lines)


def architecture_html(config: ExperimentConfig) -> str:
    """Render the architecture summary and its table as HTML for the panel."""
    rows = [{**row, "parameters": f"{row['parameters']:,}"} for row in architecture_rows(config)]
    table = tabulate(rows, headers="keys", tablefmt="html")
    return f"<b>{html.escape(architecture_summary(config))}</b>{table}"


def init_gradients(config: ExperimentConfig, arrays: ImageArrays) -> list[dict]:
    """Measure per-layer gradients at initialization on the first training batch, on the CPU.

    The model is seeded and the batch is chosen as in ``fit``, so on a CPU the
    rows equal the epoch-0 gradient records of a run with these settings.
    The global random state is left as it was.
    """
    train_index, _ = course_split(len(arrays.train_images))
    index = train_index[:config.batch_size]
    images = torch.from_numpy(arrays.train_images[index]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(arrays.train_labels[index])
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(config.seed)
        model = build_network(config.num_blocks_per_stage, config.num_stages, config.num_filters,
                              config.num_classes, bn=config.bn, residual=config.residual)
    return gradients_at(model, normalize(images), labels, epoch=0)


@dataclass
class PanelRun:
    """One training run started from the panel, with what it has recorded so far."""

    number: int
    config: ExperimentConfig
    history: list[dict] = field(default_factory=list)  # one row per finished epoch, as fit records it
    grads: list[dict] = field(default_factory=list)  # tidy gradient rows, epoch 0 = initialization
    status: str = "running"  # running, finished, stopped, diverged, failed
    error: str = ""
    result: RunResult | None = None
    run_dir: Path | None = None

    @property
    def label(self) -> str:
        """Legend label naming the settings, e.g. ``#2 VGG_08 BN, lr 0.001, synthetic data``."""
        data = ", synthetic data" if self.config.data == "synthetic" else ""
        return f"#{self.number} {self.config.label}, lr {self.config.lr:g}{data}"


class _Worker:
    """A daemon thread that runs submitted jobs one at a time, in order.

    A daemon thread does not hold up a kernel shutdown while a run trains.
    Running every job in one thread also keeps torch's global random state
    and matplotlib's rc settings away from concurrent use by the panel itself.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def close(self, timeout: float | None = None) -> None:
        """End the thread after the jobs already queued, waiting up to ``timeout`` seconds for it."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:  # re-raised by Future.result in the waiting thread
                future.set_exception(error)


def curves_figure(runs: list[PanelRun]) -> tuple[Figure, list[dict]]:
    """Draw loss and accuracy per epoch of every run, train dashed and validation solid.

    Returns:
        The figure and one record per drawn line: gid, run, label, split, metric, epochs, values.
    """
    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    lines: list[dict] = []
    drawn = [run for run in runs if run.history]
    for run in drawn:
        color = PALETTE[(run.number - 1) % len(PALETTE)]
        epochs = [row["epoch"] for row in run.history]
        for split, style in (("train", "--"), ("val", "-")):
            for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
                values = [scale * row[f"{split}_{metric}"] for row in run.history]
                gid = f"lk-curve-{run.number}-{split}-{metric}"
                ax.plot(epochs, values, style, color=color, marker="o", markersize=3, gid=gid,
                        label=run.label if split == "val" else None)
                lines.append({"gid": gid, "run": run.number, "label": run.label, "split": split, "metric": metric,
                              "epochs": epochs, "values": values})
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss (dashed: train, solid: validation)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if drawn:
        ax_acc.legend(fontsize=7, loc="best")
    else:
        ax_loss.text(0.5, 0.5, "no runs yet: press Train", ha="center", va="center", transform=ax_loss.transAxes)
    return fig, lines


def grad_flow_figure(init_grads: list[dict], init_label: str, runs: list[PanelRun]) -> tuple[Figure, list[dict]]:
    """Draw per-layer mean |gradient| on a log scale: the current settings at initialization, and each run's latest epoch.

    Returns:
        The figure and one record per drawn line: gid, label, epoch, layers, values.
    """
    curves = []
    if init_grads:
        curves.append(("lk-grad-init", f"{init_label} at initialization (current settings)", init_grads, "black", "--"))
    for run in runs:
        if run.grads:
            epoch = run.grads[-1]["epoch"]
            when = "initialization" if epoch == 0 else f"epoch {epoch}"
            rows = [row for row in run.grads if row["epoch"] == epoch]
            curves.append((f"lk-grad-{run.number}", f"{run.label}, {when}", rows,
                           PALETTE[(run.number - 1) % len(PALETTE)], "-"))

    fig = Figure(figsize=(9.0, 3.2), layout="constrained")
    ax = fig.subplots()
    lines: list[dict] = []
    for gid, label, rows, color, style in curves:
        values = [row["mean_abs_grad"] for row in rows]
        ax.plot(range(len(values)), values, style, color=color, marker="o", markersize=2.5, gid=gid, label=label)
        lines.append({"gid": gid, "label": label, "epoch": rows[0]["epoch"], "layers": [row["layer"] for row in rows],
                      "values": values})
    _label_layers(ax, [line["layers"] for line in lines])
    ax.set(ylabel="mean |gradient|", title="Gradient flow (log scale)")
    ax.grid(alpha=0.3)
    if lines:
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no gradients yet", ha="center", va="center", transform=ax.transAxes)
    return fig, lines


def _label_layers(ax: Axes, layer_lists: list[list[str]]) -> None:
    # Layer names fit the axis only when every curve has the same layers; networks of
    # different depth share the axis by layer index instead.
    if layer_lists and all(layers == layer_lists[0] for layers in layer_lists):
        ax.set_xticks(range(len(layer_lists[0])), layer_lists[0], rotation=90, fontsize=6)
        ax.set_xlabel("layer (forward order)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer index in forward order (0 = entry convolution)")


def figure_svg(fig: Figure) -> str:
    """Render ``fig`` as an inline SVG element, with text kept as text."""
    buffer = io.StringIO()
    # Text as text (not paths) keeps legends readable and searchable in the page. The fixed
    # salt makes the ids of clip paths and markers repeatable from one update to the next.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "labkit"}):
        fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def notebook_name(notebook: str | Path) -> str:
    """Return the params-file name of a notebook path, e.g. ``notebooks/02_normalize.ipynb`` -> ``02_normalize``.

    Raises:
        ConfigError: the notebook trains no experiment of its own.
    """
    name = Path(notebook).name.removesuffix(".ipynb")
    if name not in TRAINING_NOTEBOOKS:
        raise ConfigError(f"notebook {str(notebook)!r}: a params file can name only {', '.join(TRAINING_NOTEBOOKS)}")
    return name


def default_params_dir() -> Path:
    """Return ``params/`` of the working folder or of its parent (the project when a kernel runs in ``notebooks/``)."""
    for folder in (Path("params"), Path("..") / "params"):
        if folder.is_dir():
            return folder
    return Path(".")


def params_stem(config: ExperimentConfig) -> str:
    """Name a params file after its settings, e.g. ``panel_vgg38_bn_lr1e-3``, in the style of the lab's files."""
    depth = network_depth(config.num_blocks_per_stage, config.num_stages)
    tags = "".join(tag for tag, on in (("_bn", config.bn), ("_rc", config.residual)) if on)
    mantissa, exponent = f"{config.lr:.0e}".split("e")
    data = "_synthetic" if config.data == "synthetic" else ""
    return f"panel_vgg{depth:02d}{tags}_lr{mantissa}e{int(exponent)}{data}"


def params_values(config: ExperimentConfig, notebook: str, target: Path) -> dict[str, Any]:
    """Return the mapping a params file at ``target`` holds: ``notebook``, then every ExperimentConfig field.

    ``data_dir`` is written relative to the project folder when it lies inside it,
    because ``labkit run`` reads relative paths against that folder.
    """
    values: dict[str, Any] = {"notebook": notebook_name(notebook), **config.to_dict()}
    data_dir = Path(config.data_dir).expanduser()
    project = project_dir(target)
    if data_dir.is_absolute() and data_dir.resolve().is_relative_to(project):
        values["data_dir"] = data_dir.resolve().relative_to(project).as_posix()
    return values


class Panel:
    """Controls, live plots and run history of the interactive training panel.

    Every control sets one ExperimentConfig field (see ``CONTROL_FIELDS``);
    the other fields come from ``config`` unchanged. ``widget`` is the
    ipywidgets box to display.

    Args:
        config: settings the controls start from.
        notebook: the notebook that ``labkit run`` executes with a saved params file (a path or a name);
            empty selects the first notebook that trains an experiment.
        params_path: where Save params writes; empty picks ``<params folder>/<params_stem>.yaml`` at saving time.
        run_root: folder that receives one run folder per training run; None keeps runs in memory.

    Raises:
        ConfigError: a setting lies outside its control's range, or ``notebook`` trains no experiment.
    """

    def __init__(self, config: ExperimentConfig | None = None, notebook: str = "",
                 params_path: str = "", run_root: str | Path | None = None) -> None:
        self.base_config = config or ExperimentConfig()
        check_panel_ranges(self.base_config)
        notebook = notebook_name(notebook) if notebook else TRAINING_NOTEBOOKS[0]
        self.run_root = Path(run_root) if run_root is not None else None
        self.runs: list[PanelRun] = []
        self.init_grads: list[dict] = []
        self.init_label = ""
        self.plot_data: dict[str, list[dict]] = {"curves": [], "grad_flow": []}
        self._run_count = 0
        self._running = False
        self._stop_event = threading.Event()
        self._steps = 0
        self._last_progress = 0.0
        self._arrays: dict[tuple, ImageArrays] = {}
        self._init_key: tuple | None = None
        self._pending: list[Future] = []
        self._worker = _Worker("labkit-panel")

        self._build_controls(self.base_config, notebook, params_path)
        self._build_outputs()
        self.widget = self._layout()
        self._connect()
        self._on_settings_change()

    def _build_controls(self, config: ExperimentConfig, notebook: str, params_path: str) -> None:
        self.bn = widgets.ToggleButton(value=config.bn, description="BN", tooltip="BatchNorm after every convolution (bn)")
        self.residual = widgets.ToggleButton(value=config.residual, description="RC",
                                             tooltip="identity shortcut around each processing block (residual)")
        self.depth = widgets.IntSlider(value=config.num_blocks_per_stage, min=0, max=MAX_BLOCKS_PER_STAGE,
                                       description="blocks per stage", continuous_update=False,
                                       style={"description_width": "initial"})
        self.depth_label = widgets.Label()
        self.lr = widgets.FloatLogSlider(value=config.lr, base=10, min=LR_EXPONENTS[0], max=LR_EXPONENTS[1], step=0.1,
                                         description="lr", readout_format=".1e", continuous_update=False)
        self.epochs = widgets.BoundedIntText(value=config.epochs, min=1, max=MAX_EPOCHS, description="epochs")
        self.data = widgets.Dropdown(options=DATA_CHOICES, value=config.data, description="data")
        self.train_button = widgets.Button(description="Train", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.clear_button = widgets.Button(description="Clear runs", icon="trash")
        self.notebook = widgets.Dropdown(options=TRAINING_NOTEBOOKS, value=notebook, description="notebook",
                                         tooltip="the notebook that labkit run executes with the saved params file")
        self.params_path = widgets.Text(value=params_path, description="params file",
                                        placeholder=f"{default_params_dir() / 'panel_<settings>.yaml'}")
        self.save_button = widgets.Button(description="Save params", icon="save")
        self.settings_controls = [self.bn, self.residual, self.depth, self.lr, self.epochs, self.data, self.clear_button]
        for name in ("bn", "residual", "depth", "lr", "epochs", "data", "train_button", "stop_button", "clear_button",
                     "notebook", "params_path", "save_button", "depth_label"):
            getattr(self, name).add_class(f"lk-{name.replace('_', '-')}")

    def _build_outputs(self) -> None:
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.epoch_label = widgets.Label("no run yet")
        self.status = widgets.HTML()
        self.architecture = widgets.HTML()
        self.curves = widgets.HTML()
        self.grad_flow = widgets.HTML()
        for name in ("progress", "epoch_label", "status", "architecture", "curves", "grad_flow"):
            getattr(self, name).add_class(f"lk-{name.replace('_', '-')}")

    def _layout(self) -> widgets.VBox:
        box = widgets.VBox([
            widgets.HBox([self.bn, self.residual, self.depth, self.depth_label]),
            widgets.HBox([self.lr, self.epochs, self.data]),
            widgets.HBox([self.train_button, self.stop_button, self.clear_button, self.progress, self.epoch_label]),
            self.status,
            self.curves,
            self.grad_flow,
            self.architecture,
            widgets.HBox([self.notebook, self.params_path, self.save_button]),
        ])
        box.add_class("lk-panel")
        return box

    def _connect(self) -> None:
        for control in (self.bn, self.residual, self.depth, self.lr, self.epochs, self.data):
            control.observe(self._on_settings_change, names="value")
        self.train_button.on_click(lambda _: self._report_errors(self.train))
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self._report_errors(self.clear))
        self.save_button.on_click(lambda _: self._report_errors(self._save_clicked))

    def __repr__(self) -> str:
        return f"<labkit Panel: {self.settings().label}, {len(self.runs)} runs>"

    def settings(self) -> ExperimentConfig:
        """Return the base config with the controls' values applied and validated."""
        return self.base_config.replace(bn=self.bn.value, residual=self.residual.value,
                                        num_blocks_per_stage=self.depth.value, lr=float(self.lr.value),
                                        epochs=int(self.epochs.value), data=self.data.value)

    def _report_errors(self, action: Callable[[], Any]) -> None:
        # Button callbacks have no caller to raise to; show the error in the panel instead.
        try:
            action()
        except (ConfigError, OSError, RuntimeError) as error:
            logger.warning("panel: %s", error)
            self._set_status(f"Error: {error}", error=True)

    def _set_status(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "inherit"
        self.status.value = f'<span style="color:{color}">{html.escape(text)}</span>'

    def _submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job`` on the background thread; its errors show in the panel and reach ``wait``."""
        def run_and_report() -> Any:
            try:
                return job()
            except Exception as error:
                logger.exception("panel job %s failed", getattr(job, "__name__", job))
                self._set_status(f"Error: {type(error).__name__}: {error}", error=True)
                raise

        self._pending = [future for future in self._pending if not future.done()]
        future = self._worker.submit(run_and_report)
        self._pending.append(future)
        return future

    def wait(self, timeout: float | None = None) -> None:
        """Block until every job submitted so far has finished, re-raising a job's error.

        Raises:
            TimeoutError: a job ran longer than ``timeout`` seconds.
        """
        for future in list(self._pending):
            future.result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop a running run, end the background thread (waiting up to ``timeout`` seconds) and close the widgets."""
        self._stop_event.set()
        self._worker.close(timeout)
        for widget in _descendants(self.widget):
            widget.close()

    def _on_settings_change(self, change: dict | None = None) -> None:
        config = self.settings()
        self.depth_label.value = f"{network_depth(config.num_blocks_per_stage, config.num_stages)} layers"
        self.architecture.value = architecture_html(config)
        self._submit(self._refresh_init_view)

    def _refresh_init_view(self) -> None:
        """Recompute the gradient flow at initialization for the current settings and redraw."""
        # Read the controls now, not when the job was queued, so a burst of changes costs one update.
        config = self.settings()
        key = (config.bn, config.residual, config.num_blocks_per_stage, config.num_stages, config.num_filters,
               config.num_classes, config.batch_size, config.seed, *_data_key(config))
        if key == self._init_key:
            return
        try:
            arrays = self._load(config, download=False)
        except DataError as error:
            self.init_grads = []
            self._set_status(f"Gradient flow at initialization needs the {config.data} data: {error}", error=True)
        else:
            self.init_grads = init_gradients(config, arrays)
            self._set_status(f"Showing {config.label} at initialization. Press Train to train it.")
        self.init_label = config.label
        self._init_key = key
        self._render_grad_flow()

    def _load(self, config: ExperimentConfig, download: bool) -> ImageArrays:
        """Read the data ``config`` names, once per data source and size."""
        key = _data_key(config)
        if key not in self._arrays:
            if config.data == "synthetic":
                self._set_status(f"Preparing synthetic data ({config.synthetic_train_size:,} training images) ...")
                arrays = load_synthetic(config.data_dir, config.seed, config.synthetic_train_size, config.synthetic_test_size)
            else:
                self._set_status(f"Reading CIFAR-100 from {config.data_dir} ...")
                arrays = load_cifar100(config.data_dir, download=download and config.download)
            self._arrays[key] = arrays
        return self._arrays[key]

    def train(self) -> Future:
        """Start a training run with the current settings in the background thread; return its future.

        Raises:
            RuntimeError: a run is still in progress.
            ConfigError: the settings are invalid.
        """
        if self._running:
            raise RuntimeError("a run is in progress; press Stop or wait for it to finish before training again")
        config = self.settings().replace(progress=False)
        self._run_count += 1
        run = PanelRun(number=self._run_count, config=config)
        if self.run_root is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run.run_dir = self.run_root / f"panel-{stamp}-{run.number:02d}-{_slug(config.label)}"
        self.runs.append(run)
        self._stop_event.clear()
        self._set_running(True)
        self._set_status(f"Training {run.label} ...")
        return self._submit(lambda: self._train(run))

    def stop(self) -> None:
        """Ask the running run to end at its next batch; what it recorded so far is kept."""
        if self._running:
            self._stop_event.set()
            self._set_status("Stopping at the next batch ...")

    def clear(self) -> None:
        """Forget the finished runs, so that the plots start empty."""
        if self._running:
            raise RuntimeError("cannot clear the runs while one is training; press Stop first")
        self.runs.clear()
        self._submit(self._render_all)

    def _set_running(self, running: bool) -> None:
        self._running = running
        for control in self.settings_controls:
            control.disabled = running
        self.train_button.disabled = running
        self.stop_button.disabled = not running

    def _train(self, run: PanelRun) -> None:
        """Body of a training job: load the data, fit, and record the outcome in ``run``."""
        try:
            arrays = self._load(run.config, download=True)
            self._start_progress(run, len(arrays.train_images))
            result = fit(run.config, run.run_dir, data=arrays, should_stop=self._should_stop,
                         on_epoch_end=lambda result, row: self._on_epoch_end(run, result, row))
        except TrainingDiverged as error:
            run.status, run.error = "diverged", str(error)
        except Exception as error:  # noqa: BLE001 - the thread has no caller: report in the panel and the log
            logger.exception("panel run %s failed", run.label)
            run.status, run.error = "failed", f"{type(error).__name__}: {error}"
        else:
            run.result, run.status = result, result.status
            run.history, run.grads = list(result.history), list(result.grads)
        finally:
            self._set_running(False)
        # Every finished epoch was drawn already; a run that ends before its first epoch still adds its curves here.
        if not run.history:
            self._render_all()
        self._report_outcome(run)

    def _start_progress(self, run: PanelRun, num_train_images: int) -> None:
        train_size = len(course_split(num_train_images)[0])
        steps_per_epoch = -(-train_size // run.config.batch_size)
        self._steps = 0
        self._last_progress = 0.0
        self.progress.max = run.config.epochs * steps_per_epoch
        self.progress.value = 0
        self.epoch_label.value = f"epoch 0/{run.config.epochs}"
        self._set_status(f"Training {run.label} ...")

    def _should_stop(self) -> bool:
        # fit polls this before every batch, which makes it the place to count steps.
        self._steps += 1
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_INTERVAL:
            self.progress.value = min(self._steps, self.progress.max)
            self._last_progress = now
        return self._stop_event.is_set()

    def _on_epoch_end(self, run: PanelRun, result: RunResult, row: dict) -> None:
        run.history, run.grads = list(result.history), list(result.grads)
        self.progress.value = min(self._steps, self.progress.max)
        self._render_all()
        self._set_status(f"{run.label}: epoch {row['epoch']}/{run.config.epochs}, train loss {row['train_loss']:.3f}, "
                         f"val loss {row['val_loss']:.3f}, val acc {100 * row['val_acc']:.1f}%")
        # Set last: this label is what a watcher (a user or a test) reads as "epoch finished and drawn".
        self.epoch_label.value = f"epoch {row['epoch']}/{run.config.epochs}"

    def _report_outcome(self, run: PanelRun) -> None:
        if run.status in ("diverged", "failed"):
            self._set_status(f"{run.label} {run.status}: {run.error}", error=True)
            return
        test = run.result.test if run.result is not None else {}
        tested = f", test acc {100 * test['test_acc']:.1f}%" if test else ""
        self._set_status(f"{run.label} {run.status} after {len(run.history)} of {run.config.epochs} epochs{tested}.")
        if run.status == "finished":
            self.progress.value = self.progress.max

    def _render_all(self) -> None:
        fig, lines = curves_figure(self.runs)
        self.curves.value = figure_svg(fig)
        self.plot_data["curves"] = lines
        self._render_grad_flow()

    def _render_grad_flow(self) -> None:
        fig, lines = grad_flow_figure(self.init_grads, self.init_label, self.runs)
        self.grad_flow.value = figure_svg(fig)
        self.plot_data["grad_flow"] = lines

    def save_params(self, path: str | Path | None = None) -> Path:
        """Write the current settings as a params file for ``labkit run``, validate it, and return its path.

        The file is flat YAML: ``notebook`` followed by every ExperimentConfig
        field. Without ``path`` (and an empty params-file box) it goes to
        ``<params folder>/<params_stem>.yaml``.

        Raises:
            ConfigError: ``labkit.params`` rejects the file; the file is removed.
        """
        config = self.settings()
        chosen = path if path is not None else self.params_path.value.strip()
        target = Path(chosen).expanduser() if chosen else default_params_dir() / f"{params_stem(config)}.yaml"
        header = f"# Saved from the labkit panel: {config.label}, lr {config.lr:g}, {config.epochs} epochs, {config.data} data.\n"
        values = params_values(config, self.notebook.value, target)
        runfolder.write_text(target, header + yaml.safe_dump(values, sort_keys=False))
        try:
            load_experiment(target)
        except ConfigError:
            target.unlink()
            raise
        return target

    def _save_clicked(self) -> None:
        target = self.save_params()
        self._set_status(f"Saved the settings to {target}; run them headless with: labkit run {target}")


def _descendants(widget: widgets.Widget) -> list[widgets.Widget]:
    children = widget.children if isinstance(widget, widgets.Box) else ()
    return [widget, *(item for child in children for item in _descendants(child))]


def _data_key(config: ExperimentConfig) -> tuple:
    if config.data == "synthetic":
        return (config.data, config.data_dir, config.seed, config.synthetic_train_size, config.synthetic_test_size)
    return (config.data, config.data_dir)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _current_notebook() -> str:
    """Return the kernel's own notebook name when it trains an experiment, else an empty string."""
    # Jupyter Server 2 passes the notebook's path to its kernel in JPY_SESSION_NAME; papermill and nbval do not.
    name = Path(os.environ.get("JPY_SESSION_NAME", "")).name.removesuffix(".ipynb")
    return name if name in TRAINING_NOTEBOOKS else ""


def show_panel(*, notebook: str | None = None, run_root: str | Path | None = None, **defaults: Any) -> Panel | None:
    """Display the training panel, or print a static description when no interactive frontend runs the code.

    Args:
        notebook: the notebook saved params files name (a path or a name such as ``02_normalize``);
            default the kernel's own notebook when it is one of them, else the first of them.
        run_root: folder for the panel's run folders; None keeps runs in memory.
        **defaults: ExperimentConfig fields the controls start from, e.g. ``bn=False, data="synthetic"``.

    Returns:
        The displayed Panel (assign it, e.g. ``panel = show_panel(...)``), or None in static mode.

    Raises:
        ConfigError: a default is not an ExperimentConfig field, or lies outside its control's range.
    """
    from IPython.display import display

    config = ExperimentConfig.from_dict(defaults, source="show_panel")
    check_panel_ranges(config, source="show_panel")
    notebook = _current_notebook() if notebook is None else notebook_name(notebook)
    if not interactive_frontend():
        print(describe(config, notebook))
        return None
    panel = Panel(config, notebook=notebook, run_root=run_root)
    display(panel.widget)
    return panel
