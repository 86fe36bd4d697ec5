"""The export contract: one source of truth for export, engine build and runtime.

Input/output names, dtypes, the dynamic batch axis and the batch profile live
here, and travel with every model as a *manifest* (TensorRT demo
``model/base_model.py``; nanoGPT's ``model_args``). NumPy/stdlib only, Python 3.8:
this module imports without torch, onnx, onnxruntime or tensorrt.

Model I/O (every precision; an FP16 graph casts at its edges inside the graph)::

    x_t  float32 [batch, C, H, W]   noisy image
    t    int32   [batch]            code timestep 0..T-1 (int32, not int64:
                                    TensorRT 8.x only down-casts int64 inputs)
    eps  float32 [batch, C, H, W]   the network's prediction: the noise, or x0 or v
                                    as ``schedule.prediction`` says (the name stays
                                    "eps" for every prediction type, so engines and
                                    Triton configs keep one I/O contract)
    NAME ...     [batch, ...]       one input per condition of a conditional model
                                    (``conditions`` below), after x_t and t

A sample need not be an image: ``sample_shape`` may have any rank ([C, H, W], [C, L],
a policy's [horizon, action_dim]); x_t and eps are [batch, *sample_shape].

Manifest schema (``manifest_version`` 1 or 2): a JSON object, embedded in the ONNX
file's ``metadata_props`` under ``MANIFEST_KEY`` and written as a sidecar
``NAME.json`` next to ``NAME.onnx`` (an engine ``NAME.plan`` reads the same
``NAME.json``). The runtime needs nothing else::

    manifest_version  int   1 when the schedule keeps every optional key below at its
                            default (what version 1 meant), 2 when it does not: a runtime
                            that knows only version 1 then refuses the file rather than
                            sampling an x0 or v model as eps (manifest_version_for);
                            3 when the model takes conditions or its samples are not
                            [C, H, W] images, so that a runtime that knows only 1 and 2
                            refuses it instead of ignoring its condition inputs
    precision         str   "fp32" | "fp16" (FP16 graph, FP32 islands, FP32 I/O)
    image_shape       [C, H, W] of an image model; null when sample_kind is "array"
    sample_shape      version 3 only (older: image_shape): the per-sample shape, any rank
    sample_kind       version 3 only (older: "image"): "image" (a [C, H, W] sample in
                      [-1, 1], shown as uint8) or "array" (floats, returned as they are)
    conditions        version 3 only (older: none): a list, one entry per condition input,
                      in engine input order after x_t and t (Condition.to_dict):
                        name         the engine input's name ("class_labels" for labels:
                                     diffusers' name)
                        kind         "class_label": int64 [] per sample, one label in
                                       [0, num_classes) or the null label
                                     "vector": float32 [D, ...] per sample (an embedding,
                                       a policy's observation features)
                                     "image_channels": float32 [C', H, W], concatenated to
                                       x_t's channels inside the graph (super-resolution)
                        dtype        "int64" (class_label) | "float32"
                        shape        the per-sample shape ([] for a label)
                        num_classes  class_label only: the number of real classes K
                        null         how "no condition" is written, for classifier-free
                                     guidance: class_label: the null label (an int in
                                     [0, num_classes], e.g. K for a learned extra row);
                                     vector / image_channels: "zeros"; null = none (the
                                     model cannot be sampled with guidance)
    guidance          version 3 only, optional: {"default": w}, the guidance scale
                      sample_float uses when none is given (diffusers' guidance_scale:
                      out = out_uncond + w (out_cond - out_uncond); 1 = the conditional
                      model alone, 0 = the unconditional one); absent = 1
    schedule          ScheduleConfig.to_dict() (runtime/schedulers/schedule.py):
                      required: kind ("linear" | "scaled_linear" | "squaredcos_cap_v2"
                      | "explicit"), beta_start, beta_end, num_timesteps (T),
                      variance_type ("fixedlarge" | "fixedsmall"), clip_denoised;
                      optional, absent = the default (what older manifests meant):
                      betas (list of T floats, only with kind "explicit"; default null),
                      prediction ("eps" | "x0" | "v"; default "eps"),
                      thresholding (default false), dynamic_thresholding_ratio (0.995),
                      sample_max_value (1.0), clip_sample_range (1.0),
                      timestep_spacing ("leading" | "trailing" | "linspace"; default
                      "leading": the spacing of DDPM and DDIM at N < T steps),
                      steps_offset (0), final_step_noise (false: DDPM adds no
                      noise on a chain's last step; true: it does when that t > 0,
                      as diffusers' DDPMScheduler), set_alpha_to_one (true: DDIM's
                      step after the last timestep goes to alpha_cumprod 1; false: to
                      alphas_cumprod[0], as diffusers' DDIMScheduler). An unknown key
                      is refused.
    io                {"inputs": [{"name", "dtype", "shape"}, ...],
                       "outputs": [...], "batch_axis": "batch"}
                      == io_spec(sample_shape, conditions)
    batch_range       {"min", "opt", "max"}  the engine's optimization profile
    onnx              {"opset", "exporter", "normalization", "attention"}
    source            {"checkpoint" (file name), "checkpoint_sha256", "weights"
                       ("ema" | "model"), "step", "model_config", "provenance"}
    onnx_sha256       str | null: sha256 of the .onnx file. Null in the embedded
                      copy (a file cannot hold its own hash); set in the sidecar.
    checks            {"onnx_checker", "shape_inference", "parity", "fp16_error"}
                      what the export verified (parity: max abs difference vs
                      PyTorch through ONNX Runtime CPU, with its tolerance)
    tools             {"python", "torch", "onnx", "onnxruntime", "ddpm_export", ...}
    command           str   the command that made the file
    sampling          optional, absent = ddpm over all T unless asked otherwise. Two kinds:
                      binding (a model that must be sampled one way, a few-step student
                      of 'ddpm-export distill'; "binding" absent or true):
                      {"method": a runtime.schedulers method name, "steps": the default
                       call count, "allowed_steps": [call counts it was trained for],
                       "timesteps": {"N": [the N descending timesteps], ...}}
                      non-binding (a default, e.g. what a diffusers DDIMPipeline folder
                      samples with):
                      {"binding": false, "method": a method name, "steps": the default
                       call count or null (the method's own), "options": {method options
                       as runtime.schedulers.resolve_options takes them, e.g. {"eta": 0.0,
                       "variant": "diffusers"}}, "source": optional str, where the default
                       comes from}
                      ``sampling_plan(manifest, method, steps)`` resolves a request
                      against it. Binding: defaults from it, anything else refused; the
                      runtime samples exactly the listed timesteps (they need not be the
                      method's own spacing: a student's list may be chosen by
                      measurement after training). Non-binding: no method asked = its
                      method, steps and options; its method asked = its steps and
                      options where not given; another method = that method's own
                      defaults. ``plan_options(plan, given)`` merges the options. An
                      older runtime refuses a non-binding section (no allowed_steps)
                      rather than sampling with another method.
    policy            optional, absent = not a policy (the manifest means what it always
                      meant). A denoiser exported from a LeRobot DiffusionPolicy (sample_kind
                      "array", sample_shape [horizon, action_dim], one "vector" condition
                      "global_cond" of shape [D]); runtime.policy.load_policy reads it
                      (policy_of returns it validated as a PolicySpec):
                      {"format": "lerobot.DiffusionPolicy", "n_obs_steps": n, "horizon":
                       sample_shape[0], "n_action_steps": k <= horizon - n + 1,
                       "action_start": n - 1 (the first action of a chunk that is kept),
                       "encoder": {"file": NAME-encoder.onnx | .plan beside this file,
                         "sha256": hex of the encoder .onnx, "inputs": [{"name", "dtype":
                         "float32", "shape": ["batch", n, *per-sample shape]}, ...] (one per
                         observation, images stacked as "observation.images" [batch, n,
                         n_cameras, C, H, W]), "outputs": [{"name": "global_cond", "dtype":
                         "float32", "shape": ["batch", D]}], "batch_range", optional "parity",
                         "fp32_islands"},
                       "observations": [{"name", "type" (STATE | VISUAL | ENV), "shape",
                         "normalization", "camera_index" (VISUAL only)}, ...],
                       "image_features": [camera names in stacking order],
                       "image_preprocess": {"resize", "crop"} | null,
                       "action": {"name": "action", "shape": [action_dim], "normalization"},
                       "source": {...}}
                      normalization: {"mode": "identity"} or {"mode", stats..., "eps"} with
                      mode "mean_std" (mean, std), "min_max" (min, max), "quantiles" (q01,
                      q99), "quantile10" (q10, q90); stats nested lists broadcastable to the
                      feature's per-sample shape.
Keys not listed (e.g. an ``engine`` section added by an engine build) are kept
and ignored, so later tools can extend the manifest without a version bump.
"""
from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from runtime.io import PathLike, sha256_file, write_json
from runtime.schedulers.schedule import ScheduleConfig

INPUT_X = "x_t"
INPUT_T = "t"
OUTPUT = "eps"
X_DTYPE = "float32"
T_DTYPE = "int32"
EPS_DTYPE = "float32"
BATCH_AXIS = "batch"  # name of the dynamic axis 0 of every input and output
INPUT_NAMES = (INPUT_X, INPUT_T)
OUTPUT_NAMES = (OUTPUT,)
PRECISIONS = ("fp32", "fp16")

MANIFEST_KEY = "ddpm_export.manifest"  # ONNX metadata_props key holding the JSON
MANIFEST_VERSION = 3  # the newest version this runtime writes and reads
MANIFEST_VERSIONS = (1, 2, 3)  # every version it reads
CONDITIONAL_VERSION = 3  # the first version with conditions / sample_shape / sample_kind
SIDECAR_SUFFIX = ".json"



class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not fit this runtime."""


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine accepts (TensorRT optimization profile).

    min 1: single-image sampling must work. opt 8: the size kernels are tuned
    for, a typical sample grid and the export's parity batch. max 64: a U-Net
    call at 32x32 is small (~12 GFLOP per image), so large batches are what
    fill a GPU; 64 keeps the cifar10 model's activations (a few MB per image
    in FP16, well under 1 GB in all) inside the 8 GB an Orin Nano shares
    with its CPU, and engine build time (tactics are timed per profile) short.
    """

    min: int = 1
    opt: int = 8
    max: int = 64

    def __post_init__(self) -> None:
        for k in ("min", "opt", "max"):
            v = getattr(self, k)
            try:
                if isinstance(v, bool):
                    raise TypeError
                object.__setattr__(self, k, operator.index(v))  # ints and NumPy ints, not 1.5
            except TypeError:
                raise ManifestError(f"batch_range.{k}: received {v!r}, expected an int") from None
        if not 1 <= self.min <= self.opt <= self.max:
            raise ManifestError(
                f"batch_range: received min={self.min}, opt={self.opt}, max={self.max}; "
                f"expected 1 <= min <= opt <= max"
            )

    def to_dict(self) -> Dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def coerce(cls, value: Any) -> "BatchRange":
        """None (the default), a BatchRange, {"min","opt","max"} or (min, opt, max)."""
        if value is None:
            return DEFAULT_BATCH_RANGE
        if isinstance(value, BatchRange):
            return value
        if isinstance(value, Mapping):
            missing = [k for k in ("min", "opt", "max") if k not in value]
            if missing:
                raise ManifestError(f"batch_range: missing {missing}; expected keys min, opt, max")
            return cls(value["min"], value["opt"], value["max"])
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
            return cls(*value)
        raise ManifestError(
            f"batch_range: received {value!r}; expected (min, opt, max), e.g. (1, 8, 64)"
        )


DEFAULT_BATCH_RANGE = BatchRange()


SAMPLE_KINDS = ("image", "array")
COND_KINDS = ("class_label", "vector", "image_channels")
COND_DTYPES = {"class_label": "int64", "vector": "float32", "image_channels": "float32"}
NULL_ZEROS = "zeros"  # the null of a vector / image_channels condition: all zeros
_RESERVED_NAMES = (INPUT_X, INPUT_T, OUTPUT)


@dataclass(frozen=True)
class Condition:
    """One condition input of a conditional model (its manifest entry, validated).

    name: the engine input; kind: one of COND_KINDS; shape: per sample (the engine input is
    [batch, *shape]); num_classes: class_label only, the real classes K (labels 0..K-1);
    null: how "no condition" is written for guidance (class_label: an int in [0, K];
    vector / image_channels: "zeros"; None: the model has none, guidance is refused).
    """

    name: str
    kind: str
    shape: Tuple[int, ...] = ()
    num_classes: Optional[int] = None
    null: Any = None

    @property
    def dtype(self) -> str:
        return COND_DTYPES[self.kind]

    def problems(self) -> List[str]:
        out = []
        if not (isinstance(self.name, str) and self.name.replace("_", "a").replace(".", "a").isalnum()
                and not self.name[:1].isdigit()):
            out.append(f"name {self.name!r} is not an identifier (letters, digits, '_', '.')")
        elif self.name in _RESERVED_NAMES:
            out.append(f"name {self.name!r} is taken by the contract's own {_RESERVED_NAMES}")
        if self.kind not in COND_KINDS:
            return out + [f"kind {self.kind!r} is not one of {COND_KINDS}"]
        if not all(_is_int(d) and d > 0 for d in self.shape):
            out.append(f"shape {list(self.shape)} is not a list of positive ints")
        if self.kind == "class_label":
            if self.shape != ():
                out.append(f"a class_label has shape [] per sample, not {list(self.shape)}")
            if not (_is_int(self.num_classes) and self.num_classes >= 1):
                out.append(f"num_classes {self.num_classes!r} is not an int >= 1")
            elif self.null is not None and not (_is_int(self.null) and 0 <= self.null <= self.num_classes):
                out.append(f"null {self.null!r} is not a label in [0, {self.num_classes}] or null")
        else:
            if self.num_classes is not None:
                out.append(f"num_classes is for class_label conditions, not {self.kind}")
            if self.null not in (None, NULL_ZEROS):
                out.append(f"null {self.null!r} is not {NULL_ZEROS!r} or null")
            if self.kind == "vector" and len(self.shape) < 1:
                out.append("a vector condition has rank >= 1 per sample, e.g. [D]")
            if self.kind == "image_channels" and len(self.shape) != 3:
                out.append(f"an image_channels condition is [C, H, W] per sample, not {list(self.shape)}")
        return out

    def to_dict(self) -> Dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "dtype": self.dtype, "shape": list(self.shape)}
        if self.kind == "class_label":
            d["num_classes"] = self.num_classes
        d["null"] = self.null
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "conditions[?]") -> "Condition":
        if not isinstance(d, Mapping):
            _fail(where, d, "an object {name, kind, dtype, shape, null[, num_classes]}")
        unknown = sorted(set(d) - {"name", "kind", "dtype", "shape", "num_classes", "null"})
        missing = [k for k in ("name", "kind", "dtype", "shape", "null") if k not in d]
        shape = d.get("shape")
        if unknown or missing or not isinstance(shape, list):
            _fail(where, dict(d), f"keys name, kind, dtype, shape (a list), null[, num_classes]"
                  + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
        c = cls(d["name"], d["kind"], tuple(shape), d.get("num_classes"), d["null"])
        problems = c.problems()
        if not problems and d["dtype"] != c.dtype:
            problems.append(f"dtype {d['dtype']!r} is not {c.dtype!r} (what a {c.kind} is)")
        if problems:
            _fail(where, dict(d), "a valid condition: " + "; ".join(problems))
        return c


def io_spec(sample_shape: Sequence[int], conditions: Sequence[Condition] = ()) -> Dict[str, Any]:
    """The I/O section of a manifest for samples of ``sample_shape`` ([C, H, W] for images)
    and the given condition inputs (after x_t and t, in order)."""
    img = [BATCH_AXIS] + [int(v) for v in sample_shape]
    inputs = [
        {"name": INPUT_X, "dtype": X_DTYPE, "shape": list(img)},
        {"name": INPUT_T, "dtype": T_DTYPE, "shape": [BATCH_AXIS]},
    ]
    inputs += [{"name": c.name, "dtype": c.dtype, "shape": [BATCH_AXIS] + list(c.shape)}
               for c in conditions]
    return {
        "inputs": inputs,
        "outputs": [{"name": OUTPUT, "dtype": EPS_DTYPE, "shape": list(img)}],
        "batch_axis": BATCH_AXIS,
    }


def input_names(conditions: Sequence[Condition] = ()) -> Tuple[str, ...]:
    """The engine's input names in order: x_t, t, then one per condition."""
    return INPUT_NAMES + tuple(c.name for c in conditions)


def dynamic_axes(conditions: Sequence[Condition] = ()) -> Dict[str, Dict[int, str]]:
    """Axis 0 of every input and output is the batch (torch.onnx.export's form)."""
    return {name: {0: BATCH_AXIS} for name in input_names(conditions) + OUTPUT_NAMES}


def conditions_of(manifest: Mapping[str, Any]) -> Tuple[Condition, ...]:
    """The condition inputs of a (validated) manifest; () for an unconditional model."""
    return tuple(Condition.from_dict(c, f"conditions[{i}]")
                 for i, c in enumerate(manifest.get("conditions") or ()))


def sample_shape_of(manifest: Mapping[str, Any]) -> Tuple[int, ...]:
    """The per-sample shape: sample_shape (version 3), else image_shape."""
    shape = manifest.get("sample_shape")
    return tuple(int(v) for v in (manifest["image_shape"] if shape is None else shape))


def sample_kind_of(manifest: Mapping[str, Any]) -> str:
    """ "image" or "array" (manifests before version 3 hold images)."""
    return manifest.get("sample_kind", "image")


def default_guidance(manifest: Mapping[str, Any]) -> float:
    """The guidance scale to sample with when none is given: the manifest's, else 1 (none)."""
    g = manifest.get(GUIDANCE_KEY)
    return 1.0 if g is None else float(g["default"])


GUIDANCE_KEY = "guidance"


def sidecar_path(path: PathLike) -> Path:
    """NAME.onnx / NAME.plan -> NAME.json (a .json path is returned as is)."""
    p = Path(path)
    return p if p.suffix == SIDECAR_SUFFIX else p.with_suffix(SIDECAR_SUFFIX)


def manifest_dict(
    image_shape: Sequence[int],
    schedule: Mapping[str, Any],
    precision: str = "fp32",
    batch_range: Any = None,
    source: Optional[Mapping[str, Any]] = None,
    onnx: Optional[Mapping[str, Any]] = None,
    checks: Optional[Mapping[str, Any]] = None,
    tools: Optional[Mapping[str, Any]] = None,
    command: str = "",
    onnx_sha256: Optional[str] = None,
    sampling: Optional[Mapping[str, Any]] = None,
    conditions: Sequence[Any] = (),
    sample_kind: Optional[str] = None,
    guidance: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Assemble and validate a manifest (schema in the module docstring); ``sampling`` is
    added only when given.

    image_shape: the per-sample shape ([C, H, W] for an image model; any rank with
    sample_kind "array"). conditions: Condition objects or their dicts. sample_kind: None =
    "image" for a rank-3 shape, else "array". A model with conditions, or whose samples are
    not images, gets a version-3 manifest; any other the version-1/2 form it always had."""
    shape = [int(v) for v in image_shape]
    conds = tuple(c if isinstance(c, Condition) else Condition.from_dict(c, f"conditions[{i}]")
                  for i, c in enumerate(conditions))
    kind = sample_kind if sample_kind is not None else ("image" if len(shape) == 3 else "array")
    v3 = bool(conds) or kind != "image" or guidance is not None
    d = {
        "manifest_version": CONDITIONAL_VERSION if v3 else _version_or_newest(schedule),
        "precision": precision,
        "image_shape": shape if kind == "image" else None,
        "schedule": dict(schedule),
        "io": io_spec(shape, conds),
        "batch_range": BatchRange.coerce(batch_range).to_dict(),
        "onnx": dict(onnx or {}),
        "source": dict(source or {}),
        "onnx_sha256": onnx_sha256,
        "checks": dict(checks or {}),
        "tools": dict(tools or {}),
        "command": command,
    }
    if v3:
        d.update({"sample_shape": shape, "sample_kind": kind,
                  "conditions": [c.to_dict() for c in conds]})
        if guidance is not None:
            d[GUIDANCE_KEY] = dict(guidance)
    if sampling is not None:
        d[SAMPLING_KEY] = dict(sampling)
    validate_manifest(d)
    return d


_FIX = "re-export with 'ddpm-export export --checkpoint CKPT' (it writes NAME.onnx and NAME.json)"
_SCHEDULE_KEYS = ("kind", "beta_start", "beta_end", "num_timesteps", "variance_type", "clip_denoised")


def _fail(field: str, received: Any, expected: str, fix: str = _FIX) -> None:
    raise ManifestError(f"manifest {field}: received {received!r}, expected {expected}; {fix}")


def validate_manifest(d: Any) -> Dict[str, Any]:
    """Check a manifest against this runtime's contract; returns it, raises ManifestError."""
    if not isinstance(d, Mapping):
        _fail("(top level)", type(d).__name__, "a JSON object")
    for key in ("manifest_version", "precision", "image_shape", "schedule", "io",
                "batch_range", "source", "onnx_sha256", "tools", "command"):
        if key not in d:
            _fail(key, "<missing>", "present (see runtime/contract.py for the schema)")
    v = d["manifest_version"]
    if isinstance(v, bool) or v not in MANIFEST_VERSIONS:
        fix = "upgrade ddpm-export to read it" if isinstance(v, int) and v > MANIFEST_VERSION else _FIX
        _fail("manifest_version", v, " or ".join(map(str, MANIFEST_VERSIONS)), fix)
    if d["precision"] not in PRECISIONS:
        _fail("precision", d["precision"], f"one of {PRECISIONS}")
    conds = _check_sample_and_conditions(d)
    shape = list(sample_shape_of(d))
    sched = d["schedule"]
    if not isinstance(sched, Mapping):
        _fail("schedule", sched, "an object")
    for key in _SCHEDULE_KEYS:
        if key not in sched:
            _fail(f"schedule.{key}", "<missing>", "present")
    try:
        ScheduleConfig.from_dict(dict(sched))
    except (TypeError, ValueError) as e:
        raise ManifestError(f"manifest {e}; {_FIX}") from None
    expected_io = io_spec(shape, conds)
    io = d["io"]
    if not isinstance(io, Mapping):
        _fail("io", io, "an object")
    for side in ("inputs", "outputs"):
        got, want = io.get(side), expected_io[side]
        if not isinstance(got, list) or len(got) != len(want):
            _fail(f"io.{side}", got, f"{len(want)} entries {[w['name'] for w in want]}")
        for i, (g, w) in enumerate(zip(got, want)):
            for k in ("name", "dtype", "shape"):
                if not isinstance(g, Mapping) or g.get(k) != w[k]:
                    received = g.get(k, "<missing>") if isinstance(g, Mapping) else g
                    _fail(f"io.{side}[{i}].{k}", received, repr(w[k]))
    if io.get("batch_axis") != BATCH_AXIS:
        _fail("io.batch_axis", io.get("batch_axis"), repr(BATCH_AXIS))
    try:
        BatchRange.coerce(d["batch_range"])
    except ManifestError as e:
        raise ManifestError(f"manifest {e}; {_FIX}") from None
    src = d["source"]
    if not isinstance(src, Mapping) or not _is_sha256(src.get("checkpoint_sha256")):
        got = src.get("checkpoint_sha256", "<missing>") if isinstance(src, Mapping) else src
        _fail("source.checkpoint_sha256", got, "the 64-hex-digit sha256 of the checkpoint")
    if d["onnx_sha256"] is not None and not _is_sha256(d["onnx_sha256"]):
        _fail("onnx_sha256", d["onnx_sha256"], "null or a 64-hex-digit sha256")
    if not isinstance(d["tools"], Mapping):
        _fail("tools", d["tools"], "an object of tool versions")
    if not isinstance(d["command"], str):
        _fail("command", d["command"], "a string")
    if SAMPLING_KEY in d:
        _check_sampling(d[SAMPLING_KEY], int(sched["num_timesteps"]))
    if POLICY_KEY in d:
        _check_policy(d, conds)
    return dict(d)


def _is_image_shape(shape: Any) -> bool:
    return (isinstance(shape, list) and len(shape) == 3
            and all(_is_int(s) and s > 0 for s in shape))


def _check_sample_and_conditions(d: Mapping[str, Any]) -> Tuple[Condition, ...]:
    """The sample's shape and kind and the conditions of a manifest of any version; returns
    the conditions. Before version 3 the keys of version 3 must be absent (a file that has
    them but says an older version was not written by an export)."""
    v3_keys = ("sample_shape", "sample_kind", "conditions", GUIDANCE_KEY)
    if d["manifest_version"] < CONDITIONAL_VERSION:
        present = [k for k in v3_keys if k in d]
        if present:
            _fail("manifest_version", d["manifest_version"],
                  f"{CONDITIONAL_VERSION} for a manifest with {present}")
        if not _is_image_shape(d["image_shape"]):
            _fail("image_shape", d["image_shape"], "[C, H, W] of positive ints")
        return ()
    for key in ("sample_shape", "sample_kind", "conditions"):
        if key not in d:
            _fail(key, "<missing>", f"present in a version-{CONDITIONAL_VERSION} manifest")
    shape, kind = d["sample_shape"], d["sample_kind"]
    if not (isinstance(shape, list) and shape and all(_is_int(s) and s > 0 for s in shape)):
        _fail("sample_shape", shape, "a non-empty list of positive ints")
    if kind not in SAMPLE_KINDS:
        _fail("sample_kind", kind, f"one of {SAMPLE_KINDS}")
    if kind == "image" and (not _is_image_shape(shape) or d["image_shape"] != shape):
        _fail("image_shape", d["image_shape"], f"sample_shape {shape} ([C, H, W]) for an image model")
    if kind == "array" and d["image_shape"] is not None:
        _fail("image_shape", d["image_shape"], "null for an array model (its shape is sample_shape)")
    raw = d["conditions"]
    if not isinstance(raw, list):
        _fail("conditions", raw, "a list of condition objects")
    conds = tuple(Condition.from_dict(c, f"conditions[{i}]") for i, c in enumerate(raw))
    names = [c.name for c in conds]
    if len(set(names)) != len(names):
        _fail("conditions", names, "distinct names")
    for i, c in enumerate(conds):
        if c.kind == "image_channels" and (kind != "image" or list(c.shape[1:]) != shape[1:]):
            _fail(f"conditions[{i}].shape", list(c.shape),
                  f"[C', {shape[1]}, {shape[2]}]: channels concatenated to an image sample's"
                  if kind == "image" else "an image sample (image_channels concatenate to x_t)")
    g = d.get(GUIDANCE_KEY)
    if g is not None:
        ok = isinstance(g, Mapping) and set(g) == {"default"} and _is_real(g["default"])
        if not ok:
            _fail(GUIDANCE_KEY, g, '{"default": a number} (the guidance scale used when none is given)')
        if float(g["default"]) != 1.0:
            missing = [c.name for c in conds if c.null is None]
            if not conds or missing:
                _fail(f"{GUIDANCE_KEY}.default", g["default"],
                      f"1 for a model whose conditions {missing or '(none)'} have no null form "
                      f"(guidance needs the unconditional prediction)")
    return conds


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def manifest_version_for(schedule: Mapping[str, Any]) -> int:
    """1 for a schedule a version-1 reader samples exactly as this runtime does (every later
    key absent or at its default), else 2."""
    cfg = schedule if isinstance(schedule, ScheduleConfig) else ScheduleConfig.from_dict(dict(schedule))
    return 1 if cfg.is_legacy else 2


def _version_or_newest(schedule: Any) -> int:
    try:
        return manifest_version_for(schedule)
    except (TypeError, ValueError, AttributeError):
        return CONDITIONAL_VERSION - 1  # validate_manifest then names what is wrong with the schedule


SAMPLING_KEY = "sampling"
_DEFAULT_SAMPLING_KEYS = ("binding", "method", "steps", "options", "source")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_sampling(sec: Any, T: int) -> None:
    from runtime.schedulers import METHODS, resolve_options

    if not isinstance(sec, Mapping):
        _fail("sampling", sec, "an object {method, steps, allowed_steps, timesteps}, or "
              "{binding: false, method, steps, options}")
    binding = sec.get("binding", True)
    if not isinstance(binding, bool):
        _fail("sampling.binding", binding, "true (a model that must be sampled one way) or false (a default)")
    if sec.get("method") not in METHODS:
        _fail("sampling.method", sec.get("method", "<missing>"), f"one of {', '.join(METHODS)}")
    if not binding:
        unknown = sorted(k for k in sec if k not in _DEFAULT_SAMPLING_KEYS)
        if unknown:
            _fail("sampling", f"keys {unknown}", f"only {', '.join(_DEFAULT_SAMPLING_KEYS)} with binding "
                  f"false (a newer ddpm-export wrote it?)", "upgrade ddpm-export to read it")
        n = sec.get("steps")
        if n is not None and not (_is_int(n) and 1 <= n <= T):
            _fail("sampling.steps", n, f"null (the method's default) or an int in [1, {T}]")
        opts = sec.get("options", {})
        if not isinstance(opts, Mapping):
            _fail("sampling.options", opts, "an object of method options, e.g. {\"eta\": 0.0}")
        try:
            resolved = resolve_options(sec["method"], opts)
        except ValueError as e:
            raise ManifestError(f"manifest sampling.options: {e}; {_FIX}") from None
        eta = resolved.get("eta")
        if eta is not None and not 0.0 <= eta <= 1.0:
            _fail("sampling.options.eta", eta, "a number in [0, 1]")
        if "source" in sec and not isinstance(sec["source"], str):
            _fail("sampling.source", sec["source"], "a string")
        return
    allowed = sec.get("allowed_steps")
    if not (isinstance(allowed, list) and allowed and all(_is_int(n) and n >= 1 for n in allowed)):
        _fail("sampling.allowed_steps", allowed if allowed is not None else "<missing>",
              "a non-empty list of call counts >= 1")
    if sec.get("steps") not in allowed:
        _fail("sampling.steps", sec.get("steps", "<missing>"), f"one of allowed_steps {allowed}")
    ts = sec.get("timesteps")
    if not isinstance(ts, Mapping) or sorted(ts) != sorted(str(n) for n in allowed):
        _fail("sampling.timesteps", ts if ts is not None else "<missing>",
              f"an object with one entry per allowed call count {allowed}")
    for n in allowed:
        t = ts[str(n)]
        ok = (isinstance(t, list) and len(t) == n and all(_is_int(v) and 0 <= v < T for v in t)
              and all(a > b for a, b in zip(t, t[1:])))
        if not ok:
            _fail(f"sampling.timesteps[{n!r}]", t, f"{n} descending ints in [0, {T})")


def is_student(manifest: Mapping[str, Any]) -> bool:
    """True when the manifest (or checkpoint) has a binding ``sampling`` section: a few-step
    student that must be sampled as it says. A non-binding default is not one."""
    sec = manifest.get(SAMPLING_KEY)
    return isinstance(sec, Mapping) and sec.get("binding", True) is not False


def sampling_plan(manifest: Mapping[str, Any], method: Optional[str] = None,
                  steps: Optional[int] = None) -> Dict[str, Any]:
    """The method, step count, timesteps and method options to sample this model with:
    {"method", "steps", "timesteps", "options"}.

    Without a ``sampling`` section: ``method`` (None = "ddpm") and ``steps`` as given,
    timesteps None (the method's own spacing), options {}. With a binding one (a
    student's), None takes its method and default call count, "timesteps" is the
    section's list for that call count (the runtime samples exactly those: pass them to
    runtime.loop.sample / make_scheduler with steps None), and a request it was not
    trained for (another method, an unlisted call count) raises ValueError. With a
    non-binding one (a default): method None or the section's method takes its steps
    where ``steps`` is None and its options (``plan_options`` lets given ones win);
    another method gets nothing from it.
    """
    sec = manifest.get(SAMPLING_KEY)
    if sec is None:
        return {"method": "ddpm" if method is None else method, "steps": steps, "timesteps": None,
                "options": {}}
    if sec.get("binding", True) is False:
        if method is not None and method != sec["method"]:
            return {"method": method, "steps": steps, "timesteps": None, "options": {}}
        return {"method": sec["method"], "steps": sec.get("steps") if steps is None else steps,
                "timesteps": None, "options": dict(sec.get("options") or {})}
    m = sec["method"] if method is None else method
    n = sec["steps"] if steps is None else steps
    allowed = list(sec["allowed_steps"])
    if m != sec["method"] or n not in allowed:
        raise ValueError(
            f"this model is a few-step student: it was trained to be sampled with method {sec['method']} at "
            f"{', '.join(map(str, allowed))} calls (its manifest's 'sampling' section), and received method "
            f"{m} with {n} steps; drop --method/--steps for its default ({sec['method']}, {sec['steps']} calls) "
            f"or pass --steps {'|'.join(map(str, allowed))}")
    return {"method": m, "steps": n, "timesteps": [int(t) for t in sec["timesteps"][str(n)]], "options": {}}


def plan_steps(plan: Mapping[str, Any]) -> Dict[str, Any]:
    """A plan's ``steps=`` / ``timesteps=`` keywords for runtime.loop.sample or make_scheduler:
    {"timesteps": [...], "steps": None} for a student, else {"steps": n, "timesteps": None}."""
    ts = plan.get("timesteps")
    return {"steps": None if ts is not None else plan["steps"], "timesteps": ts}


def plan_options(plan: Mapping[str, Any], given: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The method options to sample a plan with: the plan's (a non-binding default's, e.g.
    DDIMPipeline's eta and step rule), overridden by every ``given`` option that is not None."""
    out = dict(plan.get("options") or {})
    out.update({k: v for k, v in (given or {}).items() if v is not None})
    return out


def schedule_config(manifest: Mapping[str, Any]) -> ScheduleConfig:
    """The ScheduleConfig of a (validated) manifest."""
    return ScheduleConfig.from_dict(dict(manifest["schedule"]))


def prediction(manifest: Mapping[str, Any]) -> str:
    """What the model's output tensor ("eps") holds: "eps", "x0" or "v"
    (older manifests, without the key, mean "eps")."""
    return schedule_config(manifest).prediction


def _is_sha256(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def write_manifest(path: PathLike, d: Mapping[str, Any]) -> Path:
    """Validate d and write it as JSON to sidecar_path(path), atomically; returns that path."""
    validate_manifest(d)
    return write_json(sidecar_path(path), dict(d))


def read_manifest(path: PathLike, verify_sha256: bool = True) -> Dict[str, Any]:
    """The validated manifest of NAME.onnx, NAME.plan or NAME.json.

    Reads the sidecar NAME.json; for an .onnx without one, the manifest embedded
    in its metadata (onnx_sha256 is then null). With verify_sha256, an .onnx
    whose bytes do not match the sidecar's onnx_sha256 is refused.
    """
    p = Path(path)
    side = sidecar_path(p)
    if side.is_file():
        try:
            d = json.loads(side.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ManifestError(f"{side}: not valid JSON ({e}); {_FIX}") from None
        d = _validated(d, side)
        if verify_sha256 and p.suffix == ".onnx" and p.is_file() and d["onnx_sha256"]:
            actual = sha256_file(p)
            if actual != d["onnx_sha256"]:
                raise ManifestError(
                    f"{p}: sha256 {actual[:12]}... does not match {side.name}'s onnx_sha256 "
                    f"{d['onnx_sha256'][:12]}...: the model and its sidecar come from different "
                    f"exports; {_FIX}"
                )
        return d
    if p.suffix == ".onnx" and p.is_file():
        text = read_embedded_manifest(p)
        if text is None:
            raise ManifestError(
                f"{p}: no sidecar {side.name} and no {MANIFEST_KEY!r} in the ONNX metadata; "
                f"this file was not written by 'ddpm-export export': {_FIX}"
            )
        try:
            return _validated(json.loads(text), p)
        except ValueError as e:
            if isinstance(e, ManifestError):
                raise
            raise ManifestError(f"{p}: embedded manifest is not valid JSON ({e}); {_FIX}") from None
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file; pass the NAME.onnx/NAME.plan written by export")
    raise ManifestError(
        f"{p}: no manifest sidecar {side}; copy the NAME.json written with the model next to it"
    )


def _validated(d: Any, where: Path) -> Dict[str, Any]:
    try:
        return validate_manifest(d)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None


def read_embedded_manifest(onnx_path: PathLike) -> Optional[str]:
    """The JSON text under MANIFEST_KEY in an .onnx file's metadata_props, or None.

    Read with the ONNX libraries rather than a protobuf parser of our own: the
    ``onnx`` package when installed (graph weights are not loaded), else ONNX
    Runtime, which any machine running an .onnx has.
    """
    path = str(onnx_path)
    try:
        import onnx  # lazy: optional for the runtime
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:
            raise ManifestError(
                f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}); "
                f"the file is truncated or not ONNX: {_FIX}"
            ) from None
        for prop in model.metadata_props:
            if prop.key == MANIFEST_KEY:
                return prop.value
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        raise ManifestError(
            f"{path}: no sidecar manifest, and neither onnx nor onnxruntime is installed to read "
            f"the embedded one; pip install onnxruntime, or copy NAME.json next to the model"
        ) from None
    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ManifestError(
            f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:160]}); "
            f"the file is truncated or not ONNX: {_FIX}"
        ) from None
    return sess.get_modelmeta().custom_metadata_map.get(MANIFEST_KEY)


def compute_precision(manifest: Mapping[str, Any], artifact: PathLike) -> str:
    """The precision ``artifact`` (the NAME.onnx or NAME.plan loaded) computes in: "fp32" or "fp16".

    A plan and the ONNX export it was built from share one NAME.json, and the build adds the
    plan's ``engine`` section to it, so the manifest alone cannot say which file computes. A
    TensorRT plan (.plan, .engine, .trt) computes in its ``engine.precision``: built from the float32
    graph with the FP16 builder flag it computes in FP16 while the top-level ``precision``
    stays "fp32". An ONNX export computes in the top-level ``precision`` of its graph, whatever
    engine section a build has added. Judge, label and report an engine by this value.
    """
    suffix = Path(artifact).suffix
    if suffix not in (".onnx",) + _PLAN_SUFFIXES:
        raise ValueError(f"compute_precision: artifact {str(artifact)!r}: expected the NAME.onnx or "
                         f"NAME.plan that is loaded (its suffix decides whether the manifest's "
                         f"engine section applies)")
    engine = manifest.get("engine")
    if suffix in _PLAN_SUFFIXES and isinstance(engine, Mapping) and "precision" in engine:
        value, field = engine["precision"], "engine.precision"
    else:
        value, field = manifest.get("precision"), "precision"
    if value not in PRECISIONS:
        _fail(field, value, f"one of {PRECISIONS}",
              "rebuild the plan with 'ddpm-export build' or re-export the model")
    return value


_PLAN_SUFFIXES = (".plan", ".engine", ".trt")  # runtime.api.TRT_SUFFIXES (not imported: api imports this module)


POLICY_KEY = "policy"
POLICY_FORMAT = "lerobot.DiffusionPolicy"
POLICY_COND = "global_cond"
NORM_STATS = {"identity": (), "mean_std": ("mean", "std"), "min_max": ("min", "max"),
              "quantiles": ("q01", "q99"), "quantile10": ("q10", "q90")}
OBS_TYPES = ("STATE", "VISUAL", "ENV")
IMAGES_INPUT = "observation.images"  # the encoder input holding every camera, stacked


@dataclass(frozen=True)
class Feature:
    """One observation or the action of a policy: name, LeRobot type, per-sample shape, its
    normalization ({"mode", stats as nested lists, "eps"}) and camera_index (VISUAL only)."""

    name: str
    type: str
    shape: Tuple[int, ...]
    normalization: Mapping[str, Any]
    camera_index: Optional[int] = None


@dataclass(frozen=True)
class PolicySpec:
    """The validated ``policy`` section of a manifest (see the module docstring)."""

    n_obs_steps: int
    horizon: int
    n_action_steps: int
    action_start: int
    action_dim: int
    cond_dim: int
    encoder: Mapping[str, Any]
    observations: Tuple[Feature, ...]
    image_features: Tuple[str, ...]
    action: Feature
    raw: Mapping[str, Any]


def _pfail(field: str, received: Any, expected: str) -> None:
    _fail(f"policy.{field}", received, expected,
          "re-export the policy with 'ddpm-export export --checkpoint POLICY.pt'")


def _check_norm(where: str, norm: Any, shape: Sequence[int]) -> None:
    import numpy as np

    if not isinstance(norm, Mapping) or norm.get("mode") not in NORM_STATS:
        _pfail(where, norm, f"an object with mode one of {sorted(NORM_STATS)}")
    mode = norm["mode"]
    keys = NORM_STATS[mode]
    if mode != "identity" and not _is_real(norm.get("eps")):
        _pfail(f"{where}.eps", norm.get("eps", "<missing>"), "a number (LeRobot's eps, 1e-8)")
    for k in keys:
        if k not in norm:
            _pfail(f"{where}.{k}", "<missing>", f"the {k} stats of mode {mode}")
        try:
            a = np.asarray(norm[k], dtype=np.float64)
            ok = np.isfinite(a).all() and np.broadcast_shapes(a.shape, tuple(shape)) == tuple(shape)
        except (ValueError, TypeError):
            ok = False
        if not ok:
            _pfail(f"{where}.{k}", f"an array of shape {getattr(np.asarray(norm[k], dtype=object), 'shape', '?')}",
                   f"finite numbers broadcastable to the feature shape {list(shape)}")


def _feature(where: str, f: Any, types: Sequence[str]) -> Feature:
    if not isinstance(f, Mapping):
        _pfail(where, f, "an object {name, type, shape, normalization}")
    missing = [k for k in ("name", "shape", "normalization") if k not in f]
    if missing:
        _pfail(where, sorted(f), f"keys name, type, shape, normalization; missing {missing}")
    shape = f["shape"]
    if not (isinstance(shape, list) and all(_is_int(s) and s > 0 for s in shape)):
        _pfail(f"{where}.shape", shape, "a list of positive ints")
    typ = f.get("type")
    if types and typ not in types:
        _pfail(f"{where}.type", typ, f"one of {list(types)}")
    if not isinstance(f["name"], str) or not f["name"]:
        _pfail(f"{where}.name", f["name"], "a non-empty string")
    _check_norm(f"{where}.normalization", f["normalization"], shape)
    cam = f.get("camera_index")
    if typ == "VISUAL" and not (_is_int(cam) and cam >= 0):
        _pfail(f"{where}.camera_index", cam, "an int >= 0 (the camera's place in image_features)")
    return Feature(f["name"], typ if typ is not None else "ACTION", tuple(shape), dict(f["normalization"]),
                   cam if typ == "VISUAL" else None)


def _check_policy(d: Mapping[str, Any], conds: Sequence[Condition]) -> PolicySpec:
    sec = d[POLICY_KEY]
    if not isinstance(sec, Mapping):
        _pfail("(section)", sec, "an object (see runtime/contract.py, 'policy')")
    if sec.get("format") != POLICY_FORMAT:
        _pfail("format", sec.get("format", "<missing>"), repr(POLICY_FORMAT))
    for k in ("n_obs_steps", "horizon", "n_action_steps", "action_start", "encoder", "observations",
              "image_features", "action"):
        if k not in sec:
            _pfail(k, "<missing>", "present")
    for k in ("n_obs_steps", "horizon", "n_action_steps"):
        if not (_is_int(sec[k]) and sec[k] >= 1):
            _pfail(k, sec[k], "an int >= 1")
    n, h, k = sec["n_obs_steps"], sec["horizon"], sec["n_action_steps"]
    shape = list(sample_shape_of(d))
    if d.get("sample_kind") != "array" or len(shape) != 2:
        _pfail("(section)", f"sample_kind {d.get('sample_kind')!r}, sample_shape {shape}",
               "a policy denoiser: sample_kind 'array', sample_shape [horizon, action_dim]")
    if h != shape[0]:
        _pfail("horizon", h, f"sample_shape[0] = {shape[0]}")
    if sec["action_start"] != n - 1:
        _pfail("action_start", sec["action_start"], f"n_obs_steps - 1 = {n - 1}")
    if k > h - n + 1:
        _pfail("n_action_steps", k, f"<= horizon - n_obs_steps + 1 = {h - n + 1}")
    if len(conds) != 1 or conds[0].name != POLICY_COND or conds[0].kind != "vector" or len(conds[0].shape) != 1:
        _pfail("(section)", [c.to_dict() for c in conds],
               f"a denoiser with one vector condition {POLICY_COND!r} of shape [D]")
    D = conds[0].shape[0]
    action = _feature("action", sec["action"], ())
    if list(action.shape) != [shape[1]]:
        _pfail("action.shape", list(action.shape), f"[action_dim] = [{shape[1]}] (sample_shape[1])")
    obs_raw = sec["observations"]
    if not (isinstance(obs_raw, list) and obs_raw):
        _pfail("observations", obs_raw, "a non-empty list of observation features")
    obs = tuple(_feature(f"observations[{i}]", f, OBS_TYPES) for i, f in enumerate(obs_raw))
    names = [o.name for o in obs]
    if len(set(names)) != len(names):
        _pfail("observations", names, "distinct names")
    cams = sec["image_features"]
    visual = [o for o in obs if o.type == "VISUAL"]
    if not (isinstance(cams, list) and sorted(cams) == sorted(o.name for o in visual)):
        _pfail("image_features", cams, f"the VISUAL observations' names in camera order {[o.name for o in visual]}")
    for o in visual:
        if cams.index(o.name) != o.camera_index:
            _pfail(f"observations[{names.index(o.name)}].camera_index", o.camera_index,
                   f"{cams.index(o.name)} (its place in image_features)")
        if o.shape != visual[0].shape or len(o.shape) != 3:
            _pfail(f"observations[{names.index(o.name)}].shape", list(o.shape),
                   f"[C, H, W], the same for every camera ({list(visual[0].shape)})")
    enc = sec["encoder"]
    if not isinstance(enc, Mapping):
        _pfail("encoder", enc, "an object {file, sha256, inputs, outputs, batch_range}")
    f = enc.get("file")
    if not (isinstance(f, str) and f and "/" not in f and "\\" not in f and f.endswith((".onnx",) + _PLAN_SUFFIXES)):
        _pfail("encoder.file", f, "a file name beside the denoiser ending .onnx or .plan")
    if not _is_sha256(enc.get("sha256")):
        _pfail("encoder.sha256", enc.get("sha256", "<missing>"), "the 64-hex-digit sha256 of the encoder .onnx")
    if enc.get("plan") is not None:
        _check_encoder_plan(enc["plan"])
    want_in = [{"name": o.name, "dtype": "float32", "shape": [BATCH_AXIS, n] + list(o.shape)}
               for o in obs if o.type != "VISUAL"]
    if visual:
        want_in.insert(1 if any(o.type == "STATE" for o in obs) else 0,
                       {"name": IMAGES_INPUT, "dtype": "float32",
                        "shape": [BATCH_AXIS, n, len(visual)] + list(visual[0].shape)})
    got_in = enc.get("inputs")
    key = lambda e: e.get("name") if isinstance(e, Mapping) else ""
    if not isinstance(got_in, list) or sorted(got_in, key=key) != sorted(want_in, key=key):
        _pfail("encoder.inputs", got_in, f"{want_in} (in any order)")
    want_out = [{"name": POLICY_COND, "dtype": "float32", "shape": [BATCH_AXIS, D]}]
    if enc.get("outputs") != want_out:
        _pfail("encoder.outputs", enc.get("outputs"), f"{want_out} (D = the global_cond condition's size)")
    try:
        BatchRange.coerce(enc.get("batch_range"))
    except ManifestError as e:
        _pfail("encoder.batch_range", enc.get("batch_range"), str(e))
    return PolicySpec(n, h, k, n - 1, shape[1], D, dict(enc), obs, tuple(cams), action, dict(sec))


def _check_encoder_plan(plan: Any) -> None:
    """``policy.encoder.plan``, written by ``ddpm-export build`` into a policy plan's manifest:
    the encoder's TensorRT plan beside the denoiser's (file), its sha256, and its engine section
    (checked in full by the TensorRT runner: runtime.backends.tensorrt.compat.engine_section)."""
    fix = "rebuild the policy's plans with 'ddpm-export build --onnx NAME.onnx'"
    if not isinstance(plan, Mapping):
        _fail("policy.encoder.plan", plan, "an object {file, sha256, engine}", fix)
    f = plan.get("file")
    if not (isinstance(f, str) and f and "/" not in f and "\\" not in f and f.endswith(_PLAN_SUFFIXES)):
        _fail("policy.encoder.plan.file", f, f"a file name beside the denoiser's plan ending {_PLAN_SUFFIXES}", fix)
    if not _is_sha256(plan.get("sha256")):
        _fail("policy.encoder.plan.sha256", plan.get("sha256", "<missing>"),
              "the 64-hex-digit sha256 of the encoder plan", fix)
    eng = plan.get("engine")
    if not isinstance(eng, Mapping) or eng.get("plan") != f or eng.get("plan_sha256") != plan["sha256"]:
        got = {k: eng.get(k) for k in ("plan", "plan_sha256")} if isinstance(eng, Mapping) else eng
        _fail("policy.encoder.plan.engine", got,
              f"the encoder plan's engine section, with plan {f!r} and plan_sha256 equal to sha256", fix)


def policy_of(manifest: Mapping[str, Any]) -> Optional[PolicySpec]:
    """The validated ``policy`` section of a manifest as a PolicySpec; None when it has none."""
    if POLICY_KEY not in manifest:
        return None
    return _check_policy(manifest, _check_sample_and_conditions(manifest))
