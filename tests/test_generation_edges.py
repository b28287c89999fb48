"""Edge cases of the generation code that the mutation run (bench/mutation.py) showed unguarded:
degenerate vocabularies and counts, logits large enough to overflow float32 in the Gumbel step,
top-p at exactly 1 over a long vocabulary, the position limit at equality, and the sampler's
forward counter. Each expected value is worked out from MODEL_SPEC §5 in the test, by hand or in
float64."""

from __future__ import annotations

import math

import pytest
import torch

from lladauni.model_core import load_backbone
from lladauni.model_core.generation import BlockDiffusionSampler, SamplerConfig, SprintConfig
from lladauni.model_core.generation.sampling import (
    _top_p_filter,
    adaptive_transfer,
    confidence_scores,
    transfer_schedule,
)
from lladauni.model_core.generation.sprint import prune_prefix

MASK, EOS, OFFSET = 156895, 156892, 157184


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_backbone(tiny_ckpt)


def _prompt(n, seed=0):
    return torch.randint(0, 150000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# ----------------------------------------------------------------------------- counts
def test_no_steps_means_an_empty_schedule():
    assert transfer_schedule(32, 0) == []
    assert transfer_schedule(32, -3) == []


def test_adaptive_with_no_steps_left_commits_like_one_step_left():
    """steps_left is clamped to 1: every masked position is committed, never a division by zero."""
    L, V = 6, 5
    logits = torch.randn(L, V, generator=torch.Generator().manual_seed(0))
    masked = torch.tensor([True, False, True, True, False, True])
    for steps_left in (0, 1):
        x0, commit = adaptive_transfer(
            logits, masked, torch.full((L,), MASK), temperature=0.0, top_p=None, top_k=None,
            remasking="low_confidence", steps_left=steps_left, minimal_topk=1, threshold=2.0, generator=None,
        )
        assert commit.tolist() == masked.tolist()


# ----------------------------------------------------------------------------- tiny vocabularies
def test_confidence_with_a_one_token_vocabulary():
    """V = 1: p = 1 everywhere. low_confidence 1, margin 0 (no second token), neg_entropy 1 (zero
    entropy; the log V normaliser is replaced by 1 when log V = 0)."""
    logits = torch.tensor([[3.0], [-2.0], [0.5]])
    x0 = torch.zeros(3, dtype=torch.long)
    masked = torch.tensor([True, True, False])
    lc = confidence_scores(logits, x0, masked, "low_confidence", None)
    mg = confidence_scores(logits, x0, masked, "top_k_margin", None)
    ne = confidence_scores(logits, x0, masked, "neg_entropy", None)
    assert lc[:2].tolist() == [1.0, 1.0] and lc[2] == -math.inf
    assert mg[:2].tolist() == [0.0, 0.0] and mg[2] == -math.inf
    torch.testing.assert_close(ne[:2], torch.ones(2), atol=1e-6, rtol=0)
    assert ne[2] == -math.inf


def test_confidence_with_a_two_token_vocabulary():
    """V = 2, three masked rows (rows != V, so axis slips show): margin |p1 - p0|, neg_entropy
    1 - H / log 2, computed here in float64."""
    probs = [(0.9, 0.1), (0.3, 0.7), (0.55, 0.45)]
    logits = torch.log(torch.tensor(probs, dtype=torch.float32))
    x0 = torch.tensor([0, 1, 0])
    masked = torch.ones(3, dtype=torch.bool)
    mg = confidence_scores(logits, x0, masked, "top_k_margin", None)
    ne = confidence_scores(logits, x0, masked, "neg_entropy", None)
    want_mg = [abs(a - b) for a, b in probs]
    want_ne = [1.0 - (-(a * math.log(a) + b * math.log(b))) / math.log(2.0) for a, b in probs]
    torch.testing.assert_close(mg, torch.tensor(want_mg), atol=1e-6, rtol=0)
    torch.testing.assert_close(ne, torch.tensor(want_ne), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- float64 Gumbel step
def test_gumbel_step_does_not_overflow_for_large_logits():
    """Guided logits can exceed 88.7, where exp overflows in float32 (every candidate becomes inf
    and argmax takes the first). In float64, exp(l) / (-log u)^T is finite and the noisy argmax
    follows the naive float64 computation with the same uniform draws."""
    L, V = 64, 4
    base = torch.tensor([100.0, 99.5, 99.0, 98.0])
    logits = base.repeat(L, 1)
    masked = torch.ones(L, dtype=torch.bool)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x0, _ = adaptive_transfer(
            logits, masked, torch.full((L,), MASK), temperature=1.0, top_p=None, top_k=None,
            remasking="low_confidence", steps_left=1, minimal_topk=1, threshold=2.0, generator=g,
        )
        u = torch.rand((L, V), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        want = [max(range(V), key=lambda j: math.exp(float(base[j])) / -math.log(u[i][j])) for i in range(L)]
        assert x0.tolist() == want
        assert len(set(want)) > 1  # the draw really varies between candidates


# ----------------------------------------------------------------------------- top-p at 1
def test_top_p_of_one_keeps_every_token_even_when_the_float_sum_passes_one():
    """p = 1 disables the filter. Over a long vocabulary the float32 cumulative sum passes 1.0
    before the last token, so running the filter at p = 1 would drop real candidates."""
    logits = 3.0 * torch.randn(4, 50_000, generator=torch.Generator().manual_seed(0))
    cum = torch.cumsum(torch.softmax(torch.sort(logits, descending=True).values, -1), -1)
    assert bool((cum > 1.0).any())  # the case the test needs
    assert torch.equal(_top_p_filter(logits, 1.0, float("-inf")), logits)


# ----------------------------------------------------------------------------- SPRINT, one position
def test_prune_a_single_padding_position_keeps_nothing():
    keys = [torch.ones(1, 2, 1, 4)]
    values = [torch.ones(1, 2, 1, 4)]
    cfg = SprintConfig(keep_ratio=0.5, confidence_alpha=1.0)
    k, v = prune_prefix(keys, values, torch.tensor([MASK]), None, torch.tensor([False]), cfg, OFFSET)
    assert k[0].shape[2] == 0 and v[0].shape[2] == 0
    k, _ = prune_prefix(keys, values, torch.tensor([OFFSET + 3]), None, torch.tensor([True]), cfg, OFFSET)
    assert k[0].shape[2] == 1


# ----------------------------------------------------------------------------- the sampler
def test_prompt_plus_generation_may_fill_every_position(model):
    """nb * B == max_position_embeddings is allowed; one block more is refused."""
    import dataclasses

    m = model
    limited = dataclasses.replace(m.config, max_position_embeddings=96)
    saved = m.config
    try:
        m.config = limited
        s = BlockDiffusionSampler(m, mask_id=MASK, eos_id=EOS)
        r = s.generate(_prompt(40), SamplerConfig(gen_length=56, steps=2, eos_early_stop=False))
        assert r.tokens.shape[0] == 96
        with pytest.raises(ValueError, match="positions"):
            s.generate(_prompt(40), SamplerConfig(gen_length=57, steps=2, eos_early_stop=False))
    finally:
        m.config = saved


@pytest.mark.parametrize("cache", ["none", "exact"])
def test_forward_count_is_the_number_of_backbone_calls(model, cache):
    """forwards / forward_tokens count what ran. Prompt 40, gen 56, steps 4 (quota 8 per step),
    threshold > 1 so nothing is committed early: block 1 holds 8 prompt tokens and 24 masks (3
    steps), block 2 32 masks (4 steps). 'none' runs 3 windows of 64 and 4 of 96 tokens; 'exact'
    prefills the prompt's whole block (32), runs 7 steps of 32 tokens and adds block 1 to the cache
    (32) before block 2."""
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    calls = []
    real = model.forward

    def spy(ids, *a, **kw):
        calls.append(ids.numel())
        return real(ids, *a, **kw)

    model.forward = spy
    try:
        r = s.generate(_prompt(40, seed=1), SamplerConfig(gen_length=56, steps=4, threshold=2.0, eos_early_stop=False,
                                                          cache=cache))
    finally:
        del model.forward
    assert r.forwards == len(calls) and r.forward_tokens == sum(calls)
    if cache == "none":
        assert calls == [64] * 3 + [96] * 4
    else:
        assert calls == [32] + [32] * 3 + [32] + [32] * 4


def test_prefix_confidences_are_computed_only_when_pruning_blends_them(model, monkeypatch):
    """SPRINT reads the prefix's max probabilities only with keep_ratio < 1 and alpha < 1; the
    exact cache and SPRINT without blending never run lm_head over the prefix."""
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    seen = []
    real = s._max_prob
    monkeypatch.setattr(s, "_max_prob", lambda h, *a, **kw: seen.append(h.shape[1]) or real(h, *a, **kw))
    kw = dict(gen_length=40, steps=4, eos_early_stop=False)
    for cache, sp in (("exact", SprintConfig()), ("sprint", SprintConfig(keep_ratio=1.0)),
                      ("sprint", SprintConfig(keep_ratio=0.5, confidence_alpha=1.0))):
        s.generate(_prompt(40, seed=2), SamplerConfig(cache=cache, sprint=sp, **kw))
        assert seen == [], (cache, sp)
    s.generate(_prompt(40, seed=2), SamplerConfig(cache="sprint", sprint=SprintConfig(keep_ratio=0.5), **kw))
    assert seen == [32, 32]  # the prompt's whole block, then block 1


def test_confidence_of_one_masked_row_over_a_one_token_vocabulary():
    logits = torch.tensor([[0.7], [1.5]])
    masked = torch.tensor([True, False])
    lc = confidence_scores(logits, torch.zeros(2, dtype=torch.long), masked, "low_confidence", None)
    assert lc.tolist() == [1.0, -math.inf]


def test_steps_are_capped_by_gen_length_over_minimal_topk(model):
    """steps = min(steps, gen_length // minimal_topk) (§5.1 setup 1): gen 10 with minimal_topk 3
    gives 3 steps per block, an integer; threshold > 1 so every step runs."""
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    r = s.generate(_prompt(32, seed=3), SamplerConfig(gen_length=10, steps=32, minimal_topk=3, threshold=2.0,
                                                      eos_early_stop=False, cache="none"))
    assert r.forwards == 3 and (r.generated != MASK).all()


def test_token_ids_zero_and_last_are_valid_prompt_ids(model):
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    vocab = model.config.vocab_size
    r = s.generate([0, 5, vocab - 1], SamplerConfig(gen_length=8, steps=2, eos_early_stop=False))
    assert r.tokens[:3].tolist() == [0, 5, vocab - 1]
    with pytest.raises(ValueError, match="out of range"):
        s.generate([-1, 5], SamplerConfig(gen_length=8, steps=2))


def test_sprint_blends_the_prefix_max_probabilities(model, monkeypatch):
    """The confidences SPRINT blends into the prefix ranking are each prefix position's max softmax
    probability, here recomputed from one full block-causal forward of the finished window."""
    import lladauni.model_core.generation.sampler as sampler_mod
    from lladauni.model_core import AttentionMask

    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    seen = []
    real = sampler_mod.prune_prefix

    def spy(keys, values, prefix_ids, confidence, *a):
        seen.append((prefix_ids.clone(), None if confidence is None else confidence.clone()))
        return real(keys, values, prefix_ids, confidence, *a)

    monkeypatch.setattr(sampler_mod, "prune_prefix", spy)
    r = s.generate(_prompt(64, seed=4), SamplerConfig(gen_length=64, steps=4, eos_early_stop=False, cache="sprint",
                                                      sprint=SprintConfig(keep_ratio=0.5, cache_warmup_steps=1)))
    assert len(seen) == 2  # blocks 2 and 3 (prefix 64, then 96)
    ids, conf = seen[1]
    window = r.tokens[:96]
    assert torch.equal(ids, window)
    mask = AttentionMask.block_causal(96, 32)
    with torch.no_grad():
        logits = model(window[None], torch.arange(96)[None], mask).logits[0].double()
    want = torch.softmax(logits, -1).max(-1).values
    torch.testing.assert_close(conf.double(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("field", ["gen_length", "block_length", "steps", "minimal_topk"])
def test_sampler_config_counts_are_positive_ints(field):
    SamplerConfig(**{field: 1})
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=field):
            SamplerConfig(**{field: bad})


def test_sampler_config_ranges_at_their_edges():
    SamplerConfig(temperature=0.0)
    SamplerConfig(top_p=1.0)
    SamplerConfig(top_p=1e-6)
    for kw, name in ((dict(temperature=-1e-9), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.0 + 1e-9), "top_p"),
                     (dict(cache="fast"), "cache"), (dict(sprint=SprintConfig(remasking="nope")), "remasking")):
        with pytest.raises(ValueError, match=name):
            SamplerConfig(**kw)
    for cache in ("none", "exact", "sprint"):
        SamplerConfig(cache=cache)


def test_sprint_trace_records_the_committed_tokens_probabilities(model):
    """record_trace on the adaptive path: the first step of the first generated block sees the
    prompt and masks only, so its committed positions' probabilities can be recomputed from one
    full-window forward."""
    from lladauni.model_core import AttentionMask

    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    prompt = _prompt(32, seed=6)
    r = s.generate(prompt, SamplerConfig(gen_length=32, steps=4, eos_early_stop=False, cache="sprint", record_trace=True,
                                         sprint=SprintConfig(keep_ratio=1.0)))
    first = r.trace[0]
    assert first.block == 1 and first.step == 0 and len(first.committed) >= 8
    ids = torch.tensor(prompt + [MASK] * 32)
    with torch.no_grad():
        logits = model(ids[None], torch.arange(64)[None], AttentionMask.block_causal(64, 32)).logits[0, 32:].double()
    probs = torch.softmax(logits, -1)
    want = [float(probs[p - 32, r.tokens[p]]) for p in first.committed]
    assert first.confidences == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_sprint_with_a_prompt_shorter_than_a_block(model):
    """The first generated block has no prefix to prune (prefix_len 0), so it never takes the pruned
    path; with keep_ratio 1 the whole run equals the baseline."""
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    kw = dict(gen_length=59, steps=32, eos_early_stop=False)  # steps = block: the adaptive count equals the quota
    base = s.generate(_prompt(5, seed=7), SamplerConfig(cache="none", **kw))
    sp = s.generate(_prompt(5, seed=7), SamplerConfig(cache="sprint", sprint=SprintConfig(keep_ratio=1.0,
                                                                                        cache_warmup_steps=0), **kw))
    assert torch.equal(base.tokens, sp.tokens)


def test_prompt_must_be_one_dimensional(model):
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    with pytest.raises(ValueError, match="1-D"):
        s.generate(torch.tensor([[1, 2], [3, 4]]), SamplerConfig(gen_length=8, steps=2))
    r = s.generate(torch.tensor([1, 2, 3]), SamplerConfig(gen_length=8, steps=2, eos_early_stop=False))
    assert r.tokens[:3].tolist() == [1, 2, 3]


def test_seconds_is_the_call_s_own_wall_time(model):
    import time

    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    t0 = time.perf_counter()
    r = s.generate(_prompt(8), SamplerConfig(gen_length=8, steps=2, eos_early_stop=False))
    assert 0 < r.seconds <= time.perf_counter() - t0


def test_rescale_of_nearly_constant_logits():
    """Rows with a spread near the 1e-6 guard: rescale factor std(c) / (std(out) + 1e-6), written
    out in float64."""
    from lladauni.model_core.generation import CFGSpec

    g = torch.Generator().manual_seed(0)
    c = 5.0 + 2e-6 * torch.randn(3, 40, generator=g, dtype=torch.float64)
    u = 5.0 + 1e-6 * torch.randn(3, 40, generator=g, dtype=torch.float64)
    spec = CFGSpec("simple", null_ids=[1], scale=2.0, rescale=0.7)
    got = BlockDiffusionSampler._guide(None, torch.stack([c, u]), SamplerConfig(cfg=spec))
    out = u + 2.0 * (c - u)
    factor = c.std(-1, keepdim=True) / (out.std(-1, keepdim=True) + 1e-6)
    want = 0.7 * out * factor + 0.3 * out
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_prefix_max_probabilities_of_a_prompt_longer_than_one_lm_head_chunk(model, monkeypatch):
    """A 300-token prompt prefills 288 positions at once, more than one 256-position lm_head
    chunk: every prefix position still gets its max probability."""
    import lladauni.model_core.generation.sampler as sampler_mod
    from lladauni.model_core import AttentionMask

    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    seen = []
    real = sampler_mod.prune_prefix

    def spy(keys, values, prefix_ids, confidence, *a):
        seen.append(confidence.clone())
        return real(keys, values, prefix_ids, confidence, *a)

    monkeypatch.setattr(sampler_mod, "prune_prefix", spy)
    prompt = _prompt(300, seed=8)
    s.generate(prompt, SamplerConfig(gen_length=20, steps=2, eos_early_stop=False, cache="sprint",
                                     sprint=SprintConfig(keep_ratio=0.5, cache_warmup_steps=1)))
    assert len(seen) == 1 and seen[0].shape == (288,)
    with torch.no_grad():
        logits = model(torch.tensor(prompt[:288])[None], torch.arange(288)[None],
                       AttentionMask.block_causal(288, 32)).logits[0].double()
    torch.testing.assert_close(seen[0].double(), torch.softmax(logits, -1).max(-1).values, atol=1e-5, rtol=1e-4)


def test_minimal_topk_over_gen_length_is_refused(model):
    """steps = min(steps, gen_length // minimal_topk) would be 0 and the result all masks; refused.
    minimal_topk == gen_length is one step per block that commits the whole block."""
    with pytest.raises(ValueError, match="minimal_topk=9 is more than gen_length=8"):
        SamplerConfig(gen_length=8, minimal_topk=9)
    s = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
    r = s.generate(_prompt(32, seed=9), SamplerConfig(gen_length=8, minimal_topk=8, threshold=2.0, eos_early_stop=False,
                                                      cache="none"))
    assert r.forwards == 1 and (r.generated != MASK).all()
