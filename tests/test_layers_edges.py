"""Edge cases of the attention and MoE layers that the main suites leave open: how the backend
registries list and resolve the kernel backends, what ``auto`` chooses on a kernel device, the
Triton / flash paths against an SDPA reference with an explicit mask, mask and shape validation,
and the router's renormalisation rule (top_k == 1, tiny scores) against transformers' DeepSeek-V3
router.

Kernel paths run on CPU through Triton's interpreter (``tests.kernel_fixtures`` sets
TRITON_INTERPRET=1 before any kernel is imported); "on a kernel device" is simulated as in
``test_kernel_choice.py`` by letting ``can_launch`` say yes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from tests.kernel_fixtures import needs_triton  # sets TRITON_INTERPRET=1 on CPU

import lladauni.kernels._triton as triton_glue
import lladauni.kernels.attention.op as attention_op
import lladauni.kernels.moe.op as moe_op
import lladauni.model_core.kernel_choice as kc
import lladauni.model_core.layers.attention as attn
import lladauni.model_core.moe as moe
from lladauni.model_core import BackboneConfig
from lladauni.model_core.layers.attention import (
    AttentionMask,
    attention_backends,
    choose_attention,
    eager_attention,
    flash_attention,
    get_attention_backend,
    register_attention_backend,
    sdpa_attention,
    triton_attention,
)
from lladauni.model_core.moe import (
    Router,
    SparseMoeBlock,
    StackedExperts,
    choose_moe,
    get_moe_backend,
    loop_moe,
    moe_backends,
    register_moe_backend,
    triton_moe,
)


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture
def fresh_registries(monkeypatch):
    """The backend registries as a new process has them: the torch backends only, nothing else
    listed yet (an earlier test may already have listed the kernels in this process)."""
    monkeypatch.setattr(attn, "_BACKENDS", {"eager": attn.eager_attention, "sdpa": attn.sdpa_attention})
    monkeypatch.setattr(moe, "_MOE_BACKENDS", {"loop": moe.loop_moe})


@pytest.fixture
def fresh_choice(monkeypatch):
    """Nothing imported or reported yet by kernel_choice."""
    monkeypatch.setattr(kc, "_MODULES", {})
    monkeypatch.setattr(kc, "_ERRORS", {})
    monkeypatch.setattr(kc, "_REPORTED", set())


@pytest.fixture
def kernels_fail_to_import(monkeypatch):
    monkeypatch.setattr(kc, "_MODULES", {"attention": None, "moe": None})
    monkeypatch.setattr(kc, "_ERRORS", {"attention": "ImportError: x", "moe": "ImportError: x"})


@pytest.fixture
def kernel_device(monkeypatch):
    """Decide as on a GPU: tensors where a Triton kernel can run (shapes, dtypes, strides decide)."""
    monkeypatch.setattr(triton_glue, "can_launch", lambda *t: True)


def _brute_allowed(query_block, key_block, key_valid, batch):
    """(B, 1, Q, S) bool from the rule, one entry at a time: query i sees key j iff
    key_block[j] <= query_block[i] and key_valid[b, j]."""
    qb, kb = query_block.tolist(), key_block.tolist()
    out = torch.zeros(batch, 1, len(qb), len(kb), dtype=torch.bool)
    for b in range(batch):
        for i, qi in enumerate(qb):
            for j, kj in enumerate(kb):
                out[b, 0, i, j] = kj <= qi and (key_valid is None or bool(key_valid[b, j]))
    return out


def _sdpa_reference(q, k, v, allowed, scale):
    """float64 torch SDPA with an explicit boolean mask, K/V heads repeated by hand (GQA); rows
    that see no key are zeros."""
    groups = q.shape[1] // k.shape[1]
    k64 = k.double().repeat_interleave(groups, dim=1)
    v64 = v.double().repeat_interleave(groups, dim=1)
    has_key = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q.double(), k64, v64, attn_mask=allowed | ~has_key, scale=scale)
    return out.masked_fill(~has_key, 0.0)


def _qkv(B=2, Hq=4, Hkv=2, Q=12, S=12, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, Hq, Q, D, generator=g), torch.randn(B, Hkv, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)


def _cfg(**kw) -> BackboneConfig:
    return BackboneConfig.tiny().replace(**kw)


def _randomised(module: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    module.requires_grad_(False)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def _naive_experts(x, gate_up, down, ids, w):
    """Per token, per rank: w * down(silu(gate(x)) * up(x)), summed in float64."""
    I = gate_up.shape[1] // 2
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for t in range(ids.shape[0]):
        for r in range(ids.shape[1]):
            e = int(ids[t, r])
            gu = gate_up[e].double() @ x[t].double()
            out[t] += float(w[t, r]) * (down[e].double() @ (F.silu(gu[:I]) * gu[I:]))
    return out


# ---------------------------------------------------------------------------------- attention registry
@needs_triton
def test_triton_backend_is_listed_once_the_kernels_import(fresh_registries):
    assert "triton" in attention_backends()
    assert get_attention_backend("triton") is triton_attention
    # flash only with flash-attn installed
    assert ("flash" in attention_backends()) == attention_op.HAS_FLASH_ATTN


@needs_triton
def test_triton_backend_resolves_by_name_before_anything_is_listed(fresh_registries):
    assert get_attention_backend("triton") is triton_attention


@needs_triton
def test_flash_backend_is_listed_with_flash_attn(fresh_registries, monkeypatch):
    monkeypatch.setattr(attention_op, "HAS_FLASH_ATTN", True)
    assert attention_backends() == ["eager", "flash", "sdpa", "triton"]
    assert get_attention_backend("flash") is flash_attention


def test_no_kernel_attention_backends_without_triton(fresh_registries, monkeypatch):
    monkeypatch.setattr(attention_op, "HAS_TRITON", False)
    monkeypatch.setattr(attention_op, "HAS_FLASH_ATTN", True)
    assert attention_backends() == ["eager", "sdpa"]
    with pytest.raises(ValueError, match="unknown attention backend 'triton'"):
        get_attention_backend("triton")


def test_no_kernel_attention_backends_when_the_kernels_fail_to_import(fresh_registries, kernels_fail_to_import):
    assert attention_backends() == ["eager", "sdpa"]
    assert get_attention_backend("sdpa") is sdpa_attention
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        get_attention_backend("flash")


def test_register_attention_backend(fresh_registries):
    def mine(q, k, v, mask, scale):
        return eager_attention(q, k, v, mask, scale)

    register_attention_backend("mine", mine)
    assert get_attention_backend("mine") is mine
    assert "mine" in attention_backends()
    register_attention_backend("eager", mine)  # replaces
    assert get_attention_backend("eager") is mine
    with pytest.raises(ValueError, match="reserved"):
        register_attention_backend("auto", mine)
    assert get_attention_backend("auto") is not mine


# ---------------------------------------------------------------------------------- choose_attention
@needs_triton
def test_choose_attention_on_a_kernel_device(kernel_device):
    q, k, v = _qkv(D=16)
    m = AttentionMask.block_causal(12, 4)
    assert choose_attention(q, k, v, m, kernel_device=True) == ("triton", triton_attention)
    assert choose_attention(q, k, v, m, kernel_device=False) == ("sdpa", sdpa_attention)
    assert choose_attention(q, k, v, m)[0] == "sdpa"  # default: q.is_cuda, False here
    q24, k24, v24 = _qkv(D=24)  # head_dim not a power of two: the kernel refuses, SDPA serves
    assert choose_attention(q24, k24, v24, m, kernel_device=True) == ("sdpa", sdpa_attention)


def test_choose_attention_without_the_kernels_is_sdpa(kernels_fail_to_import, kernel_device):
    q, k, v = _qkv(D=16)
    assert choose_attention(q, k, v, AttentionMask.block_causal(12, 4), kernel_device=True)[0] == "sdpa"


# ---------------------------------------------------------------------------------- Triton / flash paths
def _masks(B, S):
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[1, :5] = False  # a left-padded row
    return {
        "block_causal": AttentionMask.block_causal(S, 4),
        "padded": AttentionMask.block_causal(S, 4, key_valid=valid),
        "prefix": AttentionMask.prefix_and_block(S - 4, 4),
    }


@needs_triton
@pytest.mark.parametrize("kind", ["block_causal", "padded", "prefix"])
def test_triton_attention_matches_sdpa_with_an_explicit_mask(kind):
    B, S = 2, 12
    mask = _masks(B, S)[kind]
    q, k, v = _qkv(B=B, Q=mask.num_queries, S=S)
    out = triton_attention(q, k, v, mask, 0.25)
    ref = _sdpa_reference(q, k, v, _brute_allowed(mask.query_block, mask.key_block, mask.key_valid, B), 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@needs_triton
def test_triton_attention_reads_a_non_contiguous_key_valid():
    """A (B, S) validity view with column stride B (a transposed (S, B) tensor) means the same mask."""
    B, S = 2, 12
    valid_SB = torch.ones(S, B, dtype=torch.bool)
    valid_SB[:5, 1] = False
    valid_SB[7, 0] = False
    mask = AttentionMask.block_causal(S, 4, key_valid=valid_SB.t())
    assert not mask.key_valid.is_contiguous()
    q, k, v = _qkv(B=B, Q=S, S=S, seed=1)
    out = triton_attention(q, k, v, mask, 0.25)
    ref = _sdpa_reference(q, k, v, _brute_allowed(mask.query_block, mask.key_block, valid_SB.t(), B), 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


def test_triton_attention_without_the_kernels_says_so(kernels_fail_to_import):
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="attn='sdpa'"):
        triton_attention(q, k, v, AttentionMask.block_causal(12, 4), 0.25)


@needs_triton
@pytest.mark.parametrize("kind", ["block_causal", "prefix"])
def test_flash_backend_without_flash_attn_runs_the_triton_kernel(kind):
    """flash-attn missing (or the tensors not on CUDA): every call goes to the Triton kernel,
    the unmasked one (``prefix``: the active block sees everything) too."""
    B, S = 2, 12
    mask = _masks(B, S)[kind]
    q, k, v = _qkv(B=B, Q=mask.num_queries, S=S, seed=2)
    out = flash_attention(q, k, v, mask, 0.25)
    ref = _sdpa_reference(q, k, v, _brute_allowed(mask.query_block, mask.key_block, None, B), 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@needs_triton
def test_flash_backend_uses_flash_attn_only_for_calls_that_see_everything(monkeypatch):
    """With flash-attn serving the call (faked: torch SDPA stands in for flash_attn_func), the
    unmasked call goes to flash-attn and a masked one to the Triton kernel."""
    calls = []

    def fake_flash(q, k, v, scale):
        calls.append(scale)
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

    monkeypatch.setattr(attention_op, "flash_unsupported", lambda q, k, v: None)
    monkeypatch.setattr(attention_op, "flash_attention", fake_flash)
    B, S = 2, 12
    masks = _masks(B, S)
    unmasked, masked = masks["prefix"], masks["padded"]
    q, k, v = _qkv(B=B, Q=4, S=S, seed=3)
    out = flash_attention(q, k, v, unmasked, 0.25)
    assert calls == [0.25]
    torch.testing.assert_close(out.double(), _sdpa_reference(q, k, v, _brute_allowed(unmasked.query_block, unmasked.key_block, None, B), 0.25), atol=1e-4, rtol=1e-4)
    q, k, v = _qkv(B=B, Q=S, S=S, seed=4)
    out = flash_attention(q, k, v, masked, 0.25)
    assert calls == [0.25]  # not flash-attn: it has no mask
    ref = _sdpa_reference(q, k, v, _brute_allowed(masked.query_block, masked.key_block, masked.key_valid, B), 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- masks and shapes
def test_block_vectors_must_be_1d():
    with pytest.raises(ValueError, match="1-D"):
        AttentionMask(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        AttentionMask(torch.zeros(3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


def test_block_size_one_is_token_causal():
    m = AttentionMask.block_causal(5, 1)
    assert torch.equal(m.dense().allowed[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    m = AttentionMask.block_causal(6, 1, query_start=4)
    assert m.dense().allowed[0, 0].tolist() == [[True] * 5 + [False], [True] * 6]


@pytest.mark.parametrize("fn", [eager_attention, sdpa_attention])
def test_integer_key_valid_is_a_padding_mask(fn):
    """A 0/1 integer padding mask (a tokenizer's attention_mask) works like the bool one."""
    B, S = 2, 12
    valid = torch.ones(B, S, dtype=torch.long)
    valid[1, :5] = 0
    m = AttentionMask.block_causal(S, 4, key_valid=valid)
    assert m.key_valid.dtype == torch.bool
    q, k, v = _qkv(B=B, Q=S, S=S, seed=5)
    out = fn(q, k, v, m, 0.25)
    ref = _sdpa_reference(q, k, v, _brute_allowed(m.query_block, m.key_block, valid, B), 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_valid", [False, True])
def test_mask_to_device_keeps_the_rule(with_valid):
    valid = torch.tensor([[True] * 8, [False] * 3 + [True] * 5]) if with_valid else None
    m = AttentionMask.block_causal(8, 4, query_start=2, key_valid=valid)
    moved = m.to("cpu")
    assert moved is not m
    assert (moved.key_valid is None) == (valid is None)
    assert torch.equal(moved.dense().allowed, _brute_allowed(m.query_block, m.key_block, valid, 1 if valid is None else 2))


_MALFORMED = {
    "3-D q": lambda q, k, v: (q[0], k, v),
    "v head_dim differs": lambda q, k, v: (q, k, v[..., :4]),
    "v length differs": lambda q, k, v: (q, k, v[:, :, :5]),
    "3-D k and v": lambda q, k, v: (q, k[0], v[0]),
}


@pytest.mark.parametrize("fn", [eager_attention, sdpa_attention])
@pytest.mark.parametrize("case", list(_MALFORMED))
def test_attention_rejects_malformed_tensors(fn, case):
    q, k, v = _MALFORMED[case](*_qkv(B=1, Hq=2, Hkv=2, Q=6, S=6, D=8))
    with pytest.raises(ValueError, match="expected q"):
        fn(q, k, v, AttentionMask.block_causal(6, 2), 0.5)


@pytest.mark.parametrize("fn", [eager_attention, sdpa_attention])
def test_attention_rejects_a_mask_of_another_size(fn):
    q, k, v = _qkv(B=1, Hq=2, Hkv=2, Q=6, S=6, D=8)
    wrong_queries = AttentionMask.block_causal(6, 2, query_start=5)  # 1 query x 6 keys
    wrong_keys = AttentionMask(torch.zeros(6, dtype=torch.long), torch.zeros(5, dtype=torch.long))  # 6 x 5
    for m in (wrong_queries, wrong_keys):
        with pytest.raises(ValueError, match="mask covers"):
            fn(q, k, v, m, 0.5)


# ---------------------------------------------------------------------------------- MoE registry and choice
@needs_triton
def test_triton_moe_backend_is_listed_once_the_kernels_import(fresh_registries):
    assert moe_backends() == ["loop", "triton"]


@needs_triton
def test_triton_moe_backend_resolves_by_name_before_anything_is_listed(fresh_registries):
    assert get_moe_backend("triton") is triton_moe


def test_no_triton_moe_backend_without_triton(fresh_registries, monkeypatch):
    monkeypatch.setattr(moe_op, "HAS_TRITON", False)
    assert moe_backends() == ["loop"]
    with pytest.raises(ValueError, match="unknown MoE backend 'triton'"):
        get_moe_backend("triton")


def test_no_triton_moe_backend_when_the_kernels_fail_to_import(fresh_registries, kernels_fail_to_import):
    assert moe_backends() == ["loop"]
    assert get_moe_backend("loop") is loop_moe


def test_register_moe_backend(fresh_registries):
    def mine(x, gu, dn, ids, w):
        return loop_moe(x, gu, dn, ids, w)

    register_moe_backend("mine", mine)
    assert get_moe_backend("mine") is mine
    assert "mine" in moe_backends()
    with pytest.raises(ValueError, match="reserved"):
        register_moe_backend("auto", mine)
    assert get_moe_backend("auto") is not mine


def _moe_call(T=5, E=4, H=16, I=8, K=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    gu = torch.randn(E, 2 * I, H, generator=g) * 0.3
    dn = torch.randn(E, H, I, generator=g) * 0.3
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    w = torch.rand(T, K, generator=g)
    return x, gu, dn, ids, w


@needs_triton
def test_choose_moe_on_a_kernel_device(kernel_device):
    call = _moe_call()
    assert choose_moe(*call, kernel_device=True) == ("triton", triton_moe)
    assert choose_moe(*call, kernel_device=False) == ("loop", loop_moe)
    assert choose_moe(*call)[0] == "loop"  # default: x.is_cuda, False here
    x, gu, dn, ids, w = call
    assert choose_moe(x, gu, dn.double(), ids, w, kernel_device=True)[0] == "loop"  # mixed dtypes: refused


def test_choose_moe_without_the_kernels_is_the_loop(kernels_fail_to_import, kernel_device):
    assert choose_moe(*_moe_call(), kernel_device=True)[0] == "loop"


def test_moe_on_a_kernel_device_without_triton_is_reported_once(fresh_choice, monkeypatch):
    monkeypatch.setattr(triton_glue, "HAS_TRITON", False)
    with pytest.warns(RuntimeWarning, match=r"Triton is not installed: moe on CUDA"):
        assert choose_moe(*_moe_call(), kernel_device=True)[0] == "loop"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_moe(*_moe_call(), kernel_device=True)[0] == "loop"


@needs_triton
def test_a_call_the_moe_kernel_does_not_serve_is_quiet(fresh_choice, kernel_device):
    x, gu, dn, ids, w = _moe_call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_moe(x, gu, dn, ids, w.double(), kernel_device=True)[0] == "loop"


@needs_triton
def test_triton_moe_matches_the_naive_expert_sum():
    x, gu, dn, ids, w = _moe_call(T=6, seed=1)
    out = triton_moe(x, gu, dn, ids, w)
    torch.testing.assert_close(out.double(), _naive_experts(x, gu, dn, ids, w), atol=1e-4, rtol=1e-4)


def test_triton_moe_without_the_kernels_says_so(kernels_fail_to_import):
    with pytest.raises(RuntimeError, match="moe='loop'"):
        triton_moe(*_moe_call())


# ---------------------------------------------------------------------------------- experts
def test_stacked_experts_layout():
    """(E, 2I, H) gate_up and (E, H, I) down, with E and I readable off the module."""
    ex = StackedExperts(num_experts=3, hidden_size=10, intermediate_size=6)
    assert (ex.num_experts, ex.intermediate_size) == (3, 6)
    assert tuple(ex.gate_up_proj.shape) == (3, 12, 10) and tuple(ex.down_proj.shape) == (3, 10, 6)


@pytest.mark.parametrize("H,I", [(16, 4), (12, 10)])
def test_loop_moe_when_hidden_is_not_twice_the_intermediate(H, I):
    x, gu, dn, ids, w = _moe_call(T=7, E=4, H=H, I=I, K=2, seed=2)
    torch.testing.assert_close(loop_moe(x, gu, dn, ids, w).double(), _naive_experts(x, gu, dn, ids, w), atol=1e-5, rtol=1e-5)


def test_no_shared_expert_when_the_config_has_none():
    cfg = _cfg(num_shared_experts=0)
    blk = _randomised(SparseMoeBlock(cfg), seed=3)
    assert blk.shared_experts is None
    assert not any("shared_experts" in name for name in blk.state_dict())
    x = torch.randn(2, 3, cfg.hidden_size)
    ids, w, _ = blk.gate(x.view(-1, cfg.hidden_size))
    ref = _naive_experts(x.view(-1, cfg.hidden_size), blk.experts.gate_up_proj, blk.experts.down_proj, ids, w)
    torch.testing.assert_close(blk(x).double(), ref.view(2, 3, -1), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- router
def _hf_router(cfg: BackboneConfig, router: Router, norm: bool):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    ds = DeepseekV3Config(
        hidden_size=cfg.hidden_size, n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        n_group=cfg.n_group, topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
        norm_topk_prob=norm,
    )
    ref = DeepseekV3TopkRouter(ds)
    with torch.no_grad():
        ref.weight.copy_(router.weight)
        ref.e_score_correction_bias.copy_(router.expert_bias)
    return ref


def _same_routing(router: Router, ref, x: torch.Tensor) -> None:
    ids, w, _ = router(x)
    with torch.no_grad():
        _, ref_w, ref_ids = ref(x)
    a, b = ids.sort(-1), ref_ids.sort(-1)  # the reference returns them unsorted
    assert torch.equal(a.values, b.values)
    torch.testing.assert_close(w.gather(1, a.indices), ref_w.gather(1, b.indices), rtol=1e-6, atol=0)


def test_router_top1_weight_is_the_scaled_sigmoid_score():
    """top_k == 1: no renormalisation (it would make every weight 1), only the scaling factor."""
    cfg = _cfg(num_experts_per_tok=1)
    router = _randomised(Router(cfg), seed=4, scale=0.3)
    with torch.no_grad():
        router.expert_bias.copy_(torch.linspace(-0.1, 0.1, cfg.num_experts))
    x = torch.randn(9, cfg.hidden_size)
    ids, w, logits = router(x)
    assert ids.shape == (9, 1)
    expected = torch.sigmoid(x.double() @ router.weight.double().T).gather(1, ids) * cfg.routed_scaling_factor
    torch.testing.assert_close(w.double(), expected, rtol=1e-5, atol=0)
    assert (w < cfg.routed_scaling_factor).all()
    _same_routing(router, _hf_router(cfg, router, norm=False), x)


def test_router_top2_weights_are_renormalised():
    cfg = _cfg(num_experts_per_tok=2)
    router = _randomised(Router(cfg), seed=5, scale=0.3)
    x = torch.randn(9, cfg.hidden_size)
    _, w, _ = router(x)
    torch.testing.assert_close(w.sum(-1), torch.full((9,), cfg.routed_scaling_factor), rtol=1e-6, atol=0)
    _same_routing(router, _hf_router(cfg, router, norm=True), x)


def test_router_renormalisation_with_vanishing_scores():
    """Scores of a few 1e-21 (logits near -47): the 1e-20 added to the sum is no longer
    negligible, and the weights sum to scaling * s / (s + 1e-20), as in the official router."""
    cfg = _cfg()
    router = Router(cfg).requires_grad_(False)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, 0] = -47.0 + torch.linspace(0.0, 0.5, cfg.num_experts)
        router.expert_bias.zero_()
    x = torch.zeros(2, cfg.hidden_size)
    x[:, 0] = torch.tensor([1.0, 1.02])
    ids, w, _ = router(x)
    s = torch.sigmoid(x.double() @ router.weight.double().T).gather(1, ids)
    expected = s / (s.sum(-1, keepdim=True) + 1e-20) * cfg.routed_scaling_factor
    torch.testing.assert_close(w.double(), expected, rtol=1e-5, atol=0)
    assert (w.sum(-1) < 0.9 * cfg.routed_scaling_factor).all()
    _same_routing(router, _hf_router(cfg, router, norm=True), x)
