"""The static loop (``cache="static"``): a preallocated cache written in place and fixed-shape
steps with sampling and unmasking on the device. On CPU it runs the very functions a CUDA graph
captures, and must give the exact cache's tokens for every kind of run (fp32)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lladauni.model_core import load_backbone
from lladauni.model_core.backbone import StaticKVCache
from lladauni.model_core.generation import BlockDiffusionSampler, CFGSpec
from lladauni.model_core.generation.sampling import quota_transfer, quota_transfer_on_device
from lladauni.model_core.generation.static_loop import CAPACITY_QUANTUM, capacity_for
from lladauni.model_core.layers.attention import AttentionMask

from tests.sampler_fixtures import EOS, MASK, OFFSET, prompt_ids, run_seeded


_prompt, _run = prompt_ids, run_seeded


def _same(sampler, prompt, **kw):
    exact = _run(sampler, prompt, cache="exact", **kw)
    static = _run(sampler, prompt, cache="static", **kw)
    assert torch.equal(exact.tokens, static.tokens), (exact.tokens.tolist(), static.tokens.tolist())
    return exact, static


# ---------------------------------------------------------------------------------- token identity
@pytest.mark.parametrize(
    "plen,kw",
    [
        (70, dict(gen_length=96, steps=8)),  # prompt ends inside a block
        (64, dict(gen_length=64, steps=32)),  # prompt of whole blocks, one commit per step
        (3, dict(gen_length=40, steps=4)),  # no whole prompt block: nothing prefilled
        (5, dict(gen_length=40, steps=4, temperature=0.8, top_k=50)),
        (40, dict(gen_length=24, steps=3, temperature=1.0, top_p=0.9)),
        (33, dict(gen_length=64, steps=8, threshold=0.0)),  # threshold commits whole blocks early
    ],
)
def test_static_matches_exact_text(sampler, plen, kw):
    _same(sampler, _prompt(plen, seed=plen), eos_early_stop=False, **kw)


def test_static_matches_exact_image_with_cfg(sampler):
    null = _prompt(20, seed=4)
    kw = dict(gen_length=64, steps=8, image_only=True, cfg=CFGSpec("simple", null_ids=null, scale=4.0))
    exact, static = _same(sampler, _prompt(45, seed=3), **kw)
    assert (static.generated >= OFFSET).all() and static.generated.shape[0] == 64


def test_static_matches_exact_editing_cfg_sampled(sampler):
    cfg = CFGSpec("editing", null_ids=_prompt(40, seed=6), null_image_ids=_prompt(12, seed=7), text_scale=4.0, image_scale=0.5)
    _same(sampler, _prompt(50, seed=5), gen_length=48, steps=8, image_only=True, cfg=cfg)
    _same(sampler, _prompt(50, seed=5), gen_length=48, steps=8, image_only=True, cfg=cfg, temperature=1.0)


@contextlib.contextmanager
def _stop_where(model, stop_id, late):
    """The stop token's lm_head row made a copy (x1.05) of ``late``'s, restored afterwards."""
    with torch.no_grad():
        saved = model.lm_head.weight[stop_id].clone()
        model.lm_head.weight[stop_id] = model.lm_head.weight[late] * 1.05
    try:
        yield
    finally:
        with torch.no_grad():
            model.lm_head.weight[stop_id] = saved


def _late_token(sampler, prompt):
    """A token the plain run first writes 40 or more positions in."""
    plain = _run(sampler, prompt, cache="exact", gen_length=128, steps=8).generated.tolist()
    return next(t for i, t in enumerate(plain) if i >= 40 and t not in plain[:i])


def test_static_matches_exact_with_early_stop_and_stop_ids(model, sampler):
    """Text that stops inside a later block: the stop token's lm_head row is a copy (x1.05) of a
    token that the plain run first produces late, so the stop appears where that token would
    have. Same cut and tokens with eos and with an extra stop id (interleaving's <boi>)."""
    prompt = _prompt(20, seed=9)
    late = _late_token(sampler, prompt)
    for stop_id, stop_ids in ((EOS, ()), (12345, (12345,))):
        with _stop_where(model, stop_id, late):
            exact, static = _same(sampler, prompt, gen_length=128, steps=8, stop_ids=stop_ids)
        assert 20 + 40 < exact.tokens.shape[0] < 20 + 128 and exact.tokens[-1] == stop_id  # stopped mid-way
        assert exact.forwards <= static.forwards <= exact.forwards + 128 // 32  # at most one no-op step a block


def test_static_stops_mid_block_at_the_exact_step(model, sampler):
    """Traced runs read each step's status at once, so they take the exact loop's very steps: a
    stop settled mid-block with masks left after it (here at step 4 of 8, 12 positions still masked;
    eos and an extra stop id) ends both there, not at the block's end."""
    prompt = _prompt(20, seed=29)
    late = _late_token(sampler, prompt)
    for stop_id, stop_ids in ((EOS, ()), (12345, (12345,))):
        with _stop_where(model, stop_id, late):
            exact, static = _same(sampler, prompt, gen_length=128, steps=8, stop_ids=stop_ids, record_trace=True)
        last = exact.trace[-1].block
        committed = {p for r in exact.trace if r.block == last for p in r.committed}
        assert exact.tokens[-1] == stop_id and len(set(range(last * 32, last * 32 + 32)) - committed) > 0  # masks left
        assert [(r.block, r.step, r.committed) for r in exact.trace] == [(r.block, r.step, r.committed) for r in static.trace]
        assert exact.forwards == static.forwards


def test_static_trace_equals_exact_trace(sampler):
    prompt = _prompt(30, seed=11)
    exact, static = _same(sampler, prompt, gen_length=64, steps=4, record_trace=True, eos_early_stop=False)
    assert [(r.block, r.step, r.committed) for r in exact.trace] == [(r.block, r.step, r.committed) for r in static.trace]
    for a, b in zip(exact.trace, static.trace):
        torch.testing.assert_close(torch.tensor(b.confidences), torch.tensor(a.confidences), rtol=1e-5, atol=1e-6)
    assert exact.forwards == static.forwards


def test_static_workspace_is_reused_and_independent_of_previous_runs(sampler):
    """A second run of the same shape reuses the workspace (no stale keys leak: different prompts
    give the exact cache's tokens); another shape builds its own, and the first one is kept."""
    _same(sampler, _prompt(64, seed=1), gen_length=64, steps=8)
    ws = sampler.static_workspace
    _same(sampler, _prompt(64, seed=2), gen_length=64, steps=8)
    assert sampler.static_workspace is ws
    _same(sampler, _prompt(64, seed=2), gen_length=32, steps=8, cfg=CFGSpec("simple", null_ids=_prompt(9), scale=2.0))
    assert sampler.static_workspace is not ws
    _same(sampler, _prompt(64, seed=3), gen_length=64, steps=8)
    assert sampler.static_workspace is ws
    sampler.release_static()
    assert sampler.static_workspace is None


# ---------------------------------------------------------------------------------- the pieces
def test_static_cache_forward_equals_concatenated_cache(model):
    """One step over a static buffer (prefix written at its positions, garbage-free tail hidden)
    equals the same step over a concatenated cache, and writes its keys where asked."""
    torch.manual_seed(0)
    V = model.config.vocab_size
    prefix, B, C = 64, 32, 256
    ids = torch.randint(0, 150000, (2, prefix + B))
    pre = model(ids[:, :prefix], torch.arange(prefix), return_kv=True, logits_for=0).kv
    ref = model(ids[:, prefix:], torch.arange(prefix, prefix + B), AttentionMask.prefix_and_block(prefix, B), past=pre)
    cache = StaticKVCache.allocate(model.config, 2, C, dtype=torch.float32, device="cpu")
    for i, (k, v) in enumerate(zip(pre.keys, pre.values)):
        cache.keys[i][:, :, :prefix] = k
        cache.values[i][:, :, :prefix] = v
    cache.values[0][:, :, prefix + B :] = 1e4  # live-range masking must hide this
    start = torch.tensor(prefix)
    cache.write_at = start + torch.arange(B)
    mask = AttentionMask.static_block(start, B, torch.arange(C))
    out = model(ids[:, prefix:], torch.arange(prefix, prefix + B), mask, past=cache, return_kv=True)
    assert out.logits.shape == (2, B, V)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(cache.keys[-1][:, :, prefix : prefix + B], out.kv.keys[-1])


def test_static_block_mask_equals_prefix_and_block():
    start, B, C = torch.tensor(5), 3, 12
    valid = torch.ones(2, C, dtype=torch.bool)
    valid[1, :2] = False
    m = AttentionMask.static_block(start, B, torch.arange(C), row_valid=valid)
    ref = AttentionMask.prefix_and_block(5, 3, key_valid=valid[:, :8])
    assert torch.equal(m.dense().allowed[..., :8].expand(2, 1, 3, 8), ref.dense().allowed.expand(2, 1, 3, 8))
    assert not m.dense().allowed[..., 8:].any()
    assert m.sees_everything() is False


def test_static_call_checks(model):
    cache = StaticKVCache.allocate(model.config, 1, 64, dtype=torch.float32, device="cpu")
    ids = torch.zeros(1, 4, dtype=torch.long)
    mask = AttentionMask.static_block(torch.tensor(0), 4, torch.arange(64))
    with pytest.raises(ValueError, match="write_at"):
        model(ids, torch.arange(4), mask, past=cache)
    cache.write_at = torch.arange(4)
    with pytest.raises(ValueError, match="position_ids and mask"):
        model(ids, None, mask, past=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.arange(4), mask, past=cache)
    with pytest.raises(ValueError, match="64 keys"):
        model(ids, torch.arange(4), AttentionMask.prefix_and_block(0, 4), past=cache)
    with pytest.raises(ValueError, match="capacity"):
        StaticKVCache.allocate(model.config, 1, 0, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("seed", range(30))
def test_quota_on_device_equals_quota_transfer(seed):
    g = torch.Generator().manual_seed(seed)
    L = 32
    prob = torch.rand(L, generator=g)
    masked = torch.rand(L, generator=g) < torch.rand(1, generator=g)
    for quota in (0, 1, 3, 7, 32):
        for threshold in (0.0, 0.5, 0.95, 1.0):
            got = quota_transfer_on_device(prob, masked, torch.tensor(quota), threshold)
            assert torch.equal(got, quota_transfer(prob, masked, quota, threshold)), (quota, threshold)


def test_capacity_buckets():
    assert capacity_for(1) == CAPACITY_QUANTUM
    assert capacity_for(CAPACITY_QUANTUM) == CAPACITY_QUANTUM
    assert capacity_for(CAPACITY_QUANTUM + 1) == 2 * CAPACITY_QUANTUM


def test_new_weights_or_backends_get_a_new_workspace(tiny_ckpt):
    """Graphs read the weights where they were captured and replay the kernels chosen then:
    replacing a parameter (as an FP8 conversion or a reload does) or the backends must not reuse
    the old workspace."""
    m = load_backbone(tiny_ckpt)
    s = BlockDiffusionSampler(m, mask_id=MASK, eos_id=EOS)
    _run(s, _prompt(30), cache="static", gen_length=32, steps=4)
    ws = s.static_workspace
    _run(s, _prompt(31), cache="static", gen_length=32, steps=4)
    assert s.static_workspace is ws
    layer = m.model.layers[1].attention.dense
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone())
    _same(s, _prompt(30), gen_length=32, steps=4)
    assert s.static_workspace is not ws
    ws = s.static_workspace
    m.set_backends(attn="eager")  # graphs replay the kernels chosen at capture
    _same(s, _prompt(30), gen_length=32, steps=4)
    assert s.static_workspace is not ws


def test_graphs_only_on_cuda_and_never_for_streamed_experts(tiny_ckpt, monkeypatch):
    from lladauni.model_core.expert_storage import offload_experts
    from lladauni.model_core.generation.static_loop import graphs_enabled

    m = load_backbone(tiny_ckpt)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert graphs_enabled(cuda, m) and not graphs_enabled(cpu, m)
    monkeypatch.setenv("LLADAUNI_CUDA_GRAPHS", "0")
    assert not graphs_enabled(cuda, m)
    monkeypatch.delenv("LLADAUNI_CUDA_GRAPHS")
    offload_experts(m, "cpu")
    assert not graphs_enabled(cuda, m)


def test_failed_capture_warns_once_and_runs_eagerly(tiny_ckpt, monkeypatch, caplog):
    """Where capture fails (here: no CUDA at all), the stepper says why once and runs the same
    step eagerly; the warm-up's commits are undone, so the tokens are still the exact cache's."""
    from lladauni.model_core.generation import static_loop

    class NoStream:
        def wait_stream(self, other):
            pass

    def no_graph():
        raise RuntimeError("capture refused")

    monkeypatch.setattr(static_loop, "graphs_enabled", lambda device, model=None: True)
    # streams that do nothing, so the warm-up really runs (and commits) before capture fails
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: NoStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: NoStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graph)
    s = BlockDiffusionSampler(load_backbone(tiny_ckpt), mask_id=MASK, eos_id=EOS)
    with pytest.warns(RuntimeWarning, match="static denoising step failed .RuntimeError: capture refused"):
        exact, static = _same(s, _prompt(30, seed=4), gen_length=64, steps=4, record_trace=True)
    assert [r.committed for r in exact.trace] == [r.committed for r in static.trace]
    assert s.static_workspace.use_graphs is False and s.static_workspace.captured == []
    assert any("capture of the static denoising step failed" in r.getMessage() for r in caplog.records)


def _gather_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, *scales):
    """loop_moe's combination without its host sync (bincount + tolist): each assignment gathers
    its expert's weights. Capturable, like the Triton kernel on a GPU; fine at tiny sizes only."""
    T, K = topk_ids_TK.shape
    I = gate_up_EIH.shape[1] // 2
    xs = x_TH[:, None].expand(T, K, x_TH.shape[1]).reshape(T * K, -1)
    gu = torch.einsum("ah,aih->ai", xs, gate_up_EIH[topk_ids_TK.reshape(-1)])
    h = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
    y = torch.einsum("ai,ahi->ah", h, down_EHI[topk_ids_TK.reshape(-1)]).view(T, K, -1)
    return (y.float() * topk_weights_TK.unsqueeze(-1)).sum(dim=1).to(x_TH.dtype)


@pytest.fixture()
def emulated_graphs(monkeypatch):
    """Static steppers 'capture' through tests/graph_emulator.py: ops recorded once (host syncs and
    data-dependent shapes refused), nothing executed while recording, replays rerun the ops on the
    recorded tensors without rerunning Python. The MoE runs a capturable torch backend (the loop
    backend syncs, and is refused, as capture on a GPU refuses it)."""
    from lladauni.model_core.moe import register_moe_backend

    register_moe_backend("gather_test", _gather_moe)
    from lladauni.model_core.generation import static_loop

    from tests.graph_emulator import emulate_cuda_graphs

    emulate_cuda_graphs(monkeypatch)  # the stepper's own capture code runs, on emulated graphs
    monkeypatch.setattr(static_loop, "graphs_enabled", lambda device, model=None: True)


@pytest.mark.parametrize(
    "kw",
    [
        dict(gen_length=64, steps=8),
        dict(gen_length=64, steps=4, temperature=1.0, top_k=50),
        dict(gen_length=64, steps=8, image_only=True, cfg=CFGSpec("simple", null_ids=list(range(100, 109)), scale=4.0)),
        dict(gen_length=32, steps=8, image_only=True, cfg=CFGSpec("editing", null_ids=list(range(10, 50)),
                                                                  null_image_ids=list(range(60, 72)), text_scale=4.0, image_scale=0.5)),
    ],
    ids=["greedy", "sampled", "image_cfg", "edit_cfg"],
)
def test_replayed_steps_equal_the_exact_cache(tiny_ckpt, emulated_graphs, kw):
    """The captured functions replayed, not rerun: same tokens as the exact cache, and every step
    and commit went through a graph (none of them syncs with the host)."""
    s = BlockDiffusionSampler(load_backbone(tiny_ckpt).set_backends(moe="gather_test"), mask_id=MASK, eos_id=EOS)
    exact, static = _same(s, _prompt(45, seed=8), record_trace=True, **kw)
    # the warm-up before capture commits for real (two steps): undone, or the first steps differ
    assert [(r.block, r.step, r.committed) for r in exact.trace] == [(r.block, r.step, r.committed) for r in static.trace]
    assert s.static_workspace.captured == (["commit", "step"] if "temperature" not in kw else ["commit", "logits"])
    s.release_static()
    _same(s, _prompt(45, seed=8), **kw)  # untraced (greedy: the lagged status reads)
