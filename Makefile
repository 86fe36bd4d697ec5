# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then sample 64 digits from the shipped engine with the
#               NumPy runtime (no torch involved) -> samples.png, in seconds: UniPC at
#               10 engine calls, the few-step sampler docs/results.md recommends; it prints
#               the command for the paper's reference chain (DDPM over all 1000 steps)
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch, never the multi-gigabyte CUDA build an unpinned torch
# pulls from PyPI. Our dev/CI machines serve this exact wheel from local disk;
# elsewhere name PyTorch's CPU wheel index:
#   make setup TORCH_INDEX=<url of PyTorch's CPU wheel index>
# (or TORCH_SPEC=torch for a GPU machine that should get the CUDA build).
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: setup setup-lerobot demo test test-slow clean-venv

setup: $(VENV)/.installed

# torch-fidelity (FID/KID/IS) goes in with --no-deps: the only torchvision wheels the registries
# serve are CUDA builds that cannot load next to the CPU torch; the tests stand in for torchvision
# (see tests/ddpm_export/evaluation/test_fidelity.py). On a GPU machine: pip install 'ddpm-export[fid]'.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[train,runtime,onnx,eval,test]'
	$(PY) -m pip install -q --no-deps 'torch-fidelity==0.4.0'
	# denoising-diffusion-pytorch, the second public architecture the export is tested on
	# (tests/ddpm_export/weights/test_denoising_diffusion_pytorch.py): --no-deps for the same reason
	# (it and pytorch-fid require torchvision); its other imports come with their own dependencies.
	$(PY) -m pip install -q --no-deps 'denoising-diffusion-pytorch==2.3.4' 'pytorch-fid==0.3.0'
	$(PY) -m pip install -q einops 'ema-pytorch>=0.4.2' accelerate
	# A real Triton server for tests/ddpm_export/serving: nvidia-pytriton ships the tritonserver
	# binary with the Python backend. --no-deps: it pins numpy<2 (its backend stub's), which would
	# pull the project back to NumPy 1; the stub gets a small numpy<2 environment instead.
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton>=0.5'
	$(PY) -c "from ddpm_export.serving.local_server import numpy1_backend_env as e; e()"
	touch $@

# LeRobot 0.4.4 as the reference for the DiffusionPolicy import (tests/ddpm_export/weights/
# test_from_lerobot.py, scripts/lerobot_policy_reference.py): its own venv, since it needs
# torchvision, which the project venv cannot hold. lerobot goes in with --no-deps (its full
# dependency set pulls gym environments and hardware SDKs); these are what its diffusion
# policy and processors import. The tests find it at .venv-lerobot/bin/python or
# $$DDPM_LEROBOT_PYTHON and skip with that reason when neither exists.
LEROBOT_VENV ?= .venv-lerobot
LEROBOT_PY   := $(LEROBOT_VENV)/bin/python
LEROBOT_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
LEROBOT_DEPS = draccus==0.10.0 mergedeep pyyaml-include==1.4.1 toml typing-inspect mypy-extensions \
	jsonlines termcolor deepdiff orderly-set datasets pyarrow pandas dill xxhash multiprocess fsspec \
	pytz tzdata python-dateutil imageio pyserial future iso8601 cachebox av diffusers==0.42.1 safetensors \
	huggingface_hub einops accelerate

setup-lerobot: $(LEROBOT_VENV)/.installed

$(LEROBOT_VENV)/.installed:
	$(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_PY) -m pip install -q $(TORCH_PIP_ARGS) $(LEROBOT_TORCH_SPEC)
	$(LEROBOT_PY) -m pip install -q --no-deps lerobot==0.4.4
	$(LEROBOT_PY) -m pip install -q $(LEROBOT_DEPS)
	$(LEROBOT_PY) -c "from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy"
	touch $@

DEMO_OUT ?= samples.png
DEMO_ARGS = --engine engines/digits.onnx --num 64 --seed 0

demo: setup
	$(PY) -m runtime.sample $(DEMO_ARGS) --method unipc --steps 10 --out $(DEMO_OUT)
	@echo "That was UniPC at 10 engine calls, the recommended few-step sampler (docs/results.md)."
	@echo "The paper's reference chain, DDPM over all 1000 steps (100x the engine calls, minutes on a CPU):"
	@echo "  $(PY) -m runtime.sample $(DEMO_ARGS) --method ddpm --out samples-ddpm1000.png"

test: setup setup-lerobot
	$(PY) -m pytest -q --durations=15

test-slow: setup setup-lerobot
	$(PY) -m pytest -q -m slow --runslow

clean-venv:
	rm -rf $(VENV)
