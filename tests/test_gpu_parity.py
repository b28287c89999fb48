"""The fast paths against the reference at the published layer width (bench/gpu_parity.py): fp32
parity of every backend within 1e-4 and the static loop's captured graphs token for token. The
full-width runs need a GPU; on the CPU the backend checks run small, through the Triton
interpreter (the static loop's CPU checks are tests/test_static_loop.py)."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_fixtures import DEVICE, needs_triton, requires_cuda

from bench.gpu_parity import backend_rows, build, static_loop_rows

pytestmark = needs_triton


@pytest.fixture(scope="module")
def small_model():
    return build(True, DEVICE)


def test_backends_agree_small(small_model):
    rows = backend_rows(small_model, DEVICE, True)
    assert rows and all(r["ok"] for r in rows), rows


@pytest.mark.gpu
@requires_cuda
def test_full_width_backends_and_captured_loop():
    model = build(False, torch.device("cuda"))
    rows = backend_rows(model, torch.device("cuda"), False)
    assert all(r["ok"] for r in rows), rows
    loop = static_loop_rows(model, torch.device("cuda"), False)
    assert all(r["ok"] and r["graphs"] for r in loop), loop
