"""A Triton Inference Server model repository from an engine and its manifest.

Layout (NAME defaults to the engine's file name)::

    REPO/
      NAME/                       the U-Net (bls mode only)
        config.pbtxt              tensorrt_plan | onnxruntime_onnx | python (stand-in)
        1/model.plan | 1/model.onnx  (python stand-in: 1/model.py, 1/model.onnx + 1/model.json, 1/runtime/)
      NAME_sampler/               the sampling loop, Python backend
        config.pbtxt
        1/model.py                templates/sampler_model.py
        1/runtime/                a copy of the project's torch-free runtime package
        1/model.json              the manifest (bls) | 1/model.onnx + 1/model.json (inprocess)

Every shape, dtype, batch range and schedule comes from the engine's manifest
(runtime.contract.read_manifest). A conditional engine's condition inputs (its manifest's
``conditions``) are inputs of the U-Net config (after x_t and t, one row per image) and of
the sampler's (one row per requested image, or one for all), and the sampler takes a
``guidance`` scale; its U-Net calls at batch 2N (both guidance branches) stay within the
U-Net's max batch (the sampler samples N = max_batch // 2 at a time then, as
runtime.load(engine).sample does). An engine whose samples are arrays answers ``samples``
FP32 [num, *sample_shape] instead of ``images`` UINT8. The config files are built as Triton's own
``ModelConfig`` protobuf (tritonclient's model_config_pb2), so a field or enum
Triton does not know fails here, not on the server.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from runtime.contract import (INPUT_T, INPUT_X, OUTPUT, POLICY_KEY, conditions_of, policy_of, read_manifest,
                              sample_kind_of, sample_shape_of)

MODES = ("bls", "inprocess")
UNET_BACKENDS = ("native", "python")
SAMPLER_SUFFIX = "_sampler"
POLICY_SUFFIX = "_policy"
# what Triton's TensorRT backend needs to load a version-compatible plan (its README, "Command-line Options")
TRITON_VERSION_COMPATIBLE = "--backend-config=tensorrt,version-compatible=true"
TEMPLATES = Path(__file__).resolve().parent / "templates"
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
# Working memory the sampler holds per requested image: the float32 chain x and
# its output (2 x C*H*W*4 bytes), the float64 uint8 conversion (C*H*W*8) and the
# uint8 result; the U-Net's activations are per batch and bounded by max_batch.
BYTES_PER_IMAGE_FACTOR = 4 * 2 + 8 + 1
# with guidance the chain's x and output are also held at 2N, plus the mix
GUIDED_BYTES_PER_IMAGE_FACTOR = 4 * 3
TRITON_DTYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}


@contextmanager
def built_dir(dest: Path, prefix: str):
    """Yield a fresh temp folder beside dest; on success it replaces dest, on failure it is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=str(dest.parent), prefix=prefix))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RepositoryError(ValueError):
    """Options or an engine that cannot make a Triton repository."""


@dataclass(frozen=True)
class RepositoryConfig:
    engine: str
    out: str
    name: Optional[str] = None
    max_batch: Optional[int] = None
    instances: int = 1
    sampler_instances: Optional[int] = None  # None: instances
    mode: str = "bls"
    unet_backend: str = "native"
    max_memory_mb: int = 1024
    queue_delay_us: int = 100
    force: bool = False
    allow_host_code: bool = False  # a version-compatible plan (it embeds host code): only when trusted


def _pb():
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise RepositoryError(
            f"writing config.pbtxt needs Triton's config schema from tritonclient ({e}); "
            f"pip install 'tritonclient[grpc]' (or ddpm-export[triton])"
        ) from None
    return json_format, text_format, model_config_pb2


def config_text(config: Mapping[str, Any]) -> str:
    """A ModelConfig dict (protobuf JSON names) -> config.pbtxt text; unknown fields raise."""
    json_format, text_format, model_config_pb2 = _pb()
    try:
        msg = json_format.ParseDict(dict(config), model_config_pb2.ModelConfig())
    except json_format.ParseError as e:
        raise RepositoryError(f"config for model {config.get('name')!r} does not fit Triton's "
                              f"ModelConfig schema: {e}") from None
    return text_format.MessageToString(msg)


def parse_config(text: str) -> Any:
    """config.pbtxt text -> Triton's ModelConfig message (as the server parses it)."""
    _, text_format, model_config_pb2 = _pb()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def engine_batch_max(engine: Path, manifest: Mapping[str, Any]) -> int:
    """The largest batch the engine accepts: the plan's profile, else the export's range."""
    if engine.suffix in PLAN_SUFFIXES:
        from runtime.backends.tensorrt.compat import engine_section

        profile = engine_section(manifest)["profiles"][0]
        if int(profile["min"]) != 1:
            raise RepositoryError(
                f"{engine}: the plan's profile starts at batch {profile['min']}, expected 1 (Triton's "
                f"dynamic batcher sends any batch from 1 up); rebuild with 'ddpm-export build --min-batch 1'"
            )
        return int(profile["max"])
    return int(manifest["batch_range"]["max"])


def unet_config(name: str, kind: str, manifest: Mapping[str, Any], max_batch: int, instances: int,
                queue_delay_us: int) -> Dict[str, Any]:
    """config for the U-Net: kind 'tensorrt_plan', 'onnxruntime_onnx' or 'python'. Every
    engine input is listed: x_t, t, then each condition (a class label like t: [batch, 1] on
    the wire, [batch] for the engine)."""
    shape = [int(v) for v in sample_shape_of(manifest)]
    config: Dict[str, Any] = {
        "name": name,
        "maxBatchSize": max_batch,
        "input": [
            {"name": INPUT_X, "dataType": "TYPE_FP32", "dims": shape},
            # one timestep per image: [batch, 1] on the wire, [batch] for the engine
            {"name": INPUT_T, "dataType": "TYPE_INT32", "dims": [1], "reshape": {"shape": []}},
        ] + [({"name": c.name, "dataType": TRITON_DTYPES[c.dtype], "dims": [1], "reshape": {"shape": []}}
              if not c.shape else {"name": c.name, "dataType": TRITON_DTYPES[c.dtype], "dims": list(c.shape)})
             for c in conditions_of(manifest)],
        "output": [{"name": OUTPUT, "dataType": "TYPE_FP32", "dims": shape}],
        "dynamicBatching": {"maxQueueDelayMicroseconds": str(queue_delay_us)},
        "instanceGroup": [{"count": instances,
                           "kind": "KIND_GPU" if kind == "tensorrt_plan" else
                           "KIND_CPU" if kind == "python" else "KIND_AUTO"}],
    }
    if kind == "python":
        config["backend"] = "python"
        config["parameters"] = {"engine_file": {"stringValue": "model.onnx"}}
    else:
        config["platform"] = kind
    return config


def sampler_config(name: str, mode: str, unet_name: str, engine_file: str, max_batch: int,
                   max_num: int, instances: int, allow_host_code: bool = False,
                   manifest: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The sampler's config; a conditional manifest adds its condition inputs (one row per
    requested image or one for all: [-1, *shape]) and guidance (FP32 [1]); an array model's
    output is samples FP32."""
    one = [1]
    conds = conditions_of(manifest) if manifest is not None else ()
    array = manifest is not None and sample_kind_of(manifest) == "array"
    config = {
        "name": name,
        "backend": "python",
        "maxBatchSize": 0,  # one request = one (num, seed, ...) job; num is the batch
        "input": [
            # all optional to Triton so the model answers a missing one with its own message
            {"name": "num", "dataType": "TYPE_INT32", "dims": one, "optional": True},
            {"name": "seed", "dataType": "TYPE_INT64", "dims": one, "optional": True},
            {"name": "method", "dataType": "TYPE_STRING", "dims": one, "optional": True},
            {"name": "steps", "dataType": "TYPE_INT32", "dims": one, "optional": True},
            {"name": "eta", "dataType": "TYPE_FP32", "dims": one, "optional": True},
        ],
        "output": [{"name": "samples", "dataType": "TYPE_FP32",
                    "dims": [-1] + [int(v) for v in sample_shape_of(manifest)]} if array else
                   {"name": "images", "dataType": "TYPE_UINT8", "dims": [-1, -1, -1, -1]}],
        "instanceGroup": [{"count": instances, "kind": "KIND_CPU"}],
        "parameters": {
            "mode": {"stringValue": mode},
            # bls: the U-Net model to call; inprocess: the engine file beside model.py
            **({"unet_model": {"stringValue": unet_name}} if mode == "bls" else
               {"engine_file": {"stringValue": engine_file}}),
            "manifest_file": {"stringValue": "model.json"},
            "max_batch": {"stringValue": str(max_batch)},
            "max_num": {"stringValue": str(max_num)},
            **({"allow_host_code": {"stringValue": "true"}} if allow_host_code else {}),
        },
    }
    if conds:  # optional to Triton too: the sampler names a missing one in its own message
        config["input"] += [{"name": c.name, "dataType": TRITON_DTYPES[c.dtype], "dims": [-1] + list(c.shape),
                             "optional": True} for c in conds]
        config["input"].append({"name": "guidance", "dataType": "TYPE_FP32", "dims": one, "optional": True})
    return config


def max_images(manifest: Mapping[str, Any], max_memory_mb: int) -> int:
    """The largest num one request may ask for within max_memory_mb of sampler memory."""
    import math

    values = math.prod(int(v) for v in sample_shape_of(manifest))
    conds = conditions_of(manifest)
    per_image = values * (BYTES_PER_IMAGE_FACTOR + (GUIDED_BYTES_PER_IMAGE_FACTOR if conds else 0))
    # each condition row: the request's, the checked copy, and the [null; cond] batch of 2N
    per_image += sum(8 * 4 * math.prod(c.shape) for c in conds)
    return max(1, (max_memory_mb << 20) // per_image)


def _copy_engine(engine: Path, dest_dir: Path, stem: str = "model") -> str:
    """engine + its NAME.json sidecar -> dest_dir/model.SUFFIX + model.json; returns the file name."""
    target = dest_dir / f"{stem}{engine.suffix}"
    shutil.copyfile(engine, target)
    side = engine.with_suffix(".json")
    if side.is_file():
        shutil.copyfile(side, dest_dir / f"{stem}.json")
    return target.name


def _write_manifest_copy(manifest: Mapping[str, Any], dest: Path) -> None:
    import json

    dest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _copy_runtime(dest_dir: Path) -> None:
    """The runtime package and the backend-environment check beside a Python model's model.py."""
    shutil.copyfile(TEMPLATES / "backend_env.py", dest_dir / "backend_env.py")
    import runtime  # the package itself, wherever it is installed

    shutil.copytree(Path(runtime.__file__).resolve().parent, dest_dir / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def write_repository(cfg: RepositoryConfig) -> Dict[str, Any]:
    """Write the repository at cfg.out (atomically: a temp dir renamed in place); returns a summary."""
    if cfg.mode not in MODES:
        raise RepositoryError(f"mode {cfg.mode!r} is unknown; expected one of {MODES}")
    if cfg.unet_backend not in UNET_BACKENDS:
        raise RepositoryError(f"unet_backend {cfg.unet_backend!r} is unknown; expected one of {UNET_BACKENDS}")
    sampler_instances = cfg.instances if cfg.sampler_instances is None else cfg.sampler_instances
    if cfg.instances < 1 or sampler_instances < 1:
        raise RepositoryError(f"instances {cfg.instances}, sampler_instances {sampler_instances}: "
                              f"expected >= 1 each")
    engine = Path(cfg.engine)
    if not engine.is_file():
        raise RepositoryError(f"{engine}: no such engine; expected NAME.onnx (ddpm-export export) "
                              f"or NAME.plan (ddpm-export build), with its NAME.json")
    if engine.suffix != ".onnx" and engine.suffix not in PLAN_SUFFIXES:
        raise RepositoryError(f"{engine}: received a {engine.suffix!r} file, expected .onnx or .plan")
    is_plan = engine.suffix in PLAN_SUFFIXES
    if is_plan and cfg.unet_backend == "python":
        raise RepositoryError("--unet-backend python runs the ONNX export; pass the .onnx, or use "
                              "native (TensorRT backend) for a .plan")
    manifest = read_manifest(engine)
    limit = engine_batch_max(engine, manifest)
    version_compatible = is_plan and bool(manifest["engine"]["version_compatible"])
    if version_compatible and not cfg.allow_host_code:
        raise RepositoryError(
            f"{engine} is a version-compatible plan: it embeds TensorRT's lean runtime as host code "
            f"that the server would run; pass --allow-host-code only for a plan you trust")
    max_batch = limit if cfg.max_batch is None else cfg.max_batch
    if not 1 <= max_batch <= limit:
        raise RepositoryError(f"max_batch {max_batch}: expected 1..{limit} (the engine's batch "
                              f"{'profile' if is_plan else 'range'}); rebuild the engine for larger batches")
    name = cfg.name or engine.stem
    sampler_name = name + SAMPLER_SUFFIX
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise RepositoryError(f"{out} exists; pass --force to replace it, or another --out")
    if POLICY_KEY in manifest:
        return _write_policy_repository(cfg, engine, manifest, name + POLICY_SUFFIX, max_batch, out)
    with built_dir(out, prefix=f".{out.name}.") as tmp:
        models: List[str] = []
        if cfg.mode == "bls":
            kind = "python" if cfg.unet_backend == "python" else (
                "tensorrt_plan" if is_plan else "onnxruntime_onnx")
            d = tmp / name / "1"
            d.mkdir(parents=True)
            if kind == "python":
                _copy_engine(engine, d)
                shutil.copyfile(TEMPLATES / "unet_model.py", d / "model.py")
                _copy_runtime(d)
            else:
                # Triton's default model file names: model.plan (TensorRT), model.onnx (ONNX Runtime)
                shutil.copyfile(engine, d / ("model.plan" if is_plan else "model.onnx"))
            (tmp / name / "config.pbtxt").write_text(config_text(unet_config(
                name, kind, manifest, max_batch, cfg.instances, cfg.queue_delay_us)))
            models.append(name)
        d = tmp / sampler_name / "1"
        d.mkdir(parents=True)
        shutil.copyfile(TEMPLATES / "sampler_model.py", d / "model.py")
        _copy_runtime(d)
        if cfg.mode == "inprocess":
            engine_file = _copy_engine(engine, d)
            if not (d / "model.json").is_file():
                _write_manifest_copy(manifest, d / "model.json")
        else:
            engine_file = ""
            _write_manifest_copy(manifest, d / "model.json")
        n_max = max_images(manifest, cfg.max_memory_mb)
        (tmp / sampler_name / "config.pbtxt").write_text(config_text(sampler_config(
            sampler_name, cfg.mode, name, engine_file, max_batch, n_max, sampler_instances,
            allow_host_code=version_compatible and cfg.mode == "inprocess", manifest=manifest)))
        models.append(sampler_name)
    server_args = [TRITON_VERSION_COMPATIBLE] if version_compatible and cfg.mode == "bls" else []
    return {"out": str(out), "models": models, "mode": cfg.mode, "max_batch": max_batch,
            "server_args": server_args,
            "max_num": n_max, "image_shape": manifest["image_shape"],
            "sample_shape": list(sample_shape_of(manifest)), "conditions": [c.name for c in conditions_of(manifest)],
            "num_timesteps": int(manifest["schedule"]["num_timesteps"])}


def policy_config(name: str, manifest: Mapping[str, Any], max_batch: int, instances: int,
                  engine_file: str) -> Dict[str, Any]:
    """The policy model's config: every observation FP32 [-1, n_obs_steps, *shape] (optional to
    Triton, so that the model names a missing one in its own message), seed INT64, method BYTES,
    steps INT32 (optional); out actions FP32 [-1, n_action_steps, action_dim]."""
    spec = policy_of(manifest)
    one = [1]
    return {
        "name": name,
        "backend": "python",
        "maxBatchSize": 0,  # one request = one history [B, ...]; B is checked by the model
        "input": [{"name": f.name, "dataType": "TYPE_FP32", "dims": [-1, spec.n_obs_steps, *f.shape],
                   "optional": True} for f in spec.observations] + [
            {"name": "seed", "dataType": "TYPE_INT64", "dims": one, "optional": True},
            {"name": "method", "dataType": "TYPE_STRING", "dims": one, "optional": True},
            {"name": "steps", "dataType": "TYPE_INT32", "dims": one, "optional": True}],
        "output": [{"name": "actions", "dataType": "TYPE_FP32",
                    "dims": [-1, spec.n_action_steps, *spec.action.shape]}],
        "instanceGroup": [{"count": instances, "kind": "KIND_CPU"}],
        "parameters": {"engine_file": {"stringValue": engine_file}, "max_batch": {"stringValue": str(max_batch)}},
    }


def _write_policy_repository(cfg: RepositoryConfig, engine: Path, manifest: Mapping[str, Any], name: str,
                             max_batch: int, out: Path) -> Dict[str, Any]:
    """REPO/NAME_policy: templates/policy_model.py running runtime.load_policy on the two engines
    (NAME.onnx as model.onnx + model.json, the encoder under its manifest name) in the server."""
    if engine.suffix != ".onnx":
        raise RepositoryError(f"{engine}: a policy is served from its ONNX engines (NAME.onnx + "
                              f"NAME-encoder.onnx); serving its plans through Triton is not written yet (runtime.load_policy "
                              f"runs NAME.plan in an app): pass {engine.with_suffix('.onnx').name}")
    if cfg.mode != "inprocess":
        raise RepositoryError(f"--mode {cfg.mode}: a policy is served in inprocess mode (its encoder and "
                              f"sampling loop run in one Python model); pass --mode inprocess")
    enc = engine.with_name(manifest[POLICY_KEY]["encoder"]["file"])
    if not enc.is_file():
        raise RepositoryError(f"{enc}: the policy's observation encoder is missing; it is written beside "
                              f"{engine.name} by 'ddpm-export export'")
    with built_dir(out, prefix=f".{out.name}.") as tmp:
        d = tmp / name / "1"
        d.mkdir(parents=True)
        shutil.copyfile(TEMPLATES / "policy_model.py", d / "model.py")
        shutil.copyfile(TEMPLATES / "sampler_model.py", d / "sampler_model.py")  # its request helpers
        _copy_runtime(d)
        engine_file = _copy_engine(engine, d)
        shutil.copyfile(enc, d / enc.name)
        (tmp / name / "config.pbtxt").write_text(config_text(policy_config(
            name, manifest, max_batch, cfg.instances, engine_file)))
    spec = policy_of(manifest)
    return {"out": str(out), "models": [name], "mode": "inprocess", "max_batch": max_batch, "server_args": [],
            "max_num": max_batch, "image_shape": manifest["image_shape"],
            "sample_shape": list(sample_shape_of(manifest)), "conditions": [],
            "policy": {"observations": {f.name: list(f.shape) for f in spec.observations},
                       "n_obs_steps": spec.n_obs_steps, "actions": [spec.n_action_steps, *spec.action.shape]},
            "num_timesteps": int(manifest["schedule"]["num_timesteps"])}
