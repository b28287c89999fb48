"""Triton grouping of MoE assignments by expert against the torch reference (exact equality).

Runs the kernels through the Triton interpreter on CPU (``kernel_fixtures`` sets
TRITON_INTERPRET=1 before anything imports Triton) and on the GPU where there is one.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel_fixtures import CUDA, DEVICE, needs_triton, requires_cuda

from lladauni.kernels.moe import op as moe_op
from lladauni.kernels.moe.op import MAX_SORT_EXPERTS, sort_by_expert, sort_unsupported, triton_sort_by_expert
from lladauni.kernels.moe.reference import sort_by_expert_reference

pytestmark = needs_triton


def _same(ids_TK: torch.Tensor, E: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel outputs, after checking they equal the reference's exactly (values, dtypes, shapes)."""
    assert sort_unsupported(ids_TK, E) is None
    got = triton_sort_by_expert(ids_TK, E)
    want = sort_by_expert_reference(ids_TK, E)
    for name, g, w in zip(("order_A", "sorted_tok_A", "offsets_E1"), got, want):
        assert g.dtype == w.dtype == torch.int32, (name, g.dtype, w.dtype)
        assert g.device == ids_TK.device, (name, g.device)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert torch.equal(g.cpu(), w.cpu()), f"{name} differs from the reference"
    return got


def _router_ids(T: int, E: int, K: int, seed: int = 0) -> torch.Tensor:
    """Distinct experts per token, as the router gives them."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(DEVICE)


def test_small_example_by_hand():
    ids = torch.tensor([[2, 0], [2, 3], [0, 2]], device=DEVICE)
    order, tok, offsets = _same(ids, 5)
    assert offsets.tolist() == [0, 2, 2, 5, 6, 6]
    assert order.tolist() == [1, 4, 0, 2, 5, 3]
    assert tok.tolist() == [0, 2, 0, 1, 2, 1]


@pytest.mark.parametrize("E", [1, 7, 256])
def test_no_assignments(E):
    order, tok, offsets = _same(torch.zeros(0, 8, dtype=torch.int64, device=DEVICE), E)
    assert order.numel() == tok.numel() == 0 and offsets.tolist() == [0] * (E + 1)


def test_one_expert_only():
    _same(torch.zeros(300, 1, dtype=torch.int64, device=DEVICE), 1)


def test_every_assignment_on_one_expert_of_many():
    # One expert owns many chunks: its rows must stay in assignment order across chunks.
    _same(torch.full((700, 4), 37, dtype=torch.int64, device=DEVICE), 64)


def test_all_experts_used():
    _same(torch.arange(256, device=DEVICE).reshape(32, 8), 256)
    _same(_router_ids(64, 256, 8, seed=1), 256)


def test_prefill_shape_e256_t1100_k8():
    _same(_router_ids(1100, 256, 8, seed=2), 256)


def test_many_duplicates_int32():
    g = torch.Generator().manual_seed(3)
    _same(torch.randint(0, 2, (513, 8), generator=g).to(torch.int32).to(DEVICE), 2)
    _same(torch.randint(5, 8, (129, 3), generator=g).to(DEVICE), 300)


def test_largest_served_expert_count():
    g = torch.Generator().manual_seed(4)
    _same(torch.randint(0, MAX_SORT_EXPERTS, (200, 8), generator=g).to(DEVICE), MAX_SORT_EXPERTS)


def test_out_of_range_ids_are_left_out():
    # Ids are not checked (that needs a host sync); ids outside [0, E) get no row, and the
    # others are grouped as if those assignments were not there.
    # The bad ids come after a valid one that they would overwrite if they took a row.
    ids = torch.tensor([[1, 0], [9, -1], [2, 1]], device=DEVICE)
    order, tok, offsets = triton_sort_by_expert(ids, 3)
    assert offsets.tolist() == [0, 1, 3, 4]
    assert order[:4].tolist() == [1, 0, 5, 4] and tok[:4].tolist() == [0, 0, 2, 2]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(0, 160),
    K=st.integers(1, 8),
    E=st.integers(1, 300),
    distinct=st.integers(1, 300),
    int32=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_ids_equal_reference(T, K, E, distinct, int32, seed):
    g = torch.Generator().manual_seed(seed)
    pool = torch.randperm(E, generator=g)[: min(distinct, E)]
    ids = pool[torch.randint(0, len(pool), (T, K), generator=g)]
    _same(ids.to(torch.int32 if int32 else torch.int64).to(DEVICE), E)


def test_dispatch_uses_kernel_when_it_serves(monkeypatch):
    def refuse(*args):
        raise AssertionError("the torch reference ran although the kernel serves this call")

    monkeypatch.setattr(moe_op, "sort_by_expert_reference", refuse)
    ids = _router_ids(9, 16, 4)
    for got, want in zip(sort_by_expert(ids, 16), triton_sort_by_expert(ids, 16)):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "ids, E, match",
    [
        (torch.zeros(4, 2, dtype=torch.int64), MAX_SORT_EXPERTS + 1, "num_experts"),
        (torch.zeros(4, 2, dtype=torch.int64), 0, "num_experts"),
        (torch.zeros(4, 2), 8, "dtype"),
        (torch.zeros(8, dtype=torch.int64), 8, r"\(T, K\)"),
    ],
)
def test_refusals_fall_back_to_reference(ids, E, match):
    ids = ids.to(DEVICE)
    problem = sort_unsupported(ids, E)
    assert problem is not None and re.search(match, problem), problem
    with pytest.raises(ValueError, match=match):
        triton_sort_by_expert(ids, E)
    if E >= 1 and ids.dim() == 2 and not ids.is_floating_point():
        for got, want in zip(sort_by_expert(ids, E), sort_by_expert_reference(ids, E)):
            assert torch.equal(got, want)


@pytest.mark.skipif(CUDA, reason="CPU tensors outside the interpreter exist only without CUDA here")
def test_cpu_without_interpreter_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ids = _router_ids(5, 8, 2)
    assert "TRITON_INTERPRET" in sort_unsupported(ids, 8)
    for got, want in zip(sort_by_expert(ids, 8), sort_by_expert_reference(ids, 8)):
        assert torch.equal(got, want)


@pytest.mark.gpu
@requires_cuda
def test_no_host_sync_and_graph_capture():
    ids = _router_ids(64, 256, 8)
    triton_sort_by_expert(ids, 256)  # compile outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        triton_sort_by_expert(ids, 256)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = triton_sort_by_expert(ids, 256)
    ids.copy_(_router_ids(64, 256, 8, seed=5))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, sort_by_expert_reference(ids, 256)):
        assert torch.equal(got, want)


def test_a_kernel_that_fails_to_compile_falls_back_once(monkeypatch):
    """A toolchain that refuses the sort kernel costs a warning, not the MoE: the torch sort
    serves from then on, with the same tensors."""
    from lladauni.kernels.moe import op

    monkeypatch.setattr(op, "_SORT_FAILURE", None)
    monkeypatch.setattr(op, "sort_unsupported", lambda ids, e: None)

    def broken(ids, e):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(op, "triton_sort_by_expert", broken)
    ids = torch.randint(0, 8, (5, 2), generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="sort-by-expert kernel failed .RuntimeError: PTX assembly failed"):
        got = op.sort_by_expert(ids, 8)
    for a, b in zip(got, sort_by_expert_reference(ids, 8)):
        assert torch.equal(a, b)
    monkeypatch.setattr(op, "triton_sort_by_expert", lambda ids, e: pytest.fail("the broken kernel is not retried"))
    op.sort_by_expert(ids, 8)
