from __future__ import annotations

import math

import pytest
import torch

from lladauni.model_core import load_backbone
from lladauni.model_core.generation import BlockDiffusionSampler, CFGSpec, SamplerConfig, SprintConfig
from lladauni.model_core.generation.sampler import _Branches
from lladauni.model_core.generation.sampling import adaptive_transfer, confidence_scores, quota_transfer, transfer_schedule
from lladauni.model_core.generation.sprint import prune_prefix

from tests.sampler_fixtures import EOS, MASK, OFFSET, prompt_ids, run_seeded


_prompt, _run = prompt_ids, run_seeded


# ---------------------------------------------------------------------------------- policies
def test_transfer_schedule():
    assert transfer_schedule(32, 8) == [4] * 8
    assert transfer_schedule(32, 5) == [7, 7, 6, 6, 6]
    assert transfer_schedule(32, 40) == [1] * 32 + [0] * 8
    assert sum(transfer_schedule(32, 7)) == 32


def test_quota_transfer_is_union_of_topq_and_threshold():
    prob = torch.tensor([0.99, 0.2, 0.97, 0.5, 0.96, 0.1])
    masked = torch.tensor([True, True, True, True, False, True])
    # 2 above threshold among masked (0, 2) >= quota 2 -> exactly those
    assert quota_transfer(prob, masked, 2, 0.95).tolist() == [True, False, True, False, False, False]
    # quota 3 > 2 above threshold -> top-3 masked by prob
    assert quota_transfer(prob, masked, 3, 0.95).tolist() == [True, False, True, True, False, False]
    # never more than the masked count; unmasked positions never chosen
    assert quota_transfer(prob, masked, 10, 0.95).sum() == 5


def test_confidence_policies():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    x0 = torch.tensor([0, 1])
    masked = torch.tensor([True, True])
    lc = confidence_scores(logits, x0, masked, "low_confidence", None)
    torch.testing.assert_close(lc, torch.tensor([0.7, 0.35]))
    mg = confidence_scores(logits, x0, masked, "top_k_margin", None)
    torch.testing.assert_close(mg, torch.tensor([0.5, 0.05]))
    ne = confidence_scores(logits, x0, masked, "neg_entropy", None)
    p = torch.tensor([0.7, 0.2, 0.1])
    torch.testing.assert_close(ne[0], 1 - (-(p * torch.log(p + 1e-10)).sum()) / math.log(3))
    part = confidence_scores(logits, x0, torch.tensor([False, True]), "low_confidence", None)
    assert part[0] == -math.inf
    with pytest.raises(ValueError, match="remasking"):
        confidence_scores(logits, x0, masked, "nope", None)


def test_adaptive_transfer_count_and_threshold():
    L, V = 32, 10
    logits = torch.zeros(L, V)
    logits[:, 3] = torch.linspace(0.0, 3.0, L)  # later positions more confident
    logits[0, 7] = 50.0  # position 0: max prob ~1 > threshold
    masked = torch.ones(L, dtype=torch.bool)
    x0, commit = adaptive_transfer(
        logits, masked, torch.full((L,), MASK), temperature=0.0, top_p=None, top_k=None, remasking="low_confidence",
        steps_left=8, minimal_topk=1, threshold=0.95, generator=None,
    )
    # ceil(32/8) = 4 most confident (positions 0 and 29..31) united with the above-threshold one (0)
    assert sorted(torch.nonzero(commit).flatten().tolist()) == [0, 29, 30, 31]
    assert x0[0] == 7 and x0[31] == 3


# ---------------------------------------------------------------------------------- branches
def test_cfg_branch_construction_by_hand():
    prompt = torch.tensor([10, 11, 12, 13, 14])
    cfg = CFGSpec("simple", null_ids=[7, 8, 9], scale=4.0)
    br = _Branches(prompt, cfg, total=8, mask_id=MASK)
    assert br.prompts.tolist() == [[10, 11, 12, 13, 14], [MASK, MASK, 7, 8, 9]]
    assert br.positions.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 1, 2, 3, 4, 5]]
    assert br.valid.tolist()[1] == [False, False, True, True, True, True, True, True]
    x = torch.tensor([10, 11, 12, 13, 14, 100, 101, 102])
    assert br.window(x, 3, 8).tolist() == [[13, 14, 100, 101, 102], [8, 9, 100, 101, 102]]
    # a null prompt longer than the prompt is left-truncated, no padding
    br2 = _Branches(torch.tensor([1, 2]), CFGSpec("simple", null_ids=[5, 6, 7], scale=2.0), total=4, mask_id=MASK)
    assert br2.prompts.tolist()[1] == [6, 7] and br2.pads == [0, 0]
    # inactive guidance (scale 1) runs one row
    assert _Branches(prompt, CFGSpec("simple", null_ids=[1], scale=1.0), 8, MASK).rows == 1
    ed = CFGSpec("editing", null_ids=[1, 2], null_image_ids=[3], text_scale=4.0)
    assert _Branches(prompt, ed, 8, MASK).rows == 3


def test_guidance_formulas(sampler):
    torch.manual_seed(0)
    c, u = torch.randn(4, 50), torch.randn(4, 50)
    cfg = SamplerConfig(cfg=CFGSpec("simple", null_ids=[1], scale=4.0, rescale=0.0))
    torch.testing.assert_close(sampler._guide(torch.stack([c, u]), cfg), u + 4.0 * (c - u))
    cfg = SamplerConfig(cfg=CFGSpec("simple", null_ids=[1], scale=4.0, rescale=0.7))
    g = u + 4.0 * (c - u)
    r = g * c.std(-1, keepdim=True) / (g.std(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(sampler._guide(torch.stack([c, u]), cfg), 0.7 * r + 0.3 * g)
    f, nt, ni = torch.randn(3, 4, 50)
    cfg = SamplerConfig(cfg=CFGSpec("editing", null_ids=[1], null_image_ids=[2], text_scale=4.0, image_scale=1.5, rescale=0.0))
    torch.testing.assert_close(sampler._guide(torch.stack([f, nt, ni]), cfg), nt + 4.0 * (f - nt) + 1.5 * (nt - ni))


# ---------------------------------------------------------------------------------- exactness of the cache
@pytest.mark.parametrize(
    "plen,kw",
    [
        (70, dict(gen_length=96, steps=8)),
        (64, dict(gen_length=64, steps=32)),
        (5, dict(gen_length=40, steps=4, temperature=0.8, top_k=50)),
        (40, dict(gen_length=24, steps=3, temperature=1.0, top_p=0.9)),
    ],
)
def test_exact_cache_matches_full_window_text(sampler, plen, kw):
    prompt = _prompt(plen, seed=plen)
    base = _run(sampler, prompt, cache="none", eos_early_stop=False, **kw)
    fast = _run(sampler, prompt, cache="exact", eos_early_stop=False, **kw)
    assert torch.equal(base.tokens, fast.tokens)
    assert fast.forward_tokens < base.forward_tokens


def test_exact_cache_matches_full_window_image_with_cfg(sampler):
    prompt = _prompt(45, seed=3)
    null = _prompt(20, seed=4)
    kw = dict(gen_length=64, steps=8, image_only=True, cfg=CFGSpec("simple", null_ids=null, scale=4.0))
    base = _run(sampler, prompt, cache="none", **kw)
    fast = _run(sampler, prompt, cache="exact", **kw)
    assert torch.equal(base.tokens, fast.tokens)
    assert (base.generated >= OFFSET).all() and base.generated.shape[0] == 64


def test_exact_cache_matches_full_window_editing_cfg(sampler):
    prompt = _prompt(50, seed=5)
    cfg = CFGSpec("editing", null_ids=_prompt(40, seed=6), null_image_ids=_prompt(12, seed=7), text_scale=4.0, image_scale=0.5)
    kw = dict(gen_length=48, steps=8, image_only=True, cfg=cfg)
    assert torch.equal(_run(sampler, prompt, cache="none", **kw).tokens, _run(sampler, prompt, cache="exact", **kw).tokens)


# ---------------------------------------------------------------------------------- SPRINT
def test_sprint_keep_all_matches_baseline_when_rules_coincide(sampler):
    """keep_ratio 1 prunes nothing; with steps == block_length the adaptive rule commits the same
    tokens as the quota rule, so SPRINT reproduces the baseline exactly (also with CFG, since our
    cache hides the null prompt's padding)."""
    prompt = _prompt(64, seed=8)
    kw = dict(gen_length=32, steps=32, eos_early_stop=False)
    base = _run(sampler, prompt, cache="none", **kw)
    sp = _run(sampler, prompt, cache="sprint", sprint=SprintConfig(keep_ratio=1.0, cache_warmup_steps=1), **kw)
    assert torch.equal(base.tokens, sp.tokens)
    cfg = CFGSpec("simple", null_ids=_prompt(30, seed=9), scale=3.0)
    kw = dict(gen_length=32, steps=32, image_only=True, cfg=cfg)
    base = _run(sampler, prompt, cache="none", **kw)
    sp = _run(sampler, prompt, cache="sprint", sprint=SprintConfig(keep_ratio=1.0, cache_warmup_steps=1), **kw)
    assert torch.equal(base.tokens, sp.tokens)


def test_sprint_official_padding_defect_is_reproducible(sampler):
    """With legacy_padding the null prompt's padding stays visible (official behaviour) and the
    CFG result departs from the baseline; the default hides it."""
    prompt = _prompt(64, seed=8)
    cfg = CFGSpec("simple", null_ids=_prompt(6, seed=9), scale=3.0)
    kw = dict(gen_length=32, steps=16, image_only=True, cfg=cfg)
    base = _run(sampler, prompt, cache="none", **kw)
    legacy = _run(sampler, prompt, cache="sprint", sprint=SprintConfig(keep_ratio=1.0, cache_warmup_steps=1, legacy_padding=True), **kw)
    assert not torch.equal(base.tokens, legacy.tokens)


def test_sprint_pruning_runs_and_saves_work(tiny_ckpt, monkeypatch):
    """The pruned path really runs: from step cache_warmup_steps on, each block's forwards see a
    prefix cache cut to max(int(prefix x keep_ratio), 1) positions (nothing pinned: text_keep_ratio
    0.5), and keep_ratio 1 cuts nothing."""
    import lladauni.model_core.generation.sampler as sampler_mod

    m = load_backbone(tiny_ckpt)  # private: its forward is wrapped below
    s = BlockDiffusionSampler(m, mask_id=MASK, eos_id=EOS)
    pruned, pasts = [], []
    real_prune, real_forward = sampler_mod.prune_prefix, m.forward

    def spy_prune(keys, values, prefix_ids, *args):
        out = real_prune(keys, values, prefix_ids, *args)
        pruned.append((prefix_ids.shape[0], [k.shape[2] for k in out[0]]))
        return out

    def spy_forward(ids, positions, mask, past=None, **kw):
        if past is not None and kw.get("logits_for") != 0:  # denoising steps, not cache extensions
            pasts.append((ids.shape[1], past.keys[0].shape[2]))
        return real_forward(ids, positions, mask, past=past, **kw)

    monkeypatch.setattr(sampler_mod, "prune_prefix", spy_prune)
    monkeypatch.setattr(m, "forward", spy_forward)
    prompt = _prompt(70, seed=10)  # blocks 2 (prefix 64, holds the prompt tail) and 3 (prefix 96)
    kw = dict(gen_length=58, steps=4, eos_early_stop=False)
    layers = m.config.num_hidden_layers

    half = _run(s, prompt, cache="sprint", sprint=SprintConfig(keep_ratio=0.3, text_keep_ratio=0.5), **kw)
    assert (half.generated != MASK).all()
    # int(64 x 0.3) = 19, int(96 x 0.3) = 28: one pruning per block
    assert pruned == [(64, [19] * layers), (96, [28] * layers)]
    # steps 2 and 3 of each block run the 32 active tokens over the pruned prefix
    assert pasts.count((32, 19)) == 2 and pasts.count((32, 28)) == 2
    assert pasts.count((32, 64)) == 2 and pasts.count((32, 96)) == 2  # warm-up steps: full prefix

    pruned.clear()
    pasts.clear()
    full = _run(s, prompt, cache="sprint", sprint=SprintConfig(keep_ratio=1.0), **kw)
    assert half.generated.shape == full.generated.shape
    assert pruned == [(64, [64] * layers), (96, [96] * layers)]
    assert {p for q, p in pasts if q == 32} == {64, 96}


def _kv(P, norms):
    k = torch.zeros(1, 2, P, 4)
    k[0, :, :, 0] = torch.tensor(norms)
    return [k], [k.clone()]


def test_prune_prefix_fixed_vs_legacy_scores():
    P = 6
    ids = torch.tensor([5, 5, OFFSET + 1, OFFSET + 2, OFFSET + 3, OFFSET + 4])  # 2 text (pinned), 4 image
    ks, vs = _kv(P, [1.0, 1.0, 9.0, 8.0, 1.0, 1.0])  # image 2, 3 have large keys
    conf = torch.tensor([0.0, 0.0, 0.1, 0.1, 0.9, 0.8])  # image 4, 5 are confident
    fixed = SprintConfig(keep_ratio=4 / 6, confidence_alpha=0.5)
    kf, _ = prune_prefix(ks, vs, ids, conf, None, fixed, OFFSET)
    # fixed: pinned text first, then blended importance favours the large keys (2, 3)
    assert kf[0][0, 0, :, 0].tolist() == [1.0, 1.0, 9.0, 8.0]
    legacy = SprintConfig(keep_ratio=4 / 6, confidence_alpha=0.5, legacy_scores=True)
    kl, _ = prune_prefix(ks, vs, ids, conf, None, legacy, OFFSET)
    # official: +inf mean -> unpinned importance 0 -> ranked by confidence alone (4, 5)
    assert kl[0][0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_prune_prefix_never_keeps_invalid_padding():
    P = 6
    ids = torch.tensor([MASK, MASK, 5, OFFSET + 1, OFFSET + 2, OFFSET + 3])
    ks, vs = _kv(P, [100.0, 100.0, 1.0, 2.0, 3.0, 4.0])
    valid = torch.tensor([False, False, True, True, True, True])
    cfg = SprintConfig(keep_ratio=0.5, confidence_alpha=1.0)
    kf, _ = prune_prefix(ks, vs, ids, None, valid, cfg, OFFSET)
    # budget int(4 real x 0.5) = 2: pinned text + best image; pads never
    assert kf[0][0, 0, :, 0].tolist() == [1.0, 4.0]
    kall, _ = prune_prefix(ks, vs, ids, None, valid, SprintConfig(keep_ratio=1.0), OFFSET)
    assert kall[0].shape[2] == 4
    klegacy, _ = prune_prefix(ks, vs, ids, None, None, cfg, OFFSET)
    assert 100.0 in klegacy[0][0, 0, :, 0].tolist()  # official: pads are pinned text and kept


# ---------------------------------------------------------------------------------- stopping, errors, seeds
def test_eos_stops_and_truncates(model, tiny_ckpt):
    m = load_backbone(tiny_ckpt)
    with torch.no_grad():
        m.lm_head.weight[EOS] = m.lm_head.weight[EOS] * 0 + 5 * m.model.norm.weight.sign()
    s = BlockDiffusionSampler(m, mask_id=MASK, eos_id=EOS)
    prompt = _prompt(40, seed=11)
    prompt[3] = EOS  # an eos inside the prompt must not cut the prompt (official edge case)
    for cache in ("none", "exact"):
        r = _run(s, prompt, cache=cache, gen_length=128, steps=8)
        assert r.tokens[:40].tolist() == prompt
        assert r.tokens[-1] == EOS and (r.generated[:-1] != EOS).all()
        assert r.generated.shape[0] < 128


def test_bad_inputs(sampler):
    with pytest.raises(ValueError, match="positions"):
        sampler.generate(_prompt(10), SamplerConfig(gen_length=9000))
    with pytest.raises(ValueError, match="non-empty"):
        sampler.generate([], SamplerConfig(gen_length=8))
    with pytest.raises(ValueError, match="out of range"):
        sampler.generate([173568], SamplerConfig(gen_length=8))
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError, match="cache"):
        SamplerConfig(cache="fast")
    with pytest.raises(ValueError, match="null_image_ids"):
        CFGSpec("editing", null_ids=[1], text_scale=4.0)


def test_seeded_and_independent_of_global_rng(sampler):
    prompt = _prompt(20, seed=12)
    kw = dict(gen_length=32, steps=4, temperature=1.0, eos_early_stop=False)
    a = _run(sampler, prompt, seed=1, **kw)
    torch.manual_seed(999)
    b = _run(sampler, prompt, seed=1, **kw)
    c = _run(sampler, prompt, seed=2, **kw)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_trace_and_progress(sampler):
    seen = []
    r = sampler.generate(
        _prompt(33, seed=13), SamplerConfig(gen_length=64, steps=4, eos_early_stop=False, record_trace=True),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    committed = [p for rec in r.trace for p in rec.committed]
    # every masked position of the 3 generated blocks (33..127) is committed exactly once
    assert sorted(committed) == list(range(33, 128))
    assert all(0 <= c <= 1 for rec in r.trace for c in rec.confidences)
