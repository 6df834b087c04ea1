# Set-up and the lab's two main commands. `make smoke` runs the whole lab on
# synthetic data; `make test` runs the test suite. Both create .venv first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned so pip takes prebuilt wheels; a looser spec can pull a multi-GB build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup smoke test clean

$(BIN)/labkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/labkit

smoke: setup
	$(BIN)/labkit run --profile smoke

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf results .pytest_cache
