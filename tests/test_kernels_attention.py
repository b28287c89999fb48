"""Block-masked attention kernel against its fp32 reference and the eager backend."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_fixtures import BF16, DEVICE, F16, F32, assert_close, needs_triton, randn, requires_cuda
from tests.kernel_fixtures import nan_buffers  # noqa: F401  (fixture)

from lladauni.kernels.attention import attention_reference, block_attention
from lladauni.model_core.layers.attention import AttentionMask, eager_attention
from lladauni.model_core.layers.attention import triton_attention as attention

pytestmark = [needs_triton, pytest.mark.usefixtures("nan_buffers")]


def _qkv(B, Hq, Hkv, Q, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return randn(B, Hq, Q, D, dtype=dtype, gen=g), randn(B, Hkv, S, D, dtype=dtype, gen=g), randn(B, Hkv, S, D, dtype=dtype, gen=g)


def _check(q, k, v, mask, dtype):
    scale = q.shape[-1] ** -0.5
    out = attention(q, k, v, mask, scale)
    assert out.shape == q.shape and out.dtype == dtype
    ref = attention_reference(q, k, v, mask.query_block, mask.key_block, mask.key_valid, scale)
    assert_close(out, ref, "attention", "ref", dtype)
    assert_close(out, eager_attention(q, k, v, mask, scale).float(), "attention", "ref", dtype)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("prefix, Q", [(0, 1), (31, 1), (40, 33), (95, 32), (500, 32)])
def test_decoding_step(prefix, Q, dtype):
    """An active block over a cached prefix: every query sees every key (no mask inside)."""
    q, k, v = _qkv(1, 4, 1 if Q == 1 else 2, Q, prefix + Q, 32, dtype)
    _check(q, k, v, AttentionMask.prefix_and_block(prefix, Q, device=DEVICE), dtype)


@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("S, block", [(1, 4), (33, 8), (63, 32), (130, 32)])
def test_block_causal_prefill(S, block, dtype):
    q, k, v = _qkv(2, 4, 2, S, S, 32, dtype)
    _check(q, k, v, AttentionMask.block_causal(S, block, device=DEVICE), dtype)


def test_cfg_padding_and_empty_rows():
    """Left padding hidden by key_valid (CFG null prompt); a query that sees no key gets zeros."""
    S = 40
    q, k, v = _qkv(2, 4, 2, S, S, 32, BF16)
    valid = torch.ones(2, S, dtype=torch.bool, device=DEVICE)
    valid[1, :16] = False  # batch 1: block 0 (and half of block 1) is padding
    mask = AttentionMask.block_causal(S, 8, key_valid=valid, device=DEVICE)
    _check(q, k, v, mask, BF16)
    out = attention(q, k, v, mask, 0.2)
    assert torch.count_nonzero(out[1, :, :8]) == 0 and torch.count_nonzero(out[0, :, :8]) > 0


def test_batch_one_validity_row_and_partial_suffix():
    # key_valid with one row broadcast over the batch; query_start > 0 (a suffix of the window).
    S = 70
    q, k, v = _qkv(2, 2, 2, S - 30, S, 64, F32)
    valid = torch.rand(1, S, generator=torch.Generator().manual_seed(2)).to(DEVICE) > 0.3
    _check(q, k, v, AttentionMask.block_causal(S, 16, query_start=30, key_valid=valid, device=DEVICE), F32)


def test_strided_inputs_and_output_layout():
    """v as the backbone passes it (a transposed view of the QKV projection) and the
    (B, Q, Hq, D) storage of the result."""
    B, Q, Hq, Hkv, D = 1, 33, 4, 2, 32
    qkv = randn(B, Q, Hq + 2 * Hkv, D, dtype=BF16)
    q, k, v = (t.transpose(1, 2) for t in qkv.split([Hq, Hkv, Hkv], dim=2))
    assert not v.is_contiguous()
    out = attention(q, k, v, AttentionMask.full(Q, Q, device=DEVICE), D**-0.5)
    assert out.transpose(1, 2).is_contiguous()
    assert_close(out, attention_reference(q, k, v, torch.zeros(Q, dtype=torch.long, device=DEVICE),
                                          torch.zeros(Q, dtype=torch.long, device=DEVICE), None, D**-0.5), "attention", "ref", BF16)


def test_bad_inputs_raise():
    q, k, v = _qkv(1, 4, 2, 8, 8, 32, BF16)
    qb = torch.zeros(8, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="multiple"):
        block_attention(q[:, :3], k, v, qb, qb, None, 1.0)
    with pytest.raises(ValueError, match="power of two"):
        block_attention(q[..., :24], k[..., :24], v[..., :24], qb, qb, None, 1.0)
    with pytest.raises(ValueError, match="dtypes"):
        block_attention(q, k.float(), v, qb, qb, None, 1.0)
    with pytest.raises(ValueError, match="key_valid"):
        block_attention(q, k, v, qb, qb, torch.ones(1, 7, dtype=torch.bool, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="query_block"):
        block_attention(q, k, v, qb[:5], qb, None, 1.0)


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("B", [1, 2])
def test_full_size_decoding_step_bf16_no_sync(B):
    q, k, v = _qkv(B, 16, 4, 32, 1024 + 32, 128, BF16)
    valid = torch.ones(B, 1056, dtype=torch.bool, device=DEVICE)
    valid[-1, :100] = False
    mask = AttentionMask.prefix_and_block(1024, 32, key_valid=valid, device=DEVICE)
    ref = attention_reference(q, k, v, mask.query_block, mask.key_block, mask.key_valid, 128**-0.5)
    attention(q, k, v, mask, 128**-0.5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = attention(q, k, v, mask, 128**-0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, ref, "attention", "ref", BF16)
