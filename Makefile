# Set-up and everyday commands. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The only torch / torchvision pair that imports on our CPU machines; installed before the
# package so that pip does not pull the newest torch. A GPU machine with its own torch can
# skip this and `pip install -e .` directly (setup.cfg keeps ranges).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install data demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e ".[test,lint,tune]"
	touch $@

# Fashion-MNIST where it is missing: Debian's package when apt is there and we are root,
# torchvision's download otherwise (into the kd-env cache).
data: install
	@if $(BIN)/kd-env data check fashion_mnist >/dev/null 2>&1; then \
		echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		$(BIN)/kd-env data fetch fashion_mnist --download; \
	fi
	@$(BIN)/kd-env data check fashion_mnist

demo: install data
	$(BIN)/kd-env demo

# on every core (pytest-xdist; one torch thread per worker, tests/conftest.py), in a random order
# (pytest-randomly prints its seed; `--randomly-seed=N` replays an order, `-p no:randomly` keeps the file order)
test: install data
	$(BIN)/python -m pytest -n auto

# ruff (lint and format), mypy (the package, agents/, baselines/, tests/, benchmarks/, examples/
# and tools/) and the import contracts (import-linter: layers that only point down, no circles),
# configured in pyproject.toml; CI runs this before the tests
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python tools/lint_imports.py --no-logo

bench: install data
	$(BIN)/python benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
