"""Diagnostics that explain why a network trains or not: probes, per-epoch recorders and a verdict.

Probes measure one fixed batch without changing the model: activation
statistics per layer, and for residual networks the gradient that reaches
each block through its skip path and through its convolution branch.
Recorders run probes at chosen epochs inside ``labkit.trainer.fit`` and
turn them into tidy rows that ``fit`` writes to the run folder
(``activations.csv``, ``updates.csv``, ``skip.csv``). ``diagnose`` reads
such records, or only a loss curve, and states a verdict with the numbers
behind it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.blocks import ProcessingBlock
from labkit.hooks import gradients_at, layer_label, preserve_state, tracked_layers
from labkit.runfolder import ACTIVATIONS, SKIP, UPDATES

logger = logging.getLogger(__name__)

ACTIVATION_TYPES = (nn.LeakyReLU, nn.ReLU)
# The course's batch size, so that BatchNorm's batch statistics in a train-mode probe match a training step's.
DEFAULT_PROBE_BATCH = 100

# Thresholds of the verdict. The attenuation at initialization was measured with
# labkit.hooks.gradients_at after torch.manual_seed(0), on one batch of 100 N(0, 1) images. It is
# 9.9e-3 for VGG_08, 4.2e-5 for VGG_14, 1.3e-7 for VGG_20, 5.7e-15 for VGG_38, 2.9e2 for VGG_38 BN
# and 1.1e-2 for VGG_38 RC. tests/test_diagnostics.py checks the VGG_08 and VGG_38 cases.
VANISHING_RATIO = 1e-4  # first- over last-layer mean |grad| below this: gradients vanish
# Below chance level by less than this (nats) over the whole run: the loss never left chance.
# The course's VGG_38 gets no lower than 4.6052 against ln(100) = 4.6052; VGG_08 reaches 1.60.
CHANCE_MARGIN = 0.1
# An activation collapses when its spread across the batch falls below this fraction of its RMS,
# about 8 float32 rounding steps (eps = 1.2e-7): its output is then the same for every image.
# Measured as above: VGG_38 crosses it at depth 24 of 37, VGG_08 stays above 5e-3.
COLLAPSE_RATIO = 1e-6
# A layer whose weights change by less than this fraction of their norm per step needs about a
# million steps to change by their own size, so it is frozen in practice.
FROZEN_RATIO = 1e-6

VANISHING = "vanishing gradients"
STUCK = "stuck at chance"
TRAINS = "trains normally"
TRAINS_DESPITE = "trains despite vanishing gradients at initialization"
HEALTHY = "healthy gradient flow"
DIVERGED = "diverged"


def activation_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return (label, module) for every activation module, in registration order."""
    return [(layer_label(name), module) for name, module in model.named_modules() if isinstance(module, ACTIVATION_TYPES)]


def _activation_summary(output: Tensor) -> Tensor:
    values = output.detach().float()
    return torch.stack([
        values.mean(),
        values.std(),
        values.std(dim=0).mean(),  # spread across images: how much the output still depends on the input
        (values < 0).float().mean(),
    ])


def activation_stats(model: nn.Module, images: Tensor, epoch: int = 0, mode: str = "train") -> list[dict]:
    """Measure each activation's mean, standard deviation and fraction of negative outputs on one batch.

    Args:
        mode: ``train`` uses BatchNorm's batch statistics as a training step
            does; ``eval`` uses its running statistics. The model's own modes,
            parameters, buffers and gradients are restored afterwards.

    Returns:
        One row per activation in forward order; ``depth`` counts from 1 and
        ``batch_std`` is the standard deviation across the batch, averaged over units.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    layers = activation_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no activation module of types {ACTIVATION_TYPES}")
    labels = {module: label for label, module in layers}
    called: list[str] = []
    summaries: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        called.append(labels[module])
        summaries.append(_activation_summary(output))

    with preserve_state(model):
        model.train(mode == "train")
        handles = [module.register_forward_hook(hook) for _, module in layers]
        try:
            with torch.no_grad():
                model(images)
        finally:
            for handle in handles:
                handle.remove()
    values = torch.stack(summaries).cpu().tolist()  # one device sync for all layers
    return [{"epoch": epoch, "layer": label, "depth": depth, "mean": row[0], "std": row[1], "batch_std": row[2],
             "frac_negative": row[3]} for depth, (label, row) in enumerate(zip(called, values), start=1)]


def residual_blocks(model: nn.Module) -> list[tuple[str, ProcessingBlock]]:
    """Return (label, block) for every labkit processing block with a residual connection."""
    return [(layer_label(name), module) for name, module in model.named_modules()
            if isinstance(module, ProcessingBlock) and module.residual]


def _capture_blocks(blocks: list[tuple[str, ProcessingBlock]], captured: dict[str, dict[str, Tensor]]) -> list:
    """Hook each block's input and its branch output (``bn2``'s output, just before the addition)."""
    handles = []
    for label, block in blocks:
        slot = captured.setdefault(label, {})
        handles.append(block.register_forward_pre_hook(lambda module, inputs, slot=slot: slot.update(input=inputs[0])))
        handles.append(block.bn2.register_forward_hook(lambda module, inputs, output, slot=slot: slot.update(branch=output)))
    return handles


def skip_gradients(model: nn.Module, images: Tensor, labels: Tensor, epoch: int = 0) -> list[dict]:
    """Split the gradient reaching each residual block's input into its skip and branch parts.

    A block computes ``act(branch(x) + x)``. The gradient through the skip
    path equals the gradient at the sum, and the branch part is that gradient
    taken back through the convolutions. Their sum is the block input's
    gradient. The model runs in training mode and is restored afterwards; no
    parameter's ``.grad`` is touched, because ``torch.autograd.grad`` is asked
    only for the captured activations.

    Returns:
        One row per residual block in forward order; empty for a network without one.
    """
    blocks = residual_blocks(model)
    if not blocks:
        return []
    captured: dict[str, dict[str, Tensor]] = {}
    with preserve_state(model), torch.enable_grad():
        model.train()
        handles = _capture_blocks(blocks, captured)
        try:
            loss = F.cross_entropy(model(images).float(), labels)
        finally:
            for handle in handles:
                handle.remove()
        order = [label for label, _ in blocks]
        skip = torch.autograd.grad(loss, [captured[label]["branch"] for label in order], retain_graph=True)
        norms = []
        for label, skip_grad in zip(order, skip):
            (branch_grad,) = torch.autograd.grad(captured[label]["branch"], captured[label]["input"],
                                                 grad_outputs=skip_grad, retain_graph=True)
            norms.append(torch.stack([skip_grad.float().norm(), branch_grad.float().norm()]))
    values = torch.stack(norms).cpu().tolist()
    return [{"epoch": epoch, "block": label, "skip_grad_norm": skip_norm, "branch_grad_norm": branch_norm,
             "branch_to_skip": branch_norm / skip_norm if skip_norm else math.nan}
            for label, (skip_norm, branch_norm) in zip(order, values)]


def probe_batch(split: Any, size: int = DEFAULT_PROBE_BATCH) -> tuple[Tensor, Tensor]:
    """Return the first ``size`` images of a ``DeviceSplit``, normalized, and their labels.

    Taking the first images, without augmentation, gives the same batch at every epoch.
    """
    from labkit.data import normalize

    if len(split) == 0:
        raise ValueError("the validation split is empty, so there is no batch to probe; use more training images")
    return normalize(split.images[:size]), split.labels[:size]


class EpochRecorder:
    """Base of the recorders that ``fit(recorders=...)`` calls around every epoch.

    ``fit`` calls ``attach`` once with the model, optimizer and validation
    split, ``end_epoch(0)`` before training, then ``begin_epoch`` and
    ``end_epoch`` around each epoch, and ``detach`` at the end. The rows that
    ``end_epoch`` returns go to ``<run folder>/<filename>``.

    Args:
        epochs: epochs to record, 0 meaning at initialization; None records every epoch.
        batch_size: images in the fixed validation batch that probes measure.
    """

    filename = ""

    def __init__(self, epochs: Iterable[int] | None = None, batch_size: int = DEFAULT_PROBE_BATCH) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.epochs = None if epochs is None else {int(epoch) for epoch in epochs}
        if self.epochs is not None and any(epoch < 0 for epoch in self.epochs):
            raise ValueError(f"epochs must be >= 0 (0 is initialization), got {sorted(self.epochs)}")
        self.batch_size = batch_size
        self.model: nn.Module | None = None
        self.images: Tensor | None = None
        self.labels: Tensor | None = None

    def wants(self, epoch: int) -> bool:
        """Return whether ``epoch`` is one of the epochs to record."""
        return self.epochs is None or epoch in self.epochs

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, split: Any) -> None:
        """Keep the model and take the fixed probe batch from the validation split."""
        self.model = model
        self.images, self.labels = probe_batch(split, self.batch_size)

    def begin_epoch(self, epoch: int) -> None:
        """Prepare for training epoch ``epoch``."""

    def end_epoch(self, epoch: int) -> list[dict]:
        """Return the rows for ``epoch``, or none when it is not recorded."""
        return self.measure(epoch) if self.wants(epoch) else []

    def measure(self, epoch: int) -> list[dict]:
        """Probe the model now."""
        raise NotImplementedError(f"{type(self).__name__} must implement measure()")

    def detach(self) -> None:
        """Remove every hook from the model and optimizer."""


class ActivationRecorder(EpochRecorder):
    """Record ``activation_stats`` of the fixed validation batch into ``activations.csv``."""

    filename = ACTIVATIONS

    def __init__(self, epochs: Iterable[int] | None = None, batch_size: int = DEFAULT_PROBE_BATCH,
                 mode: str = "train") -> None:
        super().__init__(epochs, batch_size)
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        self.mode = mode

    def measure(self, epoch: int) -> list[dict]:
        return activation_stats(self.model, self.images, epoch, self.mode)


class SkipRecorder(EpochRecorder):
    """Record ``skip_gradients`` of the fixed validation batch into ``skip.csv``; nothing for plain networks."""

    filename = SKIP

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, split: Any) -> None:
        super().attach(model, optimizer, split)
        if not residual_blocks(model):
            logger.info("%s has no residual block, so no skip-vs-branch gradients are recorded", type(model).__name__)

    def measure(self, epoch: int) -> list[dict]:
        return skip_gradients(self.model, self.images, self.labels, epoch)


class UpdateRecorder(EpochRecorder):
    """Record each layer's update-to-weight ratio ``|W_after - W_before| / |W_before|`` into ``updates.csv``.

    The optimizer's step hooks copy the convolution and linear weights before
    a step and compare them after it, so the ratio is the real step: Adam's,
    weight decay included. Rows average every ``every``-th step of a recorded
    epoch; norms are Frobenius norms. Epoch 0 has no step and gets no rows.
    """

    filename = UPDATES

    def __init__(self, epochs: Iterable[int] | None = None, every: int = 10) -> None:
        super().__init__(epochs)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.layers: list[tuple[str, nn.Module]] = []
        self._handles: list = []
        self._recording = False
        self._step = 0
        self._before: list[Tensor] | None = None
        self._sums: Tensor | None = None  # (layers, 3): sums of ratio, update norm and weight norm
        self._count = 0

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, split: Any = None) -> None:
        self.model = model
        self.layers = [(label, module) for label, module in tracked_layers(model) if module.weight.requires_grad]
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]

    def begin_epoch(self, epoch: int) -> None:
        self._recording = self.wants(epoch)
        self._step = 0
        self._sums = None
        self._count = 0

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._recording and self._step % self.every == 0:
            self._before = [module.weight.detach().float().clone() for _, module in self.layers]
        self._step += 1

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._before is None:
            return
        with torch.no_grad():
            norms = torch.stack([
                torch.stack([(module.weight.detach().float() - before).norm(), before.norm()])
                for (_, module), before in zip(self.layers, self._before)
            ])
        stats = torch.cat([(norms[:, 0] / norms[:, 1]).unsqueeze(1), norms], dim=1)
        self._sums = stats if self._sums is None else self._sums + stats
        self._count += 1
        self._before = None

    def measure(self, epoch: int) -> list[dict]:
        if not self._count:
            return []
        means = (self._sums / self._count).cpu().tolist()
        return [{"epoch": epoch, "layer": label, "update_ratio": ratio, "update_norm": update, "weight_norm": weight}
                for (label, _), (ratio, update, weight) in zip(self.layers, means)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def standard_recorders(epochs: Iterable[int] | None = None, batch_size: int = DEFAULT_PROBE_BATCH,
                       update_every: int = 10) -> list[EpochRecorder]:
    """Return an activation, an update-ratio and a skip-vs-branch recorder for the same epochs."""
    epochs = None if epochs is None else list(epochs)
    return [ActivationRecorder(epochs, batch_size), UpdateRecorder(epochs, every=update_every),
            SkipRecorder(epochs, batch_size)]


def attenuation(grads: pd.DataFrame, epoch: int) -> float:
    """Return the first layer's mean |grad| over the last layer's at ``epoch`` (forward order)."""
    rows = grads[grads["epoch"] == epoch]
    if rows.empty:
        raise ValueError(f"no gradient records for epoch {epoch}; recorded epochs are {sorted(grads['epoch'].unique())}")
    first, last = float(rows["mean_abs_grad"].iloc[0]), float(rows["mean_abs_grad"].iloc[-1])
    return first / last if last else math.nan


def collapse_depth(activations: pd.DataFrame, epoch: int) -> tuple[int, str] | None:
    """Return (depth, layer) of the first activation whose batch spread is below ``COLLAPSE_RATIO`` of its RMS.

    Returns None when no activation of ``epoch`` collapses.
    """
    rows = activations[activations["epoch"] == epoch].sort_values("depth")
    if rows.empty:
        raise ValueError(f"no activation records for epoch {epoch}; recorded epochs are {sorted(activations['epoch'].unique())}")
    rms = (rows["mean"] ** 2 + rows["std"] ** 2) ** 0.5
    # An output that is exactly zero everywhere carries no signal either.
    collapsed = (rows["batch_std"] < COLLAPSE_RATIO * rms) | (rms == 0)
    if not collapsed.any():
        return None
    first = rows[collapsed].iloc[0]
    return int(first["depth"]), str(first["layer"])


@dataclass
class Diagnosis:
    """A verdict on one run or model, with the numbers it rests on; ``None`` marks what was not recorded."""

    name: str
    verdict: str
    evidence: list[str]  # the records used: gradients, loss, activations, updates
    num_classes: int
    chance_loss: float  # ln(num_classes), the loss of a uniform prediction
    attenuation_init: float | None = None  # first- over last-layer mean |grad| at initialization
    attenuation_end: float | None = None  # the same at the last recorded epoch
    end_epoch: int | None = None
    epochs: int | None = None  # epochs in the loss curve
    min_train_loss: float | None = None
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    final_val_acc: float | None = None
    loss_moved: bool | None = None  # the train loss fell more than CHANCE_MARGIN below chance
    collapse_init: tuple[int, str] | None = None  # (depth, layer) where activations collapse at initialization
    collapse_end: tuple[int, str] | None = None
    activation_end_epoch: int | None = None
    update_epoch: int | None = None  # the last epoch with update records
    update_ratio_first: float | None = None  # |update| / |weight| per step of the first layer at update_epoch
    update_ratio_last: float | None = None  # the same for the last layer
    frozen_layers: list[str] | None = None  # layers whose update ratio at update_epoch is below FROZEN_RATIO
    update_layers: int | None = None  # layers with update records
    notes: list[str] = field(default_factory=list)

    @property
    def vanishing(self) -> bool | None:
        """Whether gradients attenuate below ``VANISHING_RATIO``; None without gradient records."""
        ratios = [ratio for ratio in (self.attenuation_init, self.attenuation_end) if ratio is not None]
        if not ratios:
            return None
        return any(ratio < VANISHING_RATIO for ratio in ratios)

    def to_dict(self) -> dict[str, Any]:
        """Return the diagnosis as plain values, thresholds included."""
        values = asdict(self)
        values.update(vanishing=self.vanishing, thresholds={"vanishing_ratio": VANISHING_RATIO,
                      "chance_margin": CHANCE_MARGIN, "collapse_ratio": COLLAPSE_RATIO, "frozen_ratio": FROZEN_RATIO})
        return values

    def text(self) -> str:
        """Format a short report: the verdict, then one line per kind of evidence."""
        return "\n".join([f"{self.name}: {self.verdict}", *(f"  {line}" for line in _evidence_lines(self))])


def _gradient_line(diagnosis: Diagnosis) -> str:
    if diagnosis.vanishing is None:
        return "gradients: not recorded, so the verdict rests on the loss alone and cannot name the cause"
    parts = []
    if diagnosis.attenuation_init is not None:
        parts.append(f"{diagnosis.attenuation_init:.1e} at initialization")
    if diagnosis.attenuation_end is not None:
        parts.append(f"{diagnosis.attenuation_end:.1e} at epoch {diagnosis.end_epoch}")
    return (f"gradient attenuation (first/last layer mean |grad|): {', '.join(parts)}; "
            f"vanishing below {VANISHING_RATIO:.0e}")


def _loss_line(diagnosis: Diagnosis) -> str:
    if diagnosis.loss_moved is None:
        return "loss: not recorded"
    moved = "left chance" if diagnosis.loss_moved else f"stayed within {CHANCE_MARGIN} nats of chance"
    epochs = f"{diagnosis.epochs} epoch" + ("s" if diagnosis.epochs != 1 else "")
    return (f"loss: lowest train loss {diagnosis.min_train_loss:.3f} over {epochs} against chance "
            f"ln({diagnosis.num_classes}) = {diagnosis.chance_loss:.3f}, so it {moved}; final val loss "
            f"{diagnosis.final_val_loss:.3f}, val acc {100 * diagnosis.final_val_acc:.2f}%")


def _collapse_text(collapse: tuple[int, str] | None) -> str:
    return "no collapse" if collapse is None else f"collapse at depth {collapse[0]} ({collapse[1]})"


def _evidence_lines(diagnosis: Diagnosis) -> list[str]:
    lines = [_gradient_line(diagnosis), _loss_line(diagnosis)]
    if diagnosis.activation_end_epoch is not None:
        at_end = ""
        if diagnosis.activation_end_epoch > 0:
            at_end = f", {_collapse_text(diagnosis.collapse_end)} at epoch {diagnosis.activation_end_epoch}"
        lines.append(f"activations: {_collapse_text(diagnosis.collapse_init)} at initialization{at_end}")
    if diagnosis.update_epoch is not None:
        lines.append(f"updates at epoch {diagnosis.update_epoch} (|update| / |weight| per step): "
                     f"{diagnosis.update_ratio_first:.1e} in the first layer, {diagnosis.update_ratio_last:.1e} in the "
                     f"last; {len(diagnosis.frozen_layers)} of {diagnosis.update_layers} layers stay below "
                     f"{FROZEN_RATIO:.0e} and do not learn")
    return lines + diagnosis.notes


def _verdict(vanishing: bool | None, loss_moved: bool | None, status: str | None) -> str:
    """Combine the gradient flag and the loss flag; the loss decides whether the run trains."""
    if status == "diverged":
        return DIVERGED
    if loss_moved is None:
        return VANISHING if vanishing else HEALTHY
    if not loss_moved:
        return VANISHING if vanishing else STUCK
    return TRAINS_DESPITE if vanishing else TRAINS


def _add_gradients(diagnosis: Diagnosis, grads: pd.DataFrame) -> None:
    epochs = sorted(int(epoch) for epoch in grads["epoch"].unique())
    if epochs[0] == 0:
        diagnosis.attenuation_init = attenuation(grads, 0)
    if epochs[-1] > 0:
        diagnosis.end_epoch = epochs[-1]
        diagnosis.attenuation_end = attenuation(grads, epochs[-1])
    diagnosis.evidence.append("gradients")


def _add_loss(diagnosis: Diagnosis, summary: pd.DataFrame) -> None:
    last = summary.iloc[-1]
    diagnosis.epochs = len(summary)
    diagnosis.min_train_loss = float(summary["train_loss"].min())
    diagnosis.final_train_loss = float(last["train_loss"])
    diagnosis.final_val_loss = float(last["val_loss"])
    diagnosis.final_val_acc = float(last["val_acc"])
    diagnosis.loss_moved = bool(diagnosis.min_train_loss < diagnosis.chance_loss - CHANCE_MARGIN)
    diagnosis.evidence.append("loss")


def _add_activations(diagnosis: Diagnosis, activations: pd.DataFrame) -> None:
    epochs = sorted(int(epoch) for epoch in activations["epoch"].unique())
    if epochs[0] == 0:
        diagnosis.collapse_init = collapse_depth(activations, 0)
    diagnosis.activation_end_epoch = epochs[-1]
    diagnosis.collapse_end = collapse_depth(activations, epochs[-1])
    diagnosis.evidence.append("activations")


def _add_updates(diagnosis: Diagnosis, updates: pd.DataFrame) -> None:
    epoch = int(updates["epoch"].max())
    rows = updates[updates["epoch"] == epoch]
    diagnosis.update_epoch = epoch
    diagnosis.update_ratio_first = float(rows["update_ratio"].iloc[0])
    diagnosis.update_ratio_last = float(rows["update_ratio"].iloc[-1])
    diagnosis.frozen_layers = rows.loc[rows["update_ratio"] < FROZEN_RATIO, "layer"].tolist()
    diagnosis.update_layers = len(rows)
    diagnosis.evidence.append("updates")


def diagnose(
    summary: pd.DataFrame | None = None,
    grads: pd.DataFrame | None = None,
    activations: pd.DataFrame | None = None,
    updates: pd.DataFrame | None = None,
    name: str = "run",
    num_classes: int = 100,
    status: str | None = None,
) -> Diagnosis:
    """Diagnose a run from its records; any of them may be missing, but not all.

    Args:
        summary: per-epoch train_loss, val_loss and val_acc.
        grads: tidy gradient records in forward order, epoch 0 at initialization.
        activations: tidy activation records from ``activation_stats``.
        updates: tidy records of ``UpdateRecorder``; they add numbers, not a verdict.
        status: the run's status; ``diverged`` decides the verdict.

    The verdict is ``diverged`` for a diverged run. Otherwise the loss decides
    whether the run trains: its lowest train loss must fall more than
    ``CHANCE_MARGIN`` below ln(num_classes). Gradients that attenuate below
    ``VANISHING_RATIO`` at initialization or at the end give ``vanishing
    gradients`` for a run that does not train. Without a loss curve the
    gradients alone decide (``vanishing gradients`` or ``healthy gradient flow``).
    """
    given = {"summary": summary, "grads": grads, "activations": activations, "updates": updates}
    present = {key: frame for key, frame in given.items() if frame is not None and len(frame)}
    if not present.keys() & {"summary", "grads"}:
        raise ValueError(f"{name}: nothing to diagnose; pass a loss summary or gradient records")
    diagnosis = Diagnosis(name=name, verdict="", evidence=[], num_classes=num_classes, chance_loss=math.log(num_classes))
    if "grads" in present:
        _add_gradients(diagnosis, present["grads"])
    if "summary" in present:
        _add_loss(diagnosis, present["summary"])
    if "activations" in present:
        _add_activations(diagnosis, present["activations"])
    if "updates" in present:
        _add_updates(diagnosis, present["updates"])
    diagnosis.verdict = _verdict(diagnosis.vanishing, diagnosis.loss_moved, status)
    if diagnosis.verdict == STUCK and diagnosis.vanishing is False:
        diagnosis.notes.append("gradients reach the first layer, so vanishing gradients do not explain it")
    return diagnosis


def load_records(run: Any) -> dict[str, pd.DataFrame]:
    """Read the probe records (``activations``, ``updates``, ``skip``) that a run folder holds."""
    if run.kind != "labkit":
        return {}
    names = {"activations": ACTIVATIONS, "updates": UPDATES, "skip": SKIP}
    return {key: pd.read_csv(run.path / filename) for key, filename in names.items() if (run.path / filename).is_file()}


def diagnose_run(run: Any) -> Diagnosis:
    """Diagnose a ``labkit.runs.Run``, or the run folder at a path, from every record it holds.

    Course folders hold only loss curves, so their verdict rests on the loss
    alone and the diagnosis states that.
    """
    from labkit.runs import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    records = load_records(run)
    return diagnose(summary=run.summary, grads=run.grads, activations=records.get("activations"),
                    updates=records.get("updates"), name=run.label, num_classes=int(run.config.get("num_classes", 100)),
                    status=run.record.get("status"))


def diagnose_model(model: nn.Module, images: Tensor, labels: Tensor, name: str = "model") -> Diagnosis:
    """Diagnose a model as it is now, usually at initialization, from one batch's gradients and activations.

    The model is left bit-identical. Without a loss curve the verdict is
    ``vanishing gradients`` or ``healthy gradient flow``.
    """
    grads = pd.DataFrame(gradients_at(model, images, labels, epoch=0))
    activations = pd.DataFrame(activation_stats(model, images, epoch=0))
    num_classes = getattr(model, "num_classes", None) or int(labels.max()) + 1
    return diagnose(grads=grads, activations=activations, name=name, num_classes=num_classes)


def fit_seeds(
    config: Any,
    seeds: Sequence[int],
    root: str | Path,
    recorders: Callable[[], list[EpochRecorder]] | None = None,
    **fit_kwargs: Any,
) -> list:
    """Train the same experiment once per seed into ``root/seed<N>``; return the ``RunResult`` of each.

    Args:
        recorders: called once per run to make fresh recorders, e.g. ``standard_recorders``.
        fit_kwargs: passed to ``labkit.trainer.fit`` (data, resume, overwrite, ...).
    """
    from labkit.trainer import fit

    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    results = []
    for seed in seeds:
        made = recorders() if recorders is not None else ()
        results.append(fit(config.replace(seed=seed), Path(root) / f"seed{seed}", recorders=made, **fit_kwargs))
    return results
