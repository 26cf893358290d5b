# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# This machine installs these two from local disk; other torch builds do not import beside PyPI's torchvision.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint format clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[serve]' $(TORCH_PINS)  # serve: so `shufflenet serve` works after `make demo`
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]' $(TORCH_PINS)  # the pins keep every extra on this torch
	touch $@

demo: $(VENV)/.installed
	$(BIN)/shufflenet demo

# The serve page test drives Debian's chromium + chromedriver (a test tool's own browser download cannot work
# offline); installed with apt when missing. Without root or apt the test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "make: could not install chromium with apt; the serve page test will skip"

test: $(VENV)/.installed-dev browser
	$(BIN)/ruff check src tests benchmarks hubconf.py
	$(BIN)/ruff format --check src tests benchmarks hubconf.py
	$(BIN)/pytest -m signals -p no:xdist
	$(BIN)/pytest -n 2 -m "not signals"

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests benchmarks hubconf.py
	$(BIN)/ruff format src tests benchmarks hubconf.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
