"""Images per second of labkit's training against the course's original pipeline.

One process measures, one after the other:

- the baseline: a re-implementation of the course's data path and training
  step. A Dataset hands out PIL images through RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor and Normalize in a DataLoader with worker
  processes. Every step copies the loss and the per-image correctness to the
  host with ``.cpu()`` and appends them to Python lists, in fp32.
- labkit: ``iterate_batches`` on device-resident uint8 data and
  ``train_one_epoch`` with the fast-path settings of ``ExperimentConfig``.

Both train the same network (``labkit.build_network``) from the same initial
weights with the same Adam optimizer. Warm-up steps run before every timed
span and are not counted. Evaluation is timed separately from the epoch.

Usage:
    python benchmarks/throughput.py --device cpu --steps 10 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import time
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


# The measurements.

def measure_data(train: tuple[np.ndarray, np.ndarray], args: argparse.Namespace, config: ExperimentConfig,
                 device: torch.device) -> dict[str, float]:
    """Images per second of both data paths, without a model."""
    images, labels = train
    baseline = iter(baseline_loader(images, labels, args.batch_size, args.workers, train=True))
    take(baseline, args.warmup, device)
    baseline_rate, _ = timed(lambda: take(baseline, args.steps, device), device)

    execution = _execution(config, device)
    split = to_split(images, labels, device)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = iterate_batches(split, args.batch_size, generator, augment=True, memory_format=execution.memory_format)
    take(batches, args.warmup, device)
    labkit_rate, _ = timed(lambda: take(batches, args.steps, device), device)
    return {"baseline_data_img_per_s": baseline_rate, "labkit_data_img_per_s": labkit_rate}


def to_split(images: np.ndarray, labels: np.ndarray, device: torch.device) -> DeviceSplit:
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return DeviceSplit(tensor.to(device), torch.from_numpy(labels).to(device))


def measure_baseline(variant: dict, train, val, args, config, device) -> dict[str, float]:
    """Training and evaluation throughput of the course's pipeline for one network variant."""
    model = new_model(variant, config, device, torch.contiguous_format)
    # The course's optimizer: Adam with PyTorch's default implementation.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: dict[str, list] = defaultdict(list)
    batches = iter(baseline_loader(*train, args.batch_size, args.workers, train=True))

    def train_steps(count: int) -> int:
        done = 0
        for _ in range(count):
            images, labels = next(batches)
            baseline_step(model, optimizer, images, labels, device, history)
            done += labels.shape[0]
        return done

    def eval_pass() -> int:
        # A new DataLoader starts its workers on every pass, as each validation pass in the course does.
        done = 0
        for images, labels in baseline_loader(*val, args.batch_size, args.workers, train=False):
            baseline_eval_step(model, images, labels, device, history)
            done += labels.shape[0]
        return done

    train_steps(args.warmup)
    epoch_rate, epoch_peak = timed(lambda: train_steps(args.steps), device)
    eval_rate, eval_peak = timed(eval_pass, device)
    return {"baseline_epoch_img_per_s": epoch_rate, "baseline_eval_img_per_s": eval_rate,
            "baseline_peak_memory_bytes": max(epoch_peak, eval_peak)}


def measure_labkit(variant: dict, train, val, args, config, device) -> dict[str, float]:
    """Training and evaluation throughput of labkit's trainer for one network variant."""
    config = config.replace(**variant)
    execution = _execution(config, device)
    model = new_model(variant, config, device, execution.memory_format)
    optimizer, _ = build_optimizer(model, config)
    train_model = torch.compile(model) if config.compile else model
    recorder = GradientRecorder(model, every=config.grad_every)
    warm = args.warmup * args.batch_size
    warm_split = to_split(train[0][:warm], train[1][:warm], device)
    timed_split = to_split(train[0][warm:], train[1][warm:], device)
    val_split = to_split(*val, device)

    def epoch(split: DeviceSplit, number: int) -> int:
        train_one_epoch(train_model, split, optimizer, config, number, execution)
        # fit reads the gradient statistics once per epoch, which syncs the device once.
        recorder.end_epoch(number)
        return len(split)

    def eval_pass(split: DeviceSplit) -> int:
        evaluate(train_model, split, config.eval_batch_size, execution)
        return len(split)

    try:
        epoch(warm_split, 1)
        epoch_rate, epoch_peak = timed(lambda: epoch(timed_split, 2), device)
        eval_pass(DeviceSplit(val_split.images[:config.eval_batch_size], val_split.labels[:config.eval_batch_size]))
        eval_rate, eval_peak = timed(lambda: eval_pass(val_split), device)
    finally:
        recorder.remove()
    return {"labkit_epoch_img_per_s": epoch_rate, "labkit_eval_img_per_s": eval_rate,
            "labkit_peak_memory_bytes": max(epoch_peak, eval_peak)}


def new_model(variant: dict, config: ExperimentConfig, device: torch.device,
              memory_format: torch.memory_format) -> nn.Module:
    """VGG_38 with the initial weights of ``config.seed``."""
    torch.manual_seed(config.seed)
    model = build_network(NUM_BLOCKS_PER_STAGE, num_classes=NUM_CLASSES, **variant)
    return model.to(device, memory_format=memory_format)


# Data.

def load_arrays(args: argparse.Namespace) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
    """Return (train images, labels), (validation images, labels) and the data source name.

    Synthetic data has exactly the images the timed steps need. CIFAR-100 uses
    the course's split and takes the first images of each part.
    """
    num_train = args.batch_size * (args.warmup + args.steps)
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
            f"--steps {args.steps} and --warmup {args.warmup} at --batch-size {args.batch_size} need {num_train} "
            f"and --eval-images needs {args.eval_images}; lower them"
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
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "labkit": labkit.__version__,
    }


def summarize(result: dict) -> None:
    """Add the ratios, and the top-level figures of the variant with the lowest epoch ratio."""
    result["data_ratio"] = result["labkit_data_img_per_s"] / result["baseline_data_img_per_s"]
    for figures in result["variants"].values():
        figures["epoch_ratio"] = figures["labkit_epoch_img_per_s"] / figures["baseline_epoch_img_per_s"]
        figures["eval_ratio"] = figures["labkit_eval_img_per_s"] / figures["baseline_eval_img_per_s"]
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
        f"device {result['device']} ({result['device_name']}), {result['data']} data, batch {result['batch_size']}, "
        f"{result['steps']} timed steps after {result['warmup']}, baseline with {result['workers']} workers",
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
    parser.add_argument("--steps", type=positive_int, default=10, help="timed training steps per pipeline and variant")
    parser.add_argument("--warmup", type=positive_int, default=2, help="untimed steps before each timed span")
    parser.add_argument("--batch-size", type=positive_int, default=100, help="training images per step (course: 100)")
    parser.add_argument("--eval-images", type=positive_int, default=1000, help="images in the timed validation pass")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader worker processes of the baseline (course: 4)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                        help="VGG_38 variants to train: plain, bn_rc (BatchNorm and residual connections)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="labkit's bfloat16 autocast (default: on for CUDA only)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="labkit's NHWC memory format (default: on for CUDA only)")
    parser.add_argument("--compile", action="store_true", help="wrap labkit's model in torch.compile")
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
    config = ExperimentConfig(device=str(device), batch_size=args.batch_size, bf16=args.bf16,
                              channels_last=args.channels_last, compile=args.compile, progress=False, epochs=1)
    execution = _execution(config, device)
    train, val, source = load_arrays(args)

    result = {**machine(device), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "data": source,
              "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
              "eval_images": len(val[1]), "eval_batch_size": config.eval_batch_size, "workers": args.workers,
              "bf16": execution.bf16, "channels_last": execution.memory_format == torch.channels_last,
              "compile": config.compile, "grad_every": config.grad_every, "variants": {}}
    logger.info("measuring the data paths")
    result.update(measure_data(train, args, config, device))
    for key in args.variants:
        name = model_name(NUM_BLOCKS_PER_STAGE, bn=VARIANTS[key]["bn"], residual=VARIANTS[key]["residual"])
        logger.info("measuring %s: baseline", name)
        figures = measure_baseline(VARIANTS[key], train, val, args, config, device)
        logger.info("measuring %s: labkit", name)
        figures.update(measure_labkit(VARIANTS[key], train, val, args, config, device))
        result["variants"][name] = figures
    result["load_average_1min_after"] = os.getloadavg()[0]
    summarize(result)

    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
