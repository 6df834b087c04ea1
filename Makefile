# Set-up and the lab's two main commands. `make smoke` runs the whole lab on
# synthetic data; `make test` runs the test suite. Both create .venv first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned so pip takes prebuilt wheels; a looser spec can pull a multi-GB build.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup smoke test expected-notebooks clean browser

$(BIN)/labkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/labkit

smoke: setup
	$(BIN)/labkit run --profile smoke

# nbval executes the expected notebooks in tests/notebooks (smoke profile) and
# compares their outputs. make reports every failed recipe as status 2, so the
# recipe names pytest's status 5 (no tests collected) itself.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

test: setup
	@$(BIN)/python -m pytest $(NBVAL); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

# Run after changing a notebook or a result it shows, then review the diff.
expected-notebooks: setup
	$(BIN)/python tests/notebooks/generate.py

# Debian's Chromium for the browser test (pytest -m browser); Playwright's own
# browser download needs internet access. Installs only as root, else says how.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" -eq 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		else echo "make browser: /usr/bin/chromium is missing; run: sudo apt-get install chromium" >&2; fi; \
	fi

clean:
	rm -rf results .pytest_cache
