"""The fast path keeps results equivalent to the plain path."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from labkit.data import CIFAR_MEAN, CIFAR_STD, DeviceSplit, iterate_batches, normalize, random_crop, random_crop_flip, random_flip


def reference_normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, -1, 1, 1)
    return (images.double() / 255.0 - mean) / std


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
