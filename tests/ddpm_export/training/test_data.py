import pickle

import numpy as np
import pytest

from ddpm_export.training.data import DataError, digits_images, load_images, preprocess_digits


def test_digits_images_scaled_and_resized():
    x = digits_images(16)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_preprocess_keeps_8x8_values():
    im = np.zeros((1, 8, 8))
    im[0, 2, 3] = 16
    x = preprocess_digits(im, 8)
    assert x[0, 0, 2, 3] == 1.0 and x[0, 0, 0, 0] == -1.0


def _write_fake_cifar(root, n=10):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [0] * n}, f)


def test_cifar_folder_loads(tmp_path):
    _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    x = load_images("cifar10", str(tmp_path), 32, 3)  # the parent folder is accepted too
    assert x.shape == (50, 3, 32, 32) and -1 <= x.min() and x.max() <= 1


def test_cifar_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_images("cifar10", None, 32, 3)
    with pytest.raises(DataError, match="data_batch_1"):
        load_images("cifar10", str(tmp_path / "nowhere"), 32, 3)


def test_corrupt_cifar_batch(tmp_path):
    root = tmp_path / "c"
    _write_fake_cifar(root)
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        load_images("cifar10", str(root), 32, 3)


def test_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "sub" / "b.jpg")
    x = load_images("cifar10", str(tmp_path), 16, 3)
    assert x.shape == (2, 3, 16, 16)
    assert x[0, 0].mean() == pytest.approx(1.0) and x[0, 2].mean() == pytest.approx(-1.0)
    with pytest.raises(DataError, match="missing: not a folder"):
        load_images("digits", str(tmp_path / "missing"), 16, 1)


def test_empty_folder_and_bad_image(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_images("digits", str(tmp_path / "empty"), 16, 1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png: cannot read image"):
        load_images("digits", str(tmp_path / "bad"), 16, 1)


def _py2_style_batch(data: np.ndarray) -> bytes:
    """A batch as the official cifar-10-batches-py files are written: Python 2 cPickle,
    protocol 2, str (bytes) as BINSTRING, numpy named numpy.core.multiarray."""
    import io

    class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, to emit Python 2's str opcode
        dispatch = dict(pickle._Pickler.dispatch)

        def save_str2(self, obj):
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
            self.memoize(obj)

        dispatch[bytes] = save_str2

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(
        {b"batch_label": b"training batch 1 of 5", b"labels": [3] * len(data), b"data": data,
         b"filenames": [b"x.png"] * len(data)})
    out = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in out and b"_codecs" not in out
    return out


def test_official_batch_format_loads_through_the_restricted_unpickler(tmp_path):
    from ddpm_export.training.data import read_cifar_batch

    data = np.random.default_rng(1).integers(0, 256, (4, 3072), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(_py2_style_batch(data))
    np.testing.assert_array_equal(read_cifar_batch(tmp_path / "data_batch_1"), data.reshape(4, 3, 32, 32))


def test_cifar_batch_with_other_globals_is_refused_naming_it(tmp_path):
    from ddpm_export.training.data import read_cifar_batch

    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload()}))
    with pytest.raises(DataError, match=r"data_batch_1: refused to load (io|builtins)\.open"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32)}))
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR-10 python batch .*float32 \(2, 3072\)"):
        read_cifar_batch(tmp_path / "data_batch_1")
