"""ddpm_export.evaluation.fidelity: FID / KID / IS through torch-fidelity, without the real Inception weights.

The metric code that runs here is torch-fidelity's own (calculate_metrics: its
Frechet distance, KID subsets, Inception Score). Features come from a small
deterministic extractor registered through torch-fidelity's extension point
(register_feature_extractor), and one test runs torch-fidelity's real
InceptionV3 code with a randomly initialised state dict written to disk. No
test computes, or claims, an FID with the real Inception weights.

torch-fidelity is installed with  pip install --no-deps torch-fidelity==0.4.0 ;
the tests that need it skip (and say so) where it is missing.
"""
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import pickle
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm_export.evaluation import fidelity
from ddpm_export.evaluation.fidelity import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FidelityError,
    fidelity_metrics,
)
from ddpm_export.cli.fid import fid_command

PROBE = "ddpm-export-test-probe"
FEAT_DIM = 12
N_CLASSES = 10


def _module_keys(prefixes=("torchvision", "torch_fidelity")):
    return {k: v for k, v in sys.modules.items() if k.split(".")[0] in prefixes}


@contextlib.contextmanager
def _restored_modules():
    """Put sys.modules' torchvision* / torch_fidelity* entries back as they were afterwards."""
    before = _module_keys()
    try:
        yield
    finally:
        for k in list(_module_keys()):
            if k not in before:
                del sys.modules[k]
        sys.modules.update(before)


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


def _install_torchvision_standin() -> None:
    """A minimal stand-in `torchvision`, used only when the real one cannot be imported.

    Why: torch-fidelity imports torchvision at package import time, for its
    dataset registry (torchvision.datasets CIFAR10/CIFAR100/STL10 and
    transforms.functional.pil_to_tensor) and for its VGG16/CLIP/DINOv2
    extractors. The code under test passes in-memory Datasets of uint8
    tensors and uses only the InceptionV3 extractor or the probe below, none
    of which touches torchvision. On this machine the only torchvision wheels
    are CUDA builds whose C ops do not load against the CPU torch, so the real
    module cannot be imported; anything that does reach the stand-in raises.
    """
    for k in [k for k in sys.modules if k.split(".")[0] == "torchvision"]:
        del sys.modules[k]  # leftovers of a failed real import

    def module(name):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__path__ = []  # a package, so `import torchvision.x.y` resolves through sys.modules
        sys.modules[name] = m
        return m

    tv, datasets = module("torchvision"), module("torchvision.datasets")
    transforms, functional = module("torchvision.transforms"), module("torchvision.transforms.functional")

    class _NotInStandIn:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the test stand-in for torchvision has no datasets")

    for name in ("CIFAR10", "CIFAR100", "STL10"):
        setattr(datasets, name, type(name, (_NotInStandIn,), {}))

    def _missing(*args, **kwargs):
        raise RuntimeError("the test stand-in for torchvision has no transforms")

    functional.pil_to_tensor = functional.normalize = _missing
    tv.datasets, tv.transforms, transforms.functional = datasets, transforms, functional
    tv.__version__ = "0.0-test-standin"


def _probe_features(x):
    """The probe's features from uint8 [N, 3, H, W]: (feat [N, FEAT_DIM], logits [N, N_CLASSES])."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1234)
    proj = torch.randn(3 * 4 * 4, FEAT_DIM, generator=g, dtype=torch.float64) / 2.0
    head = torch.randn(FEAT_DIM, N_CLASSES, generator=g, dtype=torch.float64) * 3.0
    pooled = F.adaptive_avg_pool2d(x.to(torch.float64) / 255.0, 4).flatten(1)
    feat = torch.tanh((pooled - 0.5) @ proj * 4.0)
    return feat.to(torch.float32), (feat @ head).to(torch.float32)


@pytest.fixture(scope="module")
def tf():
    """torch_fidelity imported (with the torchvision stand-in if needed) and the probe registered."""
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0")
    with _restored_modules():
        if not _torchvision_importable():
            _install_torchvision_standin()
        import torch
        import torch_fidelity
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        class ProbeExtractor(torch_fidelity.FeatureExtractorBase):
            """Deterministic 4x4 pooling + fixed random projection; counts the images it sees."""

            images_seen = 0

            def __init__(self, name, features_list, **kwargs):
                super().__init__(name, features_list)

            @staticmethod
            def get_provided_features_list():
                return "feat", "logits"

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return {"fid": "feat", "kid": "feat", "prc": "feat", "isc": "logits"}[metric]

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

            def forward(self, x):
                assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, (x.dtype, x.shape)
                type(self).images_seen += int(x.shape[0])
                feat, logits = _probe_features(x)
                out = {"feat": feat, "logits": logits}
                return tuple(out[n] for n in self.features_list)

        if PROBE not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(PROBE, ProbeExtractor)
        torch_fidelity.ProbeExtractorForTests = FEATURE_EXTRACTORS_REGISTRY[PROBE]
        yield torch_fidelity


# ------------------------------------------------------------------------------ data


def _images(seed, n=64, size=16, channels=3, shift=0):
    """Smooth-ish random uint8 [n, size, size, channels] images."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, size // 4, size // 4, channels)).astype(np.int32)
    x = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
    x = x + rng.integers(-20, 21, size=x.shape)
    return np.clip(x + shift, 0, 255).astype(np.uint8)


def _independent_fid(a, b):
    """Frechet distance of the probe's features, with NumPy statistics and scipy's sqrtm."""
    import scipy.linalg
    import torch

    def stats(x):
        f = _probe_features(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))[0]
        f = f.numpy().astype(np.float64)
        return f.mean(0), np.cov(f, rowvar=False)

    (m1, s1), (m2, s2) = stats(a), stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _metrics(a, b, **kw):
    kw.setdefault("feature_extractor", PROBE)
    kw.setdefault("cuda", False)
    kw.setdefault("kid_subset_size", 32)
    return fidelity_metrics(a, b, **kw)


# ------------------------------------------------------------------------------ metrics


def test_fid_matches_an_independent_frechet_distance(tf):
    a, b = _images(0), _images(1)
    tf.ProbeExtractorForTests.images_seen = 0
    r = _metrics(a, b, metrics=("fid",))
    # torch-fidelity's extractor call really ran, on both sets
    assert tf.ProbeExtractorForTests.images_seen == len(a) + len(b)
    ref = _independent_fid(a, b)
    assert ref > 0.05
    assert r["fid"] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert set(r) >= {"fid", "n_samples", "n_reference", "feature_extractor"}
    assert "kid_mean" not in r and "isc_mean" not in r  # nothing reported that was not computed
    assert r["n_samples"] == 64 and r["n_reference"] == 64
    assert r["feature_extractor"] == PROBE and r["inception"] is False
    assert r["inception_weights"] is None and r["inception_weights_sha256"] is None
    assert any("not comparable" in n for n in r["notes"])


def test_identical_sets_near_zero_shifted_set_larger(tf):
    a = _images(0)
    same = _metrics(a, a.copy(), metrics="fid,kid")
    other = _metrics(a, _images(1), metrics="fid,kid")
    shifted = _metrics(a, _images(1, shift=70), metrics="fid,kid")
    assert abs(same["fid"]) < 1e-5
    # KID's unbiased estimator pairs each image with itself in K_XY when the sets are the same
    # images, so identical sets come out slightly negative, not 0 (torch-fidelity says as much)
    assert same["kid_mean"] <= 0.0
    assert shifted["fid"] > 3 * other["fid"] > 0
    assert shifted["kid_mean"] > other["kid_mean"]
    assert shifted["fid"] == pytest.approx(_independent_fid(a, _images(1, shift=70)), rel=1e-4)


def test_kid_and_is_match_independent_computations(tf):
    import torch

    a, b = _images(2, n=48), _images(3, n=40)
    r = _metrics(a, b, kid_subset_size=20)
    fa = _probe_features(torch.from_numpy(a.transpose(0, 3, 1, 2).copy()))
    fb = _probe_features(torch.from_numpy(b.transpose(0, 3, 1, 2).copy()))

    # KID: unbiased MMD^2, cubic polynomial kernel (gamma 1/d, coef0 1), 100 subsets drawn with
    # the seed torch-fidelity uses (fidelity.RNG_SEED)
    x, y = fa[0].numpy().astype(np.float64), fb[0].numpy().astype(np.float64)
    rng, m, mmds = np.random.RandomState(fidelity.RNG_SEED), 20, []
    k = lambda p, q: (p @ q.T / x.shape[1] + 1.0) ** 3  # noqa: E731
    for _ in range(fidelity.DEFAULT_KID_SUBSETS):
        p, q = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = k(p, p), k(q, q), k(p, q)
        mmds.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    assert r["kid_mean"] == pytest.approx(np.mean(mmds), rel=1e-4, abs=1e-7)
    assert r["kid_std"] == pytest.approx(np.std(mmds), rel=1e-4, abs=1e-7)
    assert r["kid_subset_size"] == 20 and r["kid_subsets"] == 100

    # IS: exp(mean KL(p(y|x) || p(y))) over 10 splits of the shuffled samples
    logits = fa[1].numpy().astype(np.float64)[np.random.RandomState(fidelity.RNG_SEED).permutation(len(a))]
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    scores = []
    for i in range(10):
        lp = logp[i * len(a) // 10:(i + 1) * len(a) // 10]
        p = np.exp(lp)
        scores.append(np.exp((p * (lp - np.log(p.mean(0, keepdims=True)))).sum(1).mean()))
    assert r["isc_mean"] == pytest.approx(np.mean(scores), rel=1e-6)
    assert r["isc_std"] == pytest.approx(np.std(scores), rel=1e-5, abs=1e-9)
    assert r["isc_mean"] > 1.0
    assert r["fid"] == pytest.approx(_independent_fid(a, b), rel=1e-4)


def test_grayscale_is_repeated_to_rgb(tf, tmp_path):
    from PIL import Image

    gray = _images(4, channels=1)
    rgb = fidelity.as_rgb_uint8(gray)
    assert rgb.shape == (64, 16, 16, 3) and rgb.dtype == np.uint8
    assert (rgb == gray).all()  # every channel equals the gray one
    assert (fidelity.as_rgb_uint8(gray[..., 0]) == rgb).all()  # [N, H, W] too
    # a grayscale set and its explicit RGB copy are the same set
    r = _metrics(gray, np.repeat(gray, 3, axis=-1), metrics="fid")
    assert abs(r["fid"]) < 1e-5
    assert r["samples"]["channels"] == 1 and r["reference"]["channels"] == 3
    # a folder of mode-L PNGs reads as the same RGB images
    folder = tmp_path / "gray"
    folder.mkdir()
    for i, im in enumerate(gray[:12]):
        Image.fromarray(im[..., 0], mode="L").save(folder / f"{i:03d}.png")
    x, desc = fidelity.load_image_set(str(folder))
    assert desc["kind"] == "image folder" and desc["n"] == 12
    assert (x == rgb[:12]).all()


# ------------------------------------------------------------------------------ inputs


def test_npz_cifar_and_shard_inputs(tmp_path, monkeypatch):
    a = _images(5, n=20)
    np.savez(tmp_path / "u8.npz", images=a)
    x, d = fidelity.load_image_set(str(tmp_path / "u8.npz"))
    assert (x == a).all() and d["kind"] == "npz"

    # runtime.sample --npz: float [N, C, H, W] in [-1, 1]
    np.savez(tmp_path / "f.npz", samples=a.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    x, _ = fidelity.load_image_set(str(tmp_path / "f.npz"))
    assert (x == a).all()

    # a cifar-10-batches-py folder: its 5 training batches, read as uint8 [N, 32, 32, 3]
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(10, 3 * 32 * 32), dtype=np.uint8)
    for i in range(1, 6):
        with open(cifar / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": raw[(i - 1) * 2:i * 2], b"labels": [0, 1]}, f)
    x, d = fidelity.load_image_set(str(tmp_path))  # the parent folder works too
    assert d["kind"] == "cifar-10 training set" and x.shape == (10, 32, 32, 3)
    assert (x == raw.reshape(10, 3, 32, 32).transpose(0, 2, 3, 1)).all()
    (cifar / "data_batch_5").unlink()
    with pytest.raises(FidelityError, match="data_batch_5 missing.*cifar-10-batches-py"):
        fidelity.load_image_set(str(cifar))

    # np.savez(path, x) and runtime.shards.write_merged: a lone arr_0
    np.savez(tmp_path / "merged.npz", a)
    x, _ = fidelity.load_image_set(str(tmp_path / "merged.npz"))
    assert (x == a).all()

    # a sample-shards folder (run.json + shard-NNNNN.npz) goes to runtime.shards.load_shards;
    # a stand-in here, as the folder's format is runtime.shards' business
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "run.json").write_text("{}")
    np.savez(shards / "shard-00000.npz", images=a)
    fake = types.ModuleType("runtime.shards")
    fake.load_shards = lambda out_dir: a[:7] if out_dir == str(shards) else None
    monkeypatch.setitem(sys.modules, "runtime.shards", fake)
    x, d = fidelity.load_image_set(str(shards))
    assert d["kind"] == "sample shards" and (x == a[:7]).all()


def test_bad_inputs_fail_with_the_numbers(tmp_path):
    a = _images(0, n=16)
    kw = dict(feature_extractor=PROBE, cuda=False)
    with pytest.raises(FidelityError, match=r"samples are 16x16 pixels, the reference 32x32"):
        fidelity_metrics(a, _images(0, n=16, size=32), metrics="fid", **kw)
    with pytest.raises(FidelityError, match=r"no images \(N = 0\)"):
        fidelity_metrics(a[:0], a, metrics="fid", **kw)
    with pytest.raises(FidelityError, match=r"KID subset size 1000 exceeds the images available "
                                            r"\(samples 16, reference 12\).*--kid-subset-size 12"):
        fidelity_metrics(a, a[:12], metrics="kid", **kw)
    with pytest.raises(FidelityError, match=r"dtype float32; expected uint8"):
        fidelity_metrics(a.astype(np.float32), a, metrics="fid", **kw)
    with pytest.raises(FidelityError, match=r"shape \(16, 16, 16, 2\)"):
        fidelity_metrics(a[..., :2], a, metrics="fid", **kw)
    with pytest.raises(FidelityError, match="needs >= 10 samples, got 9"):
        fidelity_metrics(a[:9], None, metrics="isc", **kw)
    with pytest.raises(FidelityError, match="pass a reference"):
        fidelity_metrics(a, None, metrics="fid,isc", **kw)
    with pytest.raises(FidelityError, match="unknown metric 'prc'"):
        fidelity_metrics(a, a, metrics="fid,prc", **kw)
    with pytest.raises(FidelityError, match="no such file or folder"):
        fidelity_metrics(str(tmp_path / "nope.npz"), a, metrics="fid", **kw)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FidelityError, match="no images"):
        fidelity_metrics(str(empty), a, metrics="fid", **kw)
    np.savez(tmp_path / "other.npz", labels=np.zeros(3))
    with pytest.raises(FidelityError, match="no 'images'.*holds labels"):
        fidelity_metrics(str(tmp_path / "other.npz"), a, metrics="fid", **kw)


# ------------------------------------------------------------------------------ weights


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    a = _images(0, n=16)
    for weights in (None, str(tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE)):
        with pytest.raises(FidelityError) as e:
            fidelity_metrics(a, a, inception_weights=weights, cuda=False)
        msg = str(e.value)
        assert INCEPTION_WEIGHTS_FILE in msg and INCEPTION_WEIGHTS_URL in msg
        assert "--inception-weights PATH" in msg and "machine with internet" in msg
        if weights:
            assert weights in msg and "no such file" in msg


def test_wrong_weights_files_are_refused(tmp_path):
    import torch

    a = _images(0, n=16)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FidelityError, match="not a PyTorch weights file"):
        fidelity_metrics(a, a, inception_weights=str(junk), cuda=False)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, other)
    with pytest.raises(FidelityError, match=r"not torch-fidelity's InceptionV3 state dict "
                                            r"\(Conv2d_1a_3x3.conv.weight, fc.weight"):
        fidelity_metrics(a, a, inception_weights=str(other), cuda=False)


def test_weights_constants_are_torch_fidelitys(tf):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3
    assert URL_INCEPTION_V3.endswith("/" + INCEPTION_WEIGHTS_FILE)


@pytest.fixture(scope="module")
def random_inception_weights(tf, tmp_path_factory):
    """A state dict of torch-fidelity's InceptionV3, randomly initialised (NOT the real weights)."""
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as inc

    with pytest.MonkeyPatch.context() as m:  # build the module without loading any weights
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        net = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    for k, v in sd.items():  # keep activations from dying out over 40-odd random layers
        if k.endswith("bn.weight"):
            v.fill_(1.8)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("metrics,n_samples,n_reference,small_layer", [
    ("fid", 3, 2, True),
    pytest.param("fid,kid,isc", 10, 4, False, marks=pytest.mark.slow),
])
def test_inception_code_path_with_a_local_weights_file(tf, random_inception_weights, monkeypatch,
                                                        metrics, n_samples, n_reference, small_layer):
    """torch-fidelity's real InceptionV3 loading a local file; random weights, so the numbers mean nothing."""
    from torch_fidelity import feature_extractor_inceptionv3 as inc

    def no_download(*args, **kwargs):
        raise AssertionError("torch-fidelity tried to download the Inception weights")

    monkeypatch.setattr(inc, "load_state_dict_from_url", no_download)
    if small_layer:
        # torch-fidelity's Frechet distance takes eigvals of a 2048x2048 product: ~20 s on 2 shared
        # cores. The fast variant takes FID on the Inception's 192-d layer instead (the whole net
        # still runs for the weights check); the slow one uses the real default layers.
        real = inc.FeatureExtractorInceptionV3.get_default_feature_layer_for_metric
        monkeypatch.setattr(inc.FeatureExtractorInceptionV3, "get_default_feature_layer_for_metric",
                            staticmethod(lambda metric: "192" if metric == "fid" else real(metric)))
    weights = random_inception_weights
    samples, reference = _images(6, n=n_samples, size=8), _images(7, n=n_reference, size=8)
    r = fidelity_metrics(samples, reference, inception_weights=str(weights), metrics=metrics,
                         cuda=False, kid_subset_size=n_reference, batch_size=16)
    assert r["feature_extractor"] == "inception-v3-compat" and r["inception"] is True
    assert r["inception_weights"] == str(weights)
    assert r["inception_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    keys = {"fid": ["fid"], "kid": ["kid_mean", "kid_std"], "isc": ["isc_mean", "isc_std"]}
    for m in ("fid", "kid", "isc"):
        for key in keys[m]:
            if m in metrics.split(","):
                assert np.isfinite(r[key]), (key, r[key])
            else:
                assert key not in r
    assert r["fid"] > 0
    assert any("fewer than 2048 images" in n for n in r["notes"])


# ------------------------------------------------------------------------------ import errors


def test_torch_fidelity_missing_says_what_to_install():
    with _restored_modules():
        for k in [k for k in sys.modules if k.split(".")[0] == "torch_fidelity"]:
            del sys.modules[k]
        sys.modules["torch_fidelity"] = None  # import fails as if not installed
        with pytest.raises(FidelityError, match=r"torch-fidelity is not installed.*ddpm-export\[fid\]"):
            fidelity.import_torch_fidelity()


def test_torchvision_unusable_names_the_cause():
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed: pip install --no-deps torch-fidelity==0.4.0")
    import torch

    with _restored_modules():
        for k in [k for k in sys.modules if k.split(".")[0] in ("torch_fidelity", "torchvision")]:
            del sys.modules[k]
        sys.modules["torchvision"] = None  # as where torchvision is missing
        with pytest.raises(FidelityError) as e:
            fidelity.import_torch_fidelity()
    msg = str(e.value)
    assert "torch-fidelity cannot be imported" in msg and "torchvision" in msg
    assert torch.__version__ in msg and "same index as torch" in msg
    # a CUDA torchvision against a CPU torch fails in its C ops
    msg = fidelity._import_failure_message(RuntimeError("operator torchvision::nms does not exist"))
    assert "operator torchvision::nms does not exist" in msg and "same index as torch" in msg


# ------------------------------------------------------------------------------ CLI


def _write(tmp_path, name, images):
    p = tmp_path / name
    np.savez(p, images=images)
    return str(p)


def test_cli_table_and_json(tf, tmp_path):
    s = _write(tmp_path, "s.npz", _images(0, n=40, channels=1))
    ref = _write(tmp_path, "r.npz", _images(1, n=40))
    out = tmp_path / "m" / "fid.json"
    res = CliRunner().invoke(fid_command, ["--samples", s, "--reference", ref, "--feature-extractor",
                                           PROBE, "--kid-subset-size", "20", "--device", "cpu",
                                           "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    direct = _metrics(np.load(s)["images"], np.load(ref)["images"], kid_subset_size=20)
    for key in ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std"):
        assert data[key] == pytest.approx(direct[key], rel=1e-9)
    assert data["n_samples"] == 40 and data["feature_extractor"] == PROBE
    assert f"{data['fid']:.4f}" in res.output
    assert "grayscale repeated to RGB" in res.output and "not comparable" in res.output


def test_cli_errors_exit_nonzero_with_one_message(tf, tmp_path):
    s = _write(tmp_path, "s.npz", _images(0, n=16))
    runner = CliRunner()

    res = runner.invoke(fid_command, ["--samples", s, "--reference", s])
    assert res.exit_code == 1
    assert INCEPTION_WEIGHTS_FILE in res.output and INCEPTION_WEIGHTS_URL in res.output

    res = runner.invoke(fid_command, ["--samples", s, "--reference", s, "--feature-extractor", PROBE,
                                      "--device", "cpu"])
    assert res.exit_code == 1
    assert "KID subset size 1000 exceeds the images available (samples 16, reference 16)" in res.output

    res = runner.invoke(fid_command, ["--samples", str(tmp_path / "missing.npz"), "--reference", s,
                                      "--feature-extractor", PROBE, "--metrics", "fid"])
    assert res.exit_code == 1 and "no such file or folder" in res.output

    res = runner.invoke(fid_command, ["--samples", s, "--reference", s, "--feature-extractor", PROBE,
                                      "--metrics", "fid,bogus"])
    assert res.exit_code == 1 and "unknown metric 'bogus'" in res.output

    res = runner.invoke(fid_command, ["--samples", s, "--reference", s, "--batch-size", "0"])
    assert res.exit_code == 2  # click's usage error

    res = runner.invoke(fid_command, ["--samples", s, "--reference", s, "--feature-extractor", "vgg16",
                                      "--metrics", "fid"])
    assert res.exit_code == 1 and "downloads its weights" in res.output
