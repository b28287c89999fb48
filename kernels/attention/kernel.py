"""Triton flash attention under the block mask rule (only ``@triton.jit``; see ``op.py``).

One program per (tile of BLOCK_M query rows, batch x KV head). The G query heads sharing a KV
head are packed into the rows (row r = head (r // Q) of the group, query r % Q), so each K/V
tile is read once for the whole group: at the 32-query decoding step with 4:1 GQA a program
holds 128 rows. Key tiles no row of the tile may see are skipped without loading K/V (the
block-causal upper triangle in prefill, padding).
"""

import triton
import triton.language as tl


@triton.jit
def attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    qblk_ptr,  # (Q,) int64 block id of each query
    kblk_ptr,  # (S,) int64 block id of each key
    kvalid_ptr,  # (B|1, S) uint8, only read when HAS_VALID
    Q, S, Hkv, sm_scale_log2,
    stride_qb, stride_qh, stride_qq,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_oq,
    stride_valid_b,
    G: tl.constexpr,
    HAS_VALID: tl.constexpr,
    ACC_IEEE: tl.constexpr,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    hkv = pid_bh % Hkv
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < G * Q
    head = (hkv * G + rows // Q).to(tl.int64)
    qi = (rows % Q).to(tl.int64)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b * stride_qb + head[:, None] * stride_qh + qi[:, None] * stride_qq + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    qblk = tl.load(qblk_ptr + qi, mask=row_ok, other=-1)
    k_base = k_ptr + b * stride_kb + hkv.to(tl.int64) * stride_kh
    v_base = v_ptr + b * stride_vb + hkv.to(tl.int64) * stride_vh
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    offs_n0 = tl.arange(0, BLOCK_N)
    for n0 in range(0, S, BLOCK_N):
        offs_n = n0 + offs_n0
        key_ok = offs_n < S
        kblk = tl.load(kblk_ptr + offs_n, mask=key_ok, other=0)
        if HAS_VALID:
            key_ok = key_ok & (tl.load(kvalid_ptr + b * stride_valid_b + offs_n, mask=key_ok, other=0) != 0)
        allowed = (kblk[None, :] <= qblk[:, None]) & key_ok[None, :] & row_ok[:, None]
        if tl.max(allowed.to(tl.int32)) > 0:
            kt = tl.load(k_base + offs_n[None, :].to(tl.int64) * stride_ks + offs_d[:, None],
                         mask=key_ok[None, :], other=0.0)  # (D, BLOCK_N)
            if ACC_IEEE:
                s = tl.dot(q, kt, input_precision="ieee")
            else:
                s = tl.dot(q, kt)
            s = tl.where(allowed, s * sm_scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with nothing visible so far keeps m = -inf; shift by 0 so no inf - inf.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vs + offs_d[None, :],
                        mask=key_ok[:, None], other=0.0)  # (BLOCK_N, D)
            if ACC_IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    tl.store(o_ptr + b * stride_ob + head[:, None] * stride_oh + qi[:, None] * stride_oq + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
