"""Training with the course's recipe: Adam, cosine annealing, best-validation model, test at the end."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import pickle
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit import runfolder
from labkit.config import ConfigError, ExperimentConfig
from labkit.data import DeviceData, DeviceSplit, ImageArrays, iterate_batches, load_cifar100, load_synthetic, normalize, num_batches, to_device_data
from labkit.hooks import GradientRecorder, gradients_at
from labkit.networks import build_network, count_parameters

if TYPE_CHECKING:
    from labkit.diagnostics import EpochRecorder

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["train_acc", "train_loss", "val_acc", "val_loss"]
GRAD_COLUMNS = ["epoch", "layer", "mean_abs_grad", "grad_norm"]
CHECKPOINT_FORMAT = "labkit-checkpoint-1"
# Settings that may change when a run is resumed, because they do not change its results.
RESUMABLE_CHANGES = {"device", "progress", "log_every", "compile", "eval_batch_size", "data_dir", "download", "name"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingOutOfMemory(RuntimeError):
    """The device ran out of memory; the message suggests a smaller batch size."""


class CheckpointError(runfolder.RunFolderError):
    """A checkpoint file that is corrupt or would need arbitrary unpickling to load."""


@dataclass
class RunResult:
    """Outputs of a training run, the same data as its run folder."""

    config: ExperimentConfig
    history: list[dict] = field(default_factory=list)  # one row per epoch
    grads: list[dict] = field(default_factory=list)  # tidy rows: epoch, layer, mean_abs_grad, grad_norm
    records: dict[str, list[dict]] = field(default_factory=dict)  # recorders' tidy rows by file name
    test: dict = field(default_factory=dict)  # test_acc, test_loss of the best-validation model
    status: str = "running"  # running, finished, stopped, diverged
    data_source: str = ""
    num_parameters: int = 0
    best_epoch: int = 0
    run_dir: Path | None = None
    model: nn.Module | None = None

    def summary_frame(self):
        """Per-epoch metrics as a pandas DataFrame indexed by epoch."""
        import pandas as pd

        return pd.DataFrame(self.history).set_index("epoch")

    def grads_frame(self):
        """Gradient records as a tidy pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.grads, columns=GRAD_COLUMNS)


def select_device(requested: str = "auto") -> torch.device:
    """Return the requested device, or for ``auto`` CUDA, then Apple MPS, then CPU."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available; use device='auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_data(config: ExperimentConfig) -> ImageArrays:
    """Read the dataset that ``config.data`` names."""
    if config.data == "synthetic":
        return load_synthetic(config.data_dir, config.seed, config.synthetic_train_size, config.synthetic_test_size)
    return load_cifar100(config.data_dir, download=config.download)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Random generator for one epoch's shuffling and augmentation.

    Seeding per epoch makes an epoch's batches independent of earlier ones,
    so a resumed run sees exactly the batches an uninterrupted run sees.
    """
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


@dataclass
class _Execution:
    """Step settings on the device: autocast, memory format and sync interval."""

    device: torch.device
    bf16: bool
    memory_format: torch.memory_format
    log_every: int
    progress: bool

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _execution(config: ExperimentConfig, device: torch.device) -> _Execution:
    cuda = device.type == "cuda"
    bf16 = cuda if config.bf16 is None else config.bf16
    channels_last = cuda if config.channels_last is None else config.channels_last
    return _Execution(
        device=device,
        bf16=bf16,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        log_every=config.log_every,
        progress=config.progress,
    )


@contextlib.contextmanager
def _cudnn_autotune(device: torch.device) -> Iterator[None]:
    """Let cuDNN time its convolution algorithms for each new input shape while training on CUDA.

    Batch shapes repeat every step, so the one-off timing pays back within an
    epoch. The chosen algorithm may differ from the default in rounding only.
    The previous setting comes back on exit.
    """
    cudnn = torch.backends.cudnn
    previous = cudnn.benchmark
    if device.type == "cuda":
        cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark = previous


def train_one_epoch(
    model: nn.Module,
    split: DeviceSplit,
    optimizer: torch.optim.Optimizer,
    config: ExperimentConfig,
    epoch: int,
    execution: _Execution,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float] | None:
    """Train for one epoch; return mean train loss and accuracy, or None when stopped.

    Running sums stay on the device; the host reads them every
    ``log_every`` steps and at the end, never once per step.

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    model.train()
    device = execution.device
    generator = epoch_generator(config.seed, epoch, device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
    seen = 0
    batches = iterate_batches(split, config.batch_size, generator, augment=True, memory_format=execution.memory_format)
    bar = tqdm(total=num_batches(split, config.batch_size), desc=f"epoch {epoch}/{config.epochs}",
               leave=False, disable=not execution.progress, unit="step")
    with bar:
        for step, (images, labels) in enumerate(batches, start=1):
            if should_stop is not None and should_stop():
                return None
            with execution.autocast():
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            loss = loss.detach()
            seen += labels.shape[0]
            loss_sum += loss * labels.shape[0]
            correct += (logits.argmax(dim=1) == labels).sum()
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
            bar.update(1)
            if step % execution.log_every == 0:
                _check_finite(first_bad_step, epoch, optimizer)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    _check_finite(first_bad_step, epoch, optimizer)
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}


def _check_finite(first_bad_step: torch.Tensor, epoch: int, optimizer: torch.optim.Optimizer) -> None:
    step = int(first_bad_step.item())
    if step >= 0:
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"loss became NaN or infinite at epoch {epoch}, step {step}, with learning rate {lr:g}. "
            "Lower lr or turn on bn."
        )


@torch.inference_mode()
def evaluate(model: nn.Module, split: DeviceSplit, batch_size: int, execution: _Execution | None = None) -> dict[str, float]:
    """Return mean loss and accuracy of ``model`` on ``split`` in eval mode."""
    execution = execution or _Execution(split.images.device, False, torch.contiguous_format, 50, False)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    for images, labels in iterate_batches(split, batch_size, memory_format=execution.memory_format):
        with execution.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam and a cosine schedule from ``lr`` to ``eta_min`` over ``epochs``, stepped per epoch."""
    # On CUDA the fused kernel does the same Adam update in one launch per step, in
    # place of several foreach kernels; None keeps PyTorch's default elsewhere.
    fused = True if next(model.parameters()).device.type == "cuda" else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.eta_min)
    return optimizer, scheduler


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically, so a kill never leaves a torn file."""
    runfolder.save_torch(path, {"format": CHECKPOINT_FORMAT, **state})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; files that need arbitrary unpickling are rejected.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated or corrupt, or contains objects
            other than tensors, numbers, strings, NumPy scalars and containers of them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f"it contains {found[1]}" if found else str(error).splitlines()[0]
        raise CheckpointError(
            f"{path} was rejected: {detail}, and loading that needs arbitrary unpickling, which could run "
            "code from the file. labkit loads only checkpoints of tensors, numbers and strings "
            "(torch.load weights_only=True). If you trust the file, load it yourself with "
            "torch.load(weights_only=False) and save its state_dict."
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        summary = f"{type(error).__name__}: {error}".splitlines()[0].rstrip(": ")
        raise CheckpointError(
            f"{path} could not be loaded ({summary}); it is truncated, corrupt or not a PyTorch checkpoint. "
            "Replace it with an intact copy."
        ) from None


def _numpy_safe_globals() -> list[Any]:
    """Return NumPy's scalar and dtype classes under the names that NumPy 1 and NumPy 2 pickle them with."""
    # The course's checkpoints store the best accuracy as a NumPy float, which pickles as a call to
    # numpy.core.multiarray.scalar under NumPy 1 and numpy._core.multiarray.scalar under NumPy 2.
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        from numpy._core.multiarray import scalar
    else:
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return [np.dtype, *dtype_classes, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _versions() -> dict[str, str]:
    import torchvision

    from labkit import __version__

    return {"labkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _write_records(result: RunResult, execution: _Execution, timings: dict[str, Any]) -> None:
    """Write summary.csv, test_summary.csv, grads.csv and run.json into the run folder."""
    folder = result.run_dir
    if folder is None:
        return
    runfolder.write_csv(folder / runfolder.SUMMARY, SUMMARY_COLUMNS, result.history)
    runfolder.write_csv(folder / runfolder.GRADS, GRAD_COLUMNS, result.grads)
    for filename, rows in result.records.items():
        if rows:
            runfolder.write_csv(folder / filename, list(rows[0]), rows)
    if result.test:
        runfolder.write_csv(folder / runfolder.TEST_SUMMARY, ["test_acc", "test_loss"], [result.test])
    runfolder.write_json(folder / runfolder.RECORD, {
        "format": "labkit-run-1",
        "name": result.config.label,
        "status": result.status,
        "config": result.config.to_dict(),
        "num_parameters": result.num_parameters,
        "seed": result.config.seed,
        "device": str(execution.device),
        "device_name": torch.cuda.get_device_name(execution.device) if execution.device.type == "cuda" else platform.processor() or platform.machine(),
        "bf16": execution.bf16,
        "channels_last": execution.memory_format == torch.channels_last,
        "data_source": result.data_source,
        "synthetic": result.data_source == "synthetic",
        "best_epoch": result.best_epoch,
        "test": result.test,
        "epochs": [{"epoch": row["epoch"], "lr": row["lr"], "seconds": row["seconds"]} for row in result.history],
        "timings": timings,
        "versions": _versions(),
    })


def _compatible(saved: dict[str, Any], config: ExperimentConfig, folder: Path) -> None:
    current = config.to_dict()
    changed = sorted(key for key in current if key not in RESUMABLE_CHANGES and saved.get(key) != current[key])
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current[key]!r}" for key in changed)
        raise runfolder.RunFolderError(
            f"cannot resume {folder}: its run has other settings ({details}); use overwrite or another folder"
        )


def fit(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    data: ImageArrays | DeviceData | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch_end: Callable[[RunResult, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    recorders: Sequence[EpochRecorder] = (),
) -> RunResult:
    """Train the network ``config`` describes and evaluate its best-validation model on the test set.

    Args:
        config: network, optimiser, data and execution settings.
        run_dir: folder for metrics, gradient records and checkpoints; None keeps everything in memory.
        data: arrays or device-resident splits to use instead of ``config.data``.
        resume: continue from ``run_dir``'s latest checkpoint.
        overwrite: replace the results already in ``run_dir``.
        on_epoch_end: called with the result so far and the epoch's row after every epoch.
        should_stop: polled before every step; returning True ends the run cleanly.
        recorders: probes run at initialization and after chosen epochs, e.g.
            ``labkit.diagnostics.standard_recorders()``; each writes its rows to a CSV in ``run_dir``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; the last good checkpoint stays.
        runfolder.RunFolderError: ``run_dir`` is locked or holds another run.
        TrainingOutOfMemory: the device ran out of memory, with a suggested batch size.
    """
    device = select_device(config.device)
    folder = Path(run_dir) if run_dir is not None else None
    lock = runfolder.RunLock(folder).acquire() if folder is not None else None
    try:
        resuming = folder is not None and runfolder.prepare_folder(folder, config.to_dict(), resume, overwrite)
        with _cudnn_autotune(device):
            return _fit(config, device, folder, data, resuming, on_epoch_end, should_stop, recorders)
    except torch.cuda.OutOfMemoryError as error:
        # NOTE: no GPU ran this branch in labkit's tests; they raise the same exception from a callback.
        # Only the message is kept: the traceback's frames hold the model and batches on the device,
        # and dropping them lets a notebook retry with a smaller batch without restarting its kernel.
        message = (
            f"{device} ran out of memory with batch_size={config.batch_size} "
            f"(eval_batch_size={config.eval_batch_size}): {str(error).splitlines()[0]} "
            f"Try batch_size={max(1, config.batch_size // 2)} or a smaller eval_batch_size."
        )
    finally:
        if lock is not None:
            lock.release()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise TrainingOutOfMemory(message)


def _fit(config, device, folder, data, resuming, on_epoch_end, should_stop, recorders=()) -> RunResult:
    started = time.time()
    execution = _execution(config, device)
    arrays = data if data is not None else load_data(config)
    device_data = arrays if isinstance(arrays, DeviceData) else to_device_data(arrays, device)
    if device_data.num_classes > config.num_classes:
        raise ValueError(f"the data has {device_data.num_classes} classes but num_classes is {config.num_classes}")

    torch.manual_seed(config.seed)
    model = build_network(config.num_blocks_per_stage, config.num_stages, config.num_filters, config.num_classes,
                          bn=config.bn, residual=config.residual).to(device, memory_format=execution.memory_format)
    optimizer, scheduler = build_optimizer(model, config)
    result = RunResult(config=config, data_source=device_data.source, num_parameters=count_parameters(model),
                       run_dir=folder, model=model)
    best = {"acc": -math.inf, "state": None}
    start_epoch = 1
    if resuming:
        start_epoch = _restore(folder, config, model, optimizer, scheduler, result, best, device)
    else:
        images = normalize(device_data.train.images[:config.batch_size]).contiguous(memory_format=execution.memory_format)
        result.grads.extend(gradients_at(model, images, device_data.train.labels[:config.batch_size], epoch=0))
    for probe in recorders:
        probe.attach(model, optimizer, device_data.val)
    if not resuming:
        _record(recorders, 0, result)

    train_model = torch.compile(model) if config.compile else model
    recorder = GradientRecorder(model, every=config.grad_every)
    epochs = tqdm(range(start_epoch, config.epochs + 1), initial=start_epoch - 1, total=config.epochs,
                  desc=config.label, disable=not config.progress, unit="epoch")
    try:
        for epoch in epochs:
            for probe in recorders:
                probe.begin_epoch(epoch)
            row = _run_epoch(train_model, model, device_data, optimizer, scheduler, config, epoch, execution,
                             recorder, should_stop, result)
            if row is None:
                result.status = "stopped"
                break
            _record(recorders, epoch, result)
            improved = _keep_best(model, row, best, result)
            if folder is not None:
                # latest.pt first: a kill between the two writes leaves a latest.pt whose best epoch is
                # its own epoch, and _restore_best then takes the best model from latest.pt itself.
                save_checkpoint(folder / runfolder.CHECKPOINTS / runfolder.LATEST,
                                _checkpoint_state(model, optimizer, scheduler, epoch, best, result))
                if improved:
                    save_checkpoint(folder / runfolder.CHECKPOINTS / runfolder.BEST,
                                    {"model": best["state"], "epoch": epoch, "val_acc": row["val_acc"]})
                _write_records(result, execution, _timings(started, result))
            epochs.set_postfix(val_acc=f"{row['val_acc']:.3f}", val_loss=f"{row['val_loss']:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(result, row)
    except TrainingDiverged as error:
        result.status = "diverged"
        _write_records(result, execution, _timings(started, result))
        raise TrainingDiverged(f"{error} {_kept_checkpoint(folder, result)}") from None
    finally:
        recorder.remove()
        for probe in recorders:
            probe.detach()
        epochs.close()

    _finish(model, device_data, best, result, execution, folder, started)
    return result


def _run_epoch(train_model, model, device_data, optimizer, scheduler, config, epoch, execution, recorder,
               should_stop, result) -> dict | None:
    began = time.perf_counter()
    train = train_one_epoch(train_model, device_data.train, optimizer, config, epoch, execution, should_stop)
    if train is None:
        recorder.end_epoch(epoch)
        recorder.records.clear()
        return None
    val = evaluate(train_model, device_data.val, config.eval_batch_size, execution)
    result.grads.extend(recorder.end_epoch(epoch))
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    row = {"epoch": epoch, **train, "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
           "seconds": time.perf_counter() - began}
    result.history.append(row)
    return row


def _record(recorders, epoch, result) -> None:
    for probe in recorders:
        rows = probe.end_epoch(epoch)
        if rows:
            result.records.setdefault(probe.filename, []).extend(rows)


def _keep_best(model, row, best, result) -> bool:
    """Keep a copy of the model when this epoch's validation accuracy is the best so far; return whether it was."""
    # Strictly better only, as the course keeps the first epoch that reaches a maximum.
    if row["val_acc"] <= best["acc"]:
        return False
    best["acc"] = row["val_acc"]
    result.best_epoch = row["epoch"]
    best["state"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return True


def _kept_checkpoint(folder: Path | None, result: RunResult) -> str:
    """Say which checkpoint a diverged run leaves behind."""
    if folder is None:
        return "Nothing was saved, because the run has no run_dir."
    if not result.history:
        return "No checkpoint was written, because no epoch finished."
    latest = folder / runfolder.CHECKPOINTS / runfolder.LATEST
    return f"The last good checkpoint, from epoch {result.history[-1]['epoch']}, stays in {latest}."


def _checkpoint_state(model, optimizer, scheduler, epoch, best, result) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_val_acc": best["acc"],
        "best_epoch": result.best_epoch,
        "history": result.history,
        "grads": result.grads,
        "records": result.records,
        "rng": _rng_state(),
        "config": result.config.to_dict(),
    }


def _restore(folder, config, model, optimizer, scheduler, result, best, device) -> int:
    checkpoint = load_checkpoint(folder / runfolder.CHECKPOINTS / runfolder.LATEST, map_location=device)
    _compatible(checkpoint["config"], config, folder)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    result.history = list(checkpoint["history"])
    result.grads = list(checkpoint["grads"])
    result.records = {filename: list(rows) for filename, rows in checkpoint.get("records", {}).items()}
    result.best_epoch = checkpoint["best_epoch"]
    best["acc"] = checkpoint["best_val_acc"]
    best["state"] = _restore_best(folder, checkpoint, device)
    _set_rng_state(checkpoint["rng"])
    logger.info("resuming %s after epoch %d", folder, checkpoint["epoch"])
    return checkpoint["epoch"] + 1


def _restore_best(folder: Path, checkpoint: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """Return the best model's state that goes with ``checkpoint``, from latest.pt or best.pt.

    Raises:
        runfolder.RunFolderError: best.pt is missing or from another epoch than latest.pt names.
    """
    if checkpoint["best_epoch"] == 0:
        return None
    if checkpoint["best_epoch"] == checkpoint["epoch"]:
        return {key: value.clone() for key, value in checkpoint["model"].items()}
    best_file = folder / runfolder.CHECKPOINTS / runfolder.BEST
    if not best_file.is_file():
        raise runfolder.RunFolderError(
            f"cannot resume {folder}: {best_file}, the model of epoch {checkpoint['best_epoch']}, is missing; "
            "use overwrite to start again"
        )
    saved = load_checkpoint(best_file, map_location=device)
    if saved["epoch"] != checkpoint["best_epoch"]:
        raise runfolder.RunFolderError(
            f"cannot resume {folder}: {best_file} is from epoch {saved['epoch']} but latest.pt names epoch "
            f"{checkpoint['best_epoch']} as the best; use overwrite to start again"
        )
    return saved["model"]


def _timings(started: float, result: RunResult) -> dict[str, Any]:
    return {
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": sum(row["seconds"] for row in result.history),
    }


def _finish(model, device_data, best, result, execution, folder, started) -> None:
    """Evaluate the best-validation model on the test set and write the final records."""
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        test = evaluate(model, device_data.test, result.config.eval_batch_size, execution)
        result.test = {"test_acc": test["acc"], "test_loss": test["loss"]}
    if result.status == "running":
        result.status = "finished"
    _write_records(result, execution, _timings(started, result))
