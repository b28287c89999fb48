"""The recipe of a small shapes model: sizes of every part and how long each is trained.

``ShapesModelSpec()`` is the embedded default model's recipe; ``ShapesModelSpec.smoke()`` the same
architecture family shrunk for CI smoke runs. Every part is one of the published model's classes
with a small config: the GLM-Image ViT + cosine VQ image tokenizer (``SigLIPVQ``), the LLaDA2 MoE
backbone (``LLaDA2Backbone``), the Z-Image DiT decoder with its SigVQ code embedder, and a diffusers
``AutoencoderKL`` with the published 8x downsampling.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import BackboneConfig
from ..decoder.config import DiTConfig
from ..image_config import ImageTokenizerConfig, PreprocessorConfig, VisionConfig, VQConfig
from .tasks import TaskOptions

__all__ = ["ShapesModelSpec", "StageSteps"]


@dataclass
class StageSteps:
    """Optimiser steps and batch size per training stage."""

    image_tokenizer: int = 1500
    vae: int = 2000
    # Step counts for build --jobs 2 on 2 cores in under 60 minutes. The backbone starts once the tokenizers exist
    # and runs beside the VAE and the decoder: 0.28 s a step alone at one thread, 0.35 s beside them. The decoder:
    # 0.12 s a step alone from the pool at one thread (0.067 s at two), 0.15 s beside the backbone, after the VAE
    # (8 min at one thread) and the pool (about 4 min); it takes the second thread once the backbone is done.
    # The second edition's first build (17,000 decoder and 10,000 backbone steps) took 65.4 min end to end; these
    # took 49.3 min (training.json)
    decoder: int = 15000
    backbone: int = 9500
    # scenes encoded once for the decoder (stages.decoder_pool; 0: fresh scenes every step, the first recipe)
    decoder_pool: int = 24576
    # the decoder loss's extra weight on latent pixels near ink (stages.decoder_pool)
    decoder_ink_weight: float = 4.0
    # a second decoder schedule from the first one's weights, weighing ink harder: it runs while the backbone
    # still trains (build --jobs 2). After the first schedule purple and orange still drifted (206 of 216
    # one-shape scenes redrawn right from their own codes)
    decoder_second: int = 4000
    decoder_second_lr: float = 5e-4
    decoder_second_ink_weight: float = 12.0
    image_tokenizer_batch: int = 64
    vae_batch: int = 16
    decoder_batch: int = 32
    backbone_batch: int = 32
    backbone_lr: float = 1.5e-3
    # stages.train_backbone's loss_norm: "token" or "sequence" (at 2,000 steps of the same recipe "token" was
    # ahead on every task probed: short answers 43% vs 33%, code-level text to image 45% vs 25%)
    backbone_loss: str = "token"
    # the share of text-answer blocks masked whole (corpus.BatchBuilder full_mask). Same recipe otherwise, 9,000
    # steps, one run each, bench.shapes_eval: 0 -> 0.3 took presence questions from 56% to 83% and the workflow's check on
    # right/flawed renders from 43 to 51 of 60; 0.5 (10,000 steps) was worse than 0.3 (80% vs 88% of 1,800
    # questions)
    backbone_full_mask: float = 0.3
    # the backbone's first steps draw only canonical texts, then the share of grammar phrasings rises linearly to
    # full over the ramp (corpus.phrasing_ramp, with the probe that chose it)
    backbone_canonical: int = 3000
    backbone_phrasing_ramp: int = 3000
    # an optional second schedule from the first one's weights (off: one schedule does better); it draws the
    # grammar's full shares from its first step
    backbone_second: int = 0
    backbone_second_lr: float = 1e-3


@dataclass
class ShapesModelSpec:
    seed: int = 0
    image_size: int = 96  # canvas side in pixels: a 3x3 grid of 32-pixel cells
    patch_size: int = 32  # one image code per cell
    num_codes: int = 32
    bpe_vocab_size: int = 1024
    # the shape names (and "shape") whose plurals the text tokenizer splits into stem + "s", so that
    # "How many circles ...?" uses the " circle" token the captions ground (text_tokenizer module docstring)
    split_plurals: bool = True
    block_length: int = 32
    # backbone
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    dense_intermediate: int = 256
    num_experts: int = 8
    experts_per_token: int = 2
    moe_intermediate: int = 128
    max_positions: int = 8192
    # The published RoPE (theta 600,000 on half of each head) is made for 16k-token contexts; a small
    # model reading a 3x3 grid tens of tokens back needs finer relative positions.
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    # image tokenizer
    vit_hidden: int = 64
    vit_depth: int = 2
    vit_heads: int = 2
    vq_dim: int = 16
    # VAE and decoder
    vae_channels: tuple = (16, 32, 48, 64)
    latent_channels: int = 8
    dit_dim: int = 64
    dit_heads: int = 2
    dit_layers: int = 2
    dit_refiner_layers: int = 1
    cap_feat_dim: int = 32
    # the turbo decoder's classifier-free guidance, written to lladauni.json (decoder_cfg): on 200 held-out
    # prompts with the same codes and seeds, 8 turbo steps passed the pixel checker on 165 without guidance,
    # 182 at 0.25, 184 at 0.5, 178 at 0.75, 166 at 1.0 (without it colours of a shape come out mixed)
    decoder_cfg: float = 0.5
    # data (scenes are drawn fresh every step)
    task_mix: dict = field(default_factory=dict)  # task kind -> weight; empty: tasks.DEFAULT_MIX
    # tasks.TaskOptions fields. fix_correct: 15% of fix items show an already-right drawing and a wrong
    # complaint, so a check that says "no" by mistake costs a redraw, not a broken image. (Weighting question
    # kinds toward count and presence, 1.4/1.4/0.6/0.6, did worse: 85% vs 88% of 1,800 questions.)
    task_options: dict = field(default_factory=lambda: {"fix_correct": 0.15})
    steps: StageSteps = field(default_factory=StageSteps)

    def __post_init__(self) -> None:
        # checked here, not when the stage that uses them starts (an hour into a build)
        TaskOptions.from_dict(self.task_options)
        if not (isinstance(self.decoder_cfg, (int, float)) and not isinstance(self.decoder_cfg, bool)
                and math.isfinite(self.decoder_cfg) and self.decoder_cfg >= 0):
            raise ValueError(f"decoder_cfg={self.decoder_cfg!r}: must be a finite number >= 0")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def smoke(cls) -> "ShapesModelSpec":
        """Smaller widths and a few steps per stage: for CI, where only falling losses are checked."""
        return cls(
            hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32, dense_intermediate=128,
            num_experts=4, moe_intermediate=64, vit_hidden=32, vae_channels=(8, 8, 16, 16), latent_channels=4,
            dit_dim=32, dit_heads=1, cap_feat_dim=16,
            steps=StageSteps(image_tokenizer=40, vae=30, decoder=40, backbone=40, image_tokenizer_batch=32,
                             vae_batch=8, decoder_batch=16, backbone_batch=16, backbone_second=0, decoder_pool=256,
                             backbone_canonical=10, backbone_phrasing_ramp=20,
                             decoder_second=10),
        )

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShapesModelSpec":
        data = dict(data)
        steps = StageSteps(**data.pop("steps", {}))
        if "vae_channels" in data:
            data["vae_channels"] = tuple(data["vae_channels"])
        return cls(**data, steps=steps)

    # ------------------------------------------------------------------ configs of the parts
    def backbone_config(self, vocab_size: int, image_token_offset: int, pad_token_id: int) -> BackboneConfig:
        return BackboneConfig().replace(
            vocab_size=vocab_size,
            image_token_offset=image_token_offset,
            pad_token_id=pad_token_id,
            hidden_size=self.hidden_size,
            intermediate_size=self.dense_intermediate,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            num_experts=self.num_experts,
            num_experts_per_tok=self.experts_per_token,
            n_group=1,
            topk_group=1,
            moe_intermediate_size=self.moe_intermediate,
            num_shared_experts=1,
            first_k_dense_replace=1,
            max_position_embeddings=self.max_positions,
            routed_scaling_factor=1.0,
            rope_theta=self.rope_theta,
            partial_rotary_factor=self.partial_rotary_factor,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta,
                             "partial_rotary_factor": self.partial_rotary_factor},
        )

    def image_tokenizer_config(self) -> ImageTokenizerConfig:
        return ImageTokenizerConfig(
            vision_config=VisionConfig(
                depth=self.vit_depth, hidden_size=self.vit_hidden, num_heads=self.vit_heads,
                intermediate_size=4 * self.vit_hidden, image_size=self.image_size, patch_size=self.patch_size,
            ),
            vq_config=VQConfig(embed_dim=self.vq_dim, latent_channels=self.vit_hidden, num_embeddings=self.num_codes),
        )

    def preprocessor_config(self) -> PreprocessorConfig:
        return PreprocessorConfig(patch_size=self.patch_size, min_pixels=self.image_size ** 2,
                                  max_pixels=self.image_size ** 2, fixed_size=[self.image_size, self.image_size])

    def dit_config(self) -> DiTConfig:
        head = self.dit_dim // self.dit_heads
        a = (head // 4) // 2 * 2
        b = (head - a) // 2 // 2 * 2
        axes = [head - 2 * b, b, b]
        return DiTConfig(
            in_channels=self.latent_channels, dim=self.dit_dim, n_layers=self.dit_layers,
            n_refiner_layers=self.dit_refiner_layers, n_heads=self.dit_heads, n_kv_heads=self.dit_heads,
            cap_feat_dim=self.cap_feat_dim, axes_dims=axes,
        )

    def vae_config(self) -> dict[str, Any]:
        n = len(self.vae_channels)
        return {
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.36.0",
            "act_fn": "silu",
            "block_out_channels": list(self.vae_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "force_upcast": True,
            "in_channels": 3,
            "latent_channels": self.latent_channels,
            "latents_mean": None,
            "latents_std": None,
            "layers_per_block": 1,
            "mid_block_add_attention": False,
            "norm_num_groups": 8 if min(self.vae_channels) >= 8 else min(self.vae_channels),
            "out_channels": 3,
            "sample_size": self.image_size,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "use_post_quant_conv": False,
            "use_quant_conv": False,
        }
