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
