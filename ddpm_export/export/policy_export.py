"""The observation encoder of an imported LeRobot DiffusionPolicy, and the manifest's
``policy`` section (the spec the policy runtime reads).

:func:`export_policy` runs after the denoiser's ordinary export (NAME.onnx + NAME.json):
it writes NAME-encoder.onnx (inputs the normalized observation history named as LeRobot
names them, output global_cond, the same dynamic batch axis), checks it against PyTorch
through ONNX Runtime (refusing on a failed check), and adds the ``policy`` section to
NAME.json (the encoder file embeds the same section in its metadata). With fp16 an image
encoder is FP16 with FP32 islands (GroupNorm, the spatial softmax; Fp16PolicyEncoder) and is
checked against float32 PyTorch at the FP16 limit; a state-only encoder stays float32
(``encoder.fp16_note`` says why).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from runtime.contract import write_manifest
from runtime.io import sha256_file

from ddpm_export.export.fp16 import Fp16PolicyEncoder
from ddpm_export.export.onnx_export import FP16_ATOL
from ddpm_export.model.lerobot_diffusion import (OBS_ENV, OBS_IMAGES, OBS_STATE, build_lerobot_encoder,
                                                 image_features)

ENCODER_ATOL = 1e-4
# FP16 encoder vs float32 PyTorch, max abs on global_cond: the denoiser's FP16 limit (its output
# is of the same scale, ~1: keypoints in [-1, 1] through Linear + ReLU, normalized state)
ENCODER_FP16_ATOL = FP16_ATOL
ENCODER_FP32_ISLANDS = ("GroupNorm", "spatial softmax",
                        "state/environment inputs, the concatenation and global_cond")


def _input_shapes(cfg: Dict[str, Any], enc) -> Dict[str, List[int]]:
    n = int(cfg["n_obs_steps"])
    feats = cfg["input_features"]
    out = {OBS_STATE: [n, *feats[OBS_STATE]["shape"]]}
    cams = image_features(cfg)
    if cams:
        out[OBS_IMAGES] = [n, len(cams), *feats[cams[0]]["shape"]]
    if enc.env:
        out[OBS_ENV] = [n, *feats[enc.env]["shape"]]
    return {k: out[k] for k in enc.input_names}


def encoder_precision(enc, fp16: bool) -> Tuple[str, List[str], Optional[str]]:
    """(precision, FP32 islands, note) of the encoder's export. With --fp16 an image encoder is
    FP16 with FP32 islands (Fp16PolicyEncoder); a state-only encoder is a concatenation and
    flatten of float32 inputs, with no arithmetic FP16 could speed up, so it stays float32 and
    the note says so. None: no --fp16."""
    if not fp16:
        return "fp32", [], None
    if not enc.cams:
        return "fp32", [], ("state-only encoder (a concatenation and flatten): kept float32, FP16 would "
                            "gain nothing")
    return "fp16", list(ENCODER_FP32_ISLANDS), ("image encoders FP16 with FP32 islands; state and environment "
                                                "inputs, the concatenation and global_cond float32")


def export_policy(ckpt: Dict[str, Any], onnx_path, fp16: bool = False, batch_range=(1, 1, 64)) -> Dict[str, Any]:
    import onnx
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    pol = ckpt["policy"]
    cfg = pol["lerobot_config"]
    enc = build_lerobot_encoder(ckpt)
    shapes = _input_shapes(cfg, enc)
    enc_path = onnx_path.with_name(onnx_path.stem + "-encoder.onnx")
    rng = np.random.default_rng(0)

    def feed(b):
        return {k: rng.standard_normal((b, *s)).astype(np.float32) for k, s in shapes.items()}

    example = tuple(torch.from_numpy(v) for v in feed(2).values())
    precision, islands, note = encoder_precision(enc, fp16)
    graph = Fp16PolicyEncoder(enc) if precision == "fp16" else enc
    torch.onnx.export(graph, example, str(enc_path),
                      input_names=list(shapes), output_names=["global_cond"], opset_version=17,
                      dynamic_axes={**{k: {0: "batch"} for k in shapes}, "global_cond": {0: "batch"}},
                      dynamo=False)
    onnx.checker.check_model(str(enc_path))
    sess = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    enc = build_lerobot_encoder(ckpt)
    worst = 0.0
    for b in (1, 3):
        f = feed(b)
        got = sess.run(None, f)[0]
        with torch.no_grad():
            ref = enc(*[torch.from_numpy(v) for v in f.values()]).numpy()
        worst = max(worst, float(np.abs(got.astype(np.float32) - ref).max()))
    atol = ENCODER_FP16_ATOL if precision == "fp16" else ENCODER_ATOL
    if not worst <= atol:  # NaN fails too
        enc_path.unlink()
        raise ValueError(f"{enc_path.name}: {precision} encoder ONNX vs float32 PyTorch max abs diff "
                         f"{worst:.3g}, expected <= {atol:g}; nothing deployed (report it with the checkpoint"
                         + ("; export without --fp16 for a float32 encoder" if precision == "fp16" else "") + ")")
    sha = sha256_file(enc_path)
    lo, opt, hi = batch_range
    section = {
        "format": pol["format"], "n_obs_steps": int(cfg["n_obs_steps"]), "horizon": int(cfg["horizon"]),
        "n_action_steps": int(cfg["n_action_steps"]), "action_start": int(cfg["n_obs_steps"]) - 1,
        "encoder": {"file": enc_path.name, "sha256": sha,
                    "inputs": [{"name": k, "dtype": "float32", "shape": ["batch", *s]}
                               for k, s in shapes.items()],
                    "outputs": [{"name": "global_cond", "dtype": "float32",
                                 "shape": ["batch", enc.global_cond_dim]}],
                    "batch_range": {"min": lo, "opt": opt, "max": hi},
                    "parity": {"max_abs_diff": worst, "atol": atol, "reference": "PyTorch float32",
                               "backend": "onnxruntime CPU", "batches": [1, 3]},
                    "fp32_islands": islands, "precision": precision, "fp16_note": note},
        "observations": pol["observations"], "image_features": image_features(cfg),
        "image_preprocess": ({"resize": None, "crop": list(cfg["crop_shape"]) if cfg.get("crop_shape") else None}
                             if image_features(cfg) else None),
        "action": pol["action"], "source": {"lerobot_config": cfg, "folder": pol.get("folder")},
    }
    model = onnx.load(str(enc_path))
    model.metadata_props.add(key="policy", value=json.dumps(section))
    onnx.save(model, str(enc_path))
    section["encoder"]["sha256"] = sha256_file(enc_path)
    man = json.loads(onnx_path.with_suffix(".json").read_text())
    man["policy"] = section
    write_manifest(onnx_path, man)  # validated (the contract checks the policy section) and atomic
    return section
