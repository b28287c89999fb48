"""Fused MoE kernel against its fp32 reference and the backbone's ``loop_moe``."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_fixtures import BF16, DEVICE, F16, F32, assert_close, needs_triton, randn, requires_cuda
from tests.kernel_fixtures import nan_buffers  # noqa: F401  (fixture)

from lladauni.kernels.moe import fused_moe, moe_reference, quantize_experts
from lladauni.kernels.moe.op import sort_by_expert
from lladauni.model_core.moe import loop_moe

pytestmark = [needs_triton, pytest.mark.usefixtures("nan_buffers")]


def _routing(T: int, E: int, K: int, *, experts: list[int] | None = None, seed: int = 0):
    """Distinct expert ids per token (as the router gives), fp32 weights."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(experts if experts is not None else list(range(E)))
    ids = torch.stack([pool[torch.randperm(len(pool), generator=g)[:K]] for _ in range(T)])
    w = torch.rand(T, K, generator=g) + 0.1
    return ids.to(DEVICE), w.to(DEVICE)


def _weights(E: int, H: int, I: int, dtype: torch.dtype, scale: float = 0.1):
    g = torch.Generator().manual_seed(1)
    return randn(E, 2 * I, H, dtype=dtype, scale=scale, gen=g), randn(E, H, I, dtype=dtype, scale=scale, gen=g)


def _check(T: int, E: int, H: int, I: int, K: int, dtype: torch.dtype, experts=None) -> None:
    x = randn(T, H, dtype=dtype, gen=torch.Generator().manual_seed(T))
    gu, dn = _weights(E, H, I, dtype)
    ids, w = _routing(T, E, K, experts=experts)
    y = fused_moe(x, gu, dn, ids, w)
    assert y.dtype == dtype and y.shape == (T, H)
    assert_close(y, moe_reference(x, gu, dn, ids, w), "moe", "ref", dtype)
    assert_close(y, loop_moe(x, gu, dn, ids, w), "moe", "torch", dtype)


@pytest.mark.parametrize("T", [1, 33, 63, 500])
def test_token_counts_bf16(T):
    _check(T, E=16, H=64, I=32, K=4, dtype=BF16)


@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("T", [1, 63])
def test_dtypes(T, dtype):
    _check(T, E=16, H=64, I=32, K=4, dtype=dtype)


@pytest.mark.parametrize("K", range(1, 9))
def test_top_k(K):
    _check(33, E=16, H=32, I=32, K=K, dtype=BF16)


def test_experts_without_tokens():
    # Only experts 3, 4 and 11 of 16 receive tokens; the rest must not disturb anything.
    _check(33, E=16, H=64, I=32, K=2, dtype=BF16, experts=[3, 4, 11])


def test_awkward_sizes_fp32():
    # H and I not multiples of the tiles; one expert gets every token (many BLOCK_M chunks).
    _check(63, E=4, H=80, I=48, K=1, dtype=F32, experts=[2])


def test_int32_ids_and_empty_batch():
    x = randn(5, 32, dtype=BF16)
    gu, dn = _weights(8, 32, 16, BF16)
    ids, w = _routing(5, 8, 2)
    assert_close(fused_moe(x, gu, dn, ids.int(), w), loop_moe(x, gu, dn, ids, w), "moe", "torch", BF16)
    assert fused_moe(x[:0], gu, dn, ids[:0], w[:0]).shape == (0, 32)


def test_fp8_block_scales():
    # I = 192 is not a multiple of 128: gate and up scales are stacked per projection.
    T, E, H, I, K = 33, 8, 256, 192, 4
    x = randn(T, H, dtype=BF16)
    g = torch.Generator().manual_seed(3)
    gu32, dn32 = randn(E, 2 * I, H, scale=0.05, gen=g), randn(E, H, I, scale=0.05, gen=g)
    gq, gs, dq, ds = quantize_experts(gu32, dn32)
    assert gs.shape == (E, 4, 2) and ds.shape == (E, 2, 2)
    ids, w = _routing(T, E, K)
    y = fused_moe(x, gq, dq, ids, w, gs, ds)
    assert_close(y, moe_reference(x, gq, dq, ids, w, gs, ds), "moe_fp8", "ref", BF16)


def test_sort_by_expert():
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEVICE)
    order, tok, offsets = sort_by_expert(ids, 5)
    assert offsets.tolist() == [0, 2, 2, 5, 6, 6]
    assert ids.reshape(-1)[order.long()].tolist() == [0, 0, 2, 2, 2, 3]
    assert tok.tolist() == [0, 2, 0, 1, 2, 1]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(x=a["x"].float()), "must match"),
        (lambda a: a.update(down=a["down"][:, :, :8].contiguous()), "shapes disagree"),
        (lambda a: a.update(gate_up=a["gate_up"].transpose(1, 2).contiguous().transpose(1, 2)), "contiguous"),
        (lambda a: a.update(w=a["w"].double()), "topk_weights"),
        (lambda a: a.update(ids=a["ids"].float()), "topk_ids dtype"),
        (lambda a: a.update(x=a["x"][None]), r"\(T, H\)"),
        (lambda a: a.update(gate_up=a["gate_up"].to(torch.float8_e4m3fn)), "both FP8"),
    ],
)
def test_bad_inputs_raise(change, match):
    gu, dn = _weights(4, 32, 16, BF16)
    ids, w = _routing(3, 4, 2)
    a = dict(x=randn(3, 32, dtype=BF16), gate_up=gu, down=dn, ids=ids, w=w)
    change(a)
    with pytest.raises(ValueError, match=match):
        fused_moe(a["x"], a["gate_up"], a["down"], a["ids"], a["w"])


def test_fp8_needs_scales():
    gq, gs, dq, ds = quantize_experts(*_weights(4, 128, 128, F32))
    ids, w = _routing(3, 4, 2)
    with pytest.raises(ValueError, match="down_scale"):
        fused_moe(randn(3, 128, dtype=BF16), gq, dq, ids, w, gs, None)
    with pytest.raises(ValueError, match="gate_up_scale: expected"):
        fused_moe(randn(3, 128, dtype=BF16), gq, dq, ids, w, gs[:, :1].contiguous(), ds)


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("T", [32, 64])
@pytest.mark.parametrize("fp8", [False, True])
def test_full_size_layer_bf16(T, fp8):
    E, H, I, K = 256, 2048, 512, 8
    g = torch.Generator().manual_seed(0)
    gu, dn = randn(E, 2 * I, H, scale=0.02, gen=g), randn(E, H, I, scale=0.02, gen=g)
    x = randn(T, H, dtype=BF16, gen=g)
    ids, w = _routing(T, E, K)
    if fp8:
        gq, gs, dq, ds = quantize_experts(gu, dn)
        assert_close(fused_moe(x, gq, dq, ids, w, gs, ds), moe_reference(x, gq, dq, ids, w, gs, ds), "moe_fp8", "ref", BF16)
    else:
        gu, dn = gu.to(BF16), dn.to(BF16)
        y = fused_moe(x, gu, dn, ids, w)
        assert_close(y, loop_moe(x, gu, dn, ids, w), "moe", "torch", BF16)


@pytest.mark.gpu
@requires_cuda
def test_no_host_sync_and_graph_capture():
    E, H, I, K, T = 64, 256, 128, 8, 32
    gu, dn = _weights(E, H, I, BF16)
    x = randn(T, H, dtype=BF16)
    ids, w = _routing(T, E, K)
    ref = fused_moe(x, gu, dn, ids, w)  # compile outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_moe(x, gu, dn, ids, w)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, gu, dn, ids, w)
    x.copy_(randn(T, H, dtype=BF16))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, loop_moe(x, gu, dn, ids, w), "moe", "torch", BF16)
    assert not torch.equal(out, ref)
