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
