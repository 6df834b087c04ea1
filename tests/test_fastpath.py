"""The fast path keeps results equivalent to the plain path."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from labkit.config import ExperimentConfig
from labkit.data import (
    CIFAR_MEAN, CIFAR_STD, DeviceSplit, from_arrays, iterate_batches, normalize, random_crop, random_crop_flip,
    random_flip, synthetic_images, synthetic_templates, to_device_data,
)
from labkit.networks import build_network
from labkit.trainer import _cudnn_autotune, _execution, build_optimizer, evaluate, fit, train_one_epoch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def reference_normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, -1, 1, 1)
    return (images.double() / 255.0 - mean) / std


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These runs are too small to gain from a second thread, and on a shared
    # two-core machine a second OpenMP thread waiting for a busy core slowed
    # them several times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uint8_batch() -> torch.Tensor:
    return torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# The data path.

@pytest.mark.parametrize("padding", [0, 1, 4])
def test_crop_flip_matches_separate_steps(uint8_batch, padding):
    fused = random_crop_flip(uint8_batch, padding, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    separate = random_flip(random_crop(uint8_batch, padding, generator), generator)
    assert fused.is_contiguous()
    assert torch.equal(fused, separate)


def test_crop_flip_matches_torchvision(uint8_batch):
    images = uint8_batch[:16]
    out = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    # Replay the draws: row offsets, column offsets, then flips.
    generator = torch.Generator().manual_seed(7)
    dy = torch.randint(0, 9, (16,), generator=generator)
    dx = torch.randint(0, 9, (16,), generator=generator)
    flip = torch.rand(16, generator=generator) < 0.5
    for i in range(16):
        expected = TF.crop(TF.pad(images[i], [4]), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            expected = TF.hflip(expected)
        assert torch.equal(out[i], expected), f"image {i}: dy={int(dy[i])} dx={int(dx[i])} flip={bool(flip[i])}"


def test_normalize_matches_formula(uint8_batch):
    out = normalize(uint8_batch)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_normalize(uint8_batch), rtol=0, atol=1e-5)


def test_normalize_keeps_channels_last(uint8_batch):
    batch = uint8_batch.contiguous(memory_format=torch.channels_last)
    out = normalize(batch)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), reference_normalize(uint8_batch), rtol=0, atol=1e-5)


def test_normalize_leaves_float_input_unchanged():
    images = torch.full((2, 3, 4, 4), 255.0)
    normalize(images)
    assert torch.equal(images, torch.full((2, 3, 4, 4), 255.0))


def test_normalize_after_inference_mode_supports_autograd():
    # The constants are cached on first use, here inside inference mode.
    with torch.inference_mode():
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), dtype=torch.float64)
    images = torch.full((1, 3, 2, 2), 128.0, dtype=torch.float64, requires_grad=True)
    normalize(images, dtype=torch.float64).sum().backward()
    expected = [1 / (255 * std) for std in CIFAR_STD]
    assert images.grad[0, :, 0, 0].tolist() == pytest.approx(expected)


def test_batches_equal_across_memory_formats(uint8_batch):
    split = DeviceSplit(uint8_batch, torch.arange(len(uint8_batch)))
    batches = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        generator = torch.Generator().manual_seed(1)
        batches[memory_format] = list(iterate_batches(split, 20, generator, augment=True, memory_format=memory_format))
    for (plain, plain_labels), (nhwc, nhwc_labels) in zip(batches[torch.contiguous_format], batches[torch.channels_last]):
        assert nhwc.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(plain, nhwc)
        assert torch.equal(plain_labels, nhwc_labels)


# Training switches. A small BN+RC network learns within a few epochs on this
# data, so its curves move and a change in results would show.

TINY = dict(num_blocks_per_stage=1, num_filters=8, num_classes=10, bn=True, residual=True, epochs=2,
            batch_size=50, progress=False, device="cpu")
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


@pytest.fixture(scope="module")
def tiny_arrays():
    templates = synthetic_templates(10, seed=0)
    train_images, train_labels = synthetic_images(400, 10, seed=1, templates=templates)
    test_images, test_labels = synthetic_images(100, 10, seed=2, templates=templates)
    return from_arrays(train_images, train_labels, test_images, test_labels, source="synthetic")


def curves(arrays, **changes) -> np.ndarray:
    """Return an epochs x metrics array of a tiny run's history."""
    result = fit(ExperimentConfig(**{**TINY, **changes}), data=arrays)
    return np.array([[row[name] for name in METRICS] for row in result.history])


@pytest.fixture(scope="module")
def reference_curves(tiny_arrays) -> np.ndarray:
    return curves(tiny_arrays)


@pytest.fixture(scope="module")
def seed_spread(tiny_arrays, reference_curves) -> float:
    """Largest loss difference between two seeds: the run-to-run noise a switch must stay well inside."""
    other = curves(tiny_arrays, seed=1)
    return float(np.abs(other[:, [0, 2]] - reference_curves[:, [0, 2]]).max())


def test_reference_curves_move(reference_curves, seed_spread):
    # Without learning, equal curves would prove nothing.
    assert reference_curves[-1, 0] < reference_curves[0, 0] - 0.05
    assert seed_spread > 0.01


@pytest.mark.parametrize("switch, fraction", [({"channels_last": True}, 0.25), ({"bf16": True}, 0.5)])
def test_switch_stays_within_seed_noise(tiny_arrays, reference_curves, seed_spread, switch, fraction):
    switched = curves(tiny_arrays, **switch)
    loss_gap = np.abs(switched[:, [0, 2]] - reference_curves[:, [0, 2]]).max()
    assert loss_gap < fraction * seed_spread, f"{switch}: loss gap {loss_gap:.4f}, seed spread {seed_spread:.4f}"


def test_log_every_leaves_results_unchanged(tiny_arrays, reference_curves):
    np.testing.assert_array_equal(curves(tiny_arrays, log_every=1), reference_curves)


def test_eval_batch_size_leaves_metrics_unchanged(tiny_arrays):
    result = fit(ExperimentConfig(**{**TINY, "epochs": 1}), data=tiny_arrays)
    split = to_device_data(tiny_arrays, "cpu").test
    large = evaluate(result.model, split, batch_size=1000)
    small = evaluate(result.model, split, batch_size=7)
    assert small["acc"] == large["acc"]
    assert small["loss"] == pytest.approx(large["loss"], rel=1e-6)


@pytest.mark.slow
def test_compiled_model_matches_eager(tiny_arrays, reference_curves, monkeypatch):
    # Inductor needs minutes of C++ compilation on a small CPU; aot_eager traces
    # the same graphs, hooks included, without code generation.
    compile_eagerly = functools.partial(torch.compile, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    compiled = curves(tiny_arrays, compile=True)
    np.testing.assert_allclose(compiled, reference_curves, rtol=1e-4, atol=1e-5)


def test_epoch_reads_host_only_every_log_every(tiny_arrays, monkeypatch):
    config = ExperimentConfig(**{**TINY, "log_every": 1000})
    split = to_device_data(tiny_arrays, "cpu").train  # 380 images: 8 steps of 50
    model = build_network(1, num_filters=8, num_classes=10, bn=True, residual=True)
    optimizer, _ = build_optimizer(model, config)
    reads = []
    for name in ("item", "cpu", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, counting(original, name, reads))
    train_one_epoch(model, split, optimizer, config, 1, _execution(config, torch.device("cpu")))
    # One divergence check and the two means, at the end of the epoch only.
    assert reads == ["item", "item", "item"]


def counting(method, name: str, reads: list[str]):
    """Wrap a Tensor method so that calls from labkit's own code are listed in ``reads``."""
    def wrapper(self, *args, **kwargs):
        # PyTorch's CPU Adam reads its step counters with item(), which is not labkit's doing.
        if sys._getframe(1).f_globals.get("__name__", "").startswith("labkit"):
            reads.append(name)
        return method(self, *args, **kwargs)
    return wrapper


@pytest.mark.parametrize("device, inside", [("cpu", False), ("cuda", True)])
def test_cudnn_autotune_scoped_to_cuda(device, inside):
    # Setting the flag needs no GPU, so the CUDA case runs on CPU-only machines too.
    before = torch.backends.cudnn.benchmark
    with _cudnn_autotune(torch.device(device)):
        assert torch.backends.cudnn.benchmark is (inside or before)
    assert torch.backends.cudnn.benchmark is before


# The throughput benchmark.

REQUIRED_KEYS = ("baseline_data_img_per_s", "labkit_data_img_per_s", "baseline_epoch_img_per_s",
                 "labkit_epoch_img_per_s", "data_ratio", "epoch_ratio", "peak_memory_bytes")


def test_benchmark_writes_positive_figures(tmp_path):
    output = tmp_path / "throughput.json"
    command = [sys.executable, str(BENCHMARK), "--device", "cpu", "--steps", "2", "--data-steps", "2", "--repeats", "2", "--warmup", "1",
               "--batch-size", "8", "--eval-images", "16", "--workers", "1", "--threads", "1", "--json", str(output)]
    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    figures = json.loads(output.read_text())

    assert figures["device"] == "cpu"
    assert figures["data"] == "synthetic"
    assert figures["workers"] == 1
    assert set(figures["variants"]) == {"VGG_38", "VGG_38 BN+RC"}
    assert figures["model"] in figures["variants"]
    for key in REQUIRED_KEYS:
        assert figures[key] > 0, key
    assert len(figures["data_rounds"]["labkit_data_img_per_s"]) == 2
    for name, variant in figures["variants"].items():
        for key, value in variant.items():
            if key != "rounds":
                assert value > 0, f"{name}: {key}"
        for key, values in variant["rounds"].items():
            assert len(values) == 2, f"{name}: {key}"
    assert "data path" in finished.stdout


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: must be a whole number >= 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--variants", "bn"], "--variants: invalid choice: 'bn'"),
])
def test_benchmark_rejects_invalid_arguments(argv, message, capsys):
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARK)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    with pytest.raises(SystemExit) as exit_info:
        throughput.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
