"""Triton kernel of the fused MoE router (only ``@triton.jit``; launched from ``op.py``).

One program per token. The token's E logits are held as a (groups, experts-per-group) tile:
sigmoid, expert bias, the two best biased scores of each group, the TOPK_GROUP best groups, then
the K best experts of those groups, picked one at a time by a max reduction. Ties go to the lower
index (group or expert), the order of a stable descending sort. The chosen experts' unbiased
scores are renormalised (K > 1) and scaled.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _sigmoid_f32(x, PRECISE: tl.constexpr):
    """1 / (1 + exp(-x)) with a correctly rounded division; with PRECISE the full-precision
    ``expf`` (the one torch's CUDA sigmoid calls) instead of the ex2.approx behind ``tl.exp``."""
    if PRECISE:
        e = libdevice.exp(-x)
    else:
        e = tl.exp(-x)
    return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), 1.0 + e)


@triton.jit
def _group_scores(biased, j, BLOCK_P: tl.constexpr):
    """Per row of the (G, P) tile: best + second best value (a tied best counts twice, as
    ``topk(2)`` does). Rows that are all -inf score -inf."""
    best = tl.max(biased, 1)
    at = tl.min(tl.where(biased == best[:, None], j, BLOCK_P), 1)
    second = tl.max(tl.where(j == at[:, None], float("-inf"), biased), 1)
    return best + second


@triton.jit
def _keep_best_groups(gscore, G: tl.constexpr, TOPK_GROUP: tl.constexpr, BLOCK_G: tl.constexpr):
    """Mask (BLOCK_G,) of the TOPK_GROUP best groups, ties to the lower group index."""
    gid = tl.arange(0, BLOCK_G)
    keep = gid < 0
    for _ in tl.static_range(TOPK_GROUP):
        top = tl.max(gscore, 0)
        pick = tl.minimum(tl.min(tl.where(gscore == top, gid, BLOCK_G), 0), G - 1)  # in range even for NaN
        keep = keep | (gid == pick)
        gscore = tl.where(gid == pick, float("-inf"), gscore)
    return keep


@triton.jit
def group_topk_route_kernel(
    logits_ptr,  # (T, E) fp32 router logits, unit stride over E
    bias_ptr,  # (E,) expert bias (selection only), any float dtype
    ids_ptr,  # (T, K) out: expert ids, int32 or int64
    w_ptr,  # (T, K) out: fp32 combine weights
    stride_t,
    scaling,
    E: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
    TOPK_GROUP: tl.constexpr, K: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISE: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, BLOCK_G)[:, None]
    j = tl.arange(0, BLOCK_P)[None, :]
    valid = (g < G) & (j < P)
    e = g * P + j
    key = tl.where(valid, e, BLOCK_G * BLOCK_P)  # padding gets an id no expert has
    x = tl.load(logits_ptr + t * stride_t + e, mask=valid, other=0.0)
    s = tl.where(valid, _sigmoid_f32(x, PRECISE), 0.0)
    biased = s + tl.load(bias_ptr + e, mask=valid, other=0.0).to(tl.float32)
    biased = tl.where(valid, biased, float("-inf"))

    keep = _keep_best_groups(_group_scores(biased, j, BLOCK_P), G, TOPK_GROUP, BLOCK_G)
    cand = tl.where(keep[:, None] & valid, biased, float("-inf"))

    rank = tl.arange(0, BLOCK_K)
    ids = tl.zeros([BLOCK_K], tl.int32)
    w = tl.zeros([BLOCK_K], tl.float32)
    for k in tl.static_range(K):
        top = tl.max(tl.max(cand, 1), 0)
        pick = tl.minimum(tl.min(tl.min(tl.where(cand == top, key, BLOCK_G * BLOCK_P), 1), 0), E - 1)
        hit = key == pick
        ids = tl.where(rank == k, pick, ids)
        w = tl.where(rank == k, tl.sum(tl.sum(tl.where(hit, s, 0.0), 1), 0), w)
        cand = tl.where(hit, float("-inf"), cand)
    if K > 1:
        w = tl.math.div_rn(w, tl.sum(w, 0) + 1e-20)
    w = w * scaling
    out = rank < K
    tl.store(ids_ptr + t * K + rank, ids.to(ids_ptr.dtype.element_ty), mask=out)
    tl.store(w_ptr + t * K + rank, w, mask=out)
