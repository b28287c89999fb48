"""Fused RMSNorm (+ residual) and QK-norm + partial RoPE against references and model_core."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_fixtures import BF16, DEVICE, F16, F32, assert_close, needs_triton, randn
from tests.kernel_fixtures import nan_buffers  # noqa: F401  (fixture)

from lladauni.kernels.norm import qk_norm_rope, qk_norm_rope_reference, rms_norm, rms_norm_reference
from lladauni.model_core.layers.norm import rms_norm as torch_rms_norm
from lladauni.model_core.layers.rope import PartialRotaryEmbedding, apply_partial_rope

pytestmark = [needs_triton, pytest.mark.usefixtures("nan_buffers")]


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("T, N", [(1, 64), (33, 96), (63, 64), (500, 128)])
def test_rms_norm(T, N, dtype):
    x, r = randn(T, N, dtype=dtype), randn(T, N, dtype=dtype, scale=2.0)
    w = (1 + randn(N, scale=0.1)).to(dtype)
    assert_close(rms_norm(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)[0], "norm", "ref", dtype)
    assert_close(rms_norm(x, w, 1e-6), torch_rms_norm(x, w, 1e-6), "norm", "torch", dtype)
    out, summed = rms_norm(x, w, 1e-6, residual=r)
    assert torch.equal(summed, x + r)
    assert_close(out, torch_rms_norm(x + r, w, 1e-6), "norm", "torch", dtype)


@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("B, Q, R", [(1, 1, 16), (1, 33, 16), (2, 5, 32)])
def test_qk_norm_rope(B, Q, R, dtype):
    Hq, Hkv, D, eps = 4, 2, 32, 1e-6
    qkv = randn(B, Q, Hq + 2 * Hkv, D, dtype=dtype, scale=3.0)
    qw, kw = (1 + randn(D, scale=0.1)).to(dtype), (1 + randn(D, scale=0.1)).to(dtype)
    pos = (torch.arange(Q, device=DEVICE) + 1000).expand(B, Q)
    cos, sin = PartialRotaryEmbedding(R, 600000.0)(pos, dtype)
    q, k, v = qk_norm_rope(qkv, qw, kw, cos, sin, Hq, Hkv, eps)
    rq, rk, rv = qk_norm_rope_reference(qkv, qw, kw, cos, sin, Hq, Hkv, eps)
    assert_close(q, rq, "norm", "ref", dtype)
    assert_close(k, rk, "norm", "ref", dtype)
    assert torch.equal(v.float(), rv)
    # The backbone's own order of operations (Attention.forward).
    q0, k0, _ = qkv.transpose(1, 2).split([Hq, Hkv, Hkv], dim=1)
    assert_close(q, apply_partial_rope(torch_rms_norm(q0, qw, eps), cos, sin), "norm", "torch", dtype)
    assert_close(k, apply_partial_rope(torch_rms_norm(k0, kw, eps), cos, sin), "norm", "torch", dtype)


def test_bad_inputs_raise():
    x = randn(4, 32, dtype=BF16)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(32, device=DEVICE), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, torch.ones(32, dtype=BF16, device=DEVICE), 1e-6, residual=x.float())
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(x.t(), torch.ones(4, dtype=BF16, device=DEVICE), 1e-6)
    qkv = randn(1, 3, 8, 32, dtype=BF16)
    w = torch.ones(32, dtype=BF16, device=DEVICE)
    cos = torch.ones(1, 3, 16, dtype=BF16, device=DEVICE)
    with pytest.raises(ValueError, match="qkv must be"):
        qk_norm_rope(qkv, w, w, cos, cos, 4, 1, 1e-6)
    with pytest.raises(ValueError, match="R even"):
        qk_norm_rope(qkv, w, w, cos[..., :15], cos[..., :15], 4, 2, 1e-6)
