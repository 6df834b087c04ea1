"""CIFAR-100 and stand-in data, kept on the training device as uint8 tensors.

The archive reader accepts the official ``cifar-100-python.tar.gz`` (or its
extracted folder) and labkit's synthetic archive in the same format. Batches
are cut, augmented and normalized on the device, with no PIL and no Python
loop over images.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import CIFAR100

from labkit import runfolder

logger = logging.getLogger(__name__)

ARCHIVE_NAME = CIFAR100.filename  # "cifar-100-python.tar.gz"
FOLDER_NAME = CIFAR100.base_folder  # "cifar-100-python"
# Official md5 sums, as torchvision's CIFAR100 dataset class lists them.
MEMBER_MD5 = {
    "train": CIFAR100.train_list[0][1],
    "test": CIFAR100.test_list[0][1],
    "meta": CIFAR100.meta["md5"],
}
SYNTHETIC_MANIFEST = "SYNTHETIC.json"

# The course's per-channel normalization constants.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# The course keeps 47,500 of the 50,000 training images for training.
TRAIN_FRACTION = 0.95

MANUAL_HELP = (
    f"Download {CIFAR100.url} on a machine with internet access, check that its md5 is "
    f"{CIFAR100.tgz_md5}, and place {ARCHIVE_NAME} in the data folder (or pass its path as data_dir)."
)


class DataError(RuntimeError):
    """A missing, corrupt or unreadable dataset file."""


@dataclass
class ImageArrays:
    """Images (N x H x W x C, uint8) and integer labels of a train and a test set."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str  # "CIFAR-100", "synthetic" or a user's name for their data

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# Locating and reading archives.

def locate_archive(path: str | Path) -> Path:
    """Return the archive or extracted folder that ``path`` names or contains.

    A folder counts as extracted data when it contains any CIFAR-100 member, so
    that a missing member is reported by name rather than as missing data.

    Raises:
        DataError: when no CIFAR-100 archive or folder is found there.
    """
    path = Path(path)
    if path.name.endswith((".tar.gz", ".tgz")) and not path.exists():
        raise DataError(f"{path} not found. {MANUAL_HELP}")
    candidates = [path, path / ARCHIVE_NAME, path / FOLDER_NAME]
    for candidate in candidates:
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz")):
            return candidate
        if candidate.is_dir() and any((candidate / name).is_file() for name in (*MEMBER_MD5, SYNTHETIC_MANIFEST)):
            return candidate
    raise DataError(f"No CIFAR-100 data found at {path}: looked for {', '.join(map(str, candidates[1:]))}. {MANUAL_HELP}")


def _fix_hint(location: Path, synthetic: bool) -> str:
    """Say how to replace a damaged archive or folder, for real or synthetic data."""
    if synthetic:
        return (f"Delete {location}; labkit writes a new synthetic archive where none exists "
                "(data=synthetic), or call write_synthetic_cifar100.")
    return f"Delete {location} and download the archive again. {MANUAL_HELP}"


def _read_members(location: Path) -> dict[str, bytes]:
    """Read the train, test and meta files (and a synthetic manifest) as bytes."""
    names = [*MEMBER_MD5, SYNTHETIC_MANIFEST]
    members: dict[str, bytes] = {}
    if location.is_dir():
        for name in names:
            if (location / name).is_file():
                members[name] = (location / name).read_bytes()
        return members
    try:
        with tarfile.open(location, "r:gz") as archive:
            for info in archive.getmembers():
                name = Path(info.name).name
                if info.isfile() and name in names and Path(info.name).parent.name == FOLDER_NAME:
                    members[name] = archive.extractfile(info).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as error:
        # The archive's own md5 distinguishes a truncated official download from some other file.
        actual = md5_of(location.read_bytes())
        raise DataError(
            f"{location} is truncated or not a gzip tar archive ({error}); its md5 is {actual}, "
            f"the official archive's is {CIFAR100.tgz_md5}. {_fix_hint(location, synthetic=False)}"
        ) from None
    return members


def _check_members(location: Path, members: dict[str, bytes]) -> str:
    """Verify every member's md5 and return the data source name.

    The official md5 sums apply to CIFAR-100; a synthetic archive carries its
    own sums in its manifest.
    """
    synthetic = SYNTHETIC_MANIFEST in members
    expected = _manifest_md5(location, members[SYNTHETIC_MANIFEST]) if synthetic else MEMBER_MD5
    for name, md5 in expected.items():
        if name not in members:
            raise DataError(f"{location}: member {FOLDER_NAME}/{name} is missing. {_fix_hint(location, synthetic)}")
        actual = md5_of(members[name])
        if actual != md5:
            raise DataError(
                f"{location}: member {FOLDER_NAME}/{name} failed its md5 check "
                f"(expected {md5}, got {actual}), so the file is corrupt or truncated. {_fix_hint(location, synthetic)}"
            )
    return "synthetic" if synthetic else "CIFAR-100"


def _manifest_md5(location: Path, raw: bytes) -> dict[str, str]:
    """Return the member md5 sums that a synthetic archive's manifest lists."""
    try:
        expected = json.loads(raw)["md5"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{location}: member {FOLDER_NAME}/{SYNTHETIC_MANIFEST} is not a valid manifest ({error!r}). "
            f"{_fix_hint(location, synthetic=True)}"
        ) from None
    if not isinstance(expected, dict) or set(MEMBER_MD5) - set(expected):
        raise DataError(
            f"{location}: {FOLDER_NAME}/{SYNTHETIC_MANIFEST} must list md5 sums for {', '.join(MEMBER_MD5)}. "
            f"{_fix_hint(location, synthetic=True)}"
        )
    return expected


def _unpickle(location: Path, name: str, raw: bytes, keys: tuple[str, ...], source: str) -> dict:
    """Unpickle one member that passed its md5 check and check that it has ``keys``."""
    problem = ""
    try:
        # The official files were pickled by Python 2; latin1 keeps their byte strings intact.
        entry = pickle.loads(raw, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        problem = f"unpickling failed: {error!r}"
    else:
        if isinstance(entry, dict):
            entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
            missing = [key for key in keys if key not in entry]
            problem = f"keys {', '.join(missing)} are missing" if missing else ""
        else:
            problem = f"it holds a {type(entry).__name__}, not a dict"
    if problem:
        raise DataError(
            f"{location}: member {FOLDER_NAME}/{name} passed its md5 check but is not a CIFAR-100 file "
            f"({problem}). {_fix_hint(location, source == 'synthetic')}"
        )
    return entry


def _images(entry: dict) -> np.ndarray:
    # Rows hold 1024 red, then green, then blue values of a 32x32 image.
    return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar100(path: str | Path) -> ImageArrays:
    """Read CIFAR-100 (or labkit's synthetic stand-in) from an archive or folder.

    Raises:
        DataError: naming the file and the failed check, with how to fix it.
    """
    location = locate_archive(path)
    members = _read_members(location)
    source = _check_members(location, members)
    train = _unpickle(location, "train", members["train"], ("data", "fine_labels"), source)
    test = _unpickle(location, "test", members["test"], ("data", "fine_labels"), source)
    meta = _unpickle(location, "meta", members["meta"], ("fine_label_names",), source)
    return ImageArrays(
        train_images=_images(train),
        train_labels=np.asarray(train["fine_labels"], dtype=np.int64),
        test_images=_images(test),
        test_labels=np.asarray(test["fine_labels"], dtype=np.int64),
        class_names=list(meta["fine_label_names"]),
        source=source,
    )


def download_cifar100(root: str | Path, url: str = CIFAR100.url, md5: str = CIFAR100.tgz_md5) -> Path:
    """Download and verify the archive at ``url`` into ``root``; return its path.

    The download goes to a temporary folder and the file is moved into
    ``root`` only after its md5 matches ``md5``, so an interrupted download
    never leaves a file that passes as complete. A process killed mid-download
    leaves a ``.download-*`` folder behind, which is safe to delete.
    """
    from http.client import HTTPException

    from torchvision.datasets.utils import check_integrity, download_url

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / ARCHIVE_NAME
    if check_integrity(str(target), md5):
        return target
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as staging:
        logger.info("downloading %s to %s", url, target)
        try:
            download_url(url, staging, ARCHIVE_NAME, md5=None)
        except (OSError, RuntimeError, HTTPException) as error:
            raise DataError(f"Download of {url} failed ({error!r}); nothing was saved. {MANUAL_HELP}") from None
        partial = Path(staging) / ARCHIVE_NAME
        if not check_integrity(str(partial), md5):
            actual = md5_of(partial.read_bytes())
            raise DataError(
                f"Downloaded {ARCHIVE_NAME} from {url} failed its md5 check (expected {md5}, got {actual}, "
                f"{partial.stat().st_size} bytes), so it was discarded. {MANUAL_HELP}"
            )
        partial.replace(target)
    return target


def load_cifar100(data_dir: str | Path, download: bool = True) -> ImageArrays:
    """Read CIFAR-100 from ``data_dir``, downloading it first when allowed and missing."""
    try:
        location = locate_archive(data_dir)
    except DataError:
        if not download:
            raise
        location = download_cifar100(data_dir)
    return read_cifar100(location)


# The synthetic stand-in.

def synthetic_images(num_images: int, num_classes: int, seed: int, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw labelled images around per-class templates; returns (N x 32 x 32 x 3 uint8, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_images)
    noise = rng.normal(0.0, 28.0, size=(num_images, 32, 32, 3))
    brightness = rng.normal(0.0, 12.0, size=(num_images, 1, 1, 1))
    images = templates[labels] + noise + brightness
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def synthetic_templates(num_classes: int, seed: int) -> np.ndarray:
    """Make one smooth, mirror-symmetric 32x32 colour template per class.

    Templates are 4x4 random colour grids upsampled to 32x32, so their
    structure survives 4-pixel crops, and mirrored left-right, so horizontal
    flips keep them. This gives each class a learnable signature.
    """
    rng = np.random.default_rng(seed)
    half = rng.uniform(30.0, 225.0, size=(num_classes, 4, 2, 3))
    grid = np.concatenate([half, half[:, :, ::-1]], axis=2)
    upsampled = F.interpolate(
        torch.from_numpy(grid).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear", align_corners=False
    )
    return upsampled.permute(0, 2, 3, 1).numpy()


def write_synthetic_cifar100(
    root: str | Path, seed: int = 0, train_size: int = 50000, test_size: int = 10000, num_classes: int = 100
) -> Path:
    """Write a synthetic archive in the CIFAR-100 format to ``root`` and return its path.

    The archive holds the same members, pickle keys, shapes and dtypes as the
    official one, plus ``SYNTHETIC.json`` with its seed and member md5 sums,
    which marks it as synthetic wherever it is read. The same arguments give
    byte-identical members.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    templates = synthetic_templates(num_classes, seed)
    fine_names = [f"synthetic_class_{i:02d}" for i in range(num_classes)]
    members: dict[str, bytes] = {}
    for name, size, offset in (("train", train_size, 1), ("test", test_size, 2)):
        images, labels = synthetic_images(size, num_classes, seed * 1000 + offset, templates)
        entry = {
            "filenames": [f"synthetic_{name}_{i:05d}.png" for i in range(size)],
            "batch_label": f"synthetic {name} batch 1 of 1 (seed {seed})",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels % 20).tolist(),
            "data": images.transpose(0, 3, 1, 2).reshape(size, 3072),
        }
        members[name] = pickle.dumps(entry, protocol=2)
    meta = {"fine_label_names": fine_names, "coarse_label_names": [f"synthetic_group_{i:02d}" for i in range(20)]}
    members["meta"] = pickle.dumps(meta, protocol=2)
    manifest = {"seed": seed, "train_size": train_size, "test_size": test_size, "num_classes": num_classes,
                "md5": {name: md5_of(raw) for name, raw in members.items()}}
    members[SYNTHETIC_MANIFEST] = json.dumps(manifest, indent=2).encode()

    target = root / ARCHIVE_NAME

    def write_archive(handle: io.BufferedWriter) -> None:
        with tarfile.open(fileobj=handle, mode="w:gz") as archive:
            for name, raw in members.items():
                info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
                info.size = len(raw)
                archive.addfile(info, io.BytesIO(raw))

    # Written atomically, so a killed writer never leaves a half archive under the name load_synthetic checks.
    runfolder.atomic_write(target, write_archive)
    return target


def synthetic_dir(data_dir: str | Path, seed: int, train_size: int, test_size: int) -> Path:
    """Folder where the synthetic archive for these settings is cached."""
    return Path(data_dir) / f"synthetic-seed{seed}-{train_size}-{test_size}"


def load_synthetic(data_dir: str | Path, seed: int = 0, train_size: int = 50000, test_size: int = 10000) -> ImageArrays:
    """Read the synthetic archive for these settings, writing it first when absent."""
    folder = synthetic_dir(data_dir, seed, train_size, test_size)
    if not (folder / ARCHIVE_NAME).is_file():
        write_synthetic_cifar100(folder, seed=seed, train_size=train_size, test_size=test_size)
    return read_cifar100(folder)


# Splits and device batches.

def course_split(num_images: int = 50000) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, validation) indices as the course splits its training set.

    For the 50,000 CIFAR-100 training images this keeps
    ``RandomState(0).choice(50000, 47500, replace=False)`` for training and the
    remaining 2,500, sorted, for validation. Other sizes keep the same 95/5 ratio.
    """
    num_train = int(round(num_images * TRAIN_FRACTION))
    train = np.random.RandomState(0).choice(num_images, num_train, replace=False)
    held_out = np.ones(num_images, dtype=bool)
    held_out[train] = False
    return train, np.flatnonzero(held_out)


@dataclass
class DeviceSplit:
    """One split as a uint8 N x C x H x W tensor and int64 labels, both on the device."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DeviceData:
    """Train, validation and test splits resident on one device."""

    train: DeviceSplit
    val: DeviceSplit
    test: DeviceSplit
    class_names: list[str]
    source: str

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def to_device_data(arrays: ImageArrays, device: torch.device | str) -> DeviceData:
    """Split ``arrays`` the course's way and move every split to ``device``."""
    _check_arrays(arrays)
    train_idx, val_idx = course_split(len(arrays.train_images))

    def move(images: np.ndarray, labels: np.ndarray) -> DeviceSplit:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        return DeviceSplit(tensor.to(device), torch.from_numpy(labels).to(device))

    return DeviceData(
        train=move(arrays.train_images[train_idx], arrays.train_labels[train_idx]),
        val=move(arrays.train_images[val_idx], arrays.train_labels[val_idx]),
        test=move(arrays.test_images, arrays.test_labels),
        class_names=arrays.class_names,
        source=arrays.source,
    )


def from_arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str] | None = None,
    source: str = "custom",
) -> ImageArrays:
    """Wrap your own N x H x W x C uint8 images and integer labels as a dataset."""
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    arrays = ImageArrays(
        np.asarray(train_images), np.asarray(train_labels, dtype=np.int64),
        np.asarray(test_images), np.asarray(test_labels, dtype=np.int64),
        class_names or [str(i) for i in range(num_classes)], source,
    )
    _check_arrays(arrays)
    return arrays


def _check_arrays(arrays: ImageArrays) -> None:
    for split in ("train", "test"):
        images = getattr(arrays, f"{split}_images")
        labels = getattr(arrays, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{split} images must be a uint8 array of N x H x W x C, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"{split} has {len(images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(arrays.class_names)):
            raise DataError(f"{split} labels must lie in 0..{len(arrays.class_names) - 1}, got {labels.min()}..{labels.max()}")


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Crop each image at a random offset from a copy zero-padded by ``padding`` on every side."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device, generator=generator)
    rows = dy + torch.arange(h, device=images.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=images.device).view(1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing on (N, H, W) grids of the channels-last view picks a whole pixel at once.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Apply ``random_crop`` then ``random_flip`` in one gather; returns a contiguous N x C x H x W tensor.

    The random draws come in the same order as in the two separate calls, so
    the same generator state gives the same pixels. Folding the flip into the
    gather's column index saves the separate passes over the batch.
    """
    n, c, h, w = images.shape
    padded_w = w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding)).contiguous()
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=images.device, generator=generator)
    flip = torch.rand(n, device=images.device, generator=generator) < 0.5

    columns = torch.arange(w, device=images.device)
    columns = torch.where(flip.view(n, 1, 1), columns.flip(0), columns) + dx
    rows = torch.arange(h, device=images.device).view(1, h, 1) + dy
    # Flat pixel positions in the padded image, shared by all channels.
    index = (rows * padded_w + columns).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.view(n, c, -1), 2, index).view(n, c, h, w)


@functools.lru_cache(maxsize=None)
def _normalize_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    # Made once per device, because building them per batch copies from the
    # host, which on CUDA waits for the device on every step. Outside inference
    # mode, so that autograd may save them when the input needs a gradient.
    with torch.inference_mode(False):
        return _scale_and_shift(device, dtype)


def _scale_and_shift(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    return scale.to(device, dtype), shift.to(device, dtype)


def normalize(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Scale uint8 images to [0, 1] and standardize them with the course's channel statistics.

    Computes ``(x / 255 - mean) / std`` as ``x * scale + shift`` in two passes
    that keep the input's memory format.
    """
    scale, shift = _normalize_constants(images.device, dtype)
    return images.to(dtype, copy=True).mul_(scale).add_(shift)


def iterate_batches(
    split: DeviceSplit,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield normalized (images, labels) batches; shuffled and augmented when a generator is given.

    Batches keep the last partial one, as a DataLoader with ``drop_last=False`` does.
    """
    n = len(split)
    if generator is not None:
        order = torch.randperm(n, device=split.images.device, generator=generator)
    else:
        order = None
    for start in range(0, n, batch_size):
        if order is None:
            images, labels = split.images[start:start + batch_size], split.labels[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            images, labels = split.images[index], split.labels[index]
        if augment:
            if generator is None:
                raise ValueError("augment=True needs a generator for reproducible crops and flips")
            images = random_crop_flip(images, 4, generator)
        # Changing the layout of the uint8 batch moves a quarter of the bytes of the float one.
        images = images.contiguous(memory_format=memory_format)
        yield normalize(images).contiguous(memory_format=memory_format), labels


def num_batches(split: DeviceSplit, batch_size: int) -> int:
    return -(-len(split) // batch_size)
