"""Edges of the flow samplers (MODEL_SPEC §6.3): validation at the exact boundaries, the progress
callback's (done, total) sequence, how many noise draws the turbo sampler takes from each
generator, float64 noise kept in float64, the turbo grid's float32 rounding, guidance branch
counts and the CFG norm clamp at equality (zero velocity included)."""

from __future__ import annotations

import math

import pytest
import torch

from lladauni.model_core.decoder import FlowEulerSampler, FlowRenoiseSampler, NoGuidance, NormClampedCFG

SHAPE = (2, 3, 2, 2)  # (B, C, H, W)


def affine_model(x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """A velocity that depends on x, t and the features, so every input matters."""
    return (0.5 * x.float() - 0.25 + t.float().view(-1, 1, 1, 1) + feats.float().mean((1, 2)).view(-1, 1, 1, 1)).float()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*SHAPE, generator=g), torch.randn(SHAPE[0], 4, 5, generator=g)


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---------------------------------------------------------------------------------- validation
def test_euler_accepts_exactly_two_grid_points_and_takes_one_step():
    sampler = FlowEulerSampler(num_steps=2, shift=6.0, guidance=NoGuidance())
    assert sampler.model_calls == 1
    assert sampler.timesteps().tolist() == [0.0, 1.0]  # 1 / (1 + 6 - 6) = 1
    x0, feats = _inputs()
    got = sampler.sample(affine_model, x0, feats)
    # one Euler step from t = 0 to t = 1: x1 = x0 + 1 * v(x0, 0)
    c = feats.mean((1, 2)).view(-1, 1, 1, 1)
    assert torch.allclose(got, x0 + (0.5 * x0 - 0.25 + c), atol=1e-6, rtol=0)


def test_euler_rejects_fewer_than_two_points():
    for bad in (1, 0, -3, True, 2.0):
        with pytest.raises(ValueError, match="the Euler grid needs at least 2 points"):
            FlowEulerSampler(num_steps=bad)


def test_renoise_accepts_exactly_one_step():
    sampler = FlowRenoiseSampler(num_steps=1)
    assert sampler.model_calls == 1
    assert sampler.timesteps().tolist() == [0.0, 1.0]
    x0, feats = _inputs()
    got = sampler.sample(affine_model, x0, feats, generators=_gens(1, 2))
    # the only step is the last one: x = x̂₁ = x + (1 - 0)·v(x, 0), no noise term
    c = feats.double().mean((1, 2)).view(-1, 1, 1, 1)
    want = x0.double() + (0.5 * x0.double() - 0.25 + c)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.0, 2.5, "8"])
def test_renoise_rejects_step_counts_that_are_not_positive_ints(bad):
    with pytest.raises(ValueError, match="need at least 1 step"):
        FlowRenoiseSampler(num_steps=bad)


def test_renoise_stochasticity_bounds():
    assert FlowRenoiseSampler(stochasticity=1).stochasticity == 1  # exactly 1 (the published value) is allowed
    assert FlowRenoiseSampler(stochasticity=1.0).stochasticity == 1.0
    for bad in (1.0000001, 1.5, 2, 0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            FlowRenoiseSampler(stochasticity=bad)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_cfg_scale_must_be_finite(bad):
    with pytest.raises(ValueError, match="must be a finite number"):
        NormClampedCFG(bad)


def test_cfg_scale_accepts_finite_numbers():
    assert NormClampedCFG(0).scale == 0 and NormClampedCFG(-2.5).scale == -2.5 and NormClampedCFG(3).scale == 3


# ---------------------------------------------------------------------------------- progress
def _recording(events: list):
    def model(x, t, feats):
        events.append("model")
        return affine_model(x, t, feats)

    def progress(done, total):
        events.append((done, total))

    return model, progress


@pytest.mark.parametrize("points", [2, 5])
def test_euler_progress_follows_each_model_call(points):
    events: list = []
    model, progress = _recording(events)
    x0, feats = _inputs()
    FlowEulerSampler(num_steps=points, guidance=NoGuidance()).sample(model, x0, feats, progress=progress)
    calls = points - 1
    want = []
    for i in range(1, calls + 1):
        want += ["model", (i, calls)]
    assert events == want


def test_euler_with_cfg_reports_one_evaluation_per_step():
    events: list = []
    model, progress = _recording(events)
    x0, feats = _inputs()
    FlowEulerSampler(num_steps=4).sample(model, x0, feats, progress=progress)  # CFG: both branches in one call
    assert events == ["model", (1, 3), "model", (2, 3), "model", (3, 3)]


@pytest.mark.parametrize("steps", [1, 4])
def test_renoise_progress_follows_each_model_call(steps):
    events: list = []
    model, progress = _recording(events)
    x0, feats = _inputs()
    FlowRenoiseSampler(num_steps=steps).sample(model, x0, feats, generators=_gens(3, 4), progress=progress)
    want = []
    for k in range(1, steps + 1):
        want += ["model", (k, steps)]
    assert events == want


def test_no_progress_callback_is_fine():
    x0, feats = _inputs()
    a = FlowRenoiseSampler(num_steps=3).sample(affine_model, x0, feats, generators=_gens(5, 6))
    b = FlowRenoiseSampler(num_steps=3).sample(affine_model, x0, feats, generators=_gens(5, 6), progress=None)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_renoise_draws_noise_for_every_step_but_the_last(steps):
    """Each generator gives exactly n - 1 float64 draws of one row's shape, no more, no fewer."""
    x0, feats = _inputs()
    gens = _gens(21, 22)
    FlowRenoiseSampler(num_steps=steps).sample(affine_model, x0, feats, generators=gens)
    for g, seed in zip(gens, (21, 22)):
        ref = torch.Generator().manual_seed(seed)
        for _ in range(steps - 1):
            torch.randn(SHAPE[1:], generator=ref, dtype=torch.float64)
        assert torch.equal(g.get_state(), ref.get_state())


def test_renoise_keeps_float64_noise_in_float64():
    """Noise given in float64 (values no float32 can hold) runs through the float64 step math as is."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(*SHAPE, generator=g, dtype=torch.float64) + 1e-9  # not representable in float32
    assert not torch.equal(x0.float().double(), x0)
    feats = torch.randn(SHAPE[0], 4, 5, generator=g)
    rho, n = 0.5, 3
    got = FlowRenoiseSampler(num_steps=n, stochasticity=rho).sample(affine_model, x0, feats, generators=_gens(8, 9))

    ref_gens = _gens(8, 9)
    eps = [torch.stack([torch.randn(SHAPE[1:], generator=r, dtype=torch.float64) for r in ref_gens]) for _ in range(n - 1)]
    x = x0.clone()
    for k in range(n):
        t, t_next = k / n, (k + 1) / n
        t32, t_next32 = float(torch.tensor(t, dtype=torch.float32)), float(torch.tensor(t_next, dtype=torch.float32))
        v = affine_model(x, torch.full((SHAPE[0],), t32, dtype=torch.float64), feats).double()
        x1_hat, x0_hat = x + (1 - t32) * v, x - t32 * v
        if k == n - 1:
            x = x1_hat
        else:
            x = t_next32 * x1_hat + (1 - t_next32) * (math.sqrt(1 - rho) * x0_hat + math.sqrt(rho) * eps[k])
    assert got.dtype == torch.float64
    assert torch.allclose(got, x, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------- turbo grid
@pytest.mark.parametrize("n", [3, 7, 13, 28])
def test_turbo_grid_is_k_over_n_rounded_to_float32(n):
    ts = FlowRenoiseSampler(num_steps=n).timesteps()
    want = [float(torch.tensor(k / n, dtype=torch.float32)) for k in range(n + 1)]
    assert ts.dtype == torch.float64 and ts.tolist() == want


# ---------------------------------------------------------------------------------- guidance
def test_branches_count_the_model_rows_per_image_row():
    x0, feats = _inputs()
    for policy in (NoGuidance(), NormClampedCFG(1.0)):
        rows = []

        def model(x, t, f):
            rows.append(x.shape[0])
            return affine_model(x, t, f)

        policy(model, x0, torch.zeros(SHAPE[0]), feats)
        assert rows == [SHAPE[0] * policy.branches]
    assert NoGuidance().branches == 1 and NormClampedCFG().branches == 2


def test_cfg_clamp_leaves_equal_norms_and_zero_velocity_alone():
    cfg = NormClampedCFG(1.0)
    p = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    # row 0: pred = 2p - n = [5, 0], |pred| = |p| = 5: not longer, kept as is
    # row 1: p = n = 0: pred = 0, |pred| = |p| = 0: kept (zeros, not 0/0)
    # row 2: p = 0, n != 0: pred = -n is longer than |p| = 0: rescaled to length 0
    n = torch.tensor([[1.0, 8.0], [0.0, 0.0], [1.0, -2.0]])
    got = cfg.combine(p, n)
    assert torch.isfinite(got).all()
    assert got[0].tolist() == [5.0, 0.0]
    assert got[1].tolist() == [0.0, 0.0]
    assert got[2].abs().sum().item() == 0.0


def test_cfg_zero_velocity_through_the_sampler_stays_finite():
    def still(x, t, feats):
        return torch.zeros_like(x, dtype=torch.float32)

    x0, feats = _inputs()
    got = FlowEulerSampler(num_steps=3).sample(still, x0, feats)
    assert torch.equal(got, x0)
