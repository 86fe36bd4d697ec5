"""The condition inputs of a denoiser, as the export contract names them
(``runtime.contract.Condition``), and example values to trace and check a graph with.

A model's conditions are, in engine input order after x_t and t:
- our U-Net with ``num_classes`` K > 0: ``class_labels``, int64 [N], labels 0..K-1, and the
  learned null label K (the extra embedding row label dropout trains);
- an ExternalDenoiser: the ``conditions`` it was wrapped with (a diffusers UNet2DModel with
  ``num_class_embeds``: ``class_labels``, with the null label the user names).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from runtime.contract import Condition

CLASS_LABELS = "class_labels"  # diffusers' name for UNet2DModel's label input


def model_conditions(model: nn.Module) -> Tuple[Condition, ...]:
    """The Condition of every input a model takes after (x_t, t), in order."""
    own = getattr(model, "conditions", None)
    if own is not None:
        return tuple(own)
    model = getattr(model, "model", model)  # an export wrapper (EpsModel, Fp16EpsModel)
    own = getattr(model, "conditions", None)
    if own is not None:
        return tuple(own)
    k = int(getattr(getattr(model, "config", None), "num_classes", 0) or 0)
    return (Condition(CLASS_LABELS, "class_label", (), k, k),) if k else ()


def example_conditions(conditions: Sequence[Condition], batch: int,
                       generator: torch.Generator) -> List[torch.Tensor]:
    """Values for every condition, batch rows, in input order: labels cycle through every
    valid label (the null label too, when there is one) so that a check sees each row's own
    label; float conditions are N(0, 1) from ``generator``."""
    out = []
    for c in conditions:
        if c.kind == "class_label":
            valid = list(range(c.num_classes)) + ([c.null] if c.null is not None and c.null >= c.num_classes else [])
            perm = torch.randperm(len(valid), generator=generator).tolist()
            out.append(torch.tensor([valid[perm[i % len(valid)]] for i in range(batch)], dtype=torch.int64))
        else:
            out.append(torch.randn(batch, *c.shape, generator=generator))
    return out


def condition_feeds(conditions: Sequence[Condition], values: Sequence[torch.Tensor]) -> Dict[str, np.ndarray]:
    """{name: numpy array} for ONNX Runtime, from example_conditions' tensors."""
    return {c.name: v.numpy() for c, v in zip(conditions, values)}
