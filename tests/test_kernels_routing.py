"""Fused router kernel against model_core's Router, its stable-sort reference and transformers'
DeepSeek-V3 router (an independent implementation of the same routing)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel_fixtures import DEVICE, needs_triton

import lladauni.kernels.routing.op as routing_op
from lladauni.kernels.routing import group_topk_route, group_topk_route_reference, unsupported
from lladauni.model_core import BackboneConfig
from lladauni.model_core.moe import Router

pytestmark = needs_triton

PUBLISHED = dict(E=256, G=8, TG=4, K=8, scale=2.5)  # ../shared/reference/llada2-uni/config.json
MARGIN = 1e-6  # the kernel's sigmoid may differ from torch's by an ulp (~6e-8): keep clear of that


class _PoisonedTorch:
    """``torch`` for the op module, except that new buffers start as NaN (floats) or -1 (ints)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        t = torch.empty(*args, **kwargs)
        return t.fill_(math.nan if t.is_floating_point() else -1)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(routing_op, "torch", _PoisonedTorch())


def _router(E: int, G: int, TG: int, K: int, scale: float, seed: int) -> Router:
    cfg = BackboneConfig.tiny().replace(
        num_experts=E, n_group=G, topk_group=TG, num_experts_per_tok=K, routed_scaling_factor=scale
    )
    g = torch.Generator().manual_seed(seed)
    router = Router(cfg).requires_grad_(False)
    router.weight.copy_(torch.randn(router.weight.shape, generator=g) * 0.5)
    router.expert_bias.copy_(torch.randn(E, generator=g) * 0.1)
    return router.to(DEVICE)


def _separated(logits: torch.Tensor, bias: torch.Tensor, G: int) -> torch.Tensor:
    """(T,) True where no two distinct biased scores, and no two distinct group scores, lie within
    MARGIN (equal ones are exact ties, the same in every implementation)."""
    biased = (torch.sigmoid(logits.double()) + bias.double()).cpu()
    group = biased.view(len(biased), G, -1).topk(2, dim=-1).values.sum(-1)

    def clear(v: torch.Tensor) -> torch.Tensor:
        gaps = v.sort(dim=-1).values.diff(dim=-1)
        return ((gaps == 0) | (gaps > MARGIN)).all(dim=-1)

    return clear(biased) & clear(group)


def _check_router(T: int, E: int, G: int, TG: int, K: int, scale: float, seed: int, ids_dtype=torch.int64) -> None:
    """The kernel, fed the Router's own logits, gives the Router's ids and weights."""
    router = _router(E, G, TG, K, scale, seed)
    x = torch.randn(T, router.weight.shape[1], generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    ids_t, w_t, logits = router(x)
    ids, w = group_topk_route(logits, router.expert_bias, G, TG, K, scale, ids_dtype=ids_dtype)
    assert ids.dtype == ids_dtype and w.dtype == torch.float32 and ids.shape == w.shape == (T, K)
    keep = _separated(logits, router.expert_bias, G).to(DEVICE)
    assert keep.float().mean() >= 0.5, "too few tie-free tokens for a meaningful check"
    assert torch.equal(ids[keep].long(), ids_t[keep])
    torch.testing.assert_close(w[keep], w_t[keep], rtol=1e-6, atol=0)
    ids_r, w_r = group_topk_route_reference(logits, router.expert_bias, G, TG, K, scale)
    assert torch.equal(ids[keep].long(), ids_r[keep])
    torch.testing.assert_close(w, w_r, rtol=1e-6, atol=0)  # weights agree on every token


@pytest.mark.parametrize("T", [1, 33, 64])
def test_published_shape(T):
    _check_router(T, PUBLISHED["E"], PUBLISHED["G"], PUBLISHED["TG"], PUBLISHED["K"], PUBLISHED["scale"], seed=T)


@pytest.mark.parametrize(
    "E, G, TG, K",
    [(16, 4, 2, 4), (24, 3, 2, 5), (30, 5, 3, 7), (20, 10, 1, 2), (12, 1, 1, 3), (64, 8, 8, 16), (16, 4, 2, 1)],
    ids=["tiny", "G3", "G5_P6", "P2", "one_group", "all_groups", "top1_no_renorm"],
)
def test_named_shapes(E, G, TG, K):
    _check_router(17, E, G, TG, K, scale=1.5, seed=E + G)


def test_int32_ids():
    _check_router(9, 16, 4, 2, 4, scale=2.5, seed=5, ids_dtype=torch.int32)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    G=st.integers(1, 8), P=st.integers(2, 12), data=st.data(),
    T=st.integers(1, 9), scale=st.sampled_from([1.0, 2.5]), seed=st.integers(0, 2**16),
)
def test_random_shapes(G, P, data, T, scale, seed):
    TG = data.draw(st.integers(1, G), label="topk_group")
    K = data.draw(st.integers(1, min(TG * P, 12)), label="top_k")
    _check_router(T, G * P, G, TG, K, scale, seed)


def _tied_logits(T: int, E: int, seed: int) -> torch.Tensor:
    """Logits on a coarse grid: many exact ties between experts and between groups."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-2, 3, (T, E), generator=g).float() * 0.5).to(DEVICE)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(G=st.sampled_from([2, 4, 8]), P=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**16), biased=st.booleans())
def test_ties_go_to_the_lower_index(G, P, seed, biased):
    """Ties: the kernel equals the stable-sort reference exactly, and picks experts of the same
    biased values, in the same order, as the torch Router (whose tie order is unspecified)."""
    E, TG = G * P, max(G // 2, 1)
    K = min(P + 1, TG * P)
    logits = _tied_logits(12, E, seed)
    bias = (torch.randint(0, 2, (E,), generator=torch.Generator().manual_seed(seed)).float() * 0.25 * biased).to(DEVICE)
    ids, w = group_topk_route(logits, bias, G, TG, K, 2.5)
    ids_r, w_r = group_topk_route_reference(logits, bias, G, TG, K, 2.5)
    assert torch.equal(ids, ids_r)
    torch.testing.assert_close(w, w_r, rtol=1e-6, atol=0)
    from lladauni.model_core.moe import group_limited_topk

    values = torch.sigmoid(logits) + bias
    ids_t = group_limited_topk(values, G, TG, K)
    # where two groups tie for the last kept place, torch may keep either: compare the others
    gscore = values.view(len(values), G, P).topk(2, dim=-1).values.sum(-1).sort(-1, descending=True).values
    clear = gscore[:, TG - 1] != gscore[:, TG] if TG < G else torch.ones(len(values), dtype=torch.bool, device=DEVICE)
    assert clear.any()
    assert torch.equal(values.gather(1, ids)[clear], values.gather(1, ids_t)[clear])


def test_tied_best_counts_twice_in_the_group_score():
    """Group 0 = [0.9, 0.9, 0.1, 0.1] (score 1.8) beats group 1 = [0.95, 0.5, 0.5, 0.5] (1.45);
    scoring by the best alone, or by the best distinct value, would pick group 1."""
    p = torch.tensor([[0.9, 0.9, 0.1, 0.1, 0.95, 0.5, 0.5, 0.5]], dtype=torch.float64)
    logits = torch.log(p / (1 - p)).float().to(DEVICE)
    ids, _ = group_topk_route(logits, torch.zeros(8, device=DEVICE), 2, 1, 2)
    assert ids.tolist() == [[0, 1]]


def test_bias_selects_but_does_not_weigh():
    """A large bias on expert 3 makes it chosen first; its weight is its unbiased score."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, -0.5, -2.0, 0.25]], device=DEVICE)
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0], device=DEVICE)
    ids, w = group_topk_route(logits, bias, 2, 2, 2, 2.0)
    assert ids.tolist() == [[3, 0]]
    s = torch.sigmoid(logits[0, [3, 0]])
    torch.testing.assert_close(w[0], s / s.sum() * 2.0, rtol=1e-6, atol=0)


def test_parity_with_transformers_deepseek_v3_router():
    """An independent implementation: transformers' DeepSeek-V3 router (same routing, ids unsorted)."""
    pytest.importorskip("transformers.models.deepseek_v3")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    E, G, TG, K, scale = (PUBLISHED[k] for k in ("E", "G", "TG", "K", "scale"))
    router = _router(E, G, TG, K, scale, seed=11)
    ds = DeepseekV3TopkRouter(DeepseekV3Config(
        hidden_size=router.weight.shape[1], n_routed_experts=E, num_experts_per_tok=K, n_group=G,
        topk_group=TG, routed_scaling_factor=scale, norm_topk_prob=True,
    )).to(DEVICE)
    with torch.no_grad():
        ds.weight.copy_(router.weight)
        ds.e_score_correction_bias.copy_(router.expert_bias)
        x = torch.randn(40, router.weight.shape[1], generator=torch.Generator().manual_seed(12)).to(DEVICE)
        logits, w_ref, ids_ref = ds(x)
    ids, w = group_topk_route(logits, router.expert_bias, G, TG, K, scale)
    keep = _separated(logits, router.expert_bias, G).to(DEVICE)
    assert keep.float().mean() >= 0.5
    mine, theirs = ids.sort(-1), ids_ref.sort(-1)
    assert torch.equal(mine.values[keep], theirs.values[keep])
    torch.testing.assert_close(w.gather(1, mine.indices)[keep], w_ref.gather(1, theirs.indices)[keep], rtol=1e-6, atol=0)


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the interpreter's numpy reductions
def test_nan_logits_give_in_range_ids():
    logits = torch.full((3, 16), float("nan"), device=DEVICE)
    logits[1, :8] = 0.0
    ids, _ = group_topk_route(logits, torch.zeros(16, device=DEVICE), 4, 2, 4)
    assert ((ids >= 0) & (ids < 16)).all()


def test_no_tokens():
    ids, w = group_topk_route(torch.empty(0, 16, device=DEVICE), torch.zeros(16, device=DEVICE), 4, 2, 4)
    assert ids.shape == w.shape == (0, 4)


@pytest.mark.parametrize(
    "logits, bias, G, TG, K, match",
    [
        ((4, 16), (16,), 4, 2, 4, None),
        ((4, 16), (16,), 5, 2, 4, "n_group=5 must divide"),
        ((4, 16), (16,), 16, 2, 4, "at least 2"),
        ((4, 16), (16,), 4, 5, 4, "topk_group=5"),
        ((4, 16), (16,), 4, 2, 9, "top_k=9"),
        ((4, 16), (8,), 4, 2, 4, "expert_bias must be"),
        ((4, 16, 1), (16,), 4, 2, 4, "logits must be float32"),
        ((4, 64), (64,), 2, 2, 33, "MAX_TOP_K"),
        ((4, 16384), (16384,), 2, 2, 4, "MAX_TILE"),
    ],
)
def test_unsupported_names_the_problem(logits, bias, G, TG, K, match):
    lg, b = torch.zeros(logits, device=DEVICE), torch.zeros(bias, device=DEVICE)
    reason = unsupported(lg, b, G, TG, K)
    if match is None:
        assert reason is None
        return
    assert match in reason
    with pytest.raises(ValueError, match=match.split("=")[0]):
        group_topk_route(lg, b, G, TG, K)


def test_unsupported_layouts():
    lg = torch.zeros(4, 16, device=DEVICE)
    assert "float32" in unsupported(lg.double(), torch.zeros(16, device=DEVICE), 4, 2, 4)
    assert "unit stride" in unsupported(lg.t().contiguous().t(), torch.zeros(16, device=DEVICE), 4, 2, 4)
    assert "contiguous float" in unsupported(lg, torch.zeros(16, 2, device=DEVICE)[:, 0], 4, 2, 4)
    # a bf16 bias (a model cast with .to(bfloat16)) is served and read exactly
    bias = torch.randn(16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).to(DEVICE)
    assert unsupported(lg, bias, 4, 2, 4) is None
    ids, _ = group_topk_route(lg + 0.01 * torch.arange(16, device=DEVICE), bias, 4, 2, 4)
    assert torch.equal(ids, group_topk_route_reference(lg + 0.01 * torch.arange(16, device=DEVICE), bias, 4, 2, 4)[0])
    with pytest.raises(ValueError, match="ids_dtype"):
        group_topk_route(lg, torch.zeros(16, device=DEVICE), 4, 2, 4, ids_dtype=torch.int16)
