"""Triton kernels of the fused norms (only ``@triton.jit``; see ``op.py``).

Both round where the backbone's PyTorch code rounds (normalise in fp32, cast, scale by the
weight in the activation dtype; each RoPE product and the sum rounded), so in bf16 they agree
with ``model_core`` to the last bit in almost every element.
"""

import triton
import triton.language as tl


@triton.jit
def rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr,
    N, eps,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    dt = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * N + offs, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(res_ptr + row * N + offs, mask=mask, other=0.0).to(tl.float32)).to(dt)
        tl.store(sum_ptr + row * N + offs, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, 0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = w * (x32 * rstd).to(dt).to(tl.float32)
    tl.store(out_ptr + row * N + offs, y.to(dt), mask=mask)


@triton.jit
def _norm_rope_head(
    src, w_ptr, c_ptr, s_ptr, dst, eps, dt: tl.constexpr,
    D: tl.constexpr, R2: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_P: tl.constexpr,
):
    o_r = tl.arange(0, BLOCK_R2)
    m_r = o_r < R2
    o_p = 2 * R2 + tl.arange(0, BLOCK_P)
    m_p = o_p < D
    x1 = tl.load(src + o_r, mask=m_r, other=0.0).to(tl.float32)
    x2 = tl.load(src + R2 + o_r, mask=m_r, other=0.0).to(tl.float32)
    x3 = tl.load(src + o_p, mask=m_p, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0) + tl.sum(x3 * x3, 0)) / D + eps)
    y1 = (tl.load(w_ptr + o_r, mask=m_r, other=0.0).to(tl.float32) * (x1 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    y2 = (tl.load(w_ptr + R2 + o_r, mask=m_r, other=0.0).to(tl.float32) * (x2 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    y3 = tl.load(w_ptr + o_p, mask=m_p, other=0.0).to(tl.float32) * (x3 * rstd).to(dt).to(tl.float32)
    c1 = tl.load(c_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)
    c2 = tl.load(c_ptr + R2 + o_r, mask=m_r, other=0.0).to(tl.float32)
    s1 = tl.load(s_ptr + o_r, mask=m_r, other=0.0).to(tl.float32)
    s2 = tl.load(s_ptr + R2 + o_r, mask=m_r, other=0.0).to(tl.float32)
    # x_rot * cos + rotate_half(x_rot) * sin, rotate_half = cat(-x2, x1); each product rounded.
    out1 = (y1 * c1).to(dt).to(tl.float32) + (-y2 * s1).to(dt).to(tl.float32)
    out2 = (y2 * c2).to(dt).to(tl.float32) + (y1 * s2).to(dt).to(tl.float32)
    tl.store(dst + o_r, out1.to(dt), mask=m_r)
    tl.store(dst + R2 + o_r, out2.to(dt), mask=m_r)
    tl.store(dst + o_p, y3.to(dt), mask=m_p)


@triton.jit
def qk_norm_rope_kernel(
    qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr,
    Q, Hq, Hkv, eps,
    stride_xb, stride_xq, stride_xh,
    stride_cb, stride_cq,
    D: tl.constexpr, R2: tl.constexpr, BLOCK_R2: tl.constexpr, BLOCK_P: tl.constexpr,
):
    bq = tl.program_id(0)
    h = tl.program_id(1)
    b = (bq // Q).to(tl.int64)
    t = (bq % Q).to(tl.int64)
    dt = q_ptr.dtype.element_ty
    src = qkv_ptr + b * stride_xb + t * stride_xq + h.to(tl.int64) * stride_xh
    c = cos_ptr + b * stride_cb + t * stride_cq
    s = sin_ptr + b * stride_cb + t * stride_cq
    if h < Hq:
        dst = q_ptr + ((b * Hq + h) * Q + t) * D
        _norm_rope_head(src, qw_ptr, c, s, dst, eps, dt, D, R2, BLOCK_R2, BLOCK_P)
    else:
        dst = k_ptr + ((b * Hkv + (h - Hq)) * Q + t) * D
        _norm_rope_head(src, kw_ptr, c, s, dst, eps, dt, D, R2, BLOCK_R2, BLOCK_P)
