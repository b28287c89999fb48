"""The §5.1 baseline loop written out naively from MODEL_SPEC (full-window forwards, greedy, the
quota / threshold rule, both stopping rules) and compared with ``BlockDiffusionSampler`` token for
token and forward for forward, on models biased towards eos so that generation stops mid-block,
at a block's first position, or not at all. diffusers' pipeline agrees on the tokens but runs
extra forwards after an eos (its stopping rule differs), so it cannot check the count."""

from __future__ import annotations

import math

import pytest
import torch

from lladauni.model_core import AttentionMask, load_backbone
from lladauni.model_core.generation import BlockDiffusionSampler, SamplerConfig

MASK, EOS = 156895, 156892


def naive_generate(model, prompt, *, gen_length, block, steps, threshold, minimal_topk=1, early_stop=True):
    P = len(prompt)
    steps = min(steps, gen_length // minimal_topk)
    nb = math.ceil((P + gen_length) / block)
    x = list(prompt) + [MASK] * (nb * block - P)
    quota = [block // steps + (1 if i < block % steps else 0) for i in range(steps)]
    forwards = 0

    def first_eos(upto):
        return next((i for i in range(P, upto) if x[i] == EOS), None)

    for b in range(P // block, nb):
        start, end = b * block, (b + 1) * block
        for step in range(steps):
            masked = [i for i in range(start, end) if x[i] == MASK]
            if not masked:
                break
            ids = torch.tensor(x[:end])[None]
            with torch.no_grad():
                logits = model(ids, torch.arange(end)[None], AttentionMask.block_causal(end, block)).logits[0, -block:]
            forwards += 1
            probs = torch.softmax(logits, dim=-1)
            x0 = probs.argmax(-1).tolist()
            conf = probs.max(-1).values.tolist()
            high = [i for i in masked if conf[i - start] > threshold]
            if len(high) >= quota[step]:
                chosen = high
            else:
                chosen = sorted(masked, key=lambda i: -conf[i - start])[: quota[step]]
            for i in chosen:
                x[i] = x0[i - start]
            if early_stop and any(x[i] == EOS for i in chosen):
                e = first_eos(end)
                if e is not None and MASK not in x[P:e]:
                    return x[: e + 1], forwards
        if first_eos(end) is not None:
            break
    out = x[: P + gen_length]
    e = next((i for i in range(P, len(out)) if out[i] == EOS), None)
    return (out if e is None else out[: e + 1]), forwards


@pytest.fixture(scope="module")
def biased(tiny_ckpt):
    """bias -> the tiny backbone with eos's lm_head row set to bias * sign(final norm weight)."""
    cache = {}

    def get(bias):
        if bias not in cache:
            m = load_backbone(tiny_ckpt)
            if bias:
                with torch.no_grad():
                    m.lm_head.weight[EOS] = bias * m.model.norm.weight.sign()
            cache[bias] = m
        return cache[bias]

    return get


CASES = [
    (0.098, 0, 64, 8),   # eos mid-sequence, with later masks in its block
    (0.1, 0, 64, 8),     # eos at a block's first position
    (0.092, 3, 64, 8),   # eos right after the prompt, found after the block
    (0.088, 3, 40, 4),   # prompt tail inside the first generated block
    (0.105, 3, 64, 8),   # stops mid-block: 4 forwards with the early stop, 8 without
    (0.1, 5, 64, 8),     # stops in the second block: 9 forwards with the early stop, 16 without
]


@pytest.mark.parametrize("bias,seed,plen,steps,early_stop", [
    (0.0, 0, 64, 8, True),  # no eos: every block runs
    *[(*c, True) for c in CASES],
    *[(*c, False) for c in CASES],
])
def test_sampler_matches_the_naive_baseline_loop(biased, bias, seed, plen, steps, early_stop):
    m = biased(bias)
    prompt = torch.randint(0, 150000, (plen,), generator=torch.Generator().manual_seed(seed)).tolist()
    want, n = naive_generate(m, prompt, gen_length=96, block=32, steps=steps, threshold=0.95, early_stop=early_stop)
    s = BlockDiffusionSampler(m, mask_id=MASK, eos_id=EOS)
    r = s.generate(prompt, SamplerConfig(gen_length=96, steps=steps, threshold=0.95, cache="none",
                                         eos_early_stop=early_stop))
    assert r.tokens.tolist() == want
    assert r.forwards == n
    fast = s.generate(prompt, SamplerConfig(gen_length=96, steps=steps, threshold=0.95, cache="exact",
                                            eos_early_stop=early_stop))
    assert fast.tokens.tolist() == want
