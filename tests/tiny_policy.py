"""A tiny LeRobot-format DiffusionPolicy folder written without LeRobot, for tests that need a policy
but not LeRobot itself (validate, bench, Triton): our own modules (ddpm_export.model.lerobot_diffusion)
at random weights under LeRobot's names, a config.json with the keys the import reads, and the two
processor files with made-up statistics. ``ddpm-export import --format lerobot`` reads it like a
real one; equality with LeRobot itself is tests/runtime/test_policy_equals_lerobot.py's job.
"""
import json
from pathlib import Path

import numpy as np


def tiny_config(kind: str = "state", scheduler: str = "DDPM", steps=None):
    inputs = {"observation.state": {"type": "STATE", "shape": [3]}}
    if kind == "state":
        inputs["observation.environment_state"] = {"type": "ENV", "shape": [4]}
    else:
        inputs["observation.image"] = {"type": "VISUAL", "shape": [3, 32, 32]}
    return {"type": "diffusion", "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4, "input_features": inputs,
            "output_features": {"action": {"type": "ACTION", "shape": [2]}},
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX",
                                      "ACTION": "MIN_MAX"},
            "down_dims": [16, 32], "diffusion_step_embed_dim": 16, "kernel_size": 3, "n_groups": 8,
            "use_film_scale_modulation": True, "vision_backbone": "resnet18", "resize_shape": None,
            "crop_shape": [28, 28] if kind == "image" else None, "crop_is_random": False,
            "pretrained_backbone_weights": None, "use_group_norm": True, "spatial_softmax_num_keypoints": 8,
            "use_separate_rgb_encoder_per_camera": False, "noise_scheduler_type": scheduler,
            "num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001,
            "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0,
            "num_inference_steps": steps}


def write_tiny_lerobot_folder(out, kind: str = "state", seed: int = 0, scheduler: str = "DDPM", steps=None) -> Path:
    import torch
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file

    from ddpm_export.model.lerobot_diffusion import build_lerobot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(kind, scheduler, steps)
    torch.manual_seed(seed)
    enc, unet = build_lerobot(cfg)
    sd = {}
    with torch.no_grad():
        for prefix, mod in (("diffusion.", enc), ("diffusion.unet.", unet)):
            params = dict(mod.named_parameters())  # nudged (GroupNorm starts at 1/0); buffers as they are
            for k, v in mod.state_dict().items():
                sd[prefix + k] = (v + 0.05 * torch.randn_like(v) if k in params else v).contiguous()
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    stats = {}
    for name, f in list(cfg["input_features"].items()) + list(cfg["output_features"].items()):
        shape = (f["shape"][0], 1, 1) if f["type"] == "VISUAL" else tuple(f["shape"])
        lo = rng.uniform(-2, 0, shape).astype(np.float32)
        stats.update({f"{name}.min": lo, f"{name}.max": lo + rng.uniform(0.5, 3, shape).astype(np.float32),
                      f"{name}.mean": rng.uniform(-1, 1, shape).astype(np.float32),
                      f"{name}.std": rng.uniform(0.2, 1.5, shape).astype(np.float32)})
    for fname, registry, action in (("policy_preprocessor", "normalizer_processor", False),
                                    ("policy_postprocessor", "unnormalizer_processor", True)):
        state = f"{fname}_{registry}.safetensors"
        save_np({k: v for k, v in stats.items() if k.startswith("action.") == action}, str(out / state))
        (out / f"{fname}.json").write_text(json.dumps({"steps": [{
            "registry_name": registry, "state_file": state,
            "config": {"eps": 1e-8, "norm_map": cfg["normalization_mapping"]}}]}))
    return out


def tiny_policy(tmp, kind: str = "state", fp16: bool = False, seed: int = 0, **kw) -> Path:
    """tmp/p.onnx (+ p-encoder.onnx, p.json, p.pt): a tiny policy imported and exported."""
    from ddpm_export.export.onnx_export import export_onnx
    from ddpm_export.weights.from_lerobot import import_lerobot

    tmp = Path(tmp)
    import_lerobot(write_tiny_lerobot_folder(tmp / "lerobot", kind, seed, **kw), tmp / "p.pt")
    export_onnx(tmp / "p.pt", tmp / "p.onnx")
    if fp16:
        export_onnx(tmp / "p.pt", tmp / "p-fp16.onnx", fp16=True)
    return tmp / "p.onnx"
