"""nbval set-up: the four expected notebooks train into one fresh results folder per test session.

The expected notebooks pass ``out = "$LABKIT_NBVAL_RESULTS"``, so each
session trains from scratch, and a later notebook loads the runs an earlier
one trained instead of training them again. A notebook run on its own
trains what it needs and prints the same output.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

RESULTS_ENV = "LABKIT_NBVAL_RESULTS"
_CREATED = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # The kernels nbval starts inherit this process's environment.
    if getattr(config.option, "nbval", False) and RESULTS_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="labkit-nbval-")
        os.environ[RESULTS_ENV] = folder
        config.stash[_CREATED] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_CREATED, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(RESULTS_ENV, None)
