"""Data: the course split, the archive reader, the synthetic archive, augmentation and your own arrays."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from labkit.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DataError,
    DeviceSplit,
    course_split,
    from_arrays,
    iterate_batches,
    load_synthetic,
    normalize,
    random_crop,
    random_flip,
    read_cifar100,
    to_device_data,
    write_synthetic_cifar100,
)


def test_course_split_indices():
    train, val = course_split(50000)
    assert len(train) == 47500
    assert len(val) == 2500
    assert list(val[:5]) == [52, 55, 63, 81, 93]
    assert np.array_equal(train, np.random.RandomState(0).choice(50000, 47500, replace=False))
    assert np.all(np.diff(val) > 0)
    assert len(np.union1d(train, val)) == 50000


def test_synthetic_archive_has_cifar_format(synthetic_archive):
    with tarfile.open(synthetic_archive, "r:gz") as archive:
        names = sorted(archive.getnames())
        train = pickle.load(archive.extractfile("cifar-100-python/train"), encoding="latin1")
        meta = pickle.load(archive.extractfile("cifar-100-python/meta"), encoding="latin1")
    assert names == ["cifar-100-python/SYNTHETIC.json", "cifar-100-python/meta",
                     "cifar-100-python/test", "cifar-100-python/train"]
    assert set(train) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
    assert train["data"].dtype == np.uint8
    assert train["data"].shape == (2000, 3072)
    assert len(meta["fine_label_names"]) == 100
    assert len(meta["coarse_label_names"]) == 20


def test_synthetic_round_trips_through_reader(synthetic_archive, synthetic_arrays):
    with tarfile.open(synthetic_archive, "r:gz") as archive:
        train = pickle.load(archive.extractfile("cifar-100-python/train"), encoding="latin1")
    assert synthetic_arrays.source == "synthetic"
    assert synthetic_arrays.train_images.shape == (2000, 32, 32, 3)
    assert synthetic_arrays.test_images.shape == (400, 32, 32, 3)
    # Row layout: 1024 red values, then green, then blue.
    first = synthetic_arrays.train_images[0]
    assert np.array_equal(first[..., 0].ravel(), train["data"][0, :1024])
    assert np.array_equal(first[..., 2].ravel(), train["data"][0, 2048:])
    assert list(synthetic_arrays.train_labels) == train["fine_labels"]


def test_synthetic_is_deterministic(tmp_path):
    first = write_synthetic_cifar100(tmp_path / "a", seed=3, train_size=50, test_size=10)
    second = write_synthetic_cifar100(tmp_path / "b", seed=3, train_size=50, test_size=10)
    other = write_synthetic_cifar100(tmp_path / "c", seed=4, train_size=50, test_size=10)
    a, b, c = (read_cifar100(path) for path in (first, second, other))
    assert np.array_equal(a.train_images, b.train_images)
    assert np.array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)


def test_reader_accepts_folder_and_extracted_copy(tmp_path, synthetic_archive):
    with tarfile.open(synthetic_archive, "r:gz") as archive:
        archive.extractall(tmp_path, filter="data")
    from_folder = read_cifar100(tmp_path)
    from_extracted = read_cifar100(tmp_path / "cifar-100-python")
    from_parent = read_cifar100(synthetic_archive.parent)
    assert np.array_equal(from_folder.train_images, from_parent.train_images)
    assert np.array_equal(from_extracted.test_labels, from_parent.test_labels)


def test_missing_data_names_place_and_fix(tmp_path):
    with pytest.raises(DataError, match="No CIFAR-100 data found") as error:
        read_cifar100(tmp_path)
    assert "cifar-100-python.tar.gz" in str(error.value)
    assert "md5" in str(error.value)


def test_load_synthetic_caches_archive(tmp_path):
    first = load_synthetic(tmp_path, seed=1, train_size=40, test_size=20)
    archives = list(tmp_path.rglob("*.tar.gz"))
    second = load_synthetic(tmp_path, seed=1, train_size=40, test_size=20)
    assert len(archives) == 1
    assert np.array_equal(first.train_images, second.train_images)


def test_to_device_data_splits(synthetic_arrays):
    data = to_device_data(synthetic_arrays, "cpu")
    assert len(data.train) == 1900
    assert len(data.val) == 100
    assert len(data.test) == 400
    assert data.train.images.dtype == torch.uint8
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.synthetic
    _, val_idx = course_split(2000)
    expected = torch.from_numpy(synthetic_arrays.train_images[val_idx[0]]).permute(2, 0, 1)
    assert torch.equal(data.val.images[0], expected)


def test_augmentation_keeps_shape_and_labels_and_changes_pixels(synthetic_arrays):
    data = to_device_data(synthetic_arrays, "cpu")
    plain_images, plain_labels = next(iterate_batches(data.train, 64))
    generator = torch.Generator().manual_seed(0)
    aug_batches = list(iterate_batches(data.train, 64, generator, augment=True))
    images, labels = aug_batches[0]
    assert images.shape == plain_images.shape
    assert images.dtype == torch.float32
    assert sum(len(batch[1]) for batch in aug_batches) == len(data.train)
    # Shuffling permutes labels but keeps their multiset.
    all_labels = torch.cat([batch[1] for batch in aug_batches])
    assert torch.equal(all_labels.sort().values, data.train.labels.sort().values)


def test_random_crop_shifts_and_pads_with_zeros():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8) % 200 + 1
    generator = torch.Generator().manual_seed(1)
    cropped = random_crop(images, 4, generator)
    assert cropped.shape == images.shape
    assert not torch.equal(cropped, images)
    # Every output pixel is either zero padding or a pixel of the same image.
    for i in range(2):
        values = set(cropped[i].unique().tolist()) - {0}
        assert values <= set(images[i].unique().tolist())


def test_random_flip_mirrors_about_half():
    images = torch.arange(1000 * 4, dtype=torch.uint8).view(1000, 1, 1, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(3)).all(dim=(1, 2, 3))
    unchanged = (flipped == images).all(dim=(1, 2, 3))
    assert torch.all(mirrored | unchanged)
    assert 400 < int(mirrored.sum()) < 600


def test_augmentation_is_seeded(synthetic_arrays):
    data = to_device_data(synthetic_arrays, "cpu")
    run = lambda seed: next(iterate_batches(data.train, 32, torch.Generator().manual_seed(seed), augment=True))[0]
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_normalize_uses_course_statistics():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(images)
    expected = [(1 - mean) / std for mean, std in zip(CIFAR_MEAN, CIFAR_STD)]
    assert out[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-6)


def test_evaluation_batches_keep_order_and_partial_batch():
    split = DeviceSplit(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10))
    labels = [batch[1].tolist() for batch in iterate_batches(split, 4)]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_own_arrays_stand_in_for_cifar():
    rng = np.random.default_rng(0)
    arrays = from_arrays(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 40),
                         rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 10), source="mine")
    data = to_device_data(arrays, "cpu")
    assert len(data.train) + len(data.val) == 40
    assert data.source == "mine"
    assert not data.synthetic


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, int), "uint8"),
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, int), "N x H x W x C"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, int), "labels"),
    ],
)
def test_own_arrays_rejected_when_malformed(images, labels, message):
    test_images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(DataError, match=message):
        from_arrays(images, labels, test_images, np.zeros(2, int))
