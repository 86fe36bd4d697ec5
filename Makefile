# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then sample digits from the shipped model -> samples.png
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch: this pin is served from the local disk on our dev/CI
# machines. Elsewhere, point pip at a CPU wheel index first, e.g.
#   make setup TORCH_SPEC="torch --index-url <pytorch-cpu-wheel-index>"
# (an unpinned torch from PyPI is a multi-gigabyte CUDA build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-slow clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[train,runtime,onnx,test]'
	touch $@

demo: setup
	$(VENV)/bin/ddpm-export sample --checkpoint engines/digits.pt --num 64 --seed 0 --out samples.png

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow --runslow

clean-venv:
	rm -rf $(VENV)
