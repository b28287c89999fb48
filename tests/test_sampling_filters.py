"""Independent checks of the top-k / top-p / temperature filters in generation/sampling.py.

Compared against transformers' logits warpers where the semantics coincide, and against a naive
per-row reference written from the definition (MODEL_SPEC §5.1 step 3: "top-k / top-p filter,
multinomial") where they legitimately differ (exact cumulative-probability boundaries).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lladauni.model_core.generation.sampling import _top_k_filter, _top_p_filter, sample_tokens

NEG = float("-inf")
LN2 = math.log(2.0)


def _kept(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x)


def _hf_top_k(logits, k):
    return TopKLogitsWarper(top_k=k, filter_value=NEG)(None, logits.clone())


def _hf_top_p(logits, p):
    return TopPLogitsWarper(top_p=p, filter_value=NEG, min_tokens_to_keep=1)(None, logits.clone())


def _naive_top_p_row(row: list[float], p: float) -> set[int]:
    """Definition: sort by prob (desc); keep token i iff it is the first one or the cumulative
    probability of the tokens strictly before it is <= p (i.e. keep the first token past p)."""
    probs = F.softmax(torch.tensor(row, dtype=torch.float32), -1).tolist()
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, before = set(), 0.0
    for j, i in enumerate(order):
        if j == 0 or before <= p:
            kept.add(i)
        before += probs[i]
    return kept


def _kept_probs(row: list[float], kept: set[int]) -> list[float]:
    """Tie-agnostic view of a kept set: its sorted probabilities (which of two tokens with equal
    probability survives is implementation-defined, torch.sort being unstable)."""
    probs = F.softmax(torch.tensor(row, dtype=torch.float32), -1).tolist()
    return sorted(round(probs[i], 9) for i in kept)


def _naive_top_k_row(row: list[float], k: int) -> set[int]:
    kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
    return {i for i, v in enumerate(row) if v >= kth}  # ties at the k-th value are all kept


# Rows with different distributions; V = 6.
BATCH = torch.tensor(
    [
        [0.3, -1.2, 2.5, 0.0, 1.1, -0.4],
        [5.0, 4.9, -3.0, 0.2, 0.1, 4.8],
        [-0.5, -0.6, -0.7, -0.8, -0.9, -1.0],
    ],
    dtype=torch.float32,
)

# Row 0: exact dyadic probabilities 0.5, 0.25, 0.125, 0.125 (permuted so the sort matters);
# row 1: 8/15, 1/15, 4/15, 2/15.
DYADIC = torch.tensor(
    [
        [1.0 * LN2, 3.0 * LN2, 1.0 * LN2, 2.0 * LN2],
        [4.0 * LN2, 1.0 * LN2, 3.0 * LN2, 2.0 * LN2],
    ],
    dtype=torch.float32,
)


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6, 7, 100])
def test_top_k_matches_transformers(k):
    ours = _top_k_filter(BATCH, k, NEG)
    torch.testing.assert_close(ours, _hf_top_k(BATCH, k))
    expected = min(k, BATCH.shape[-1])
    assert _kept(ours).sum(-1).tolist() == [expected] * BATCH.shape[0]  # no ties in BATCH
    # Kept values are untouched.
    assert torch.equal(ours[_kept(ours)], BATCH[_kept(ours)])


def test_top_k_one_keeps_argmax_only_per_row():
    ours = _top_k_filter(BATCH, 1, NEG)
    kept = _kept(ours)
    assert kept.sum(-1).tolist() == [1, 1, 1]
    assert kept.float().argmax(-1).tolist() == BATCH.argmax(-1).tolist()


@pytest.mark.parametrize("k", [None, 0, -3])
def test_top_k_disabled_is_identity(k):
    assert torch.equal(_top_k_filter(BATCH, k, NEG), BATCH)


def test_top_k_ties_at_kth_value_keep_all_tied():
    # Ours (like transformers) masks only values strictly below the k-th: ties are all kept,
    # so more than k tokens may survive.
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0], [3.0, 1.0, 1.0, 1.0, 0.0]])
    for k in (1, 2, 3):
        ours = _top_k_filter(logits, k, NEG)
        torch.testing.assert_close(ours, _hf_top_k(logits, k))
        for r in range(2):
            got = set(torch.nonzero(_kept(ours[r])).flatten().tolist())
            assert got == _naive_top_k_row(logits[r].tolist(), k)
    assert _kept(_top_k_filter(logits, 1, NEG)).sum(-1).tolist() == [3, 1]
    assert _kept(_top_k_filter(logits, 2, NEG)).sum(-1).tolist() == [3, 4]


def test_top_k_custom_fill_value():
    fill = torch.finfo(torch.float64).min
    x = BATCH.double()
    ours = _top_k_filter(x, 2, fill)
    assert (ours == fill).sum(-1).tolist() == [4, 4, 4]
    assert torch.equal(ours != fill, _kept(_hf_top_k(x, 2)))


# ---------------------------------------------------------------- top-p


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_top_p_matches_transformers_off_boundary(p):
    ours = _top_p_filter(BATCH, p, NEG)
    torch.testing.assert_close(ours, _hf_top_p(BATCH, p))
    for r in range(BATCH.shape[0]):
        got = set(torch.nonzero(_kept(ours[r])).flatten().tolist())
        assert got == _naive_top_p_row(BATCH[r].tolist(), p)


@pytest.mark.parametrize("p", [None, 1.0, 1.5])
def test_top_p_disabled_is_identity(p):
    assert torch.equal(_top_p_filter(BATCH, p, NEG), BATCH)


# Row 0 sorted probs 0.5, 0.25, 0.125, 0.125 (cum 0.5, 0.75, 0.875, 1.0);
# row 1 sorted probs 8/15, 4/15, 2/15, 1/15.
@pytest.mark.parametrize(
    "p, n_kept",
    [
        (0.49, [1, 1]),  # below first cum: only the top token
        (0.51, [2, 1]),  # just past 0.5: the shift keeps the 2nd token of row 0
        (0.74, [2, 2]),
        (0.76, [3, 2]),
        (0.86, [3, 3]),
        (0.88, [4, 3]),
    ],
)
def test_top_p_near_dyadic_boundaries_matches_transformers(p, n_kept):
    # Row 0 has two tokens of probability 0.125: which of them survives a cut between them
    # depends on the (unstable) sort, and ours (descending sort) and transformers (ascending)
    # pick differently; so compare the kept probabilities, not indices.
    ours = _top_p_filter(DYADIC, p, NEG)
    hf = _hf_top_p(DYADIC, p)
    assert _kept(ours).sum(-1).tolist() == n_kept
    for r in range(2):
        got = set(torch.nonzero(_kept(ours[r])).flatten().tolist())
        theirs = set(torch.nonzero(_kept(hf[r])).flatten().tolist())
        row = DYADIC[r].tolist()
        assert _kept_probs(row, got) == _kept_probs(row, theirs)
        assert _kept_probs(row, got) == _kept_probs(row, _naive_top_p_row(row, p))
        assert torch.equal(ours[r][_kept(ours[r])], DYADIC[r][_kept(ours[r])])


def test_top_p_dyadic_probabilities_are_exact():
    probs = F.softmax(DYADIC[0], -1)
    assert sorted(probs.tolist(), reverse=True) == [0.5, 0.25, 0.125, 0.125]


@pytest.mark.parametrize("p", [0.5, 0.75, 0.875])
def test_top_p_exact_boundary_keeps_one_past(p):
    # cum == p exactly for the token that reaches p: ours (official LLaDA `cum > p` + shift)
    # keeps one MORE token than transformers (which removes tokens with ascending cum <= 1-p).
    ours = _top_p_filter(DYADIC[:1], p, NEG)
    got = set(torch.nonzero(_kept(ours[0])).flatten().tolist())
    row = DYADIC[0].tolist()
    assert _kept_probs(row, got) == _kept_probs(row, _naive_top_p_row(row, p))
    n_ours = {0.5: 2, 0.75: 3, 0.875: 4}[p]
    n_hf = {0.5: 1, 0.75: 2, 0.875: 3}[p]
    assert len(got) == n_ours
    assert int(_kept(_hf_top_p(DYADIC[:1], p)).sum()) == n_hf


def test_top_p_keeps_first_token_even_for_tiny_p():
    # A flat-ish row and a peaked row: p smaller than any single probability keeps exactly one.
    for p in (1e-6, 0.01):
        ours = _top_p_filter(BATCH, p, NEG)
        assert _kept(ours).sum(-1).tolist() == [1, 1, 1]
        assert _kept(ours).float().argmax(-1).tolist() == BATCH.argmax(-1).tolist()


def test_top_p_custom_fill_value_and_unsorted_scatter():
    fill = torch.finfo(torch.float64).min
    x = DYADIC.double()
    ours = _top_p_filter(x, 0.6, fill)
    # Row 0: kept {1 (0.5), 3 (0.25)}; row 1: {0 (8/15), 2 (4/15)}.
    assert (ours != fill).tolist() == [[False, True, False, True], [True, False, True, False]]
    assert torch.equal(ours[ours != fill], x[ours != fill])


# ---------------------------------------------------------------- temperature / sample_tokens


def _hf_pipeline(logits, t, k, p):
    x = logits.clone()
    if t is not None:
        x = TemperatureLogitsWarper(t)(None, x)
    if k is not None:
        x = _hf_top_k(x, k)
    if p is not None:
        x = _hf_top_p(x, p)
    return F.softmax(x, -1)


@pytest.mark.parametrize(
    "t, k, p",
    [
        (0.7, None, None),
        (1.0, 3, None),
        (1.3, None, 0.8),
        (0.5, 4, 0.9),
        (2.0, 1, None),
        (1.0, 6, 1.0),
    ],
)
def test_sample_tokens_probabilities_match_transformers(t, k, p):
    expected = _hf_pipeline(BATCH, t, k, p)
    g = torch.Generator().manual_seed(1234)
    for _ in range(20):
        tok, prob = sample_tokens(BATCH, temperature=t, top_k=k, top_p=p, generator=g)
        assert tok.shape == prob.shape == (BATCH.shape[0],)
        ref = expected.gather(-1, tok[:, None]).squeeze(-1)
        assert (ref > 0).all(), "sampled a filtered-out token"
        torch.testing.assert_close(prob, ref)


def test_sample_tokens_top_k_then_top_p_order():
    # Order matters: after top-k=2 on row 0 (probs 0.5 and 0.25 -> renormalised 2/3, 1/3),
    # top-p=0.6 keeps only the first token; top-p first would keep both (cum 0.5 < 0.6).
    row = DYADIC[:1]
    expected = _hf_pipeline(row, 1.0, 2, 0.6)
    assert int((expected > 0).sum()) == 1
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        tok, prob = sample_tokens(row, temperature=1.0, top_k=2, top_p=0.6, generator=g)
        assert tok.tolist() == [1]
        assert prob.tolist() == [1.0]


def test_sample_tokens_temperature_zero_is_greedy():
    tok, prob = sample_tokens(BATCH, temperature=0.0, top_k=1, top_p=0.01)
    assert tok.tolist() == BATCH.argmax(-1).tolist()
    torch.testing.assert_close(prob, F.softmax(BATCH, -1).max(-1).values)
