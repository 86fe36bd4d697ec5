"""Conditional models through export and runtime: a class-conditional diffusers UNet2DModel
(num_class_embeds) exported with its ``class_labels`` input, sampled by the runtime with and
without classifier-free guidance, against a loop built from diffusers' own network and
schedulers fed the same x_T and noise; and any (x_t, t, **cond) denoiser (vector and
image-channel conditions, samples of another rank).

Tolerances. Per step (both sides start each step from diffusers' x_t: the runtime's guidance
mix and scheduler against diffusers'): 1e-5; the runtime's scheduler runs in float64,
diffusers' in float32. Whole 10-step chains on [-1, 1] samples: 1e-4. A guided chain of
this random network is chaotic: measured, a relative change of 1e-6 in x_T alone moves
diffusers' own 50-step DDIM output by 4e-5 at w = 1 and by 1e-2 at w = 3, so a chain
comparison measures that amplification of float32 rounding (and of ONNX Runtime's kernels,
~1e-6 per call from PyTorch's, test_onnx_export) as much as the formulas; 10 steps keep it
below 1e-4.
"""
import numpy as np
import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel  # noqa: E402

import runtime  # noqa: E402
from ddpm_export.export.onnx_export import export_module  # noqa: E402
from ddpm_export.model.external import DiffusersUNet  # noqa: E402
from runtime.contract import Condition, read_manifest  # noqa: E402
from runtime.guidance import ConditionError  # noqa: E402
from runtime.seeding import ImageStreams  # noqa: E402

K = 4  # real classes; label K is the null (num_class_embeds = K + 1)
LABELS = Condition("class_labels", "class_label", (), K, K)
T = 1000


@pytest.fixture(scope="module")
def cond_unet(tmp_path_factory):
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                      num_class_embeds=K + 1).eval()
    with torch.no_grad():  # a class embedding large enough that labels change eps visibly
        net.class_embedding.weight.mul_(3.0)
        net.conv_out.weight.mul_(0.3)  # a smooth eps (|d eps/d x| < 1) as trained models have: a random
        net.conv_out.bias.mul_(0.3)  # net amplifies float32 rounding along a guided DDIM chain
    out = tmp_path_factory.mktemp("cond") / "cond.onnx"
    schedule = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": T,
                "variance_type": "fixedsmall", "clip_denoised": True}
    manifest = export_module(DiffusersUNet(net, conditions=[LABELS]), schedule, (1, 8, 8), out,
                             batch_range=(1, 4, 16), guidance={"default": 2.0})
    return net, out, manifest


def _diffusers_chain(net, sched, labels, w, seed, n, ddpm_noise=True, **step_kw):
    """diffusers' network + scheduler with CFG as its pipelines mix it ([uncond; cond], raw
    output), x_T and the DDPM noise from the runtime's per-sample streams."""
    rng = ImageStreams(seed, 0, n)
    x = torch.from_numpy(rng.standard_normal((n, 1, 8, 8)))
    lab = torch.tensor(labels, dtype=torch.int64)
    null = torch.full((n,), K, dtype=torch.int64)
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    orig = ddpm_mod.randn_tensor
    ddpm_mod.randn_tensor = lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape)))
    try:
        for t in sched.timesteps:
            tt = torch.full((2 * n,), int(t), dtype=torch.int64)
            with torch.no_grad():
                out = net(torch.cat([x, x]), tt, class_labels=torch.cat([null, lab])).sample
            u, c = out.chunk(2)
            x = sched.step(u + w * (c - u), t, x, **step_kw).prev_sample
    finally:
        ddpm_mod.randn_tensor = orig
    return x.numpy()


def test_manifest_records_the_condition_and_guidance(cond_unet):
    _, out, m = cond_unet
    assert read_manifest(out) == m
    assert m["manifest_version"] == 3 and m["sample_kind"] == "image" and m["sample_shape"] == [1, 8, 8]
    assert m["conditions"] == [{"name": "class_labels", "kind": "class_label", "dtype": "int64",
                                "shape": [], "num_classes": K, "null": K}]
    assert [i["name"] for i in m["io"]["inputs"]] == ["x_t", "t", "class_labels"]
    assert m["guidance"] == {"default": 2.0} and m["checks"]["parity"]["passed"]


@pytest.mark.parametrize("method, w", [("ddpm", 3.0), ("ddim", 3.0), ("dpmsolver++", 3.0), ("ddpm", 1.0)])
@pytest.mark.parametrize("runner", ["pytorch", "onnxruntime"])
def test_guided_chain_equals_diffusers(cond_unet, method, w, runner):
    net, out, _ = cond_unet
    labels = [0, 3, 1, 2, 3]
    n = len(labels)
    kw = {}
    if method == "ddpm":
        sched = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", clip_sample=True)
    elif method == "ddim":
        sched = DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True)
        kw = {"eta": 0.0, "variant": "diffusers", "spacing": "leading"}
    else:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=T, solver_order=2, timestep_spacing="linspace",
                                            lower_order_final=True, thresholding=True,
                                            dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
        kw = {"order": 2, "spacing": "linspace", "lower_order_final": True, "clip": True}
    sched.set_timesteps(10)
    want = _diffusers_chain(net, sched, labels, w, seed=7, n=n)
    with runtime.load(out) as eng:
        if runner == "pytorch":
            def torch_net(x, t, class_labels):
                with torch.no_grad():
                    return net(torch.from_numpy(x), torch.from_numpy(t).long(),
                               class_labels=torch.from_numpy(class_labels)).sample.numpy()

            got = runtime.loop.sample(torch_net, (1, 8, 8), eng.manifest["schedule"], n, seed=7, steps=10,
                                      method=method, conditions=eng.conditions,
                                      cond={"class_labels": np.array(labels)}, guidance=w, batch=n, **kw)
        else:
            got = eng.sample_float(n, seed=7, steps=10, method=method, cond={"class_labels": np.array(labels)},
                                   guidance=w, **kw)
    assert np.abs(got.images - want).max() < 1e-4
    assert got.network_calls == 10  # one call per step: [uncond; cond] at batch 2N = 10 <= 16


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpmsolver++"])
def test_guided_steps_equal_diffusers_per_step(cond_unet, method):
    """Teacher-forced: every step from diffusers' x_t, the runtime's GuidedDenoiser and
    scheduler against diffusers' network, CFG mix and scheduler, the same noise z."""
    from runtime.guidance import GuidedDenoiser
    from runtime.schedulers import make_scheduler

    net, out, m = cond_unet
    labels = np.array([0, 3, 1, 2, 3])
    n, w = len(labels), 3.0

    def torch_net(x, t, class_labels):
        with torch.no_grad():
            return net(torch.from_numpy(x), torch.from_numpy(t).long(),
                       class_labels=torch.from_numpy(class_labels)).sample.numpy()

    kw = {"ddim": {"eta": 0.0, "variant": "diffusers", "spacing": "leading"},
          "dpmsolver++": {"order": 2, "spacing": "linspace", "lower_order_final": True, "clip": True}}.get(method, {})
    ours = make_scheduler(m["schedule"], method, 10, **kw)
    theirs = {"ddpm": lambda: DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", clip_sample=True),
              "ddim": lambda: DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True),
              "dpmsolver++": lambda: DPMSolverMultistepScheduler(
                  num_train_timesteps=T, solver_order=2, timestep_spacing="linspace", lower_order_final=True,
                  thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)}[method]()
    theirs.set_timesteps(10)
    np.testing.assert_array_equal(theirs.timesteps.numpy(), ours.timesteps)
    guided = GuidedDenoiser(torch_net, [LABELS], w)
    rng = np.random.default_rng(0)
    xd = torch.from_numpy(rng.standard_normal((n, 1, 8, 8)).astype(np.float32))
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    worst = 0.0
    for t in ours.timesteps:
        x = xd.numpy().copy()
        z = rng.standard_normal(x.shape).astype(np.float32)
        mine = ours.step(guided(x, np.full((n,), int(t), np.int32), {"class_labels": labels}), int(t), x,
                         noise=z if method == "ddpm" and t > 0 else None,
                         **({"rng": None} if method != "ddpm" or t == 0 else {})).prev_sample
        null = torch.full((n,), K)
        with torch.no_grad():
            u, c = net(torch.cat([xd, xd]), torch.full((2 * n,), int(t)),
                       class_labels=torch.cat([null, torch.from_numpy(labels)])).sample.chunk(2)
        orig = ddpm_mod.randn_tensor
        ddpm_mod.randn_tensor = lambda shape, **k: torch.from_numpy(z)
        try:
            xd = theirs.step(u + w * (c - u), t, xd).prev_sample
        finally:
            ddpm_mod.randn_tensor = orig
        worst = max(worst, float(np.abs(mine - xd.numpy()).max()))
    assert worst < 1e-5, f"{method}: a guided step differs from diffusers' by {worst:.3g}"


def test_guidance_zero_and_one_are_the_two_branches(cond_unet):
    _, out, _ = cond_unet
    with runtime.load(out) as eng:
        uncond = eng.sample_float(3, seed=1, steps=5, method="ddim", cond={"class_labels": K}, guidance=1.0).images
        w0 = eng.sample_float(3, seed=1, steps=5, method="ddim", cond={"class_labels": 2}, guidance=0.0).images
        w0_nocond = eng.sample_float(3, seed=1, steps=5, method="ddim", guidance=0.0).images
        cond = eng.sample_float(3, seed=1, steps=5, method="ddim", cond={"class_labels": 2}, guidance=1.0).images
        w2 = eng.sample_float(3, seed=1, steps=5, method="ddim", cond={"class_labels": 2}, guidance=2.0).images
    np.testing.assert_array_equal(w0, uncond)
    np.testing.assert_array_equal(w0_nocond, uncond)
    assert np.abs(cond - uncond).max() > 1e-2  # the label matters
    assert np.abs(w2 - cond).max() > 1e-3  # and guidance does


def test_seed_gives_the_same_sample_at_any_batch_with_or_without_guidance_batching(cond_unet):
    _, out, _ = cond_unet
    labels = np.array([1, 0, 3, 2, 1, 0, 3, 2, 2])
    with runtime.load(out) as eng:
        ref = eng.sample_float(9, seed=3, steps=4, method="ddpm", cond={"class_labels": labels},
                               guidance=2.5)  # default: batches of 8 = 16 // 2 (8 + 1), one call at 2N
        one = eng.sample_float(9, seed=3, steps=4, method="ddpm", cond={"class_labels": labels},
                               guidance=2.5, batch=3)
        two_calls = eng.sample_float(9, seed=3, steps=4, method="ddpm", cond={"class_labels": labels},
                                     guidance=2.5, batch=9)  # 2N = 18 past max 16: two calls at N
        tail = eng.sample_float(5, seed=3, steps=4, method="ddpm", cond={"class_labels": labels[4:]},
                                guidance=2.5, first_image=4)
    assert (ref.network_calls, one.network_calls, two_calls.network_calls) == (2 * 4, 3 * 4, 2 * 4)
    for other in (one, two_calls):
        assert np.abs(other.images - ref.images).max() < 1e-5
    assert np.abs(tail.images - ref.images[4:]).max() < 1e-5


def test_default_guidance_comes_from_the_manifest(cond_unet):
    _, out, _ = cond_unet
    with runtime.load(out) as eng:
        default = eng.sample_float(2, seed=0, steps=3, method="ddim", cond={"class_labels": 1}).images
        two = eng.sample_float(2, seed=0, steps=3, method="ddim", cond={"class_labels": 1}, guidance=2.0).images
    np.testing.assert_array_equal(default, two)


@pytest.mark.parametrize("cond, match", [
    (None, r"this model takes conditions \['class_labels'\]; received \[\]: missing \['class_labels'\]"),
    ({"class_labels": 7}, r"received label 7, expected labels in \[0, 3\] or the null label 4"),
    ({"class_labels": np.array([1, 2])}, r"received shape \(2,\), expected \(3,\)"),
    ({"class_labels": np.array([1.0, 2.0, 0.0])}, r"received dtype float64, expected integer class labels"),
    ({"class_labels": 1, "mask": 1}, r"unknown \['mask'\]"),
])
def test_condition_refusals_are_one_line(cond_unet, cond, match):
    _, out, _ = cond_unet
    with runtime.load(out) as eng, pytest.raises(ConditionError, match=match) as e:
        eng.sample_float(3, seed=0, steps=2, method="ddim", cond=cond, guidance=1.0)
    assert "\n" not in str(e.value)


def test_engine_call_checks_condition_inputs(cond_unet):
    net, out, _ = cond_unet
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t = np.array([10, 900], dtype=np.int32)
    with runtime.load(out) as eng:
        got = eng(x, t, class_labels=np.array([1, 4]))
        with pytest.raises(ConditionError, match="missing"):
            eng(x, t)
    with torch.no_grad():
        want = net(torch.from_numpy(x), torch.from_numpy(t).long(), class_labels=torch.tensor([1, 4])).sample
    assert np.abs(got - want.numpy()).max() < 1e-5


class VectorAndChannels(nn.Module):
    """A denoiser with a vector condition (FiLM-like) and low-resolution channels concatenated
    to x_t (SR3-style)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)
        self.vec = nn.Linear(3, 1)

    def forward(self, x_t, t, lowres, feat):
        h = self.conv(torch.cat([x_t, lowres], dim=1))
        return h + self.vec(feat)[:, :, None, None] + 1e-3 * t[:, None, None, None]


def test_vector_and_image_channel_conditions(tmp_path):
    torch.manual_seed(0)
    net = VectorAndChannels().eval()
    conds = [Condition("lowres", "image_channels", (1, 8, 8), null="zeros"), Condition("feat", "vector", (3,))]
    out = tmp_path / "vc.onnx"
    m = export_module(net, {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 50,
                            "variance_type": "fixedsmall", "clip_denoised": True}, (1, 8, 8), out,
                      conditions=conds, batch_range=(1, 2, 8))
    assert [i["name"] for i in m["io"]["inputs"]] == ["x_t", "t", "lowres", "feat"]
    rng = np.random.default_rng(0)
    low = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    feat = rng.standard_normal(3).astype(np.float32)  # one vector for every sample
    with runtime.load(out) as eng:
        s = eng.sample_float(2, seed=0, steps=5, method="ddim", cond={"lowres": low, "feat": feat})
        assert s.images.shape == (2, 1, 8, 8)
        with pytest.raises(ConditionError, match=r"conditions \['feat'\] have no null form"):
            eng.sample_float(2, seed=0, steps=5, method="ddim", cond={"lowres": low, "feat": feat}, guidance=2.0)
        with pytest.raises(ConditionError, match="received dtype float64, expected float32"):
            eng.sample_float(2, seed=0, steps=5, method="ddim", cond={"lowres": low.astype(np.float64),
                                                                     "feat": feat})


def test_array_samples_of_another_rank(tmp_path):
    from cond_engines import array_cond_engine  # [6, 2] samples, a [5] global_cond vector

    out = array_cond_engine(tmp_path)
    m = read_manifest(out)
    assert m["sample_kind"] == "array" and m["image_shape"] is None and m["sample_shape"] == [6, 2]
    g = np.ones((3, 5), np.float32)
    with runtime.load(out) as eng:
        a = eng.sample(3, seed=0, steps=10, method="ddim", cond={"global_cond": g})
        b = eng.sample(3, seed=0, steps=10, method="ddim", cond={"global_cond": g}, guidance=1.5)
    assert a.dtype == np.float32 and a.shape == (3, 6, 2) and np.abs(a - b).max() > 0


def test_runtime_sample_cli_takes_labels_and_guidance(cond_unet, tmp_path, capsys):
    from runtime.sample import main as sample_main

    _, out, _ = cond_unet
    png, npz = tmp_path / "s.png", tmp_path / "s.npz"
    rc = sample_main(["--engine", str(out), "--num", "5", "--label", "0,3", "--guidance", "2", "--method", "ddim",
                      "--steps", "3", "--out", str(png), "--npz", str(npz), "--no-progress"])
    assert rc == 0 and png.is_file()
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["class_labels"], [0, 3, 0, 3, 0])  # cycled
    with runtime.load(out) as eng:
        want = eng.sample_float(5, seed=0, steps=3, method="ddim", cond={"class_labels": np.array([0, 3, 0, 3, 0])},
                                guidance=2.0).images
    np.testing.assert_array_equal(saved["samples"], want)
    capsys.readouterr()
    rows = tmp_path / "labels.npy"
    np.save(rows, np.array([0, 1, 2]))  # more rows than samples: refused, not cut
    for argv, match in ((["--label", "9"], "received label 9, expected labels in [0, 3] or the null label 4"),
                        ([], "missing ['class_labels']"),
                        (["--label", "a,b"], "--label 'a,b': expected an int"),
        (["--cond", f"class_labels={rows}"], "received 3 rows (shape (3,)), expected one per sample, 2 rows")):
        rc = sample_main(["--engine", str(out), "--num", "2", "--steps", "2", "--method", "ddim",
                          "--out", str(tmp_path / "x.png"), "--no-progress"] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "x.png").exists()
