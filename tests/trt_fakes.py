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
        return self.profile


# --- TensorRT's Python API names per version (scripts/trt_api_names.py) --------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

TRT_API_DIR = Path(__file__).resolve().parent / "runtime" / "backends" / "trt_api"
TRT_API_VERSIONS = ("8.5.3", "8.6.1", "10.3.0")


def trt_api_list(version):
    """The names extracted from TensorRT's binding sources at that tag (with their source)."""
    return json.loads((TRT_API_DIR / f"tensorrt-{version}.json").read_text())


def missing_trt_names(api, used, since, version):
    """'owner.name' for every used name (owner '' = the module) not bound at that version;
    a bound class also has its bound bases' names. since: {(owner, name): (major, minor)}."""
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
            if since.get((owner, n), (0, 0)) > v:
                continue
            if n not in have:
                missing.append(f"{owner or 'tensorrt'}.{n}")
    return missing
