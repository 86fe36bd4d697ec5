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
