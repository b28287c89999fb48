from __future__ import annotations

import math

import pytest
import torch

from lladauni.model_core.layers import PartialRotaryEmbedding, RMSNorm, apply_partial_rope
from lladauni.model_core.layers.attention import AttentionMask, eager_attention, get_attention_backend, sdpa_attention


# ---------------------------------------------------------------------------------- norms
def test_rmsnorm_fp32_math_and_weight_after_cast():
    n = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        n.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = torch.randn(3, 8)
    ref = n.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(n(x), ref)
    xb = x.to(torch.bfloat16)
    nb = n.to(torch.bfloat16)
    normed = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(nb(xb), nb.weight * normed)


# ---------------------------------------------------------------------------------- rope
def test_partial_rope_against_complex_rotation():
    """Pairs (i, i + R/2) of the first R dims rotate by pos * base^(-2i/R); the rest pass through."""
    R, D, base = 16, 32, 600000
    rope = PartialRotaryEmbedding(R, base)
    pos = torch.tensor([[0, 1, 5, 100, 8191]])
    cos, sin = rope(pos, torch.float32)
    x = torch.randn(1, 2, 5, D)
    out = apply_partial_rope(x, cos, sin)
    torch.testing.assert_close(out[..., R:], x[..., R:], rtol=0, atol=0)
    half = R // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / R)
    angle = pos[0].double()[:, None] * freqs  # (T, R/2)
    z = torch.complex(x[..., :half].double(), x[..., half:R].double()) * torch.polar(torch.ones_like(angle), angle)
    torch.testing.assert_close(out[..., :half].double(), z.real, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[..., half:R].double(), z.imag, rtol=1e-4, atol=1e-4)
    # rotation keeps norms; position 0 is the identity
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_rope_tables_fp32_then_cast():
    rope = PartialRotaryEmbedding(64, 600000)
    pos = torch.arange(4096)[None]
    cos32, _ = rope(pos, torch.float32)
    cos16, _ = rope(pos, torch.bfloat16)
    assert cos16.dtype == torch.bfloat16 and torch.equal(cos16, cos32.to(torch.bfloat16))
    with pytest.raises(ValueError):
        PartialRotaryEmbedding(15, 10000)


# ---------------------------------------------------------------------------------- masks
def _brute(T, B, q0=0, valid=None):
    allowed = torch.zeros(1 if valid is None else valid.shape[0], 1, T - q0, T, dtype=torch.bool)
    for b in range(allowed.shape[0]):
        for i in range(q0, T):
            for j in range(T):
                allowed[b, 0, i - q0, j] = j // B <= i // B and (valid is None or bool(valid[b, j]))
    return allowed


@pytest.mark.parametrize("T,B,q0", [(1, 32, 0), (45, 32, 0), (96, 32, 64), (70, 8, 10), (33, 32, 32)])
def test_block_causal_mask_against_brute_force(T, B, q0):
    m = AttentionMask.block_causal(T, B, query_start=q0)
    assert torch.equal(m.dense().allowed, _brute(T, B, q0))


def test_left_padding_mask_and_empty_rows():
    valid = torch.tensor([[True] * 40, [False] * 35 + [True] * 5])
    m = AttentionMask.block_causal(40, 32, key_valid=valid)
    dm = m.dense()
    assert torch.equal(dm.allowed, _brute(40, 32, 0, valid))
    # row 1: queries in block 0 see only pads -> no key
    assert dm.has_empty_rows
    assert not dm.has_key[1, 0, :32].any() and dm.has_key[1, 0, 32:].all() and dm.has_key[0].all()


def test_prefix_and_block_sees_everything():
    m = AttentionMask.prefix_and_block(64, 32)
    assert m.sees_everything() and m.dense().allowed.all()
    m2 = AttentionMask.prefix_and_block(4, 2, key_valid=torch.tensor([[False, True, True, True, True, True]]))
    assert not m2.sees_everything()
    assert m2.dense().allowed.tolist() == [[[[False, True, True, True, True, True]] * 2]]


def test_mask_validation():
    with pytest.raises(ValueError):
        AttentionMask.block_causal(10, 0)
    with pytest.raises(ValueError):
        AttentionMask.block_causal(10, 4, query_start=10)
    with pytest.raises(ValueError, match="key_valid"):
        AttentionMask.block_causal(10, 4, key_valid=torch.ones(1, 9, dtype=torch.bool))


# ---------------------------------------------------------------------------------- attention
def _naive_attention(q, k, v, allowed, scale):
    B, Hq, Q, D = q.shape
    Hkv = k.shape[1]
    out = torch.zeros(B, Hq, Q, D, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kh, vh = k[b, h // (Hq // Hkv)].double(), v[b, h // (Hq // Hkv)].double()
            for i in range(Q):
                ok = allowed[min(b, allowed.shape[0] - 1), 0, i]
                if ok.any():
                    s = (q[b, h, i].double() @ kh.T) * scale
                    s[~ok] = -math.inf
                    out[b, h, i] = torch.softmax(s, -1) @ vh
    return out


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_backends_match_naive_gqa_with_padding(backend):
    torch.manual_seed(0)
    B, Hq, Hkv, T, D = 2, 4, 2, 40, 16
    q, k, v = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :33] = False
    m = AttentionMask.block_causal(T, 32, key_valid=valid)
    out = get_attention_backend(backend)(q, k, v, m, D**-0.5)
    ref = _naive_attention(q, k, v, m.dense().allowed, D**-0.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [eager_attention, sdpa_attention])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_give_zeros(fn, dtype):
    q, k, v = (torch.randn(1, 2, 8, 4, dtype=dtype) for _ in range(3))
    valid = torch.tensor([[False] * 8])
    out = fn(q, k, v, AttentionMask.block_causal(8, 4, key_valid=valid), 0.5)
    assert torch.equal(out, torch.zeros_like(out))


def test_dense_mask_built_once_and_not_at_all_when_unneeded():
    q, k, v = torch.randn(1, 2, 32, 8), torch.randn(1, 1, 96, 8), torch.randn(1, 1, 96, 8)
    m = AttentionMask.prefix_and_block(64, 32)
    sdpa_attention(q, k, v, m, 0.3)
    assert m._dense is None  # an active block over its prefix needs no mask tensor
    # the last block of a whole window also sees every key: no mask either
    assert AttentionMask.block_causal(96, 32, query_start=64).sees_everything()
    q96 = torch.randn(1, 2, 96, 8)
    m2 = AttentionMask.block_causal(96, 32)
    sdpa_attention(q96, k, v, m2, 0.3)
    first = m2._dense
    assert first is not None
    sdpa_attention(q96, k, v, m2, 0.3)
    assert m2._dense is first


def test_attention_shape_errors():
    q, k = torch.randn(1, 3, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        eager_attention(q, k, k, AttentionMask.block_causal(4, 2), 1.0)
    with pytest.raises(ValueError, match="mask covers"):
        sdpa_attention(torch.randn(1, 2, 4, 8), k, k, AttentionMask.block_causal(5, 2), 1.0)
