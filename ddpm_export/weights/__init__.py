"""Import foreign DDPM weights into ddpm-export checkpoints: the public entry point.

Two sources hold the paper's CIFAR-10 model:

* diffusers ``UNet2DModel`` folders (``google/ddpm-cifar10-32``): ``config.json``
  + ``diffusion_pytorch_model.safetensors`` (or ``.bin``), and a
  ``scheduler_config.json`` beside them (or in a ``scheduler/`` sibling folder in the
  pipeline layout). :func:`import_diffusers`, in :mod:`ddpm_export.weights.from_diffusers`
  with the config translation and the state_dict name mapping (both ways); the scheduler
  config's translation and the pipeline's default sampling are in
  :mod:`ddpm_export.weights.diffusers_schedule`.
* pesser/pytorch_diffusion ``.ckpt`` files (``ema_diffusion_cifar10_model/
  model-790000.ckpt``): a plain ``torch.save``'d state_dict with our parameter names
  already and no config. :func:`import_pesser`, in :mod:`ddpm_export.weights.from_pesser`.

What both share (reading a torch file, state_dict checks, float32 cast, validation
against our U-Net, writing the checkpoint) is in :mod:`ddpm_export.weights.common`.
This module only re-exports the public API, so ``from ddpm_export import weights;
convert.import_diffusers(...)`` and ``from ddpm_export.weights import ...`` keep working.

Written for Python >= 3.8 (the package's floor); diffusers itself is only needed
for ``import_diffusers(..., verify=True)``.
"""
from __future__ import annotations

from ddpm_export.weights.from_diffusers import (
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_ours,
    import_diffusers,
    ours_to_diffusers,
)
from ddpm_export.weights.diffusers_schedule import schedule_from_diffusers
from ddpm_export.weights.from_pesser import import_pesser

__all__ = [
    "config_from_diffusers",
    "config_to_diffusers",
    "diffusers_to_ours",
    "import_diffusers",
    "import_pesser",
    "ours_to_diffusers",
    "schedule_from_diffusers",
]
