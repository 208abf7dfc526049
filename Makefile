# vidfeat developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# timm needs torchvision; these two releases are the ones pinned for dev and CI.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-fast demo ffmpeg chromium hdf5-tools bench gpu-wheels clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,plot]'
	touch $@

venv: $(VENV)/.installed

# The ffmpeg CLI only makes test fixtures; vidfeat itself decodes with PyAV.
ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "installing ffmpeg (test fixtures only)"; \
	  { apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; } || \
	  echo "warning: could not install ffmpeg; tests that need it will be skipped"; }

# h5ls and h5dump: docs/format.md shows them reading a file, and the doc tests run those examples.
hdf5-tools:
	@command -v h5ls >/dev/null 2>&1 || { \
	  echo "installing hdf5-tools (doc examples only)"; \
	  { apt-get update -qq && apt-get install -y -qq hdf5-tools >/dev/null; } || \
	  echo "warning: could not install hdf5-tools; the h5ls/h5dump doc examples will fail"; }

# Debian's chromium runs the `vidfeat view` page test (driven by Playwright, no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (browser test of vidfeat view only)"; \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: could not install chromium; the browser test will be skipped"; }

# The full suite (what CI runs). test-fast leaves out the tests marked slow (subprocess kills,
# torchrun, training runs, the bundled model's accuracy).
test: venv ffmpeg chromium hdf5-tools
	$(PY) -m pytest -q

test-fast: venv ffmpeg hdf5-tools
	$(PY) -m pytest -q -m "not slow"

demo: venv
	$(PY) -m vidfeat.tools.demo

bench: venv
	$(PY) bench/model_vs_hf.py
	$(PY) bench/extract.py

# Wheels for the GPU machine's Python 3.12 (its image lacks PyAV and tomli-w): bench/gpu_session.sh
# installs them there; carry .whl (git-ignored) with the device run.
GPU_WHEELS := av==18.1.0 tomli-w==1.2.0
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)
	@ls -l .whl

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache demo_out
