"""Sequential sampling built from the coefficient tables equals diffusers' own `step()` loops."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from parataa import (
    NoiseBundle,
    dit_schedule,
    draw_noise,
    from_alphas,
    from_diffusers_config,
    load_noise,
    save_noise,
)
from parataa.schedules import dit_respacing
from parataa.solvers import preset, solve
from tests.helpers import rounding_tol, step_loop_tol

SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()
    return model


class UNetDenoiser:
    """Minimal Denoiser over an unconditional diffusers UNet (float32 network, float64 solver)."""

    def __init__(self, unet: UNet2DModel) -> None:
        self.unet = unet

    @torch.no_grad()
    def __call__(self, x, timesteps, samples):
        return self.unet(x.float(), timesteps.float()).sample.double()


BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
)


@pytest.mark.parametrize(
    "extra, steps",
    [
        (dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"), 10),  # SD v1.5's DDIM
        (dict(set_alpha_to_one=True, timestep_spacing="trailing"), 7),
        (dict(set_alpha_to_one=True, timestep_spacing="linspace"), 9),
        (dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, set_alpha_to_one=True), 12),
    ],
)
def test_ddim_matches_diffusers_step_loop(unet, extra, steps):
    cfg = {**BASE, **extra}
    sched_d = DDIMScheduler(**cfg)
    sched_d.set_timesteps(steps)
    noise = draw_noise([4, 5], steps, SHAPE)
    x = noise.x_T.float()
    with torch.no_grad():
        for t in sched_d.timesteps:
            eps = unet(x, t).sample
            x = sched_d.step(eps, t, x, eta=0.0).prev_sample
    sched = from_diffusers_config(cfg, steps)
    ours = solve(UNetDenoiser(unet), sched, noise, preset("sequential"))
    torch.testing.assert_close(ours.x0.float(), x, rtol=0, atol=step_loop_tol(sched, float(x.abs().max())))


SD_V1_5_DDIM = dict(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def _diffusers_ddim_loop(unet, cfg, steps, noise, eta):
    """diffusers' own DDIM loop, fed the bundle's pre-drawn noise: xi[:, t] is the noise of the step writing x_t."""
    sched_d = DDIMScheduler(**cfg)
    sched_d.set_timesteps(steps)
    x = noise.x_T.float()
    with torch.no_grad():
        for i, t in enumerate(sched_d.timesteps):
            eps = unet(x, t).sample
            xi = noise.xi[:, steps - 1 - i].float()
            x = sched_d.step(eps, t, x, eta=eta, variance_noise=xi).prev_sample
    return x


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_with_eta_matches_diffusers_with_the_same_noise(unet, set_alpha_to_one, eta):
    """Every step, the last one included, is DDIMScheduler.step: with set_alpha_to_one False (SD v1.5) the last
    step adds eta sigma_0 xi_0 too."""
    cfg = {**BASE, **SD_V1_5_DDIM, "set_alpha_to_one": set_alpha_to_one}
    steps = 10
    noise = draw_noise([1, 2], steps, SHAPE)
    want = _diffusers_ddim_loop(unet, cfg, steps, noise, eta)
    sched = from_diffusers_config(cfg, steps, eta=eta)
    assert sched.final_noise == "diffusers" and sched.describe()["final_noise"] == "diffusers"
    assert (float(sched.c[0]) > 0) == (not set_alpha_to_one)  # sigma_0 > 0 only when the final level is < 1
    ours = solve(UNetDenoiser(unet), sched, noise, preset("sequential"))
    torch.testing.assert_close(ours.x0.float(), want, rtol=0, atol=step_loop_tol(sched, float(want.abs().max())))


def test_final_noise_none_is_the_deterministic_last_step(unet):
    """The authors' variant: c_0 = 0 and the full DDIM direction at the last step. It departs from diffusers'
    loop only where sigma_0 > 0 (eta > 0 and set_alpha_to_one False); at eta = 0 both are the same table."""
    cfg = {**BASE, **SD_V1_5_DDIM}
    steps = 10
    d = from_diffusers_config(cfg, steps, eta=1.0)
    n = from_diffusers_config(cfg, steps, eta=1.0, final_noise="none")
    assert n.describe()["final_noise"] == "none" and float(n.c[0]) == 0.0
    a0, A0, A1 = n.a[0], n.alpha_out[0], n.alpha_in[0]
    torch.testing.assert_close(
        n.b[0], torch.sqrt(1 - A0) - a0 * torch.sqrt(1 - A1), rtol=0, atol=rounding_tol(torch.float64, 4)
    )
    torch.testing.assert_close(n.b[1:], d.b[1:], rtol=0, atol=0)
    torch.testing.assert_close(n.c[1:], d.c[1:], rtol=0, atol=0)
    noise = draw_noise([1, 2], steps, SHAPE)
    want = _diffusers_ddim_loop(unet, cfg, steps, noise, 1.0)
    ours = solve(UNetDenoiser(unet), n, noise, preset("sequential"))
    tol = step_loop_tol(n, float(want.abs().max()))
    assert float((ours.x0.float() - want).abs().max()) > 10 * tol  # a real difference (0.058), not rounding
    for final_noise in ("diffusers", "none"):  # eta = 0: no noise anywhere, one table
        s0 = from_diffusers_config(cfg, steps, eta=0.0, final_noise=final_noise)
        torch.testing.assert_close(s0.b, from_diffusers_config(cfg, steps).b, rtol=0, atol=0)
        assert bool((s0.c == 0).all())


def test_ddpm_matches_diffusers_step_loop_with_the_same_noise(unet):
    cfg = dict(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, variance_type="fixed_small"
    )
    steps = 10
    sched_d = DDPMScheduler(**cfg)
    sched_d.set_timesteps(steps)
    x = draw_noise([0], steps, SHAPE).x_T.float()
    xi = torch.zeros(1, steps, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        for i, t in enumerate(sched_d.timesteps):
            eps = unet(x, t).sample
            g = torch.Generator().manual_seed(100 + i)
            step = steps - 1 - i
            xi[:, step] = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i)).double()
            x = sched_d.step(eps, t, x, generator=g).prev_sample
    base = draw_noise([0], steps, SHAPE)
    noise = NoiseBundle(base.seeds, base.x_T, xi, base.init)
    sched = from_diffusers_config(cfg, steps, sampler="ddpm")
    ours = solve(UNetDenoiser(unet), sched, noise, preset("sequential"))
    torch.testing.assert_close(ours.x0.float(), x, rtol=0, atol=step_loop_tol(sched, float(x.abs().max())))
    par = solve(UNetDenoiser(unet), sched, noise, preset("taa"))
    assert float((par.x0.float() - x).abs().max()) < 0.05


def test_ddim_eta_zero_equals_ddpm_form_coefficients():
    sched = from_diffusers_config({**BASE, "set_alpha_to_one": True}, 20, eta=1.0)
    ddpm = from_diffusers_config({**BASE}, 20, sampler="ddpm")
    torch.testing.assert_close(sched.a, ddpm.a)
    torch.testing.assert_close(sched.b, ddpm.b)
    torch.testing.assert_close(sched.c, ddpm.c)
    assert float(sched.c[0]) == 0.0 and bool((sched.c[1:] > 0).all())


def test_dit_respacing_matches_dit_rules():
    assert dit_respacing(100) == list(range(0, 1000, 10))
    assert dit_respacing(25) == list(range(0, 1000, 40))
    ddpm = dit_respacing(100, ddim_style=False)
    assert ddpm[0] == 0 and ddpm[-1] == 999 and len(set(ddpm)) == 100
    s = dit_schedule(50)
    assert float(s.alpha_out[0]) == 1.0
    torch.testing.assert_close(s.alpha_out[1:], s.alpha_in[:-1])
    assert s.eta == 0.0 and bool((s.c == 0).all()) and s.final_noise == "none"
    # DiT accumulates the fractional stride in floating point: 10 * 49.95 rounds to 500, the running sum to 499
    assert dit_respacing(21, ddim_style=False)[10] == 499
    # DDPM ends at alphabar = 1: sigma_0 = 0, so the last-step rule makes no difference
    ddpm = dit_schedule(25, sampler="ddpm")
    torch.testing.assert_close(ddpm.b, dit_schedule(25, sampler="ddpm", final_noise="diffusers").b, rtol=0, atol=0)


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="clip_sample must be False"):
        from_diffusers_config({**BASE, "clip_sample": True}, 10)
    with pytest.raises(ValueError, match="prediction_type"):
        from_diffusers_config({**BASE, "prediction_type": "v_prediction"}, 10)
    with pytest.raises(ValueError, match="num_steps"):
        from_diffusers_config(BASE, 0)
    with pytest.raises(ValueError, match="timestep_spacing"):
        from_diffusers_config({**BASE, "timestep_spacing": "even"}, 10)
    with pytest.raises(ValueError, match="beta_schedule"):
        from_diffusers_config({**BASE, "beta_schedule": "cosine"}, 10)
    with pytest.raises(ValueError, match="eta must be in"):
        from_alphas([1, 2], [0.5, 0.4], [0.9, 0.5], eta=2.0)
    with pytest.raises(ValueError, match="alpha_out"):
        from_alphas([1, 2], [0.5, 0.4], [0.3, 0.5])
    with pytest.raises(ValueError, match="final_noise must be one of"):
        from_diffusers_config(BASE, 10, eta=1.0, final_noise="authors")


def test_noise_bundle_is_per_sample_and_hash_verified(tmp_path):
    big = draw_noise([1, 3, 5], 6, (2, 3))
    small = draw_noise([5, 3], 6, (2, 3))
    assert torch.equal(big.select([2, 1]).x_T, small.x_T)
    assert torch.equal(big.select([2, 1]).xi, small.xi)
    assert big.x_T.dtype == torch.float64
    assert draw_noise([1, 3, 5], 6, (2, 3)).sha256() == big.sha256()
    path = tmp_path / "noise.safetensors"
    digest = save_noise(big, path)
    back = load_noise(path, expected_sha256=digest)
    assert torch.equal(back.xi, big.xi) and back.seeds == (1, 3, 5)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        load_noise(path)
    with pytest.raises(ValueError, match="distinct"):
        draw_noise([1, 1], 6, (2,))
