"""Measure images per second of labkit's training against the course's original pipeline.

One process measures, one after the other:

- the baseline: a re-implementation of the course's data path and training
  step. A Dataset hands out PIL images through RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor and Normalize in a DataLoader with worker
  processes. Every step copies the loss and the per-image correctness to the
  host with ``.cpu()`` and appends them to Python lists, in fp32.
- labkit: ``iterate_batches`` on device-resident uint8 data and
  ``train_one_epoch`` with the fast-path settings of ``ExperimentConfig``.

Both train the same network (``labkit.build_network``) from the same initial
weights with Adam. Each round times the baseline and then labkit, and the
medians over rounds are reported. Untimed warm-up batches run first. The
baseline's worker start-up stays outside its timed training steps and data
batches, but inside its timed validation pass, because the course starts the
workers again for every pass.

Usage:
    python benchmarks/throughput.py --device cpu --steps 10 --json throughput.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import labkit
from labkit.config import ExperimentConfig
from labkit.data import (
    CIFAR_MEAN, CIFAR_STD, DeviceSplit, course_split, iterate_batches, load_cifar100, synthetic_images,
    synthetic_templates,
)
from labkit.hooks import GradientRecorder
from labkit.networks import build_network, model_name
from labkit.trainer import _execution, build_optimizer, evaluate, select_device, train_one_epoch

logger = logging.getLogger("throughput")

# The two VGG_38 variants of the lab: the one that fails to train and the one that trains best.
VARIANTS = {"plain": {"bn": False, "residual": False}, "bn_rc": {"bn": True, "residual": True}}
NUM_CLASSES = 100
NUM_BLOCKS_PER_STAGE = 5  # VGG_38


class PILImageDataset(Dataset):
    """Images handed out as PIL images through a transform, as torchvision's CIFAR100 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images  # N x H x W x C uint8
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def baseline_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int,
                    train: bool) -> DataLoader:
    """DataLoader of the course's pipeline; training batches are shuffled and augmented."""
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = PILImageDataset(images, labels, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers)


def baseline_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                  device: torch.device, history: dict[str, list]) -> None:
    """Run one training step as the course does, with its per-step host copies and list appends."""
    images, labels = images.to(device), labels.to(device)
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    predicted = logits.detach().argmax(dim=1)
    # A list of one-element tensors averaged by NumPy: the conversion the course does each step.
    history["train_acc"].append(np.mean(list(predicted.eq(labels).cpu())))
    history["train_loss"].append(loss.detach().cpu().item())


@torch.no_grad()
def baseline_eval_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                       history: dict[str, list]) -> None:
    """Run one evaluation step as the course does, at the training batch size."""
    images, labels = images.to(device), labels.to(device)
    model.eval()
    logits = model(images)
    history["val_acc"].append(np.mean(list(logits.argmax(dim=1).eq(labels).cpu())))
    history["val_loss"].append(F.cross_entropy(logits, labels).cpu().item())


# Timing and memory.

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator peak, or on Linux this process's peak resident set."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        # Writing 5 resets VmHWM (Linux 4.0 and later).
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.warning("cannot reset the peak resident set; peaks include earlier measurements")


def peak_memory(device: torch.device) -> int:
    """Peak bytes since the last reset: CUDA memory allocated, or this process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(run: Callable[[], int], device: torch.device) -> tuple[float, int]:
    """Run ``run`` (which returns its image count) and return (images per second, peak memory bytes)."""
    reset_peak_memory(device)
    synchronize(device)
    started = time.perf_counter()
    images = run()
    synchronize(device)
    seconds = time.perf_counter() - started
    return images / seconds, peak_memory(device)


def take(batches: Iterator, count: int, device: torch.device) -> int:
    """Pull ``count`` batches onto ``device``; return the number of images."""
    images = 0
    for _ in range(count):
        inputs, labels = next(batches)
        inputs, labels = inputs.to(device), labels.to(device)
        images += labels.shape[0]
    return images


# The two pipelines.

def to_split(images: np.ndarray, labels: np.ndarray, device: torch.device) -> DeviceSplit:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return DeviceSplit(tensor.to(device), torch.from_numpy(labels).to(device))


def new_model(variant: dict, config: ExperimentConfig, device: torch.device,
              memory_format: torch.memory_format) -> nn.Module:
    """Build VGG_38 with the initial weights of ``config.seed``."""
    torch.manual_seed(config.seed)
    model = build_network(NUM_BLOCKS_PER_STAGE, num_classes=NUM_CLASSES, **variant)
    return model.to(device, memory_format=memory_format)


class BaselineRunner:
    """The course's pipeline for one network variant: a DataLoader of PIL transforms and its training step."""

    def __init__(self, variant: dict, train, val, args: argparse.Namespace, config: ExperimentConfig,
                 device: torch.device) -> None:
        self.device = device
        self.val = val
        self.args = args
        self.model = new_model(variant, config, device, torch.contiguous_format)
        # The course's optimizer: Adam with PyTorch's default implementation.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.history: dict[str, list] = defaultdict(list)
        self.loader = baseline_loader(*train, args.batch_size, args.workers, train=True)
        self.batches: Iterator | None = None

    def start_workers(self) -> None:
        """Start the workers and wait for their first batch, so that start-up stays out of the timed steps.

        In a long epoch the workers keep their queue full while the model
        trains, so a queue filled before the first timed step is the steady state.
        """
        self.batches = iter(self.loader)
        self.batches = itertools.chain([next(self.batches)], self.batches)

    def stop_workers(self) -> None:
        # Dropping the iterator shuts its worker processes down, so they never run while labkit is timed.
        self.batches = None

    def train_steps(self, count: int) -> int:
        done = 0
        for _ in range(count):
            images, labels = next(self.batches)
            baseline_step(self.model, self.optimizer, images, labels, self.device, self.history)
            done += labels.shape[0]
        return done

    def eval_pass(self) -> int:
        # A new DataLoader starts its workers on every pass, as each validation pass in the course does.
        done = 0
        for images, labels in baseline_loader(*self.val, self.args.batch_size, self.args.workers, train=False):
            baseline_eval_step(self.model, images, labels, self.device, self.history)
            done += labels.shape[0]
        return done


class LabkitRunner:
    """labkit's trainer for one network variant, on device-resident data."""

    def __init__(self, variant: dict, val, config: ExperimentConfig, device: torch.device) -> None:
        self.config = config.replace(**variant)
        self.execution = _execution(self.config, device)
        self.model = new_model(variant, self.config, device, self.execution.memory_format)
        self.optimizer, _ = build_optimizer(self.model, self.config)
        self.train_model = torch.compile(self.model) if self.config.compile else self.model
        self.recorder = GradientRecorder(self.model, every=self.config.grad_every)
        self.val = to_split(*val, device)
        self.epochs = 0

    def epoch(self, split: DeviceSplit) -> int:
        self.epochs += 1
        train_one_epoch(self.train_model, split, self.optimizer, self.config, self.epochs, self.execution)
        # fit reads the gradient statistics once per epoch, which syncs the device once.
        self.recorder.end_epoch(self.epochs)
        return len(split)

    def eval_pass(self, split: DeviceSplit | None = None) -> int:
        split = split or self.val
        evaluate(self.train_model, split, self.config.eval_batch_size, self.execution)
        return len(split)

    def close(self) -> None:
        self.recorder.remove()


# The measurements. Each round times the baseline, then labkit, so that a
# change in the machine's load during the run reaches both alike.

def measure_data(train: tuple[np.ndarray, np.ndarray], args: argparse.Namespace, config: ExperimentConfig,
                 device: torch.device) -> dict[str, list[float]]:
    """Time both data paths without a model; return images per second of every round."""
    images, labels = train
    loader = baseline_loader(images, labels, args.batch_size, args.workers, train=True)
    execution = _execution(config, device)
    generator = torch.Generator(device=device).manual_seed(0)
    split = to_split(images, labels, device)
    batches = iterate_batches(split, args.batch_size, generator, augment=True, memory_format=execution.memory_format)
    take(batches, args.warmup, device)

    rates = defaultdict(list)
    for _ in range(args.repeats):
        # NOTE: the workers may have loaded up to prefetch_factor x workers batches during the
        # warm-up, which the timed span then gets for free. This favours the baseline.
        baseline = iter(loader)
        take(baseline, args.warmup, device)
        rates["baseline_data_img_per_s"].append(timed(lambda: take(baseline, args.data_steps, device), device)[0])
        del baseline  # stops the workers before labkit is timed
        rates["labkit_data_img_per_s"].append(timed(lambda: take(batches, args.data_steps, device), device)[0])
    return rates


def measure_variant(variant: dict, train, val, args: argparse.Namespace, config: ExperimentConfig,
                    device: torch.device) -> dict[str, list[float]]:
    """Time training and evaluation of both pipelines for one variant; return every round's figures."""
    baseline = BaselineRunner(variant, train, val, args, config, device)
    labkit_runner = LabkitRunner(variant, val, config, device)
    steps_images = args.steps * args.batch_size
    warm = args.warmup * args.batch_size
    splits = [to_split(train[0][start:start + steps_images], train[1][start:start + steps_images], device)
              for start in range(warm, warm + args.repeats * steps_images, steps_images)]
    first_batch = DeviceSplit(labkit_runner.val.images[:config.eval_batch_size],
                              labkit_runner.val.labels[:config.eval_batch_size])

    figures = defaultdict(list)
    try:
        baseline.start_workers()
        baseline.train_steps(args.warmup)
        baseline.stop_workers()
        labkit_runner.epoch(to_split(train[0][:warm], train[1][:warm], device))
        for split in splits:
            baseline.start_workers()
            record(figures, "baseline_epoch", timed(lambda: baseline.train_steps(args.steps), device))
            baseline.stop_workers()
            record(figures, "labkit_epoch", timed(lambda: labkit_runner.epoch(split), device))
        labkit_runner.eval_pass(first_batch)
        for _ in range(args.repeats):
            record(figures, "baseline_eval", timed(baseline.eval_pass, device))
            record(figures, "labkit_eval", timed(labkit_runner.eval_pass, device))
    finally:
        baseline.stop_workers()
        labkit_runner.close()
    return figures


def record(figures: dict[str, list], prefix: str, measurement: tuple[float, int]) -> None:
    rate, peak = measurement
    figures[f"{prefix}_img_per_s"].append(rate)
    figures[f"{prefix}_peak_memory_bytes"].append(peak)


# Data.

def load_arrays(args: argparse.Namespace) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
    """Return (train images, labels), (validation images, labels) and the data source name.

    Synthetic data has exactly the images the timed batches need. CIFAR-100
    uses the course's split and takes the first images of each part.
    """
    num_train = args.batch_size * (args.warmup + args.repeats * max(args.steps, args.data_steps))
    if args.data_dir is None:
        templates = synthetic_templates(NUM_CLASSES, seed=0)
        train = synthetic_images(num_train, NUM_CLASSES, seed=1, templates=templates)
        val = synthetic_images(args.eval_images, NUM_CLASSES, seed=2, templates=templates)
        return train, val, "synthetic"

    arrays = load_cifar100(args.data_dir, download=False)
    train_idx, val_idx = course_split(len(arrays.train_images))
    if num_train > len(train_idx) or args.eval_images > len(val_idx):
        raise SystemExit(
            f"{args.data_dir} has {len(train_idx)} training and {len(val_idx)} validation images, but "
            f"--warmup {args.warmup}, --repeats {args.repeats} and --steps {args.steps} or --data-steps "
            f"{args.data_steps} at --batch-size {args.batch_size} need {num_train}, and --eval-images needs "
            f"{args.eval_images}; lower them"
        )
    train_idx, val_idx = train_idx[:num_train], val_idx[:args.eval_images]
    train = (arrays.train_images[train_idx], arrays.train_labels[train_idx])
    val = (arrays.train_images[val_idx], arrays.train_labels[val_idx])
    return train, val, arrays.source


# Reporting.

def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo, or the platform module's processor name."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """Describe the hardware and software that produce the figures."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # OpenMP's wait policy decides whether idle threads spin, which matters on a busy machine.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "labkit": labkit.__version__,
    }


def condense(rounds: dict[str, list[float]], kinds: tuple[str, ...]) -> dict:
    """Reduce every round's figures to medians of rates and ratios and maxima of peaks; keep the rounds too.

    A ratio pairs the baseline and labkit figures of the same round, which ran
    back to back, and the median of those ratios is reported.
    """
    figures: dict = {}
    for key, values in rounds.items():
        figures[key] = max(values) if key.endswith("peak_memory_bytes") else statistics.median(values)
    for kind in kinds:
        pairs = zip(rounds[f"labkit_{kind}_img_per_s"], rounds[f"baseline_{kind}_img_per_s"])
        figures[f"{kind}_ratio"] = statistics.median(labkit_rate / baseline_rate for labkit_rate, baseline_rate in pairs)
    for pipeline in ("baseline", "labkit"):
        peaks = [value for key, value in figures.items() if key.startswith(pipeline) and key.endswith("peak_memory_bytes")]
        if peaks:
            figures[f"{pipeline}_peak_memory_bytes"] = max(peaks)
    figures["rounds"] = dict(rounds)
    return figures


def summarize(result: dict) -> None:
    """Copy the epoch figures of the variant with the lowest epoch ratio to the top level, and the overall peak."""
    model, worst = min(result["variants"].items(), key=lambda item: item[1]["epoch_ratio"])
    result["model"] = model
    for key in ("baseline_epoch_img_per_s", "labkit_epoch_img_per_s", "epoch_ratio"):
        result[key] = worst[key]
    result["peak_memory_bytes"] = max(
        max(figures["baseline_peak_memory_bytes"], figures["labkit_peak_memory_bytes"])
        for figures in result["variants"].values()
    )


def format_table(result: dict) -> str:
    """Format images per second and peak memory as a short plain-text table."""
    lines = [
        f"device {result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"torch threads {result['torch_threads']}, 1-minute load {result['load_average_1min']:.1f}",
        f"{result['data']} data, batch {result['batch_size']}, {result['warmup']} warm-up batches, then "
        f"{result['repeats']} rounds of {result['data_steps']} data batches and {result['steps']} training steps, "
        f"baseline with {result['workers']} workers; medians",
        f"{'':28}{'baseline':>12}{'labkit':>12}{'ratio':>9}",
        f"{'data path (img/s)':28}{result['baseline_data_img_per_s']:12,.0f}"
        f"{result['labkit_data_img_per_s']:12,.0f}{result['data_ratio']:8.2f}x",
    ]
    for model, figures in result["variants"].items():
        for kind in ("epoch", "eval"):
            lines.append(f"{f'{model} {kind} (img/s)':28}{figures[f'baseline_{kind}_img_per_s']:12,.1f}"
                         f"{figures[f'labkit_{kind}_img_per_s']:12,.1f}{figures[f'{kind}_ratio']:8.2f}x")
        lines.append(f"{f'{model} peak memory (MiB)':28}{figures['baseline_peak_memory_bytes'] / 2**20:12,.0f}"
                     f"{figures['labkit_peak_memory_bytes'] / 2**20:12,.0f}")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="torch device: auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed training steps per round, pipeline and variant")
    parser.add_argument("--data-steps", type=positive_int, default=50, help="timed batches per round of the data paths alone")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="rounds of baseline-then-labkit timing; medians are reported")
    parser.add_argument("--warmup", type=positive_int, default=2, help="untimed steps before the first round")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="training images per step (course: 100)")
    parser.add_argument("--eval-images", type=positive_int, default=1000, help="images in the timed validation pass")
    parser.add_argument("--eval-batch-size", type=positive_int, default=ExperimentConfig.eval_batch_size,
                        help="labkit's images per evaluation step (default: %(default)s, as ExperimentConfig)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes of the baseline (course: 4)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="VGG_38 variants to train: plain, bn_rc (BatchNorm and residual connections)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="labkit's bfloat16 autocast (default: on for CUDA only)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="labkit's NHWC memory format (default: on for CUDA only)")
    parser.add_argument("--compile", action="store_true", help="wrap labkit's model in torch.compile")
    parser.add_argument("--grad-every", type=positive_int, default=ExperimentConfig.grad_every,
                        help="labkit records gradient statistics every this many steps (default: %(default)s, as fit)")
    parser.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--data-dir", help="folder or archive of CIFAR-100; default: synthetic CIFAR-shaped data")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure both pipelines, print the table, and write the JSON file when asked."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.workers > (os.cpu_count() or 1):
        # The course's worker count, kept on purpose; the comparison reports it.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        logger.info("the baseline starts %d DataLoader workers on %d CPU cores", args.workers, os.cpu_count())
    config = ExperimentConfig(device=str(device), batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                              bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                              grad_every=args.grad_every, progress=False, epochs=1)
    execution = _execution(config, device)
    train, val, source = load_arrays(args)

    result = {**machine(device), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "data": source,
              "batch_size": args.batch_size, "steps": args.steps, "data_steps": args.data_steps, "warmup": args.warmup,
              "repeats": args.repeats,
              "eval_images": len(val[1]), "eval_batch_size": config.eval_batch_size, "workers": args.workers,
              "bf16": execution.bf16, "channels_last": execution.memory_format == torch.channels_last,
              "compile": config.compile, "grad_every": config.grad_every, "variants": {}}
    logger.info("measuring the data paths")
    result.update(condense(measure_data(train, args, config, device), kinds=("data",)))
    result["data_rounds"] = result.pop("rounds")
    for key in args.variants:
        name = model_name(NUM_BLOCKS_PER_STAGE, bn=VARIANTS[key]["bn"], residual=VARIANTS[key]["residual"])
        logger.info("measuring %s", name)
        rounds = measure_variant(VARIANTS[key], train, val, args, config, device)
        result["variants"][name] = condense(rounds, kinds=("epoch", "eval"))
    result["load_average_1min_after"] = os.getloadavg()[0]
    summarize(result)

    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
