"""The PyTorch side of an imported policy, built from its checkpoint alone (no ONNX, no manifest).

:class:`PolicyReference` is what ``ddpm-export validate`` compares ``runtime.load_policy``
with: the checkpoint's observation encoder and U-Net (ddpm_export.model.lerobot_diffusion,
LeRobot's weights loaded strictly), the checkpoint's normalization statistics and camera order
(``ckpt["policy"]``, not the manifest's copy), the checkpoint's schedule, sampled by the
runtime's NumPy schedulers with the runtime's per-sample noise streams, so that the same seed
gives the same x_T and step noise on both sides. What differs from the runtime is everything an
export can get wrong: the networks (PyTorch here, the ONNX engines there), the feeds (built here
from the LeRobot config's feature order), the statistics and the action slice.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from runtime.contract import POLICY_COND, plan_options, plan_steps, sampling_plan
from runtime.policy import normalize, unnormalize

from ddpm_export.model.checkpoint import load_model
from ddpm_export.model.lerobot_diffusion import OBS_IMAGES, build_lerobot_encoder, image_features


class PolicyReference:
    """reference.predict_chunk(history, seed, method, steps) -> raw actions [B, n_action_steps, A]."""

    def __init__(self, checkpoint):
        self.model, self.ckpt = load_model(checkpoint)
        pol = self.ckpt.get("policy")
        if not pol:
            raise ValueError(f"{checkpoint}: not a policy checkpoint (no 'policy' section); expected the .pt "
                             f"of 'ddpm-export import --format lerobot'")
        self.model.eval()
        self.encoder = build_lerobot_encoder(self.ckpt)
        self.cfg = pol["lerobot_config"]
        self.norms = {o["name"]: o["normalization"] for o in pol["observations"]}
        self.action_norm = pol["action"]["normalization"]
        self.cams = image_features(self.cfg)
        self.n_obs_steps = int(self.cfg["n_obs_steps"])
        self.n_action_steps = int(self.cfg["n_action_steps"])
        self.action_start = self.n_obs_steps - 1  # LeRobot: actions from the current observation on
        self.sample_shape = tuple(int(v) for v in self.ckpt["model_config"]["image_shape"])
        self.schedule = self.ckpt["schedule_config"]
        self.conditions = self.model.conditions

    def encoder_feeds(self, history: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Normalized encoder inputs, by the encoder's own input names (cameras stacked on axis 2)."""
        feeds = {k: normalize(v, self.norms[k]) for k, v in history.items() if k not in self.cams}
        if self.cams:
            feeds[OBS_IMAGES] = np.stack([normalize(history[k], self.norms[k]) for k in self.cams], axis=2)
        return {k: feeds[k] for k in self.encoder.input_names}

    def encode(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """global_cond [B, D] of the normalized feeds (encoder_feeds' names)."""
        with torch.no_grad():
            return self.encoder(*[torch.from_numpy(np.ascontiguousarray(feeds[k], dtype=np.float32))
                                  for k in self.encoder.input_names]).numpy()

    def denoise(self, x: np.ndarray, t: np.ndarray, global_cond: np.ndarray) -> np.ndarray:
        """The U-Net's output for x_t [B, horizon, A], t [B], global_cond [B, D]."""
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                              torch.from_numpy(np.asarray(t).astype(np.int64)),
                              torch.from_numpy(np.ascontiguousarray(global_cond, dtype=np.float32))).numpy()

    def predict_chunk(self, history: Mapping[str, np.ndarray], seed: int = 0, method: Optional[str] = None,
                      steps: Optional[int] = None, **options: Any) -> Dict[str, np.ndarray]:
        """{"actions": raw [B, n_action_steps, A], "normalized": the same slice before unnormalizing,
        "global_cond": [B, D]} for history {name: raw [B, n_obs_steps, *shape]}; method/steps as
        load_policy's (None: the checkpoint's sampling section, else DDPM over all T)."""
        from runtime.loop import sample

        gc = self.encode(self.encoder_feeds(history))
        plan = sampling_plan({"schedule": self.schedule, "sampling": self.ckpt.get("sampling")}, method, steps)
        opts = plan_options(plan, options)
        b = gc.shape[0]
        res = sample(lambda x, t, **c: self.denoise(x, t, c[POLICY_COND]), self.sample_shape, self.schedule, b,
                     seed=int(seed), method=plan["method"], **plan_steps(plan), batch=b,
                     conditions=self.conditions, cond={POLICY_COND: gc}, **opts)
        s = self.action_start
        norm = res.images[:, s:s + self.n_action_steps].astype(np.float32)
        return {"actions": unnormalize(norm, self.action_norm), "normalized": norm, "global_cond": gc}

