"""diffusers' LLaDA2Pipeline + BlockRefinementScheduler as an independent oracle for the text
sampler, where the two algorithms coincide: greedy, no token editing, prompt + gen_length a
whole number of blocks (diffusers hides the block-aligned tail beyond gen_length; the official
code does not)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lladauni.model_core import AttentionMask, load_backbone
from lladauni.model_core.generation import BlockDiffusionSampler, SamplerConfig

MASK, EOS = 156895, 156892


class _AsHFModel(torch.nn.Module):
    """Our backbone behind the call signature diffusers' pipeline uses."""

    def __init__(self, backbone, block_length):
        super().__init__()
        self.backbone = backbone
        self.block_length = block_length

    @property
    def device(self):
        return next(self.backbone.parameters()).device

    @property
    def dtype(self):
        return next(self.backbone.parameters()).dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        valid = None if attention_mask is None else attention_mask.bool()
        mask = AttentionMask.block_causal(input_ids.shape[1], self.block_length, key_valid=valid)
        return SimpleNamespace(logits=self.backbone(input_ids, position_ids, mask).logits)


@pytest.mark.parametrize("plen,gen_length,steps,cache", [(64, 64, 8, "exact"), (50, 46, 5, "none")])
def test_text_sampler_matches_diffusers_llada2(tiny_ckpt, plen, gen_length, steps, cache):
    import diffusers

    model = load_backbone(tiny_ckpt)
    prompt = torch.randint(0, 150000, (plen,), generator=torch.Generator().manual_seed(plen))
    pipe = diffusers.LLaDA2Pipeline(model=_AsHFModel(model, 32), scheduler=diffusers.BlockRefinementScheduler(), tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        input_ids=prompt[None], use_chat_template=False, gen_length=gen_length, block_length=32,
        num_inference_steps=steps, temperature=0.0, sampling_method="greedy", threshold=0.95,
        editing_threshold=None, eos_early_stop=False, mask_token_id=MASK, eos_token_id=EOS, output_type="seq",
    )
    ours = BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS).generate(
        prompt, SamplerConfig(gen_length=gen_length, steps=steps, threshold=0.95, eos_early_stop=False, cache=cache)
    )
    assert torch.equal(ours.generated, out.sequences[0])
