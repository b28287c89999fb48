from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lladauni.model_core import BackboneConfig
from lladauni.model_core.moe import Router, SparseMoeBlock, group_limited_topk, loop_moe


def _cfg(**kw):
    return BackboneConfig.tiny().replace(**kw)


def _block(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    blk = SparseMoeBlock(cfg).requires_grad_(False)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        blk.gate.expert_bias.copy_(torch.randn(cfg.num_experts, generator=g) * 0.1)
    return blk


def _route_one(scores, bias, cfg):
    """Per-token reference routing from the spec."""
    biased = scores + bias
    per = cfg.num_experts // cfg.n_group
    gscore = [float(biased[g * per:(g + 1) * per].topk(2).values.sum()) for g in range(cfg.n_group)]
    groups = sorted(range(cfg.n_group), key=lambda g: -gscore[g])[: cfg.topk_group]
    cand = [e for g in groups for e in range(g * per, (g + 1) * per)]
    chosen = sorted(cand, key=lambda e: -float(biased[e]))[: cfg.num_experts_per_tok]
    w = scores[chosen]
    if len(chosen) > 1:
        w = w / (w.sum() + 1e-20)
    return chosen, w * cfg.routed_scaling_factor


@pytest.mark.parametrize("T", [1, 7, 33, 63])
def test_router_matches_per_token_reference(T):
    cfg = _cfg()
    blk = _block(cfg)
    x = torch.randn(T, cfg.hidden_size)
    ids, w, logits = blk.gate(x)
    assert ids.shape == (T, cfg.num_experts_per_tok) and w.dtype == torch.float32
    scores = torch.sigmoid(x @ blk.gate.weight.T)
    for t in range(T):
        chosen, wr = _route_one(scores[t], blk.gate.expert_bias, cfg)
        assert ids[t].tolist() == chosen
        torch.testing.assert_close(w[t], wr)
    torch.testing.assert_close(logits, x @ blk.gate.weight.T)


def test_bias_selects_but_does_not_weight():
    cfg = _cfg()
    router = Router(cfg)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, 0] = torch.linspace(1.0, -1.0, cfg.num_experts)  # expert 0 best unbiased
        router.expert_bias.zero_()
        router.expert_bias[cfg.num_experts - 1] = 10.0  # worst expert forced in by its bias
    x = torch.zeros(1, cfg.hidden_size)
    x[0, 0] = 1.0
    ids, w, _ = router(x)
    assert cfg.num_experts - 1 in ids[0].tolist()
    scores = torch.sigmoid(router.weight[:, 0])
    chosen = ids[0]
    expected = scores[chosen] / scores[chosen].sum() * cfg.routed_scaling_factor
    torch.testing.assert_close(w[0], expected)


def test_group_limit_excludes_other_groups():
    # 4 groups of 4; the best single expert sits in a group whose top-2 sum is poor.
    s = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.5, 0.5, 0.1, 0.1, 0.6, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]])
    ids = group_limited_topk(s, n_group=4, topk_group=2, top_k=4)
    assert sorted(ids[0].tolist()) == [4, 5, 8, 9]


@pytest.mark.parametrize("T", [1, 5, 33, 100])
def test_experts_match_per_token_loop(T):
    cfg = _cfg()
    blk = _block(cfg, seed=1)
    x = torch.randn(T, cfg.hidden_size)
    ids, w, _ = blk.gate(x)
    got = loop_moe(x, blk.experts.gate_up_proj, blk.experts.down_proj, ids, w)
    I = cfg.moe_intermediate_size
    ref = torch.zeros_like(x)
    for t in range(T):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            gu = blk.experts.gate_up_proj[e] @ x[t]
            ref[t] += w[t, k] * (blk.experts.down_proj[e] @ (F.silu(gu[:I]) * gu[I:]))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_experts_without_tokens_and_all_on_one_expert():
    cfg = _cfg()
    blk = _block(cfg, seed=2)
    x = torch.randn(3, cfg.hidden_size)
    ids = torch.tensor([[0, 1, 2, 3]] * 3)  # experts 4..15 get nothing
    w = torch.full((3, 4), 0.25)
    out = loop_moe(x, blk.experts.gate_up_proj, blk.experts.down_proj, ids, w)
    assert torch.isfinite(out).all()
    ids1 = torch.tensor([[5]] * 3)
    out1 = loop_moe(x, blk.experts.gate_up_proj, blk.experts.down_proj, ids1, torch.ones(3, 1))
    I = cfg.moe_intermediate_size
    gu = x @ blk.experts.gate_up_proj[5].T
    torch.testing.assert_close(out1, (F.silu(gu[:, :I]) * gu[:, I:]) @ blk.experts.down_proj[5].T)


@pytest.mark.parametrize("T", [1, 40])
def test_parity_with_transformers_deepseek_v3_moe(T):
    """Same weights in transformers' DeepSeek-V3 MoE block (same sigmoid group-limited routing,
    stacked experts, shared expert): same output."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = _cfg()
    blk = _block(cfg, seed=3)
    ds_cfg = DeepseekV3Config(
        hidden_size=cfg.hidden_size, moe_intermediate_size=cfg.moe_intermediate_size,
        n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        n_group=cfg.n_group, topk_group=cfg.topk_group, n_shared_experts=cfg.num_shared_experts,
        routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=True, hidden_act="silu",
    )
    ref = DeepseekV3MoE(ds_cfg).eval()
    with torch.no_grad():
        ref.gate.weight.copy_(blk.gate.weight)
        ref.gate.e_score_correction_bias.copy_(blk.gate.expert_bias)
        ref.experts.gate_up_proj.copy_(blk.experts.gate_up_proj)
        ref.experts.down_proj.copy_(blk.experts.down_proj)
        for n in ("gate_proj", "up_proj", "down_proj"):
            getattr(ref.shared_experts, n).weight.copy_(getattr(blk.shared_experts, n).weight)
    x = torch.randn(2, T, cfg.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), ref(x), rtol=1e-5, atol=1e-5)
        _, ref_w, ref_ids = ref.gate(x)
        ids, w, _ = blk.gate(x.view(-1, cfg.hidden_size))
    # same expert sets and weights (the reference returns them unsorted)
    o1, o2 = ids.sort(-1), ref_ids.sort(-1)
    assert torch.equal(o1.values, o2.values)
    torch.testing.assert_close(w.gather(1, o1.indices), ref_w.gather(1, o2.indices))


def test_bf16_combination_is_fp32_then_cast():
    cfg = _cfg()
    blk = _block(cfg, seed=4).to(torch.bfloat16)
    x = torch.randn(9, cfg.hidden_size, dtype=torch.bfloat16)
    ids, w, _ = blk.gate(x)
    assert w.dtype == torch.float32
    out = loop_moe(x, blk.experts.gate_up_proj, blk.experts.down_proj, ids, w)
    assert out.dtype == torch.bfloat16
    I = cfg.moe_intermediate_size
    per = []
    for k in range(ids.shape[1]):
        e = ids[:, k]
        rows = []
        for t in range(x.shape[0]):
            gu = F.linear(x[t : t + 1], blk.experts.gate_up_proj[e[t]])
            rows.append(F.linear(F.silu(gu[:, :I]) * gu[:, I:], blk.experts.down_proj[e[t]]))
        per.append(torch.cat(rows))
    ref = (torch.stack(per, 1).float() * w[..., None]).sum(1).to(torch.bfloat16)
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
