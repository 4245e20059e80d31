# The two commands a newcomer needs: `make setup`, then `make test`. `make demo` runs the recipe on CPU.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Find a Python 3.12 (megatron-core 0.19 needs it): on PATH, or one installed through pyenv.
PYTHON312 ?= $(shell for c in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -1) /usr/bin/python3.12; do \
	$$c -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && echo $$c && break; done)
PYTEST_ARGS ?=
# Two pytest workers: most of the suite waits on process start-up (torch + megatron-core imports), so two
# workers keep both cores busy; Slurm tests share one cluster in one worker (xdist_group "slurm").
TEST_WORKERS ?= 2

.PHONY: setup test test-fast demo lint clean wheelhouse

setup:
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found (install it, or pass PYTHON312=/path/to/python3.12)"; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import megatron.core, torch; print('megatron-core', megatron.core.__version__, '| torch', torch.__version__)"

test:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not slurm" $(PYTEST_ARGS)

demo:
	$(PY) examples/demo/run_demo.py $(DEMO_ARGS)

# Every wheel the project needs (the project's own + `.[$(WHEEL_EXTRAS)]` and all their dependencies) in one
# directory, for nodes without internet: pip install --no-index --find-links wheelhouse megatron_qwen[test].
# Build it with the same Python (3.12) and platform as the nodes. torch's Linux wheel from PyPI is the CUDA
# build (several GB with its nvidia-* wheels); WHEEL_ARGS passes pip options, e.g.
# WHEEL_ARGS="--index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple".
WHEELHOUSE ?= wheelhouse
WHEEL_EXTRAS ?= test
WHEEL_ARGS ?=
wheelhouse:
	$(PY) -m pip wheel --wheel-dir $(WHEELHOUSE) $(WHEEL_ARGS) '.[$(WHEEL_EXTRAS)]'
	@ls $(WHEELHOUSE)/megatron_qwen-*.whl >/dev/null && echo "wheelhouse: $$(ls $(WHEELHOUSE) | wc -l) wheels in $(WHEELHOUSE)"

lint:
	$(PY) -m ruff check megatron_qwen tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
