"""Triton Python-backend model: the DDPM/DDIM sampler (written by 'ddpm-export triton').

Request (all inputs one-element tensors):
    num     INT32   images to draw (1 .. the config's max_num)
    seed    INT64   noise seed; same seed and settings -> the same images as
                    runtime.load(engine).sample(num, seed, ...)
    method  BYTES   a runtime method (optional; default: the manifest's sampling section,
                    a distilled student's, else "ddpm")
    steps   INT32   sampling steps (optional; default: the manifest's, else the method's)
    eta     FP32    DDIM eta (optional, default 0)
A conditional engine's sampler also takes (its config lists them):
    NAME    INT64 [num] or [1] (a class label: one per image, or one for all) |
            FP32 [num, *shape] or [1, *shape] (a vector or image-channel condition),
            one input per condition in the manifest; every one is required
    guidance FP32   classifier-free guidance scale (optional; default: the manifest's,
                    else 1 = the conditional model alone)
Response:
    images  UINT8   [num, H, W, C]  (an engine whose samples are arrays: samples FP32
                                     [num, *sample_shape])

A request the sampler refuses (a missing or malformed input, a value out of range) fails
with Triton's INVALID_ARG code (HTTP 400, gRPC INVALID_ARGUMENT) and a one-line message
naming the input; a failure while sampling is INTERNAL (HTTP 500). A message quotes at
most QUOTE_CHARS characters of any input and is at most MESSAGE_CHARS long.

config.pbtxt parameters: mode "bls" (each U-Net call goes to the model named by
unet_model through BLS) or "inprocess" (the engine beside this file runs through
the project's runtime in this process); max_num, max_batch.

The sampling loop is the runtime's (runtime.loop.sample); this file only adapts
Triton requests to it. The runtime package is copied next to this file.
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
from runtime.contract import (INPUT_T, INPUT_X, OUTPUT, conditions_of, default_guidance, plan_options,  # noqa: E402
                              plan_steps, read_manifest, sample_kind_of, sample_shape_of, sampling_plan)
from runtime.guidance import ConditionError, check_condition, check_guidance, null_conditions  # noqa: E402
from runtime.io import to_uint8  # noqa: E402
from runtime.loop import METHODS, sample  # noqa: E402
from runtime.schedulers import make_scheduler  # noqa: E402

OPTIONAL = {"method": None, "steps": None, "eta": None, "guidance": None}  # method/steps None: runtime.contract.sampling_plan
QUOTE_CHARS = 40  # of a client's string quoted back in an error
MESSAGE_CHARS = 1000  # longest error message sent back


def _quote(text):
    """repr() of at most QUOTE_CHARS characters of a client's string, and its length when cut."""
    if len(text) <= QUOTE_CHARS:
        return repr(text)
    return f"{text[:QUOTE_CHARS]!r}... ({len(text)} characters)"


def _bounded(message):
    """One line of at most MESSAGE_CHARS characters (an error may carry text from anywhere)."""
    line = " ".join(str(message).split())
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS - 15] + "... (truncated)"


def _error_response(e, what):
    """The response for a request that raised: a RequestError (the client's mistake) is INVALID_ARG
    (HTTP 400, gRPC INVALID_ARGUMENT); anything else is INTERNAL, named, and the server keeps serving."""
    if isinstance(e, RequestError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(_bounded(e), pb_utils.TritonError.INVALID_ARG))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(
        _bounded(f"{what} failed: {type(e).__name__}: {e}"), pb_utils.TritonError.INTERNAL))


class RequestError(ValueError):
    """A request this sampler refuses (the client's mistake: INVALID_ARG); the message goes back."""


class Cancelled(Exception):
    """The client went away (or Triton cancelled the request): stop sampling for it."""


def _stop_if_cancelled(request):
    """A step callback for runtime.loop.sample: no work for a request nobody waits for."""
    def callback(i, t, x, x0):
        if request.is_cancelled():
            raise Cancelled(f"request cancelled at step {i + 1} (t={t})")
    return callback


class BLSRunner:
    """eps = runner(x_t, t, **cond) by a BLS call to the U-Net model in the same server
    (a class label goes as [batch, 1], as t; other conditions as they are)."""

    def __init__(self, model_name, conditions=()):
        self.model_name = model_name
        self.conditions = tuple(conditions)

    def __call__(self, x_t, t, **cond):
        inputs = [pb_utils.Tensor(INPUT_X, np.ascontiguousarray(x_t, dtype=np.float32)),
                  pb_utils.Tensor(INPUT_T, np.ascontiguousarray(t, dtype=np.int32).reshape(-1, 1))]
        for c in self.conditions:
            a = np.ascontiguousarray(cond[c.name], dtype=np.dtype(c.dtype))
            inputs.append(pb_utils.Tensor(c.name, a.reshape(-1, 1) if not c.shape else a))
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=[OUTPUT],
            inputs=inputs,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"U-Net model {self.model_name!r} failed: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, OUTPUT).as_numpy()


def _scalar(request, name, kind):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if name in OPTIONAL:
            return OPTIONAL[name]
        raise RequestError(f"input {name!r} is missing; send num (INT32) and seed (INT64), "
                           f"optionally method (BYTES), steps (INT32), eta (FP32)")
    value = tensor.as_numpy()
    if value.size != 1:
        raise RequestError(f"input {name!r} has {value.size} elements (shape {list(value.shape)}); "
                           f"expected one value, shape [1]")
    value = value.reshape(-1)[0]
    if kind is str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        raise RequestError(f"input {name!r} is {_quote(shown)}; expected a number "
                           f"({'an integer' if kind is int else 'a float'})") from None


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.mode = params["mode"]
        self.max_num = int(params["max_num"])
        self.max_batch = int(params["max_batch"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.engine = None
        if self.mode == "inprocess":
            import runtime

            # "true" only when 'ddpm-export triton --allow-host-code' wrote a version-compatible plan
            self.engine = runtime.load(os.path.join(version_dir, params["engine_file"]),
                                       allow_host_code=params.get("allow_host_code") == "true")
            self.engine.runner.__enter__()
            self.manifest = self.engine.manifest
            self.runner = self.engine.runner
        elif self.mode == "bls":
            self.manifest = read_manifest(os.path.join(version_dir, params["manifest_file"]))
            self.runner = BLSRunner(params["unet_model"], conditions_of(self.manifest))
        else:
            raise ValueError(f"parameter mode: received {self.mode!r}, expected 'bls' or 'inprocess'")
        self.image_shape = tuple(int(v) for v in sample_shape_of(self.manifest))
        self.conditions = conditions_of(self.manifest)
        self.array = sample_kind_of(self.manifest) == "array"
        self.T = int(self.manifest["schedule"]["num_timesteps"])

    def _conditions(self, request, num):
        """The request's condition inputs, [num, *shape] each, and the guidance scale."""
        cond = {}
        for c in self.conditions:
            tensor = pb_utils.get_input_tensor_by_name(request, c.name)
            per = "a label" if c.kind == "class_label" else f"a {c.dtype} {list(c.shape)}"
            if tensor is None:
                raise RequestError(
                    f"input {c.name!r} is missing; this model is conditional: send {c.name} "
                    f"({c.dtype.upper()} [num{''.join(', ' + str(d) for d in c.shape)}]: {per} per image, or [1"
                    f"{''.join(', ' + str(d) for d in c.shape)}] for all)")
            a = tensor.as_numpy()
            if a.ndim != 1 + len(c.shape) or a.shape[0] not in (1, num):
                raise RequestError(
                    f"input {c.name!r}: received shape {list(a.shape)}, expected [{num}"
                    f"{''.join(', ' + str(d) for d in c.shape)}] ({per} per image, num = {num}) or [1"
                    f"{''.join(', ' + str(d) for d in c.shape)}] (one for all)")
            if a.shape[0] == 1 and num > 1:
                a = np.broadcast_to(a, (num,) + a.shape[1:])
            try:
                cond[c.name] = check_condition(c, a, num)
            except ConditionError as e:
                raise RequestError(f"input {c.name!r}: {e}") from None
        w = _scalar(request, "guidance", float) if self.conditions else None
        try:
            w = check_guidance(default_guidance(self.manifest) if w is None else w)
            if w != 1.0:
                null_conditions(self.conditions, 1)
        except ConditionError as e:
            raise RequestError(f"input 'guidance': {e}") from None
        return cond, w

    def _settings(self, request):
        num = _scalar(request, "num", int)
        seed = _scalar(request, "seed", int)
        method = _scalar(request, "method", str)
        steps = _scalar(request, "steps", int)
        eta = _scalar(request, "eta", float)
        if not 1 <= num <= self.max_num:
            raise RequestError(f"input 'num': {num} is out of range; expected 1 <= num <= {self.max_num} "
                               f"(the repository's memory limit); split larger requests")
        if method is not None and method not in METHODS:
            raise RequestError(f"input 'method': {_quote(method)} is unknown; expected one of {list(METHODS)}")
        try:
            plan = sampling_plan(self.manifest, method, steps)
        except ValueError as e:
            raise RequestError(f"inputs method/steps: {e}") from None
        method, steps, timesteps = plan["method"], plan["steps"], plan["timesteps"]
        if steps is not None and not 1 <= steps <= self.T:
            raise RequestError(f"input 'steps': {steps} is out of range; expected 1 <= steps <= {self.T} "
                               f"(the schedule's T)")
        if eta is not None and not (np.isfinite(eta) and eta >= 0.0):
            raise RequestError(f"input 'eta': {eta} is invalid; expected a finite value >= 0 (0: deterministic DDIM)")
        if seed < 0:
            raise RequestError(f"input 'seed': {seed} is negative; expected an integer >= 0")
        options = plan_options(plan, {"eta": eta})  # a non-binding default's (a DDIMPipeline's) options too
        try:  # the method's own rules (eta only for ddim, enough steps for the order): before sampling
            make_scheduler(self.manifest["schedule"], method, **plan_steps(plan), **options)
        except ValueError as e:
            raise RequestError(f"inputs method/steps/eta: {e}") from None
        cond, guidance = self._conditions(request, num) if self.conditions else (None, 1.0)
        return dict(num=num, seed=seed, method=method, steps=steps, timesteps=timesteps, options=options,
                    cond=cond, guidance=guidance)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                s = self._settings(request)
                # the batch runtime.load(engine).sample uses by default, so images match it; with
                # guidance half of it, so that both branches go through one U-Net call at 2N
                guided = s["guidance"] not in (0.0, 1.0) and self.max_batch >= 2
                extra = {} if not self.conditions else dict(
                    conditions=self.conditions, cond=s["cond"], guidance=s["guidance"], max_batch=self.max_batch)
                result = sample(self.runner, self.image_shape, self.manifest["schedule"], s["num"],
                                seed=s["seed"], method=s["method"], **plan_steps(s), **s["options"],
                                batch=min(s["num"], self.max_batch // 2 if guided else self.max_batch),
                                callback=_stop_if_cancelled(request), **extra)
                out = (pb_utils.Tensor("samples", np.ascontiguousarray(result.images, dtype=np.float32))
                       if self.array else pb_utils.Tensor("images", to_uint8(result.images)))
                responses.append(pb_utils.InferenceResponse([out]))
            except Cancelled as e:
                pb_utils.Logger.log_info(f"{self.name}: {e}")
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.CANCELLED)))
            except Exception as e:
                responses.append(_error_response(e, "sampling"))
        return responses

    def finalize(self):
        if self.engine is not None:
            self.engine.runner.close()
