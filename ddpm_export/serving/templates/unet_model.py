"""Triton Python-backend model: the U-Net through the project's runtime (written by
'ddpm-export triton --unet-backend python').

A stand-in for the native ONNX Runtime / TensorRT backend on a server that has
only the Python backend: same name, inputs and outputs (x_t FP32 [B, C, H, W],
t INT32 [B, 1], a conditional engine's condition inputs (a class label INT64 [B, 1],
others [B, *shape]) -> eps FP32 [B, C, H, W]), same dynamic batching. The engine and
its manifest are ``model.onnx``/``model.json`` beside this file (a TensorRT plan
is served by Triton's native TensorRT backend, never by this stand-in).
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE in sys.path:
    sys.path.remove(_HERE)
sys.path.insert(0, _HERE)

import runtime  # noqa: E402
from backend_env import check_numpy  # noqa: E402
from runtime.contract import INPUT_T, INPUT_X, OUTPUT, conditions_of  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.engine = runtime.load(os.path.join(version_dir, params["engine_file"]))
        self.engine.runner.__enter__()
        self.conditions = conditions_of(self.engine.manifest)

    def execute(self, requests):
        # Triton's dynamic batcher may hand several requests at once: one engine call for all
        xs = [pb_utils.get_input_tensor_by_name(r, INPUT_X).as_numpy() for r in requests]
        ts = [pb_utils.get_input_tensor_by_name(r, INPUT_T).as_numpy().reshape(-1) for r in requests]
        cond = {c.name: np.concatenate([
            pb_utils.get_input_tensor_by_name(r, c.name).as_numpy().reshape((-1,) + tuple(c.shape))
            for r in requests]) for c in self.conditions}
        try:
            eps = self.engine(np.concatenate(xs), np.concatenate(ts).astype(np.int32), **cond)
        except Exception as e:
            err = pb_utils.TritonError(f"U-Net failed: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        out, i = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, eps[i:i + len(x)])]))
            i += len(x)
        return out

    def finalize(self):
        self.engine.runner.close()
