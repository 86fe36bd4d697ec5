"""Triton Python-backend model: a diffusion policy (written by 'ddpm-export triton' for a policy engine).

One request = one observation history, one action chunk back: what
runtime.load_policy(engine).predict_chunk(history, seed) returns.

Request:
    <observation name>  FP32 [B, n_obs_steps, *shape]   one input per observation of the policy
                        (the manifest's names, e.g. observation.state, observation.image), raw
                        units; every one is required, all with the same B (1 .. max_batch)
    seed    INT64 [1]   noise seed (optional, default 0): sample j of the batch draws from stream
                        j of this seed, as predict_chunk does
    method  BYTES [1]   a runtime method (optional; default the manifest's sampler, else ddpm)
    steps   INT32 [1]   its steps (optional; default the manifest's, else the method's)
Response:
    actions FP32 [B, n_action_steps, action_dim]   raw units

A client's mistake (a missing observation, a wrong shape or batch, a non-finite value, a bad
seed/method/steps) is INVALID_ARG with a one-line message naming the input; an input the config
does not list, a wrong dtype or rank is refused by Triton itself, also as INVALID_ARG. A failure
while sampling is INTERNAL. The sampler's request helpers (sampler_model.py, copied beside this
file) quote and bound every message the same way.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE in sys.path:
    sys.path.remove(_HERE)
sys.path.insert(0, _HERE)  # the runtime/ copied beside this file wins over any installed one

from backend_env import check_numpy  # noqa: E402
from runtime.policy import Policy, PolicyError, load_policy  # noqa: E402
from runtime.schedulers import METHODS  # noqa: E402
from sampler_model import RequestError, _error_response, _quote, _scalar  # noqa: E402

MAX_PLANS = 8  # (method, steps) policies kept; they share the two loaded engines


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.max_batch = int(params["max_batch"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.base = load_policy(os.path.join(version_dir, params["engine_file"]), seed=0)
        self.plans = {(None, None): self.base}
        self.T = int(self.base.engine.manifest["schedule"]["num_timesteps"])

    def _policy(self, method, steps):
        key = (method, steps)
        if key not in self.plans:
            if method is not None and method not in METHODS:
                raise RequestError(f"input 'method': {_quote(method)} is unknown; expected one of {list(METHODS)}")
            if steps is not None and not 1 <= steps <= self.T:
                raise RequestError(f"input 'steps': {steps} is out of range; expected 1 <= steps <= {self.T} "
                                   f"(the schedule's T)")
            try:
                p = Policy(self.base.engine, self.base.encoder, self.base.spec, method=method, steps=steps)
            except ValueError as e:
                raise RequestError(f"inputs method/steps: {e}") from None
            if len(self.plans) >= MAX_PLANS:
                self.plans.pop(next(k for k in self.plans if k != (None, None)))
            self.plans[key] = p
        return self.plans[key]

    def _history(self, request):
        hist = {}
        for name, shape in self.base.observation_shapes.items():
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise RequestError(
                    f"input {name!r} is missing; send every observation of the policy "
                    f"({', '.join(self.base.observation_shapes)}) as FP32 [B, {self.base.n_obs_steps}, "
                    f"*shape] in raw units")
            hist[name] = t.as_numpy()
        b = next(iter(hist.values())).shape[0]
        if not 1 <= b <= self.max_batch:
            raise RequestError(f"batch {b}: expected 1 <= B <= {self.max_batch} (the repository's max batch); "
                               f"split larger requests")
        return hist

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                hist = self._history(request)
                seed = 0 if pb_utils.get_input_tensor_by_name(request, "seed") is None else \
                    _scalar(request, "seed", int)
                if seed < 0:
                    raise RequestError(f"input 'seed': {seed} is negative; expected an integer >= 0")
                policy = self._policy(_scalar(request, "method", str), _scalar(request, "steps", int))
                try:
                    actions = policy.predict_chunk(hist, seed=seed)
                except PolicyError as e:  # shapes, batch, non-finite values: the client's
                    raise RequestError(f"input {e}") from None
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("actions", np.ascontiguousarray(actions, dtype=np.float32))]))
            except Exception as e:
                responses.append(_error_response(e, "policy"))
        return responses

    def finalize(self):
        self.base.close()
