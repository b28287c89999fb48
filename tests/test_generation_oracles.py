"""Independent oracles for the shared generation code (MODEL_SPEC §5.1-§5.5).

Every check compares ``model_core/generation`` against something that does not reuse its
helpers: naive per-row references written here from MODEL_SPEC (plain Python loops, float64
math), small cases worked out by hand, or diffusers' ``LLaDA2Pipeline`` /
``BlockRefinementScheduler`` (an independent implementation of the §5.1 baseline).

Top-k / top-p filtering and ``sample_tokens``' probabilities are covered in
test_sampling_filters.py; the greedy diffusers comparison in test_sampler_oracle.py.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from lladauni.model_core.generation import BlockDiffusionSampler, CFGSpec, SamplerConfig, SprintConfig
from lladauni.model_core.generation.sampling import (
    adaptive_transfer,
    confidence_scores,
    quota_transfer,
    sample_tokens,
    transfer_schedule,
)
from lladauni.model_core.generation.sprint import prune_prefix

MASK, EOS, OFFSET = 156895, 156892, 157184
KINDS = ("low_confidence", "top_k_margin", "neg_entropy", "random")


# ============================================================================ naive references
def _softmax64(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _std64(row: list[float]) -> float:
    """Sample standard deviation (Bessel-corrected, like torch.std's default)."""
    n = len(row)
    mu = sum(row) / n
    return math.sqrt(sum((v - mu) ** 2 for v in row) / (n - 1))


def _naive_conf(row: list[float], x0: int, kind: str) -> float:
    """§5.5b confidence of one masked position, float64 (``random`` is handled by the caller)."""
    p = _softmax64(row)
    if kind == "low_confidence":
        return p[x0]
    if kind == "top_k_margin":
        a, b = sorted(p, reverse=True)[:2]
        return a - b
    if kind == "neg_entropy":
        h = -sum(q * math.log(q) for q in p if q > 0.0)
        return 1.0 - h / math.log(len(p))
    raise AssertionError(kind)


def _topk_positions(scores: dict[int, float], k: int) -> set[int]:
    return set(sorted(scores, key=lambda i: -scores[i])[:k])


def _naive_adaptive(logits, masked, current, *, temperature, kind, steps_left, minimal_topk, threshold, seed):
    """§5.5(b)+(c) for one row, written from the spec.

    x0: argmax of exp(logits) / (-log U)^T with U ~ float64 uniform (T > 0), of the logits at T = 0.
    The top-p / top-k filters the spec applies before the argmax always keep the largest entry,
    so they cannot move the argmax and are left out here.
    """
    L, V = logits.shape
    rows = logits.double().tolist()
    g = torch.Generator().manual_seed(seed)
    if temperature != 0:
        u = torch.rand((L, V), generator=g, dtype=torch.float64).tolist()
        noisy = [[math.exp(rows[i][j]) / (-math.log(u[i][j])) ** temperature for j in range(V)] for i in range(L)]
    else:
        noisy = rows
    x0 = [max(range(V), key=lambda j: noisy[i][j]) for i in range(L)]
    where = [i for i in range(L) if bool(masked[i])]
    if kind == "random":
        draws = torch.rand(len(where), generator=g).tolist() if where else []
        conf = dict(zip(where, draws))
    else:
        conf = {i: _naive_conf(rows[i], x0[i], kind) for i in where}
    m = len(where)
    commit: set[int] = set()
    if m:
        k = min(max(minimal_topk, -(-m // steps_left)), m)
        commit = _topk_positions(conf, k)
    commit |= {i for i in where if max(_softmax64(rows[i])) > threshold}
    x0_out = [x0[i] if bool(masked[i]) else int(current[i]) for i in range(L)]
    return x0_out, commit


def _run_adaptive(logits, masked, current, *, seed, temperature=0.0, kind="low_confidence", steps_left=1,
                  minimal_topk=1, threshold=2.0, top_p=None, top_k=None):
    x0, commit = adaptive_transfer(
        logits, masked, current, temperature=temperature, top_p=top_p, top_k=top_k, remasking=kind,
        steps_left=steps_left, minimal_topk=minimal_topk, threshold=threshold,
        generator=torch.Generator().manual_seed(seed),
    )
    return x0.tolist(), set(torch.nonzero(commit).flatten().tolist())


# ============================================================================ 1. guidance (§5.4)
def _guide(rows: torch.Tensor, spec: CFGSpec) -> torch.Tensor:
    # _guide only reads its config argument, never the sampler itself
    return BlockDiffusionSampler._guide(None, rows, SamplerConfig(cfg=spec))


def _naive_guide(rows: torch.Tensor, spec: CFGSpec) -> torch.Tensor:
    """§5.4 per row, float64: combination, then rescale with the std of the conditional branch
    (simple: cond, row 0; editing: full, row 0)."""
    _, L, V = rows.shape
    data = rows.double().tolist()
    out = []
    for l in range(L):
        if spec.kind == "simple":
            c, u = data[0][l], data[1][l]
            g = [u[j] + spec.scale * (c[j] - u[j]) for j in range(V)]
            ref = c
        else:
            full, nt, ni = data[0][l], data[1][l], data[2][l]
            g = [nt[j] + spec.text_scale * (full[j] - nt[j]) + spec.image_scale * (nt[j] - ni[j]) for j in range(V)]
            ref = full
        r = spec.rescale
        if r > 0:
            factor = _std64(ref) / (_std64(g) + 1e-6)
            g = [r * (v * factor) + (1.0 - r) * v for v in g]
        out.append(g)
    return torch.tensor(out, dtype=torch.float64)


def _branch_logits(stds: list[float], L=5, V=64, seed=0) -> torch.Tensor:
    """Rows with clearly different spreads (and offsets), so using the wrong branch's std or
    swapping two branches gives a different answer."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([s * torch.randn(L, V, generator=g) + (i - 1.0) for i, s in enumerate(stds)])


@pytest.mark.parametrize("rescale", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("scale", [4.0, 0.6])
def test_simple_cfg_matches_naive_reference(rescale, scale):
    rows = _branch_logits([1.0, 3.5], seed=1)
    spec = CFGSpec("simple", null_ids=[1], scale=scale, rescale=rescale)
    torch.testing.assert_close(_guide(rows, spec).double(), _naive_guide(rows, spec), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rescale", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("text_scale,image_scale", [(4.0, 0.0), (4.0, 1.5), (0.0, 2.0), (1.25, 3.0)])
def test_editing_cfg_matches_naive_reference(rescale, text_scale, image_scale):
    rows = _branch_logits([1.0, 2.5, 0.4], seed=2)
    spec = CFGSpec("editing", null_ids=[1], null_image_ids=[2], text_scale=text_scale, image_scale=image_scale,
                   rescale=rescale)
    torch.testing.assert_close(_guide(rows, spec).double(), _naive_guide(rows, spec), rtol=1e-5, atol=1e-5)


def test_rescale_restores_the_conditional_std_by_hand():
    # rescale 1: every row's std becomes the cond/full row's std (up to the 1e-6 guard)
    rows = _branch_logits([1.7, 0.5, 4.0], seed=3)
    ed = CFGSpec("editing", null_ids=[1], null_image_ids=[2], text_scale=3.0, image_scale=2.0, rescale=1.0)
    torch.testing.assert_close(_guide(rows, ed).std(-1), rows[0].std(-1), rtol=1e-4, atol=1e-4)
    si = CFGSpec("simple", null_ids=[1], scale=5.0, rescale=1.0)
    torch.testing.assert_close(_guide(rows[:2], si).std(-1), rows[0].std(-1), rtol=1e-4, atol=1e-4)


def test_cfg_active_switches():
    """§5.4: simple CFG is active iff cfg_scale != 1; editing iff text_scale > 0 or image_scale > 0."""
    simple = {1.0: False, 0.999: True, 1.001: True, 0.0: True, 4.0: True}
    for scale, on in simple.items():
        assert CFGSpec("simple", null_ids=[1], scale=scale).active is on, scale
    editing = {(0.0, 0.0): False, (-1.0, 0.0): False, (0.0, -2.0): False, (-1.0, -1.0): False,
               (0.5, 0.0): True, (0.0, 0.5): True, (4.0, -1.0): True, (-1.0, 4.0): True}
    for (t, i), on in editing.items():
        assert CFGSpec("editing", null_ids=[1], null_image_ids=[2], text_scale=t, image_scale=i).active is on, (t, i)


def test_inactive_guidance_returns_the_conditional_row():
    rows = _branch_logits([1.0, 2.0, 3.0], seed=4)
    for spec in (CFGSpec("simple", null_ids=[1], scale=1.0),
                 CFGSpec("editing", null_ids=[1], null_image_ids=[2], text_scale=0.0, image_scale=0.0)):
        assert torch.equal(_guide(rows, spec), rows[0])
    assert torch.equal(BlockDiffusionSampler._guide(None, rows, SamplerConfig()), rows[0])


# ============================================================================ 2. Gumbel noise (§5.5b)
def _close_logits(L, V, seed, spread=0.05):
    """Nearly flat rows: the argmax of the noisy values is decided by the noise itself."""
    return spread * torch.randn(L, V, generator=torch.Generator().manual_seed(seed))


# adaptive_transfer(_close_logits(24, 5, seed=7), all masked, T=0.7, generator seed 2024) x0; computed
# once with the code under test and checked equal to _naive_adaptive (also asserted below).
GUMBEL_GOLDEN = [4, 3, 2, 1, 2, 3, 4, 1, 1, 1, 0, 1, 2, 3, 3, 4, 4, 2, 1, 2, 0, 3, 1, 2]


def test_gumbel_noise_golden():
    L, V = 24, 5
    logits = _close_logits(L, V, seed=7)
    masked = torch.ones(L, dtype=torch.bool)
    cur = torch.full((L,), MASK)
    x0, _ = _run_adaptive(logits, masked, cur, seed=2024, temperature=0.7, kind="low_confidence", steps_left=4)
    ref, _ = _naive_adaptive(logits, masked, cur, temperature=0.7, kind="low_confidence", steps_left=4,
                             minimal_topk=1, threshold=2.0, seed=2024)
    assert ref == GUMBEL_GOLDEN
    assert x0 == GUMBEL_GOLDEN


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_transfer_with_noise_matches_naive_reference(temperature, kind):
    L, V = 40, 7
    logits = _close_logits(L, V, seed=11, spread=0.3)
    masked = torch.rand(L, generator=torch.Generator().manual_seed(12)) < 0.7
    cur = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(13))
    for seed in (0, 1):
        got = _run_adaptive(logits, masked, cur, seed=seed, temperature=temperature, kind=kind, steps_left=3)
        ref = _naive_adaptive(logits, masked, cur, temperature=temperature, kind=kind, steps_left=3, minimal_topk=1,
                              threshold=2.0, seed=seed)
        assert got == ref


def test_gumbel_noise_ignores_filters_and_global_rng():
    """Top-p / top-k on the noisy values cannot move the argmax; the noise comes from the
    explicit generator only."""
    L, V = 30, 9
    logits = _close_logits(L, V, seed=21, spread=0.2)
    masked = torch.ones(L, dtype=torch.bool)
    cur = torch.full((L,), MASK)
    plain = _run_adaptive(logits, masked, cur, seed=5, temperature=1.3)
    torch.manual_seed(123)
    filt = _run_adaptive(logits, masked, cur, seed=5, temperature=1.3, top_p=0.3, top_k=2)
    assert plain == filt
    ref = _naive_adaptive(logits, masked, cur, temperature=1.3, kind="low_confidence", steps_left=1, minimal_topk=1,
                          threshold=2.0, seed=5)
    assert plain == ref


def test_no_noise_at_temperature_zero():
    """T = 0 draws nothing from the generator (deterministic remasking kinds) and x0 = argmax."""
    L, V = 6, 5
    logits = _close_logits(L, V, seed=31, spread=1.0)
    g = torch.Generator().manual_seed(9)
    x0, _ = adaptive_transfer(logits, torch.ones(L, dtype=torch.bool), torch.full((L,), MASK), temperature=0.0,
                              top_p=None, top_k=None, remasking="low_confidence", steps_left=2, minimal_topk=1,
                              threshold=0.95, generator=g)
    assert x0.tolist() == [max(range(V), key=lambda j: logits[i, j].item()) for i in range(L)]
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(9).get_state())


# ============================================================================ 3. confidence ranking (§5.5b)
@pytest.mark.parametrize("kind", ["low_confidence", "top_k_margin", "neg_entropy"])
def test_confidence_scores_match_naive_reference(kind):
    L, V = 17, 33
    g = torch.Generator().manual_seed(41)
    logits = torch.randn(L, V, generator=g) * torch.linspace(0.1, 4.0, L)[:, None]
    x0 = torch.randint(0, V, (L,), generator=g)  # not always the argmax (matters for low_confidence)
    masked = torch.rand(L, generator=g) < 0.6
    got = confidence_scores(logits, x0, masked, kind, None)
    rows = logits.double().tolist()
    for i in range(L):
        if masked[i]:
            assert got[i].item() == pytest.approx(_naive_conf(rows[i], int(x0[i]), kind), abs=2e-6), i
        else:
            assert got[i].item() == -math.inf
    # the ranking of masked positions is the reference's ranking
    where = torch.nonzero(masked).flatten().tolist()
    ref = {i: _naive_conf(rows[i], int(x0[i]), kind) for i in where}
    assert sorted(where, key=lambda i: -got[i].item()) == sorted(where, key=lambda i: -ref[i])


def test_confidence_by_hand():
    # probs (0.5, 0.25, 0.25) exactly: margin 0.25, neg-entropy 1 - 1.5 ln2 / ln3
    logits = torch.log(torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 2.0]]))
    x0 = torch.tensor([1, 2])
    m = torch.tensor([True, True])
    assert confidence_scores(logits, x0, m, "low_confidence", None).tolist() == pytest.approx([0.25, 0.5])
    assert confidence_scores(logits, x0, m, "top_k_margin", None).tolist() == pytest.approx([0.25, 0.25])
    ne = 1 - 1.5 * math.log(2) / math.log(3)
    assert confidence_scores(logits, x0, m, "neg_entropy", None).tolist() == pytest.approx([ne, ne], abs=1e-6)


def test_random_confidence_draws_only_for_masked_positions():
    L = 12
    masked = torch.tensor([False, True, True, False, True, False, False, True, True, False, True, False])
    logits = torch.randn(L, 4)
    g = torch.Generator().manual_seed(77)
    got = confidence_scores(logits, torch.zeros(L, dtype=torch.long), masked, "random", g)
    ref_g = torch.Generator().manual_seed(77)
    draws = iter(torch.rand(int(masked.sum()), generator=ref_g).tolist())
    expected = [next(draws) if bool(masked[i]) else -math.inf for i in range(L)]
    assert got.tolist() == pytest.approx(expected)
    # exactly one float32 draw per masked position was consumed
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=ref_g))
    # nothing masked: nothing drawn
    g2 = torch.Generator().manual_seed(5)
    none = confidence_scores(logits, torch.zeros(L, dtype=torch.long), torch.zeros(L, dtype=torch.bool), "random", g2)
    assert (none == -math.inf).all()
    assert torch.equal(g2.get_state(), torch.Generator().manual_seed(5).get_state())


# ============================================================================ 4. commit counts
def _naive_schedule(block: int, steps: int) -> list[int]:
    counts = [0] * steps
    for t in range(block):  # deal the block's tokens out one step at a time
        counts[t % steps] += 1
    return counts


@pytest.mark.parametrize("block,steps", [(32, 5), (32, 7), (10, 4), (32, 8), (5, 8), (32, 32), (3, 1), (1, 2)])
def test_quota_schedule_and_block_denoising_match_naive(block, steps):
    sched = transfer_schedule(block, steps)
    assert sched == _naive_schedule(block, steps)
    g = torch.Generator().manual_seed(block * 100 + steps)
    masked = torch.ones(block, dtype=torch.bool)
    for step, q in enumerate(sched):
        prob = torch.rand(block, generator=g) * 0.9  # below the threshold: the quota alone decides
        if step == 1:
            prob[0] = 0.99  # one above-threshold position (may already be committed)
        got = quota_transfer(prob, masked, q, 0.95)
        where = [i for i in range(block) if masked[i]]
        above = {i for i in where if prob[i].item() > 0.95}
        ref = above if len(above) >= q else set(sorted(where, key=lambda i: -prob[i].item())[:q])
        assert set(torch.nonzero(got).flatten().tolist()) == ref, (step, q)
        masked &= ~got
    if steps <= block:
        assert not masked.any()


def test_quota_threshold_rule_by_hand():
    prob = torch.tensor([0.5, 0.97, 0.2, 0.96, 0.99, 0.1])
    masked = torch.tensor([True, True, True, True, False, True])
    pos = lambda t: torch.nonzero(t).flatten().tolist()  # noqa: E731
    # 2 masked above 0.95 meet quota 2 and exceed quota 1: all of them, never the unmasked 0.99
    assert pos(quota_transfer(prob, masked, 2, 0.95)) == [1, 3]
    assert pos(quota_transfer(prob, masked, 1, 0.95)) == [1, 3]
    assert pos(quota_transfer(prob, masked, 0, 0.95)) == [1, 3]
    # 2 above < quota 3: the top 3 masked
    assert pos(quota_transfer(prob, masked, 3, 0.95)) == [0, 1, 3]
    # a probability equal to the threshold is not above it (0.5 is exact in float)
    assert pos(quota_transfer(prob, masked, 1, 0.5)) == [1, 3]
    assert pos(quota_transfer(torch.tensor([0.5, 0.25]), torch.tensor([True, True]), 0, 0.5)) == []


def test_quota_count_equal_to_quota_accepts_exactly_the_above_threshold_set():
    """#(conf > threshold) == quota takes the first branch of §5.1 step 5 ("accept all positions
    above threshold"). With ordinary probabilities that equals the top-q set; a NaN probability
    (a fully masked logits row) is the input where the two rules differ: it is not above the
    threshold, so it must not be accepted."""
    prob = torch.tensor([0.97, float("nan"), 0.2, 0.99])
    masked = torch.tensor([True, True, True, True])
    assert torch.nonzero(quota_transfer(prob, masked, 2, 0.95)).flatten().tolist() == [0, 3]


@pytest.mark.parametrize(
    "n_masked,steps_left,minimal_topk,expected_k",
    [
        (10, 3, 1, 4),  # ceil 3.33 -> 4 (floor would give 3)
        (7, 2, 1, 4),  # ceil 3.5
        (7, 7, 1, 1),
        (10, 8, 1, 2),
        (10, 8, 5, 5),  # minimal_topk above the ceil
        (3, 1, 5, 3),  # minimal_topk above the masked count
        (3, 5, 2, 2),
        (12, 1, 1, 12),
        (1, 4, 1, 1),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_commit_count(n_masked, steps_left, minimal_topk, expected_k, kind):
    L, V = 14, 6
    logits = _close_logits(L, V, seed=n_masked * 10 + steps_left, spread=1.0)
    masked = torch.zeros(L, dtype=torch.bool)
    masked[torch.randperm(L, generator=torch.Generator().manual_seed(n_masked))[:n_masked]] = True
    cur = torch.arange(L)
    x0, commit = _run_adaptive(logits, masked, cur, seed=3, kind=kind, steps_left=steps_left, minimal_topk=minimal_topk)
    assert len(commit) == expected_k
    assert commit <= set(torch.nonzero(masked).flatten().tolist())
    assert (x0, commit) == _naive_adaptive(logits, masked, cur, temperature=0.0, kind=kind, steps_left=steps_left,
                                           minimal_topk=minimal_topk, threshold=2.0, seed=3)
    assert [x0[i] for i in range(L) if not masked[i]] == [i for i in range(L) if not masked[i]]


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_threshold_union(kind):
    L, V = 16, 8
    logits = _close_logits(L, V, seed=51, spread=0.5)
    for i in (2, 5, 11, 13):
        logits[i, i % V] = 9.0  # max prob > 0.95
    masked = torch.ones(L, dtype=torch.bool)
    masked[13] = False  # confident but already committed: never re-committed
    cur = torch.full((L,), MASK)
    cur[13] = 42
    for temperature in (0.0, 1.0):
        x0, commit = _run_adaptive(logits, masked, cur, seed=8, temperature=temperature, kind=kind, steps_left=8,
                                   threshold=0.95)
        assert {2, 5, 11} <= commit and 13 not in commit
        assert (x0, commit) == _naive_adaptive(logits, masked, cur, temperature=temperature, kind=kind, steps_left=8,
                                               minimal_topk=1, threshold=0.95, seed=8)


def test_adaptive_threshold_is_strict():
    # four equal logits: every max prob is exactly 0.25 = threshold, which is not above it
    L = 6
    logits = torch.zeros(L, 4)
    logits[0] = torch.tensor([3.0, 0.0, 0.0, 0.0])
    masked = torch.ones(L, dtype=torch.bool)
    _, commit = _run_adaptive(logits, masked, torch.full((L,), MASK), seed=0, steps_left=L, threshold=0.25)
    assert commit == {0}  # k = ceil(6/6) = 1: the most confident position only


# ============================================================================ 5. SPRINT prefix pruning (§5.5a)
def _naive_prune(keys: list[torch.Tensor], ids: list[int], conf, valid, cfg: SprintConfig, legacy: bool) -> list[list[int]]:
    """Kept prefix positions per layer.

    Rules (MODEL_SPEC §5.5a and sprint.py's docstring): text (id < offset) is pinned when
    text_keep_ratio is None or >= 1, image when image_keep_ratio >= 1; invalid (padding)
    positions are never pinned nor kept and the budget counts real positions; keep =
    max(int(real * keep_ratio), 1, #pinned), everything real when keep_ratio >= 1.
    Importance = key L2 norm averaged over heads, blended when alpha < 1 and a confidence is given:
    - fixed: pinned first; the rest by alpha * imp / mean(imp over unpinned real) + (1 - alpha) * conf;
    - legacy (official): pinned imp = +inf before the mean over the whole prefix, so the mean is
      +inf, pinned scores NaN (ranked first), unpinned scores (1 - alpha) * conf.
    """
    P = len(ids)
    real = [True] * P if valid is None else [bool(v) for v in valid]
    pin_text = cfg.text_keep_ratio is None or cfg.text_keep_ratio >= 1.0
    pin_image = cfg.image_keep_ratio is not None and cfg.image_keep_ratio >= 1.0
    pinned = [real[i] and (pin_text if ids[i] < OFFSET else pin_image) for i in range(P)]
    n_real, n_pin = sum(real), sum(pinned)
    everything = [i for i in range(P) if real[i]]
    if cfg.keep_ratio >= 1.0 or n_pin >= n_real:
        return [everything for _ in keys]
    keep = min(max(int(n_real * cfg.keep_ratio), 1, n_pin), n_real)
    alpha = min(1.0, max(0.0, cfg.confidence_alpha))
    blend = conf is not None and alpha < 1.0
    out = []
    for k in keys:
        kk = k[0].double().tolist()  # (H, P, D)
        imp = [sum(math.sqrt(sum(x * x for x in kk[h][i])) for h in range(len(kk))) / len(kk) for i in range(P)]
        if not legacy:
            free = [i for i in range(P) if real[i] and not pinned[i]]
            score = list(imp)
            if blend:
                mean = sum(imp[i] for i in free) / len(free)
                score = [alpha * imp[i] / mean + (1 - alpha) * conf[i] for i in range(P)]
            rank = lambda i: (0 if pinned[i] else 1, -score[i])  # noqa: E731
        else:
            s = [math.inf if pinned[i] else imp[i] for i in range(P)]
            if blend:
                mean = sum(s) / P
                s = [alpha * (s[i] / mean) + (1 - alpha) * conf[i] for i in range(P)]  # inf/inf = nan
            rank = lambda i: (0 if math.isnan(s[i]) else 1, -s[i])  # noqa: E731
        order = sorted(everything, key=rank)
        out.append(sorted(order[:keep]))
    return out


def _prune_case(P, ids, cfg, *, conf=None, valid=None, seed=0, layers=3, heads=2, dim=4):
    g = torch.Generator().manual_seed(seed)
    keys = [torch.randn(1, heads, P, dim, generator=g) * torch.rand(1, 1, P, 1, generator=g) * 3 for _ in range(layers)]
    values = []
    for _ in range(layers):
        v = torch.randn(1, heads, P, dim, generator=g)
        v[..., 0] = torch.arange(P, dtype=torch.float32)  # channel 0 names the position
        values.append(v)
    ok, ov = prune_prefix(keys, values, torch.tensor(ids, dtype=torch.long), conf, valid, cfg, OFFSET)
    kept = []
    for layer in range(layers):
        pos = ov[layer][0, 0, :, 0].long().tolist()
        assert ov[layer][0, 1, :, 0].long().tolist() == pos
        assert torch.equal(ok[layer], keys[layer][:, :, pos]) and torch.equal(ov[layer], values[layer][:, :, pos])
        kept.append(pos)
    return keys, kept


def test_prune_prefix_random_cases_match_naive_references():
    rng = random.Random(1234)
    ratios = [0.05, 0.1, 0.25, 0.3, 0.5, 0.6, 0.7, 0.9, 0.99, 1.0, 1.5]
    checked = 0
    for case in range(500):
        P = rng.randint(1, 12)
        text_frac = rng.choice([0.0, 0.3, 0.5, 1.0])
        ids = [rng.randrange(0, OFFSET) if rng.random() < text_frac else rng.randrange(OFFSET, OFFSET + 16384)
               for _ in range(P)]
        legacy = rng.random() < 0.4
        cfg = SprintConfig(
            keep_ratio=rng.choice(ratios),
            confidence_alpha=rng.choice([0.0, 0.3, 0.5, 1.0, 1.5]),
            text_keep_ratio=rng.choice([None, 0.5, 1.0]),
            image_keep_ratio=rng.choice([None, 0.5, 1.0]),
            legacy_scores=legacy,
        )
        conf = None if rng.random() < 0.2 else torch.rand(P, generator=torch.Generator().manual_seed(case))
        valid = None
        if rng.random() < 0.4:
            pad = rng.randint(0, P - 1)
            valid = torch.tensor([i >= pad for i in range(P)])
            for i in range(pad):
                ids[i] = MASK  # padding is the mask id, as in the null prompt buffer
        keys, kept = _prune_case(P, ids, cfg, conf=conf, valid=valid, seed=case)
        ref = _naive_prune(keys, ids, None if conf is None else conf.tolist(), None if valid is None else valid.tolist(),
                           cfg, legacy)
        assert kept == ref, (case, P, ids, cfg, valid)
        checked += len({tuple(r) for r in ref}) > 1  # layers disagree: per-layer ranking exercised
    assert checked > 20


def test_prune_prefix_budget_edge_cases():
    img = lambda n: [OFFSET + 5 + i for i in range(n)]  # noqa: E731
    # int() truncation: 7 x 0.5 = 3.5 -> 3; 9 x 0.3 = 2.7 -> 2
    _, kept = _prune_case(7, img(7), SprintConfig(keep_ratio=0.5, confidence_alpha=1.0))
    assert [len(k) for k in kept] == [3, 3, 3]
    _, kept = _prune_case(9, img(9), SprintConfig(keep_ratio=0.3, confidence_alpha=1.0), seed=1)
    assert [len(k) for k in kept] == [2, 2, 2]
    # at least one: 3 x 0.1 = 0.3 -> 1
    keys, kept = _prune_case(3, img(3), SprintConfig(keep_ratio=0.1, confidence_alpha=1.0), seed=2)
    assert kept == _naive_prune(keys, img(3), None, None, SprintConfig(keep_ratio=0.1), False)
    assert [len(k) for k in kept] == [1, 1, 1]
    # more pinned than the budget: 7 pinned text > int(10 x 0.3) = 3 -> all 7 text kept, no image
    # (OFFSET itself is the first image id, not text)
    ids = [1, 2, OFFSET, 3, 4, OFFSET + 2, 5, OFFSET - 1, OFFSET + 3, 7]
    text = [i for i, t in enumerate(ids) if t < OFFSET]
    for legacy in (False, True):
        conf = torch.linspace(0.9, 0.1, 10)
        _, kept = _prune_case(10, ids, SprintConfig(keep_ratio=0.3, legacy_scores=legacy), conf=conf, seed=3)
        assert kept == [text] * 3
    # pinned image (image_keep_ratio 1) above the budget
    _, kept = _prune_case(10, ids, SprintConfig(keep_ratio=0.1, text_keep_ratio=0.5, image_keep_ratio=1.0), seed=4)
    assert kept == [[2, 5, 8]] * 3
    # padding never kept, even when it has the largest keys; the budget counts real tokens:
    # int(6 x 0.9) = 5 of the 6 real ones
    valid = torch.tensor([False] * 4 + [True] * 6)
    ids = [MASK] * 4 + img(6)
    keys, kept = _prune_case(10, ids, SprintConfig(keep_ratio=0.9, confidence_alpha=1.0), valid=valid, seed=5)
    assert all(len(k) == 5 and min(k) >= 4 for k in kept)
    assert kept == _naive_prune(keys, ids, None, valid.tolist(), SprintConfig(keep_ratio=0.9), False)
    # keep_ratio >= 1 keeps every real position, in order
    _, kept = _prune_case(10, ids, SprintConfig(keep_ratio=1.0), valid=valid, seed=6)
    assert kept == [list(range(4, 10))] * 3


def test_sprint_config_defaults_and_validation():
    c = SprintConfig()
    assert (c.keep_ratio, c.cache_warmup_steps, c.confidence_alpha, c.image_keep_ratio, c.text_keep_ratio, c.remasking) == (
        0.7, 2, 0.5, None, None, "low_confidence")
    for bad in (dict(keep_ratio=0.0), dict(keep_ratio=-0.5), dict(cache_warmup_steps=-1)):
        with pytest.raises(ValueError):
            SprintConfig(**bad)
    SprintConfig(cache_warmup_steps=0)  # 0 disables reuse, still valid


# ============================================================================ 7. diffusers as an oracle
def test_sample_tokens_consumes_the_stream_like_diffusers():
    """diffusers' BlockRefinementScheduler samples with the same recipe as §5.1 step 3
    (logits / T, top-k, top-p, softmax, one multinomial draw per row), so with the same generator
    both must give the same tokens and probabilities, step after step."""
    from diffusers import BlockRefinementScheduler

    g = torch.Generator().manual_seed(61)
    logits = torch.randn(3, 32, 300, generator=g) * torch.linspace(0.5, 3.0, 32)[None, :, None]
    for t, k, p in [(0.7, None, None), (1.0, 20, None), (1.3, None, 0.8), (0.9, 40, 0.9), (2.0, 1, None)]:
        ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for step in range(3):
            ours_tok, ours_p = sample_tokens(logits[step], temperature=t, top_k=k, top_p=p, generator=ga)
            ref_tok, ref_p = BlockRefinementScheduler._sample_from_logits(
                logits[step][None], temperature=t, top_k=k, top_p=p, generator=gb, use_multinomial=True)
            assert torch.equal(ours_tok, ref_tok[0]), (t, k, p, step)
            torch.testing.assert_close(ours_p, ref_p[0])


def test_quota_transfer_matches_diffusers_scheduler_step():
    from diffusers import BlockRefinementScheduler

    for block, steps, thr in [(32, 5, 0.95), (32, 7, 0.3), (10, 4, 0.5)]:
        sch = BlockRefinementScheduler(block_length=block)
        sch.set_timesteps(steps, block_length=block)
        assert sch.get_num_transfer_tokens(block, steps).tolist() == transfer_schedule(block, steps)
        g = torch.Generator().manual_seed(block + steps)
        sample = torch.full((1, block), MASK)
        sample[0, : block // 4] = 7  # some positions already committed
        for step in range(steps):
            logits = torch.randn(1, block, 50, generator=g) * 2.5
            out = sch.step(logits, step, sample, mask_token_id=MASK, temperature=0.0, sampling_method="greedy",
                           threshold=thr, editing_threshold=None)
            tok, prob = sample_tokens(logits[0])
            ours = quota_transfer(prob, sample[0] == MASK, transfer_schedule(block, steps)[step], thr)
            assert torch.equal(ours, out.transfer_index[0]), (block, steps, step)
            sample = out.prev_sample


def test_sampler_with_sampling_matches_diffusers_llada2(tiny_ckpt):
    """Token-exact against diffusers' LLaDA2Pipeline with temperature, top-k and top-p.

    The random streams line up only when both loops run the same number of sampling calls:
    diffusers, after a block runs out of masks before its last step, runs one more forward and
    scheduler.step (drawing from the generator) before leaving the block, while our sampler
    leaves at once. The block then has to end exactly on its last step: threshold > 1 (nothing
    passes it, so each step commits exactly its quota), steps <= block_length, and a prompt of
    whole blocks (a prompt tail inside the first block leaves fewer masks than the schedule
    assumes). prompt + gen_length is also a whole number of blocks (diffusers hides the padding
    tail, the official code does not). One block of two steps keeps it cheap (each sampling call
    sorts the whole 173k vocabulary for top-p); the second step's draws depend on the stream
    state the first one left."""
    import diffusers

    from lladauni.model_core import load_backbone
    from tests.test_sampler_oracle import _AsHFModel

    model = load_backbone(tiny_ckpt)
    prompt = torch.randint(0, 150000, (32,), generator=torch.Generator().manual_seed(71))
    kw = dict(temperature=0.8, top_k=64, top_p=0.9)
    pipe = diffusers.LLaDA2Pipeline(model=_AsHFModel(model, 32), scheduler=diffusers.BlockRefinementScheduler(), tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        input_ids=prompt[None], use_chat_template=False, gen_length=32, block_length=32, num_inference_steps=2,
        sampling_method="multinomial", threshold=1.5, editing_threshold=None, eos_early_stop=False,
        mask_token_id=MASK, eos_token_id=EOS, output_type="seq", generator=torch.Generator().manual_seed(72), **kw,
    )
    ours = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS).generate(
        prompt, SamplerConfig(gen_length=32, steps=2, threshold=1.5, eos_early_stop=False, cache="none", **kw),
        generator=torch.Generator().manual_seed(72),
    )
    assert torch.equal(ours.generated, out.sequences[0])
