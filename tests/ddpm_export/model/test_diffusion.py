import numpy as np
import pytest
import torch

from ddpm_export.model.config import PRESETS
from ddpm_export.model.diffusion import GaussianDiffusion
from ddpm_export.model.unet import UNet
from runtime.schedulers.schedule import Schedule, ScheduleConfig


def test_schedule_check_values_from_the_paper_code():
    s = Schedule(ScheduleConfig())
    assert s.betas.dtype == np.float64
    assert s.alphas_cumprod[999] == pytest.approx(4.0358e-5, rel=1e-4)
    assert s.alphas_cumprod[499] == pytest.approx(0.0786, rel=1e-3)
    assert s.posterior_variance[1] == pytest.approx(5.4532e-5, rel=1e-4)
    # fixedlarge: log variance = log(betas) except index 0 -> posterior_variance[1]
    assert s.model_log_variance[0] == pytest.approx(np.log(s.posterior_variance[1]))
    assert np.allclose(s.model_log_variance[1:], np.log(s.betas[1:]))
    small = Schedule(ScheduleConfig(variance_type="fixedsmall"))
    assert np.allclose(small.model_log_variance[1:], np.log(small.posterior_variance[1:]))


def test_schedule_config_rejects_nonsense():
    with pytest.raises(ValueError, match="variance_type"):
        ScheduleConfig(variance_type="learned")
    with pytest.raises(ValueError, match="beta_start"):
        ScheduleConfig(beta_start=0.1, beta_end=0.01)


def test_q_sample_matches_closed_form():
    d = GaussianDiffusion()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    ab = d.schedule.alphas_cumprod[t.numpy()]
    expect = np.sqrt(ab)[:, None, None, None] * x0.numpy() + np.sqrt(1 - ab)[:, None, None, None] * noise.numpy()
    np.testing.assert_allclose(xt.numpy(), expect, atol=1e-6)


class OracleEps(torch.nn.Module):
    """Predicts the eps that maps x_t to a fixed x0 exactly."""

    def __init__(self, x0, diffusion):
        super().__init__()
        self.x0, self.d = x0, diffusion

    def forward(self, x_t, t):
        s = self.d.schedule
        a = torch.from_numpy(s.sqrt_alphas_cumprod[t.long().numpy()]).float()[:, None, None, None]
        b = torch.from_numpy(s.sqrt_one_minus_alphas_cumprod[t.long().numpy()]).float()[:, None, None, None]
        return (x_t - a * self.x0) / b


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_sampling_with_an_oracle_recovers_x0(variance):
    d = GaussianDiffusion(ScheduleConfig(variance_type=variance))
    x0 = torch.rand(2, 1, 4, 4) * 1.6 - 0.8
    x, traj = d.sample(OracleEps(x0, d), x0.shape, generator=torch.Generator().manual_seed(0), trajectory_every=250)
    # the last step returns the clipped x0_hat; the oracle's x0_hat is x0 up to float32
    torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)
    assert [t for t, _ in traj] == [750, 500, 250, 0]
    torch.testing.assert_close(traj[-1][1], x0, atol=1e-3, rtol=0)


def test_loss_is_l_simple():
    d = GaussianDiffusion()
    x0 = torch.zeros(3, 1, 4, 4)
    noise = torch.randn_like(x0)
    zero_model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = d.loss(zero_model, x0, torch.tensor([1, 2, 3]), noise)
    assert loss.item() == pytest.approx(noise.pow(2).mean().item())


def test_explicit_noise_reproduces_generator_sampling():
    cfg = PRESETS["tiny"].unet
    m = UNet(cfg).eval()
    d = GaussianDiffusion(ScheduleConfig(num_timesteps=20))
    shape = (2, 1, 8, 8)
    a, _ = d.sample(m, shape, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(shape, generator=g)
    noise = torch.zeros((20,) + shape)
    for t in range(19, 0, -1):
        noise[t] = torch.randn(shape, generator=g)
    b, _ = d.sample(m, shape, x_T=x_T, noise=noise)
    c, _ = d.sample(m, shape, x_T=x_T, noise=lambda t: noise[t])
    assert torch.equal(a, b) and torch.equal(b, c)
    assert a.abs().max() <= 1.0  # clipped at t = 0
    with pytest.raises(ValueError, match="noise for t=19 has shape"):
        d.sample(m, shape, x_T=x_T, noise=lambda t: torch.zeros(1, 1, 8, 8))


def test_sampling_leaves_model_mode_alone():
    m = UNet(PRESETS["tiny"].unet).train()
    GaussianDiffusion(ScheduleConfig(num_timesteps=3)).sample(m, (1, 1, 8, 8))
    assert m.training


# --- prediction types: training target, reference chain ----------------------------------
class Oracle(torch.nn.Module):
    """Outputs the exact eps, x0 or v that maps x_t to a fixed x0 (float32, like a network)."""

    def __init__(self, x0, diffusion):
        super().__init__()
        self.x0, self.d = x0, diffusion

    def forward(self, x_t, t):
        s = self.d.schedule
        a = torch.from_numpy(s.sqrt_alphas_cumprod[t.long().numpy()]).float()[:, None, None, None]
        b = torch.from_numpy(s.sqrt_one_minus_alphas_cumprod[t.long().numpy()]).float()[:, None, None, None]
        eps = (x_t - a * self.x0) / b
        return {"eps": eps, "x0": self.x0.expand_as(x_t), "v": a * eps - b * self.x0}[self.d.config.prediction]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_target_is_what_the_prediction_type_names(prediction):
    """An oracle for each prediction type has zero loss; the v target is diffusers' get_velocity."""
    d = GaussianDiffusion(ScheduleConfig(prediction=prediction))
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    oracle = Oracle(x0, d)
    loss = d.loss(lambda x, tt: oracle(x.float(), tt).double(), x0, t, noise)
    assert loss.item() < 1e-10
    if prediction == "v":
        diffusers = pytest.importorskip("diffusers")
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
        sched.alphas_cumprod = torch.from_numpy(d.schedule.alphas_cumprod.copy())
        torch.testing.assert_close(d.target(x0, t, noise), sched.get_velocity(x0, noise, t), rtol=1e-12, atol=1e-12)
    # and it differs from the eps target whenever x0 != 0
    if prediction != "eps":
        assert not torch.allclose(d.target(x0, t, noise), noise)


@pytest.mark.parametrize("schedule", [
    dict(prediction="x0", kind="squaredcos_cap_v2", variance_type="fixedsmall"),
    dict(prediction="v", kind="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(prediction="v", thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=1.3),
    dict(prediction="eps", clip_sample_range=0.5),
])
def test_reference_chain_equals_the_runtime_ddpm(schedule):
    """validate's PyTorch reference and the NumPy runtime run the same chain for every prediction
    type and limit: same x_T and noise, float64 both; the reference returns float32, so the two
    agree to one float32 ulp of values <= 1 (2.4e-7; the float64 chains differ by ~1e-15)."""
    from runtime.schedulers.ddpm import DDPMScheduler

    cfg = ScheduleConfig(num_timesteps=50, **schedule)
    d = GaussianDiffusion(cfg)
    shape = (2, 1, 4, 4)
    target = torch.rand(shape) * 2.4 - 1.2  # partly outside [-1, 1]: the limit acts
    net = Oracle(target, d)
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal(shape).astype(np.float32)
    zs = {t: rng.standard_normal(shape).astype(np.float32) for t in range(1, 50)}
    ref, _ = d.sample(net, shape, x_T=torch.from_numpy(x_T), noise=lambda t: torch.from_numpy(zs[t]))
    sched = DDPMScheduler(cfg, dtype=np.float64)
    x = x_T.astype(np.float64)
    for t in sched.timesteps:
        out = net(torch.from_numpy(x).float(), torch.full((2,), int(t))).numpy()
        x = sched.step(out, t, x, noise=zs.get(int(t))).prev_sample
    np.testing.assert_allclose(ref.numpy(), x.astype(np.float32), rtol=0, atol=2.4e-7)
    # the limit acted: the sample is within the limit, not the target
    top = 0.5 if "clip_sample_range" in schedule else 1.0
    assert np.abs(x).max() <= top + 1e-12 and np.abs(target.numpy()).max() > top
