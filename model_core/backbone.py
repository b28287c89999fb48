"""The LLaDA2.0-Uni diffusion backbone (LLaDA2.0-mini MoE with the extended vocabulary).

One forward pass, top to bottom (MODEL_SPEC §4.2): token embedding; per layer
``x += Attn(RMSNorm(x))`` with a fused QKV projection, per-head QK-norm *before* partial NeoX
RoPE (first ``rotary_dim`` of ``head_dim`` dims), GQA and an explicit block-causal mask, then
``x += FFN(RMSNorm(x))`` with a dense SwiGLU on the first ``first_k_dense_replace`` layers and
the sigmoid group-limited MoE elsewhere; final RMSNorm and ``lm_head``. Logits are fp32 and
only computed for the positions asked for.

Module names equal the published checkpoint's, so its state dict loads as it is (routed
experts apart, see ``model_core.moe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from .config import BackboneConfig
from .layers.attention import AttentionFn, AttentionMask, get_attention_backend
from .layers.mlp import SwiGLU
from .layers.norm import RMSNorm, add_rms_norm, norm_kernel_wanted
from .layers.rope import PartialRotaryEmbedding, apply_partial_rope
from .kernel_choice import KERNEL_SETTINGS, kernel_module
from .moe import MoeFn, Router, SparseMoeBlock, get_moe_backend

__all__ = ["LLaDA2Backbone", "BackboneOutput", "KVCache", "StaticKVCache", "LogitsSelector"]

# Which positions get logits: None = all, int n = the last n, a slice, or an index tensor.
LogitsSelector = Union[None, int, slice, torch.Tensor]


@dataclass
class KVCache:
    """Per-layer keys (after RoPE) and values, each (B, Hkv, S, D)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


@dataclass
class StaticKVCache:
    """Preallocated per-layer key/value buffers (B, Hkv, capacity, D), written in place.

    A forward given this cache writes its keys/values at the buffer positions ``write_at``
    ((Q,) int64, a device tensor) and attends over the whole buffer; the mask (``key_valid``)
    says which buffer positions are live. No shape depends on how much is cached, so a step
    over it can be captured once and replayed (``model_core.generation.static_loop``).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    write_at: Optional[torch.Tensor] = None

    @classmethod
    def allocate(
        cls, config: BackboneConfig, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> "StaticKVCache":
        """Zero-filled buffers (zeros, not garbage: a masked key's value still meets a zero weight)."""
        if batch <= 0 or capacity <= 0:
            raise ValueError(f"static cache needs batch > 0 and capacity > 0, got {batch} and {capacity}")
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        n = config.num_hidden_layers
        return cls(
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def write(self, layer: int, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store (B, Hkv, Q, D) keys/values of one layer at buffer ``positions`` (Q,)."""
        self.keys[layer].index_copy_(2, positions, keys)
        self.values[layer].index_copy_(2, positions, values)


@dataclass
class BackboneOutput:
    logits: Optional[torch.Tensor]  # (B, Q', V) fp32 for the selected positions
    hidden_states: torch.Tensor  # (B, Q, H) after the final norm
    kv: Optional[KVCache] = None  # the keys/values of this call's tokens (not the past ones)


class Attention(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        self.query_key_value = nn.Linear(config.hidden_size, config.qkv_size, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(config.head_dim, config.rms_norm_eps)
        else:
            self.query_layernorm = self.key_layernorm = None
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        self.backend: AttentionFn = get_attention_backend("auto")

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        past: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        static: Optional[tuple[StaticKVCache, int]] = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, Q, H) -> out (B, Q, H) and this call's (k, v), each (B, Hkv, Q, D).

        ``past``: cached keys/values to put before this call's. ``static``: (cache, layer): write
        this call's keys/values into the preallocated buffers and attend over all of them."""
        B, Q, _ = x.shape
        qkv = self.query_key_value(x).view(B, Q, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        qn, kn = self.query_layernorm, self.key_layernorm
        if qn is not None and norm_kernel_wanted(
            qn.kernel, "qk_norm_rope", qkv, qn.weight, kn.weight, cos, sin, self.num_heads, self.num_kv_heads
        ):  # QK-norm and partial RoPE in one launch, no concatenation
            q, k, v = kernel_module("norm").qk_norm_rope(
                qkv, qn.weight, kn.weight, cos, sin, self.num_heads, self.num_kv_heads, qn.eps
            )
        else:
            q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, Q, D)
            if qn is not None:
                q, k = qn(q), kn(k)
            q = apply_partial_rope(q, cos, sin)
            k = apply_partial_rope(k, cos, sin)
        new_kv = (k, v)
        if static is not None:
            cache, layer = static
            cache.write(layer, cache.write_at, k, v)
            k, v = cache.keys[layer], cache.values[layer]
        elif past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        out = self.backend(q, k, v, mask, self.scale)  # (B, Hq, Q, D)
        out = out.transpose(1, 2).reshape(B, Q, self.num_heads * self.head_dim)
        return self.dense(out), new_kv


class DecoderLayer(nn.Module):
    def __init__(self, config: BackboneConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.mlp: nn.Module = (
            SparseMoeBlock(config) if config.is_moe_layer(layer_idx) else SwiGLU(config.hidden_size, config.intermediate_size)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past=None, static=None):
        a, kv = self.attention(self.input_layernorm(x), cos, sin, mask, past, static)
        h, x = add_rms_norm(a, x, self.post_attention_layernorm)  # x = x + a; h = norm(x)
        x = x + self.mlp(h)
        return x, kv


class LLaDA2Model(nn.Module):
    """Embedding, decoder layers and final norm (checkpoint prefix ``model.``)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = PartialRotaryEmbedding(config.rotary_dim, config.rope_base)


class LLaDA2Backbone(nn.Module):
    """The whole backbone (checkpoint class ``LLaDA2MoeModelLM``).

    ``forward(input_ids, position_ids, mask, ...)`` returns fp32 logits for the selected
    positions. Attention and MoE implementations are chosen by name (``set_backends``).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LLaDA2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.attn_backend = "auto"
        self.moe_backend = "auto"
        self.norm_backend = "auto"
        self.routing_backend = "auto"

    # ------------------------------------------------------------------ backends
    def set_backends(
        self, attn: Optional[str] = None, moe: Optional[str] = None, norm: Optional[str] = None,
        routing: Optional[str] = None,
    ) -> "LLaDA2Backbone":
        """Choose the attention (``auto``/``sdpa``/``eager``/…), MoE (``auto``/``loop``/…), norm
        (``auto``/``triton``/``torch``: RMSNorm, residual-add + RMSNorm, QK-norm + RoPE) and MoE
        routing (``auto``/``triton``/``torch``: the fused group-limited top-k) backends."""
        for value, kind, what in ((norm, RMSNorm, "norm"), (routing, Router, "routing")):
            if value is None:
                continue
            if value not in KERNEL_SETTINGS:
                raise ValueError(f"unknown {what} backend {value!r}; choose one of {sorted(KERNEL_SETTINGS)}")
            for module in self.modules():
                if isinstance(module, kind):
                    module.kernel = KERNEL_SETTINGS[value]
            setattr(self, f"{what}_backend", value)
        if attn is not None:
            fn = get_attention_backend(attn)
            for layer in self.model.layers:
                layer.attention.backend = fn
            self.attn_backend = attn
        if moe is not None:
            mfn: MoeFn = get_moe_backend(moe)
            for layer in self.model.layers:
                if isinstance(layer.mlp, SparseMoeBlock):
                    layer.mlp.backend = mfn
            self.moe_backend = moe
        return self

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None, std: Optional[float] = None) -> None:
        """Random init for tests and tiny checkpoints: normal(0, std) matrices, unit norms, small
        random expert biases (so selection differs from the unbiased ranking)."""
        std = self.config.initializer_range if std is None else std
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator, dtype=torch.float32))
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)
        for name, b in self.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(torch.randn(b.shape, generator=generator, dtype=torch.float32) * 0.05)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        mask: Optional[AttentionMask] = None,
        *,
        past: Union[KVCache, StaticKVCache, None] = None,
        logits_for: LogitsSelector = None,
        return_kv: bool = False,
        block_size: int = 32,
        check_inputs: bool = True,
    ) -> BackboneOutput:
        """Run the backbone.

        input_ids:    (B, Q) int64.
        position_ids: (B, Q) or (Q,) int64 RoPE positions; default ``past.length + arange(Q)``.
        mask:         who attends to whom over ``past`` + the Q new tokens; default block-causal
                      with ``block_size`` over positions 0..past.length+Q-1, as every generation
                      path uses. (The official forward's default, no mask at all, is
                      ``AttentionMask.full(Q, Q)``.)
        past:         cached keys/values of earlier positions (already rotated), or a
                      ``StaticKVCache``: this call's keys/values are written into it at
                      ``past.write_at`` and the queries attend over its whole buffer, so
                      ``position_ids`` and ``mask`` (over ``past.capacity`` keys) are required.
        logits_for:   which of the Q positions get logits (None: all; int n: the last n).
        return_kv:    also return this call's keys/values.
        check_inputs: validate token ids against the vocabulary (one host sync; a captured
                      step function turns it off).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, Q), got shape {tuple(input_ids.shape)}")
        B, Q = input_ids.shape
        static = past if isinstance(past, StaticKVCache) else None
        if static is not None:
            self._check_static(static, B, Q, position_ids, mask)
            past = None
        past_len = past.length if past is not None else 0
        device = input_ids.device
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + Q, device=device)
        if position_ids.dim() == 1 and position_ids.shape[0] == Q:
            position_ids = position_ids.unsqueeze(0).expand(B, Q)
        if position_ids.shape != (B, Q):
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, expected ({B}, {Q}) or ({Q},)")
        if mask is None:
            mask = AttentionMask.block_causal(past_len + Q, block_size, query_start=past_len, device=device)
        n_keys = static.capacity if static is not None else past_len + Q
        if mask.num_queries != Q or mask.num_keys != n_keys:
            raise ValueError(
                f"mask covers {mask.num_queries} queries x {mask.num_keys} keys; "
                f"this call has {Q} queries x {n_keys} keys"
            )
        if mask.key_valid is not None and mask.key_valid.shape[0] not in (1, B):
            raise ValueError(f"mask.key_valid has batch {mask.key_valid.shape[0]}, inputs have batch {B}")
        if past is not None and len(past.keys) != len(self.model.layers):
            raise ValueError(f"past has {len(past.keys)} layers, the model {len(self.model.layers)}")
        vocab = self.config.vocab_size
        if check_inputs and input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ValueError(f"input_ids out of range [0, {vocab}): min {int(input_ids.min())}, max {int(input_ids.max())}")

        x = self.model.word_embeddings(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, layer in enumerate(self.model.layers):
            layer_past = (past.keys[i], past.values[i]) if past is not None else None
            x, (k, v) = layer(x, cos, sin, mask, layer_past, None if static is None else (static, i))
            if return_kv:
                keys.append(k)
                values.append(v)
        x = self.model.norm(x)
        return BackboneOutput(logits=self._logits(x, logits_for), hidden_states=x,
                              kv=KVCache(keys, values) if return_kv else None)

    def _logits(self, x: torch.Tensor, logits_for: LogitsSelector) -> torch.Tensor:
        """fp32 logits (B, Q', V) of the selected positions of the final hidden states x."""
        if logits_for is None:
            return self.lm_head(x).float()
        if isinstance(logits_for, int):
            Q = x.shape[1]
            sel = x[:, Q - min(max(logits_for, 0), Q) :]
        else:
            sel = x[:, logits_for]
        if sel.shape[1]:
            return self.lm_head(sel).float()
        return sel.new_zeros((x.shape[0], 0, self.config.vocab_size), dtype=torch.float32)

    def _check_static(self, cache: StaticKVCache, B: int, Q: int, position_ids, mask) -> None:
        """Metadata checks of a call over a static cache (no host sync)."""
        if len(cache.keys) != len(self.model.layers):
            raise ValueError(f"static cache has {len(cache.keys)} layers, the model {len(self.model.layers)}")
        if cache.batch != B:
            raise ValueError(f"static cache has batch {cache.batch}, inputs have batch {B}")
        if cache.write_at is None or cache.write_at.shape != (Q,):
            got = None if cache.write_at is None else tuple(cache.write_at.shape)
            raise ValueError(f"static cache write_at must be ({Q},) buffer positions for this call's tokens, got {got}")
        if position_ids is None or mask is None:
            raise ValueError("a call over a static cache needs explicit position_ids and mask")

    # ------------------------------------------------------------------ info
    def num_parameters(self, active: bool = False) -> int:
        """Numbers stored in the checkpoint (parameters and the routers' expert_bias), or those
        used per token (top-k routed experts + everything else)."""
        total = sum(t.numel() for t in self.state_dict(keep_vars=True).values())
        if not active:
            return total
        cfg = self.config
        per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
        n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
        return total - n_moe * (cfg.num_experts - cfg.num_experts_per_tok) * per_expert
