from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lladauni.model_core import AttentionMask, BackboneConfig, LLaDA2Backbone, load_backbone

from .reference_backbone import reference_logits

TOL = dict(rtol=1e-4, atol=1e-4)


def _published_state_dict(ckpt):
    sd = {}
    for f in sorted(ckpt.glob("model-*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    return sd


def _block_causal(T, B=32):
    i = torch.arange(T)
    return (i[None, :] // B) <= (i[:, None] // B)


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_backbone(tiny_ckpt, device="cpu")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_independent_reference(tiny_ckpt, model, attn):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    sd = _published_state_dict(tiny_ckpt)
    g = torch.Generator().manual_seed(1)
    T = 45  # two blocks, the second partial
    ids = torch.randint(0, cfg["vocab_size"], (T,), generator=g)
    ref = reference_logits(sd, cfg, ids, torch.arange(T), _block_causal(T))
    model.set_backends(attn=attn)
    try:
        out = model(ids[None]).logits[0]
    finally:
        model.set_backends(attn="auto")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **TOL)


def test_full_mask_matches_reference_without_mask(tiny_ckpt, model):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    sd = _published_state_dict(tiny_ckpt)
    ids = torch.randint(0, cfg["vocab_size"], (40,), generator=torch.Generator().manual_seed(2))
    ref = reference_logits(sd, cfg, ids, torch.arange(40), torch.ones(40, 40, dtype=torch.bool))
    torch.testing.assert_close(model(ids[None], mask=AttentionMask.full(40, 40)).logits[0], ref, **TOL)


def test_default_dtype_is_fp32_on_cpu_and_selectable(tiny_ckpt):
    assert next(load_backbone(tiny_ckpt).parameters()).dtype == torch.float32
    m16 = load_backbone(tiny_ckpt, dtype=torch.bfloat16)
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, 1000, (1, 40))
    assert m16(ids).logits.dtype == torch.float32


def test_logits_for_matches_full(model):
    ids = torch.randint(0, 173568, (2, 70))
    full = model(ids).logits
    # same values; only the GEMM's row count differs, which may change fp32 rounding
    tight = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(ids, logits_for=32).logits, full[:, -32:], **tight)
    torch.testing.assert_close(model(ids, logits_for=slice(3, 9)).logits, full[:, 3:9], **tight)
    idx = torch.tensor([0, 5, 69])
    torch.testing.assert_close(model(ids, logits_for=idx).logits, full[:, idx], **tight)
    assert model(ids, logits_for=0).logits.shape == (2, 0, 173568)


def test_block_causal_later_blocks_cannot_change_earlier(model):
    ids = torch.randint(0, 173568, (1, 96))
    other = ids.clone()
    other[0, 64:] = torch.randint(0, 173568, (32,))
    a, b = model(ids).logits, model(other).logits
    # equal up to fp32 GEMM rounding (experts see different token counts)
    torch.testing.assert_close(a[:, :64], b[:, :64], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[:, 64:], b[:, 64:])
    # inside a block attention is bidirectional: changing the last token of block 1 moves its first
    other2 = ids.clone()
    other2[0, 63] = (ids[0, 63] + 1) % 173568
    assert not torch.allclose(model(other2).logits[:, 32], a[:, 32])


def test_active_block_over_cached_prefix_equals_full_window(model):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 173568, (2, 96), generator=g)
    full = model(ids, logits_for=32).logits
    pre = model(ids[:, :64], return_kv=True, logits_for=0)
    assert pre.kv.length == 64 and len(pre.kv.keys) == 3
    step = model(
        ids[:, 64:], position_ids=torch.arange(64, 96), mask=AttentionMask.prefix_and_block(64, 32), past=pre.kv
    )
    torch.testing.assert_close(step.logits, full, **TOL)
    # the default mask for a call with `past` is the block-causal rule over the whole window
    step2 = model(ids[:, 64:], past=pre.kv)
    torch.testing.assert_close(step2.logits, full, **TOL)


def test_left_padded_cfg_row_equals_unpadded_prompt(model):
    """A null prompt right-aligned behind 32 invisible pad slots, positions restarting at 0, gives
    the same logits as the same prompt alone (pad = one whole block keeps the block grid)."""
    g = torch.Generator().manual_seed(4)
    null = torch.randint(0, 150000, (40,), generator=g)
    alone = model(null[None]).logits[0]
    pad = 32
    mask_id = 156895
    ids = torch.cat((torch.full((pad,), mask_id), null))[None]
    pos = torch.cat((torch.zeros(pad, dtype=torch.long), torch.arange(40)))[None]
    valid = torch.cat((torch.zeros(pad, dtype=torch.bool), torch.ones(40, dtype=torch.bool)))[None]
    mask = AttentionMask.block_causal(pad + 40, 32, key_valid=valid)
    for attn in ("sdpa", "eager"):
        model.set_backends(attn=attn)
        out = model(ids, position_ids=pos, mask=mask)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.hidden_states).all()
        torch.testing.assert_close(out.logits[0, pad:], alone, **TOL)
    model.set_backends(attn="auto")


def test_batch_rows_are_independent(model):
    ids = torch.randint(0, 173568, (3, 50))
    batched = model(ids).logits
    for b in range(3):
        torch.testing.assert_close(batched[b], model(ids[b : b + 1]).logits[0], **TOL)


def test_bad_inputs_are_rejected(model):
    with pytest.raises(ValueError, match="out of range"):
        model(torch.tensor([[0, 173568]]))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.tensor([[1, 2, 3]]), position_ids=torch.arange(4))
    with pytest.raises(ValueError, match="mask covers"):
        model(torch.tensor([[1, 2, 3]]), mask=AttentionMask.block_causal(4, 32))
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.set_backends(attn="nope")
    with pytest.raises(ValueError, match="unknown MoE backend"):
        model.set_backends(moe="nope")


def test_module_names_are_the_published_ones(published_meta):
    idx = json.loads((published_meta / "model.safetensors.index.json").read_text())["weight_map"]
    with torch.device("meta"):
        m = LLaDA2Backbone(BackboneConfig.full())
    ours = set(m.state_dict())
    stacked = {n for n in ours if n.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    assert len(stacked) == 2 * 19
    assert ours - stacked <= set(idx)
    assert m.num_parameters() == 16_322_752_256  # MODEL_SPEC §4.3
    assert m.num_parameters(active=True) == 1_500_081_920


def test_tiny_forward_shape_and_config(model):
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts, cfg.n_group, cfg.topk_group) == (64, 3, 16, 4, 2)
    assert cfg.num_experts_per_tok == 4 and cfg.num_shared_experts == 1 and cfg.rotary_dim == cfg.head_dim // 2
    assert not cfg.is_moe_layer(0) and cfg.is_moe_layer(1) and cfg.is_moe_layer(2)
    out = model(torch.randint(0, 173568, (1, 33)))
    assert out.logits.shape == (1, 33, 173568) and out.hidden_states.shape == (1, 33, 64)
