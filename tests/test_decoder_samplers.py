"""Flow-matching samplers: step math against the formulas of MODEL_SPEC §6.3, the CFG policy,
noise/seed handling, and golden numbers for both full loops on the tiny decoder."""

from __future__ import annotations

import pytest
import torch

from lladauni.model_core.decoder import FlowEulerSampler, FlowRenoiseSampler, ImageDecoder, NoGuidance, NormClampedCFG
from lladauni.model_core.decoder.samplers import draw_noise
from lladauni.model_core.decoder.testing import write_tiny_decoder

CODES = [5, 16383, 0, 77, 1024, 9000]


def linear_model(x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """A velocity field with known inputs: depends on x, t and the features."""
    return (-0.7 * x.float() + t.float().view(-1, 1, 1, 1) + feats.float().mean((1, 2)).view(-1, 1, 1, 1)).float()


def test_euler_grid_is_the_shifted_linspace():
    ts = FlowEulerSampler(num_steps=50, shift=6.0).timesteps()
    assert ts.dtype == torch.float32 and ts.shape == (50,)
    assert ts[0] == 0 and ts[-1] == 1 and bool((ts[1:] > ts[:-1]).all())
    u = torch.linspace(0, 1, 50, dtype=torch.float64)
    assert torch.allclose(ts.double(), u / (u + 6 - 6 * u), atol=1e-6, rtol=0)
    assert abs(ts[1].item() - (1 / 49) / (1 / 49 + 6 - 6 / 49)) < 1e-8  # = 1/295, steps crowd near the noise end
    assert torch.equal(FlowEulerSampler(num_steps=5, shift=0).timesteps(), torch.linspace(0, 1, 5))


def test_turbo_grid_is_uniform_and_float32_rounded():
    assert FlowRenoiseSampler(8).timesteps().tolist() == [k / 8 for k in range(9)]
    ts = FlowRenoiseSampler(3).timesteps()
    assert ts.dtype == torch.float64
    assert ts[1].item() == torch.tensor(1 / 3, dtype=torch.float32).item() != 1 / 3


def test_euler_loop_is_explicit_euler():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 2, 2, generator=g)
    feats = torch.randn(2, 3, 5, generator=g)
    sampler = FlowEulerSampler(num_steps=7, shift=6.0, guidance=NoGuidance())
    got = sampler.sample(linear_model, x0, feats)
    ts = sampler.timesteps()
    x = x0.clone()
    for i in range(6):
        x = x + (ts[i + 1] - ts[i]) * linear_model(x, ts[i].expand(2), feats)
    assert torch.equal(got, x)
    # Against the exact ODE solution the Euler error shrinks with more steps (first order).
    a, c = -0.7, feats.mean((1, 2)).view(-1, 1, 1, 1)
    errs = []
    for n in (20, 200):
        num = FlowEulerSampler(num_steps=n, shift=0.0, guidance=NoGuidance()).sample(linear_model, x0.double(), feats)
        # dx/dt = a x + t + c  =>  x(1) = e^a x0 + (e^a - 1 - a)/a^2 + c (e^a - 1)/a
        ea = torch.exp(torch.tensor(a, dtype=torch.float64))
        exact = ea * x0.double() + (ea - 1 - a) / a**2 + c.double() * (ea - 1) / a
        errs.append((num.double() - exact).abs().max().item())
    assert errs[1] < errs[0] / 5


def test_cfg_combine_and_norm_clamp():
    cfg = NormClampedCFG(1.0)
    p = torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])  # |p| = 5
    n = torch.stack([1.5 * p[0], torch.zeros(2), torch.tensor([4.0, -3.0])])
    got = cfg.combine(p, n)
    assert torch.allclose(got[0], 0.5 * p[0])  # pred = 0.5 p, shorter than p: kept
    assert torch.allclose(got[1], p[1])  # pred = 2p: rescaled back to |p|
    pred = 2 * p[2] - n[2]  # [2, 11], |pred| = sqrt(125) > 5
    assert torch.allclose(got[2], pred * 5 / pred.norm())
    assert torch.allclose(got.norm(dim=1)[1:], torch.full((2,), 5.0))
    assert torch.allclose(NormClampedCFG(0.0).combine(p, n), p)


def test_cfg_runs_cond_and_zero_features_in_one_batch():
    seen = {}

    def model(x, t, feats):
        seen.update(x=x.clone(), t=t.clone(), feats=feats.clone())
        return linear_model(x, t, feats)

    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    feats = torch.ones(2, 3, 5)
    out = NormClampedCFG(1.0)(model, x, torch.full((2,), 0.25), feats)
    assert torch.equal(seen["x"], torch.cat([x, x])) and seen["t"].tolist() == [0.25] * 4
    assert torch.equal(seen["feats"][:2], feats) and seen["feats"][2:].abs().sum() == 0
    p, n = linear_model(x, torch.full((2,), 0.25), feats), linear_model(x, torch.full((2,), 0.25), 0 * feats)
    assert torch.equal(out, NormClampedCFG(1.0).combine(p, n))


@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_turbo_step_math_in_float64(rho):
    g0 = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 2, 2, generator=g0)
    feats = torch.randn(2, 3, 5, generator=g0)
    gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    sampler = FlowRenoiseSampler(num_steps=4, stochasticity=rho)
    got = sampler.sample(linear_model, x0, feats, generators=gens)
    assert got.dtype == torch.float64

    ref_gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    x = x0.double()
    for k in range(4):
        t, t_next = k / 4, (k + 1) / 4
        v = linear_model(x, torch.full((2,), t), feats).double()
        x1_hat, x0_hat = x + (1 - t) * v, x - t * v
        if k == 3:
            x = x1_hat
        else:
            eps = torch.stack([torch.randn(4, 2, 2, generator=g, dtype=torch.float64) for g in ref_gens])
            x = t_next * x1_hat + (1 - t_next) * ((1 - rho) ** 0.5 * x0_hat + rho**0.5 * eps)
    assert torch.allclose(got, x, atol=1e-12, rtol=0)


def test_noise_rows_come_from_their_own_generator_only():
    torch.manual_seed(0)
    a = draw_noise((2, 3, 4), [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    torch.manual_seed(1)
    b = draw_noise((1, 3, 4), [torch.Generator().manual_seed(6)])
    assert torch.equal(a[1:], b)
    with pytest.raises(ValueError, match="1 generators for a batch of 2"):
        draw_noise((2, 3), [torch.Generator()])
    with pytest.raises(ValueError, match="one torch.Generator per batch row"):
        FlowRenoiseSampler().sample(linear_model, torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 5))


def test_sampler_settings_are_validated():
    with pytest.raises(ValueError, match="num_steps=1: the Euler grid needs at least 2 points"):
        FlowEulerSampler(num_steps=1)
    with pytest.raises(ValueError, match="stochasticity=0"):
        FlowRenoiseSampler(stochasticity=0)
    with pytest.raises(ValueError, match="shift=-1"):
        FlowEulerSampler(shift=-1)
    assert FlowEulerSampler().model_calls == 49 and FlowRenoiseSampler().model_calls == 8


# Golden numbers: tiny decoder (write_tiny_decoder seed 0, loaded in float64 on CPU), CODES on a 2x3
# grid, seed 0, published samplers (turbo 8 steps; normal 50 points with CFG 1.0 and clamp). The
# network runs in float64 so that the numbers do not depend on the CPU's vector ISA: in float32,
# AVX-512 and AVX2 machines differ by ~2e-3 in the turbo sum (seen: 4.37318 here vs 4.37494 where
# the first goldens were made). torch's CPU randn itself differs without AVX2 (DEFAULT capability).
GOLDEN = {
    "turbo": (4.373414499933787, 0.8122756695962355, [-1.105915996767176, -2.4085188065065655, -0.8936777602369861, -1.6208400012780215]),
    "normal": (-75.26165771484375, 0.873370349407196, [-0.2906261384487152, -1.7185099124908447, 0.4666670262813568, -0.912067711353302]),
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_decoder(tmp_path_factory.mktemp("gold") / "ckpt", seed=0, vae=False)


@pytest.mark.parametrize("variant", ["turbo", "normal"])
def test_golden_full_loops(tiny_root, variant):
    dec = ImageDecoder.from_pretrained(tiny_root, variant, device="cpu", dtype=torch.float64, load_vae=False)
    torch.manual_seed(999)  # must not matter
    lat = dec.sample_latents([dec._codes_grid(CODES, 2, 3)], [torch.Generator().manual_seed(0)])
    total, mean_abs, row = GOLDEN[variant]
    assert lat.shape == (1, 16, 8, 12)
    assert lat.dtype == (torch.float64 if variant == "turbo" else torch.float32)
    assert abs(lat.sum().item() - total) < 1e-3
    assert abs(lat.abs().mean().item() - mean_abs) < 1e-5
    assert torch.allclose(lat[0, 0, 0, :4].double(), torch.tensor(row, dtype=torch.float64), atol=1e-5)
