# Set-up and everyday commands. Each target creates/uses the project virtualenv by itself.
#   make demo   - install everything and run the main job on embedded defaults
#   make test   - install everything and run lint, type checks and the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel of torch available offline on this machine kind. On a GPU machine use e.g.
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" install
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint bench clean

PLAYER_DIR := abr_server/player

$(VENV)/.installed: pyproject.toml Makefile $(PLAYER_DIR)/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	@# dash.js, hls.js, Shaka Player and Chart.js for /player (from npm, never committed); without npm /player answers 503.
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(PLAYER_DIR) --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: /player will lack dash.js (install Node.js and npm, then make install)"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/abr simulate

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -n 2 -q

bench: install
	$(VENV)/bin/abr bench sim

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
