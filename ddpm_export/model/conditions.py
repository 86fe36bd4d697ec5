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


class GuidedModel(nn.Module):
    """The PyTorch reference of ``runtime.guidance.GuidedDenoiser``: ``model(x_t, t, *cond)``
    (conditions in ``conditions``' order, as EpsModel calls it) mixed by classifier-free
    guidance on the network's raw output, ``out = u + w (c - u)``, with u the output at the
    manifest's null conditions (``runtime.guidance.null_conditions``: the null label, zeros).

    Written apart from the runtime's mix (two separate calls, not one at batch 2N) so that a
    validation compares the engine's guided chain with an independent computation; w = 1 is
    one call with the conditions, w = 0 one call with the nulls. Refuses guidance for
    conditions without a null form, as the runtime does."""

    def __init__(self, model: nn.Module, conditions: Sequence[Condition], guidance: float = 1.0):
        super().__init__()
        from runtime.guidance import check_guidance, null_conditions

        self.model = model
        self.conditions = tuple(conditions)
        self.guidance = check_guidance(guidance)
        if self.guidance != 1.0:
            null_conditions(self.conditions, 1)  # refuse now, not at the first step
        self.config = getattr(model, "config", None)

    def null(self, n: int, device) -> List[torch.Tensor]:
        from runtime.guidance import null_conditions

        null = null_conditions(self.conditions, n)
        return [torch.from_numpy(null[c.name]).to(device) for c in self.conditions]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        if len(cond) != len(self.conditions):
            raise ValueError(f"GuidedModel: received {len(cond)} condition inputs, expected "
                             f"{len(self.conditions)} ({[c.name for c in self.conditions]})")
        w = self.guidance
        if w == 1.0:
            return self.model(x_t, t, *cond)
        u = self.model(x_t, t, *self.null(x_t.shape[0], x_t.device))
        if w == 0.0:
            return u
        c = self.model(x_t, t, *cond)
        return u + w * (c - u)


class WithConditions(nn.Module):
    """``model(x_t, t)`` for code that calls a denoiser with two arguments (GaussianDiffusion's
    sampler and bound): ``model`` (e.g. a GuidedModel) called with fixed condition tensors,
    one row per sample of the batch."""

    def __init__(self, model: nn.Module, cond: Sequence[torch.Tensor]):
        super().__init__()
        self.model, self.cond = model, list(cond)
        self.config = getattr(model, "config", None)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        if any(v.shape[0] != n for v in self.cond):
            raise ValueError(f"WithConditions: a batch of {n} samples, conditions for "
                             f"{[int(v.shape[0]) for v in self.cond]}")
        return self.model(x_t, t, *self.cond)


def condition_tensors(conditions: Sequence[Condition], cond: Dict[str, np.ndarray],
                      rows: slice = slice(None)) -> List[torch.Tensor]:
    """Checked condition arrays (runtime.guidance.prepare_conditions' output) -> tensors in
    input order, rows ``rows`` of each."""
    return [torch.from_numpy(np.ascontiguousarray(cond[c.name][rows])) for c in conditions]
