"""Triton kernels of the fused MoE (only ``@triton.jit`` functions; launched from ``op.py``).

Assignments (token, rank) are sorted by expert on the device; expert e owns the sorted rows
``offsets[e] .. offsets[e+1]``. Both GEMM kernels run one program per (expert, N tile) and walk
that expert's rows in BLOCK_M chunks, so the grid is fixed (CUDA-graph safe, no host sync) and an
expert that received no token costs one empty program and reads no weights.
"""

import triton
import triton.language as tl


@triton.jit
def _silu_f32(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _expert_tile(offsets_ptr, N, BLOCK_N: tl.constexpr):
    """This program's expert e, the tile index pid_n, the expert's sorted rows start..end and the
    tile's columns of the N outputs (offsets and in-range mask)."""
    e = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return e, pid_n, start, end, offs_n, offs_n < N


@triton.jit
def moe_gate_up_kernel(
    x_ptr,  # (T, H) activations
    w_ptr,  # (E, 2I, H) gate rows then up rows
    ws_ptr,  # (E, 2 * ceil(I/SB), ceil(H/SB)) fp32 scale_inv, FP8 only
    h_ptr,  # (A, I) out: silu(gate) * up, sorted-assignment rows
    sorted_tok_ptr,  # (A,) token row of each sorted assignment
    offsets_ptr,  # (E + 1,) start of each expert's rows
    H, I,
    stride_we, stride_wn,
    stride_se, stride_sn,
    ACC_IEEE: tl.constexpr,
    W_FP8: tl.constexpr,
    SB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    dt = h_ptr.dtype.element_ty
    e, pid_n, start, end, offs_n, mask_n = _expert_tile(offsets_ptr, I, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    w_e = w_ptr + e.to(tl.int64) * stride_we
    g_ptrs0 = w_e + offs_n[None, :] * stride_wn + offs_k[:, None]  # (BK, BN) = W_gate^T tile
    u_ptrs0 = g_ptrs0 + I * stride_wn
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        tok = tl.load(sorted_tok_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
        a_ptrs = x_ptr + tok[:, None] * H + offs_k[None, :]
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            mask_k = (k0 + offs_k) < H
            a = tl.load(a_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            wmask = mask_k[:, None] & mask_n[None, :]
            wg = tl.load(g_ptrs0 + k0, mask=wmask, other=0.0)
            wu = tl.load(u_ptrs0 + k0, mask=wmask, other=0.0)
            if W_FP8:
                # BLOCK_N and BLOCK_K divide SB, so one scale covers the whole tile.
                s_base = ws_ptr + e.to(tl.int64) * stride_se + k0 // SB
                n_blk = pid_n * BLOCK_N // SB
                s_g = tl.load(s_base + n_blk * stride_sn)
                s_u = tl.load(s_base + (tl.cdiv(I, SB) + n_blk) * stride_sn)
                acc_g += tl.dot(a, wg.to(a.dtype)) * s_g
                acc_u += tl.dot(a, wu.to(a.dtype)) * s_u
            elif ACC_IEEE:
                acc_g += tl.dot(a, wg, input_precision="ieee")
                acc_u += tl.dot(a, wu, input_precision="ieee")
            else:
                acc_g += tl.dot(a, wg)
                acc_u += tl.dot(a, wu)
        # Round where the reference rounds: linear -> dtype, silu -> dtype, product -> dtype.
        g = acc_g.to(dt).to(tl.float32)
        u = acc_u.to(dt).to(tl.float32)
        h = _silu_f32(g).to(dt).to(tl.float32) * u
        tl.store(h_ptr + offs_m[:, None].to(tl.int64) * I + offs_n[None, :], h.to(dt),
                 mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def moe_down_kernel(
    h_ptr,  # (A, I) sorted-assignment rows
    w_ptr,  # (E, H, I)
    ws_ptr,  # (E, ceil(H/SB), ceil(I/SB)) fp32 scale_inv, FP8 only
    y_ptr,  # (A, H) fp32 out, original assignment order (t * K + k)
    order_ptr,  # (A,) original assignment index of each sorted row
    topk_w_ptr,  # (A,) fp32 routing weights in original order
    offsets_ptr,
    H, I,
    stride_we, stride_wn,
    stride_se, stride_sn,
    ACC_IEEE: tl.constexpr,
    W_FP8: tl.constexpr,
    SB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    e, pid_n, start, end, offs_n, mask_n = _expert_tile(offsets_ptr, H, BLOCK_N)
    dt = h_ptr.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs0 = w_ptr + e.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]  # (BK, BN)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        a_ptrs = h_ptr + offs_m[:, None].to(tl.int64) * I + offs_k[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            mask_k = (k0 + offs_k) < I
            a = tl.load(a_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptrs0 + k0, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if W_FP8:
                s = tl.load(ws_ptr + e.to(tl.int64) * stride_se + (pid_n * BLOCK_N // SB) * stride_sn + k0 // SB)
                acc += tl.dot(a, w.to(a.dtype)) * s
            elif ACC_IEEE:
                acc += tl.dot(a, w, input_precision="ieee")
            else:
                acc += tl.dot(a, w)
        dst = tl.load(order_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)
        rw = tl.load(topk_w_ptr + dst, mask=mask_m, other=0.0)
        # Expert output rounded to the activation dtype, then weighted in fp32 (as the reference).
        y = acc.to(dt).to(tl.float32) * rw[:, None]
        tl.store(y_ptr + dst[:, None] * H + offs_n[None, :], y, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def moe_combine_kernel(
    y_ptr,  # (T, K, H) fp32 weighted expert outputs
    out_ptr,  # (T, H) activation dtype
    H,
    K: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = offs < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for k in tl.static_range(K):  # rank order, fp32
        acc += tl.load(y_ptr + (t * K + k) * H + offs, mask=mask, other=0.0)
    tl.store(out_ptr + t * H + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ grouping by expert
# Two launches over chunks of BLOCK_A assignments, one program per chunk (the grid depends on
# the shape only). The first writes each chunk's per-expert counts; the second sums them into
# the experts' offsets and places its chunk's assignments at their stable positions
# offsets[e] + (earlier assignments of expert e). Ids outside [0, E) get no row.


@triton.jit
def _chunk_ids(ids_ptr, A, E, BLOCK_A: tl.constexpr):
    """This program's assignment indices, their expert ids (-1 where out of range or past A)
    and the mask of those that get a row."""
    offs = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    ids = tl.load(ids_ptr + offs, mask=offs < A, other=-1).to(tl.int32)
    valid = (offs < A) & (ids >= 0) & (ids < E)
    return offs, tl.where(valid, ids, -1), valid


@triton.jit
def expert_count_kernel(
    ids_ptr,  # (A,) expert id of each assignment t*K+k, int32 or int64
    counts_ptr,  # (C, BLOCK_E) int32 out: per chunk, assignments of each expert
    A, E,
    BLOCK_A: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    _, ids, _ = _chunk_ids(ids_ptr, A, E, BLOCK_A)
    experts = tl.arange(0, BLOCK_E)
    hits = (ids[:, None] == experts[None, :]).to(tl.int32)
    tl.store(counts_ptr + tl.program_id(0) * BLOCK_E + experts, tl.sum(hits, 0))


@triton.jit
def expert_scatter_kernel(
    ids_ptr,  # (A,) expert ids, as above
    counts_ptr,  # (C, BLOCK_E) from expert_count_kernel
    order_ptr,  # (A,) int32 out: sorted position -> assignment index
    tok_ptr,  # (A,) int32 out: sorted position -> token row (assignment // K)
    offsets_ptr,  # (E + 1,) int32 out, written by program 0
    A, E, C, K,
    BLOCK_A: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    total = tl.zeros([BLOCK_E], tl.int32)  # all chunks
    before = tl.zeros([BLOCK_E], tl.int32)  # chunks before this one
    for r0 in range(0, C, BLOCK_C):
        rows = r0 + tl.arange(0, BLOCK_C)
        tile = tl.load(counts_ptr + rows[:, None] * BLOCK_E + experts[None, :], mask=(rows < C)[:, None], other=0)
        total += tl.sum(tile, 0)
        before += tl.sum(tl.where((rows < c)[:, None], tile, 0), 0)
    ends = tl.cumsum(total, 0)
    if c == 0:
        tl.store(offsets_ptr + 1 + experts, ends, mask=experts < E)
        tl.store(offsets_ptr + experts, tl.zeros([BLOCK_E], tl.int32), mask=experts == 0)
    first = ends - total + before  # first sorted row of each expert's assignments in this chunk

    offs, ids, valid = _chunk_ids(ids_ptr, A, E, BLOCK_A)
    start = tl.sum(tl.where(ids[:, None] == experts[None, :], first[None, :], 0), 1)
    j = tl.arange(0, BLOCK_A)
    earlier = (ids[:, None] == ids[None, :]) & (j[None, :] < j[:, None])
    pos = start + tl.sum(earlier.to(tl.int32), 1)
    tl.store(order_ptr + pos, offs, mask=valid)
    tl.store(tok_ptr + pos, offs // K, mask=valid)
