"""Shared fixtures: small synthetic datasets built once per test session."""

from __future__ import annotations

import pytest
import torch

from labkit.data import ImageArrays, read_cifar100, write_synthetic_cifar100


@pytest.fixture(autouse=True, scope="session")
def _limit_threads() -> None:
    # Two cores are shared by the test process and the processes it starts.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic CIFAR-100 archive of 2,000 train and 400 test images."""
    return write_synthetic_cifar100(tmp_path_factory.mktemp("synthetic"), seed=0, train_size=2000, test_size=400)


@pytest.fixture(scope="session")
def synthetic_arrays(synthetic_archive) -> ImageArrays:
    return read_cifar100(synthetic_archive)
