# dcase-t6 developer targets. `make demo` and `make test` work on a fresh machine with python3 >= 3.10.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-work

.PHONY: install lint test test-slow demo screenshots bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[dev,demo,search]' > $(VENV)/install.log 2>&1 || (tail -40 $(VENV)/install.log; exit 1)
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh $(DEMO_DIR)

# docs/explore/*.png from the demo's own systems (after `make demo`; needs Chromium and Playwright)
screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py $(DEMO_DIR) docs/explore

# Each benchmark replaces its own block of docs/speed.md with the figures it measured (--write-docs).
bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script --write-docs || exit 1; done

# The GPU acceptance run (at most 8 minutes on a machine with one or more GPUs): writes
# results/gpu-check.json and results/gpu-check.md. Without a GPU: GPU_CHECK_ARGS=--smoke.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
