"""A control-flow stand-in for TensorRT's ICudaEngine, shared by the build and runner tests.

It answers the I/O questions our code asks (names, modes, dtypes, shapes, profile);
the enum values come from whatever ``trt`` module the test uses. Never evidence
that TensorRT works: the real-binding checks are in tests/runtime/backends/test_tensorrt.py.
"""


class FakeEngine:
    def __init__(self, tensors, profile=((1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))):
        self.tensors, self.profile = tensors, profile
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, n):
        return self.tensors[n][0]

    def get_tensor_dtype(self, n):
        return self.tensors[n][1]

    def get_tensor_shape(self, n):
        return self.tensors[n][2]

    def get_tensor_profile_shape(self, n, i):
        """(min, opt, max) of input n: profile holds x_t's; every other input's (t, a condition)
        is x_t's batch and that input's own static dims (as the build adds them)."""
        if n == "x_t":
            return self.profile
        return tuple((p[0],) + tuple(self.tensors[n][2][1:]) for p in self.profile)


# --- TensorRT's Python API names per version (scripts/trt_api_names.py) --------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

TRT_API_DIR = Path(__file__).resolve().parent / "runtime" / "backends" / "trt_api"
TRT_API_VERSIONS = ("8.5.3", "8.6.1", "10.3.0", "10.16", "11.1")
TRT_LEAN_API_VERSIONS = ("8.6.1", "10.3.0", "10.16", "11.1")  # lean/dispatch bindings: from 8.6


def trt_api_list(version, variant="full"):
    """The names extracted from TensorRT's binding sources at that tag (with their source);
    variant "lean": the lean and dispatch modules (built without EXPORT_ALL_BINDINGS)."""
    prefix = "tensorrt" if variant == "full" else "tensorrt_lean"
    return json.loads((TRT_API_DIR / f"{prefix}-{version}.json").read_text())


def missing_trt_names(api, used, since, version, until=None):
    """'owner.name' for every used name (owner '' = the module) not bound at that version;
    a bound class also has its bound bases' names. since: {(owner, name): (major, minor)};
    until: names used only before that version (e.g. what TensorRT 11 removed)."""
    classes, bases = api["classes"], api["bases"]
    v = tuple(int(p) for p in version.split(".")[:2])

    def names(owner, seen=()):
        out = set(classes.get(owner, ()))
        for b in bases.get(owner, ()):
            if b not in seen:
                out |= names(b, seen + (owner,))
        return out

    missing = []
    for owner, members in used.items():
        have = names(owner)
        if owner and owner not in classes[""] and since.get(("", owner), (0, 0)) <= v:
            missing.append(f"tensorrt.{owner}")
        for n in members:
            if since.get((owner, n), (0, 0)) > v or (until or {}).get((owner, n), (99, 0)) <= v:
                continue
            if n not in have:
                missing.append(f"{owner or 'tensorrt'}.{n}")
    return missing


# --- a TensorRT module and CUDA memory that model what the runner relies on ------------------
# Semantics taken from TensorRT's binding sources and headers (each is what a real run does):
#  - Runtime.deserialize_cuda_engine returns None on failure (it does not raise);
#  - a plan holding a plugin layer (InstanceNormalization_TRT: TensorRT 8.5 plans, 8.6/9.x plans
#    built without NATIVE_INSTANCENORM) deserializes only after init_libnvinfer_plugins was
#    called in that process: the creators are registered only by initLibNvInferPlugins;
#  - the lean and dispatch bindings have no init_libnvinfer_plugins (bound only with
#    EXPORT_ALL_BINDINGS) and no plugin library;
#  - a version-compatible plan deserializes only with engine_host_code_allowed set;
#  - a plan that is not version-compatible deserializes only on the version that built it.
import ctypes  # noqa: E402

import numpy as np  # noqa: E402

FAKE_PLAN_MAGIC = b"FAKEPLAN"


def fake_plan_bytes(version="10.3.0.30", plugins=False, version_compatible=False,
                    profile=(1, 8, 64), image_shape=(3, 32, 32), conditions=()):
    """image_shape: the per-sample shape of x_t and eps (any rank). conditions: the plan's
    condition inputs after x_t and t, each {"name", "kind", "shape", "dtype"} with dtype a
    TensorRT DataType name ("INT32" as a TensorRT 8.x parser makes a label, "INT64" as 9/10
    on do, "FLOAT"); the fake engine has exactly these inputs."""
    head = {"version": version, "plugins": plugins, "vc": version_compatible,
            "profile": list(profile), "image_shape": list(image_shape),
            "conditions": [dict(c, shape=list(c["shape"])) for c in conditions]}
    return FAKE_PLAN_MAGIC + json.dumps(head).encode()


def fake_onnx_plan_bytes(onnx_path, io, version="10.3.0.30", profile=(1, 8, 64)):
    """A fake plan that computes what the ONNX graph at onnx_path computes (through ONNX Runtime
    on the host), so a policy's two fake plans give exactly what its ONNX engines give and a
    wrong input, order, padding or copy shows. io: every I/O tensor of the plan, inputs first,
    as (name, "INPUT"/"OUTPUT", TensorRT DataType name, per-sample shape). Still a stand-in:
    TensorRT never sees the graph."""
    head = {"version": version, "plugins": False, "vc": False, "profile": list(profile),
            "onnx": str(onnx_path), "io": [[n, m, d, list(s)] for n, m, d, s in io]}
    return FAKE_PLAN_MAGIC + json.dumps(head).encode()


def fake_cond_eps(x, t, cond, kinds):
    """What the fake plan computes: 0.5 * x_t + t, plus for every condition input its label
    (class_label) or the mean of its per-sample values (vector, image_channels)."""
    b = x.shape[0]
    out = 0.5 * x + t.reshape((b,) + (1,) * (x.ndim - 1))
    for name, kind in kinds.items():
        v = np.asarray(cond[name]).reshape(b, -1).astype(np.float64)
        add = v[:, 0] if kind == "class_label" else v.mean(axis=1)
        out = out + add.reshape((b,) + (1,) * (x.ndim - 1))
    return out.astype(np.float32)


class FakeCudaMemory:
    """polygraphy.cuda's wrapper() with host memory as 'device' memory, asynchronous as CUDA is.

    What the runner may rely on (CUDA Runtime API, "API synchronization behavior" and stream
    semantics), and nothing more:
      - cudaMemcpyAsync(..., stream) and execute_async_v3(stream) are queued on that stream and
        run in order only when that stream is synchronized; nothing is promised about when
        before that, so here they run exactly then, and a copy queued on another stream has not
        run when this stream's work reads its destination;
      - a host-to-device copy from pageable memory has read its source when the call returns
        (staged), so the source is read at the call; a device-to-host copy writes the host
        buffer only when its stream is synchronized;
      - cudaMemcpy (no stream) runs on the legacy default stream, which waits for the work of
        every blocking stream (Polygraphy's cudaStreamCreate makes blocking streams) first.
    """

    def __init__(self):
        self.buffers, self.freed, self.streams = {}, [], 0
        self.queues = {}  # stream ptr -> pending callables
        self.synchronized = []

    def malloc(self, nbytes):
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free(self, ptr):
        if ptr:
            self.freed.append(ptr)
            self.buffers.pop(ptr, None)

    def enqueue(self, stream_ptr, fn):
        if stream_ptr is None:
            self.run_all()
            fn()
        else:
            if stream_ptr not in self.queues:
                raise RuntimeError(f"cudaErrorInvalidResourceHandle: stream {stream_ptr} was not created")
            self.queues[stream_ptr].append(fn)

    def memcpy(self, dst, src, nbytes, kind, stream_ptr=None):
        if getattr(kind, "value", kind) == 1:  # HostToDevice (a ctypes.c_int): the source is staged now
            staged = ctypes.create_string_buffer(ctypes.string_at(src, nbytes), nbytes)
            self.enqueue(stream_ptr, lambda: ctypes.memmove(dst, staged, nbytes))
        else:
            self.enqueue(stream_ptr, lambda: ctypes.memmove(dst, src, nbytes))

    def run_all(self):
        for ptr in list(self.queues):
            self.stream_synchronize(ptr)

    def create_stream(self):
        self.streams += 1
        ptr = 1000 + self.streams
        self.queues[ptr] = []
        return ptr

    def stream_synchronize(self, ptr):
        queue = self.queues.get(ptr, [])
        while queue:
            queue.pop(0)()
        self.synchronized.append(ptr)

    def destroy_stream(self, ptr):
        self.queues.pop(ptr, None)


def _fake_cuda_in_use():
    """The FakeCudaMemory the test put behind polygraphy.cuda (the runner's CUDA), else None."""
    try:
        import polygraphy.cuda.cuda as pc
    except ImportError:
        return None
    mem = pc.wrapper()
    return mem if isinstance(mem, FakeCudaMemory) else None


def fake_tensorrt(version="10.3.0.30", kind="full"):
    """A fresh fake ``tensorrt`` module (a fresh process: no plugins registered yet)."""
    import types

    # not named "tensorrt": the runner would ask Polygraphy for its logger, made from the real one
    trt = types.SimpleNamespace(__version__=version, __name__=f"fake_tensorrt_{kind}")
    state = {"plugins": False, "contexts": []}
    trt._state = state

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, INT32 = "FLOAT", "INT32"

    if int(version.split(".")[0]) >= 9:  # TensorRT 8.x binds no INT64 (trt_api/tensorrt-8.*.json)
        DataType.INT64 = "INT64"
    ctypes_of = {"FLOAT": ctypes.c_float, "INT32": ctypes.c_int32, "INT64": ctypes.c_int64}

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses, self.runs = engine, {}, {}, []
            state["contexts"].append(self)

        def set_input_shape(self, name, shape):
            """False (TensorRT logs the error) for a name that is not an input, a rank other
            than the tensor's, a static dimension changed, or a dimension outside the profile."""
            if name not in self.engine.tensors or self.engine.tensors[name][0] != TensorIOMode.INPUT:
                return False
            dims = self.engine.tensors[name][2]
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(dims) or any(d != -1 and s_ != d for s_, d in zip(shape, dims)):
                return False
            if any(not a <= s_ <= b for s_, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream):
            """eps = fake_cond_eps(x_t, t, conditions), every input read from (in the plan's
            dtype: an INT32 label plan reads 4 bytes a label) and eps written to the bound
            addresses when the stream runs it. False, as enqueueV3 returns it, unless every
            input's shape was set (all with x_t's batch) and every I/O tensor has an address."""
            inputs = [n for n, v in self.engine.tensors.items() if v[0] == TensorIOMode.INPUT]
            if any(n not in self.shapes for n in inputs) or set(self.addresses) != set(self.engine.tensors):
                return False
            b = self.shapes[inputs[0]][0]
            if any(self.shapes[n][0] != b for n in inputs):
                return False  # the graph's inputs must agree on the batch
            addr = dict(self.addresses)
            conds = self.engine.head.get("conditions", [])

            def view(name, shape):
                k = int(np.prod(shape))
                ct = ctypes_of[self.engine.tensors[name][1]]
                return np.ctypeslib.as_array((ct * k).from_address(addr[name])).reshape(shape)

            def read(name, shape):
                return view(name, shape).copy()

            def run_onnx():
                per = {n: tuple(v[2][1:]) for n, v in self.engine.tensors.items()}
                feeds = {n: read(n, (b,) + per[n]) for n in inputs}
                names = [n for n in self.engine.tensors if n not in inputs]
                for name, value in zip(names, self.engine.session().run(names, feeds)):
                    view(name, (b,) + per[name])[...] = value

            def run():
                chw = tuple(self.engine.head["image_shape"])
                x = read("x_t", (b,) + chw)
                t = read("t", (b,))
                cond = {c["name"]: read(c["name"], (b,) + tuple(c["shape"])) for c in conds}
                n = b * int(np.prod(chw))
                out = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr["eps"]))
                out[:] = fake_cond_eps(x, t, cond, {c["name"]: c["kind"] for c in conds}).ravel()
            work = run_onnx if "onnx" in self.engine.head else run
            mem = _fake_cuda_in_use()
            if mem is None:
                work()
            else:
                mem.enqueue(int(stream), work)
            self.runs.append((b, stream))
            return True

    class Engine(FakeEngine):
        def __init__(self, head):
            self.head = head
            mn, opt, mx = head["profile"]
            if "onnx" in head:  # fake_onnx_plan_bytes: the graph's I/O, computed by ONNX Runtime
                tensors = {n: (getattr(TensorIOMode, m), getattr(DataType, d), (-1,) + tuple(shp))
                           for n, m, d, shp in head["io"]}
                first = tuple(head["io"][0][3])
                super().__init__(tensors, tuple((b,) + first for b in (mn, opt, mx)))
                self._session = None
                return
            shape = tuple(head["image_shape"])
            tensors = {"x_t": (TensorIOMode.INPUT, DataType.FLOAT, (-1,) + shape),
                       "t": (TensorIOMode.INPUT, DataType.INT32, (-1,))}
            for c in head.get("conditions", ()):  # as the plan's network has them, after x_t, t
                tensors[c["name"]] = (TensorIOMode.INPUT, getattr(DataType, c["dtype"]),
                                      (-1,) + tuple(c["shape"]))
            tensors["eps"] = (TensorIOMode.OUTPUT, DataType.FLOAT, (-1,) + shape)
            super().__init__(tensors, tuple((b,) + shape for b in (mn, opt, mx)))

        def create_execution_context(self):
            return Context(self)

        def session(self):
            if self._session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                self._session = ort.InferenceSession(self.head["onnx"], opts, providers=["CPUExecutionProvider"])
            return self._session

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(FAKE_PLAN_MAGIC):
                return None
            head = json.loads(data[len(FAKE_PLAN_MAGIC):])
            if head["plugins"] and not state["plugins"]:
                return None  # "getPluginCreator could not find plugin InstanceNormalization_TRT"
            if head["vc"] and not self.engine_host_code_allowed:
                return None
            if not head["vc"] and head["version"] != trt.__version__:
                return None
            return Engine(head)

    trt.Logger, trt.TensorIOMode, trt.DataType, trt.Runtime = Logger, TensorIOMode, DataType, Runtime
    trt.ICudaEngine, trt.IExecutionContext = Engine, Context
    if kind == "full":
        def init_libnvinfer_plugins(logger, namespace):
            state["plugins"] = True
            return True
        trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    return trt


# --- an INetworkDefinition as TensorRT's ONNX parser fills it (for the FP16 builder-flag pinning) --
# Naming, from onnx-tensorrt's importers (release/8.5-GA builtin_op_importers.cpp, 10.1-GA
# onnxOpImporters.cpp, ImporterContext.cpp, ModelImporter.cpp):
#  - a layer an importer registers (ctx->registerLayer) is named after its node; a second one
#    of the same name gets a unique suffix (generateUniqueName);
#  - a layer an importer adds without registering keeps TensorRT's default name,
#    "(Unnamed Layer* N) [Type]", and so does its output tensor, "... [Type]_output". Gemm's
#    bias add (8.5-GA ~1655, 10.1-GA ~2076) is one: only the matrix multiply is registered
#    (~1623 / ~2043); Softmax's reshape back to the input shape is another;
#  - every node output tensor is renamed to its ONNX name (registerTensor in parseNode);
#  - ONNX Constant nodes and initializers add no layer of their own; a weights input becomes a
#    CONSTANT layer registered under the weights' name when an importer converts it to a tensor
#    (Identity of weights too: its importer adds an IDENTITY layer on that constant).
class FakeTensor:
    def __init__(self, name, dtype="FLOAT"):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, name, ltype="ELEMENTWISE", out_dtypes=("FLOAT",), inputs=(), outputs=None):
        self.name, self.type, self.precision = name, ltype, None
        self.inputs = list(inputs)
        self.outputs = (list(outputs) if outputs is not None
                        else [FakeTensor(f"{name}_output_{k}", d) for k, d in enumerate(out_dtypes)])
        self.num_inputs, self.num_outputs = len(self.inputs), len(self.outputs)
        self.output_types = {}

    def get_input(self, k):
        return self.inputs[k]

    def get_output(self, k):
        return self.outputs[k]

    def set_output_type(self, k, dtype):
        self.output_types[k] = dtype


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self.layers[i]


_SHUFFLE_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose")  # IShuffleLayer
_LAYER_TYPES = {"Shape": "SHAPE", "Gemm": "MATRIX_MULTIPLY", "MatMul": "MATRIX_MULTIPLY",
                "Softmax": "SOFTMAX", "Conv": "CONVOLUTION", "Concat": "CONCATENATION",
                "Gather": "GATHER", "Resize": "RESIZE", "Sigmoid": "ACTIVATION", "Sin": "UNARY",
                "Cos": "UNARY", "Exp": "UNARY", "Cast": "CAST", "Pad": "SLICE",
                "InstanceNormalization": "PLUGIN_V2", "GroupNormalization": "NORMALIZATION",
                "Identity": "IDENTITY"}
_TYPE_NAMES = {"ELEMENTWISE": "ElementWise", "SHUFFLE": "Shuffle", "CONSTANT": "Constant",
               "MATRIX_MULTIPLY": "Matrix Multiply"}


def parsed_network(onnx_path, layer_class=FakeLayer):
    """The layers and tensors TensorRT's ONNX parser makes for the graph (rules above), with
    the element types from ONNX shape inference (INT64 shape arithmetic -> "i32")."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    elem = {v.name: v.type.tensor_type.elem_type
            for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    weights = {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    tensors = {i.name: FakeTensor(i.name, "FLOAT" if elem.get(i.name) == 1 else "i32")
               for i in graph.input if i.name not in weights}
    layers, used = [], set()

    def unique(name):
        k, out = 0, name
        while out in used:
            k += 1
            out = f"{name}_{k}"
        used.add(out)
        return out

    def add(ltype, inputs, name=None, out=None):
        """A layer; name None: unregistered (TensorRT's default name, its output unnamed too)."""
        idx = len(layers)
        default = f"(Unnamed Layer* {idx}) [{_TYPE_NAMES.get(ltype, ltype.title())}]"
        lname = unique(name) if name is not None else default
        dtype = "i32" if ltype == "SHAPE" else "FLOAT"
        if out is None:
            out = FakeTensor(f"{default}_output", dtype)
        ly = layer_class(lname, ltype, inputs=inputs, outputs=[out])
        layers.append(ly)
        return ly.outputs[0]

    def tensor_of(name):
        if name not in tensors and name in weights:  # convertToTensor: a registered constant
            tensors[name] = add("CONSTANT", [], name=name)
        return tensors[name]

    for n in graph.node:
        if n.op_type == "Constant":
            continue
        ins = [tensor_of(i) for i in n.input if i]
        name = n.output[0]
        out = FakeTensor(name, "FLOAT" if elem.get(name, 1) == 1 else "i32")
        ltype = "SHUFFLE" if n.op_type in _SHUFFLE_OPS else _LAYER_TYPES.get(n.op_type, "ELEMENTWISE")
        if n.op_type == "Gemm" and len(ins) > 2:  # the matrix multiply registered, the bias add not
            mm = add("MATRIX_MULTIPLY", ins[:2], name=n.name)
            add("ELEMENTWISE", [mm, ins[2]], out=out)
        elif n.op_type == "Softmax":  # the softmax registered, the reshape back not
            sm = add("SOFTMAX", ins, name=n.name)
            add("SHUFFLE", [sm], out=out)
        else:
            add(ltype, ins, name=n.name, out=out)
        tensors[name] = out
    return FakeNetwork(layers)


# --- a policy's two plans (issue 26 item 5) on the stand-ins ---------------------------------
def install_fake_gpu(monkeypatch, trt, device=None):
    """The runner on a fake TensorRT module (fake_tensorrt) and fake CUDA memory (FakeCudaMemory
    behind polygraphy.cuda): our control and data flow only. Returns the memory."""
    import polygraphy.cuda.cuda as pc

    from runtime.backends import tensorrt as rt

    mem = FakeCudaMemory()
    monkeypatch.setattr(pc, "wrapper", lambda: mem)
    monkeypatch.setattr(rt.runner, "probe_cuda_device", lambda: device or rt.DeviceInfo(0, "Orin", (8, 7)))
    monkeypatch.setattr(rt.runner, "import_tensorrt", lambda allow_lean=False: (trt, rt.FULL))
    monkeypatch.setattr(rt.runner, "_LOGGERS", {})
    return mem


def fake_policy_plans(folder, policy_onnx, version="10.3.0.30", profile=(1, 4, 8)):
    """folder/NAME.onnx, NAME-encoder.onnx and NAME.plan, NAME-encoder.plan (fake_onnx_plan_bytes
    of the two graphs) with the NAME.json 'ddpm-export build' writes for them (engine section,
    policy.encoder.plan). Returns the plan's path."""
    import hashlib
    import shutil

    from runtime import contract

    src = Path(policy_onnx)
    m = contract.read_manifest(src)
    enc = m["policy"]["encoder"]
    for f in (src, src.with_name(enc["file"])):
        shutil.copy(f, Path(folder) / f.name)
    plan = Path(folder) / (src.stem + ".plan")
    enc_plan = plan.with_name(src.stem + "-encoder.plan")
    sample = list(m["sample_shape"])
    den_io = ([("x_t", "INPUT", "FLOAT", sample), ("t", "INPUT", "INT32", [])]
              + [(c["name"], "INPUT", "FLOAT", c["shape"]) for c in m["conditions"]]
              + [("eps", "OUTPUT", "FLOAT", sample)])
    enc_io = ([(i["name"], "INPUT", "FLOAT", i["shape"][1:]) for i in enc["inputs"]]
              + [(o["name"], "OUTPUT", "FLOAT", o["shape"][1:]) for o in enc["outputs"]])

    def section(path, data, onnx_name):
        path.write_bytes(data)
        return {"section_version": 1, "format": "tensorrt-plan", "plan": path.name,
                "plan_sha256": hashlib.sha256(data).hexdigest(), "tensorrt_version": version,
                "device_name": "Orin", "compute_capability": "8.7", "precision": "fp32",
                "precision_mode": "fp32", "version_compatible": False, "hardware_compatibility": "none",
                "profiles": [dict(zip(("min", "opt", "max"), profile))], "onnx": onnx_name,
                "native_instancenorm": True}
    m["engine"] = section(plan, fake_onnx_plan_bytes(Path(folder) / src.name, den_io, version, profile), src.name)
    e = section(enc_plan, fake_onnx_plan_bytes(Path(folder) / enc["file"], enc_io, version, profile), enc["file"])
    enc["plan"] = {"file": enc_plan.name, "sha256": e["plan_sha256"], "engine": e}
    contract.write_manifest(plan, m)
    return plan
