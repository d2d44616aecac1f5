# segfuse: two commands on a fresh machine.
#   make demo   set up .venv, generate the bundled demo drive, run the main job on it
#   make test   set up .venv, run every test (slow ones too: the wheel install, model floors, exports)
#   make test-fast  the tests people run often: everything not marked @pytest.mark.slow
#   make bench  set up .venv, run the benchmarks (ratios printed side by side)
#   make gpu-check  the GPU self-check (segfuse engines selftest); without a GPU it says so and exits 0
#   make gpu-setup  add the [gpu] extra (onnxruntime-gpu in place of the CPU onnxruntime)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segfuse-installed
DEMO_DRIVE := data/demo_drive
DEMO_FRAMES ?= 30
DEMO_SEED ?= 7

.PHONY: setup demo test test-fast bench sysdeps clean gpu-check gpu-setup

setup: $(STAMP)

# Open3D's CPU wheel links against libusb-1.0. Install it when root, otherwise say exactly what is needed.
sysdeps:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "segfuse: installing system library libusb-1.0-0 (needed by open3d-cpu)"; \
	    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null)) \
	      || { echo "segfuse: apt-get install libusb-1.0-0 failed" >&2; exit 1; }; \
	  else \
	    echo "segfuse: missing system library libusb-1.0 (needed by open3d-cpu)." >&2; \
	    echo "         Install it with:  sudo apt-get install libusb-1.0-0" >&2; exit 1; \
	  fi; \
	fi

# Re-runs only when pyproject.toml or setup.py changes (or .venv is new): fast when already installed.
$(STAMP): pyproject.toml setup.py | sysdeps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@echo "segfuse: installing dependencies into $(VENV) (first time: torch is ~5 GB, a few minutes)"
	@$(PY) -m pip install -q -e '.[dev]'
	@$(PY) -c "import torch, torchvision, open3d, onnxruntime, cv2, rosbags" \
	  || { echo "segfuse: dependency import check failed" >&2; exit 1; }
	@touch $(STAMP)

demo: setup
	@$(VENV)/bin/segfuse demo --drive $(DEMO_DRIVE) --frames $(DEMO_FRAMES) --seed $(DEMO_SEED) --out out/demo

test: setup
	@$(PY) -m pytest -q

test-fast: setup
	@$(PY) -m pytest -q -m "not slow"

bench: setup
	@$(PY) -m benchmarks

gpu-check: setup
	@$(VENV)/bin/segfuse engines selftest $(GPU_CHECK_ARGS)

# onnxruntime-gpu replaces the CPU onnxruntime (both provide the module `onnxruntime`).
gpu-setup: setup
	@$(PY) -m pip install -q -e '.[dev,gpu]'
	@$(PY) -m pip uninstall -q -y onnxruntime
	@$(PY) -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
	@$(PY) -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

clean:
	rm -rf out data .pytest_cache
