"""The Z-Image diffusion transformer of the LLaDA2.0-Uni decoder (MODEL_SPEC §6.2).

One forward pass, top to bottom: the flow time t (0 = noise, 1 = data) becomes a 256-wide
sinusoid of t·1000 and an MLP gives the modulation input c. The latent (B, 16, H, W) is cut
into 2×2 patches, embedded and padded to a multiple of 32 with a learned ``x_pad_token``; two
modulated ``noise_refiner`` blocks mix them. The semantic features (B, L, 4096) go through
``semantic_embedder`` (RMSNorm + Linear), are padded with ``cap_pad_token`` and mixed by two
unmodulated ``context_refiner`` blocks. The sequence [image, caption] then runs through 30
modulated sandwich-norm blocks with full bidirectional attention, per-head RMS qk-norm and
3-axis RoPE, and the final layer turns the image tokens back into a (B, 16, H, W) velocity.

Module names equal the published ``decoder_model.safetensors`` keys, so its state dict loads as
it is. The model only computes: guidance, time grids and noise belong to the samplers.

Every item of a batch has the same latent size and caption length (the decoder groups items by
grid size), so no attention mask is needed: the pad tokens are real, attended tokens, exactly as
in the official model, where a batch of equal lengths gets an all-true mask.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.norm import RMSNorm, rms_norm
from .compiling import CompiledOrEager
from .config import SEQ_MULTIPLE, DiTConfig

__all__ = ["ZImageDiT", "rope_positions", "check_grid", "apply_rope", "ROPE_CACHE_SIZE"]

ROPE_CACHE_SIZE = 16  # rotation tables kept per model (one per grid size and device)


def check_grid(config: DiTConfig, latent_h: int, latent_w: int, cap_len: int) -> None:
    """Raise ValueError when a latent grid or caption length falls outside the RoPE tables.

    The official model indexes precomputed tables of ``axes_lens`` rows and fails with an index
    error beyond them; the weights were never trained there, so we refuse up front.
    """
    p = config.patch_size
    if latent_h <= 0 or latent_w <= 0 or latent_h % p or latent_w % p:
        raise ValueError(f"latent size {latent_h}x{latent_w}: both sides must be positive multiples of {p}")
    if cap_len <= 0:
        raise ValueError(f"caption length {cap_len}: need at least one semantic feature")
    rows, cols = latent_h // p, latent_w // p
    cap_padded = _round_up(cap_len, SEQ_MULTIPLE)
    lens = config.axes_lens
    if cap_padded + 1 >= lens[0] or rows > lens[1] or cols > lens[2]:
        raise ValueError(
            f"grid of {rows}x{cols} DiT tokens with {cap_len} semantic features needs RoPE positions up to "
            f"({cap_padded + 1}, {rows - 1}, {cols - 1}); axes_lens={lens} allows ({lens[0] - 1}, {lens[1] - 1}, {lens[2] - 1})"
        )


def _round_up(n: int, m: int) -> int:
    return n + (-n) % m


def rope_positions(rows: int, cols: int, cap_len: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """3-axis position ids of the image and caption runs, pads included, as the official model sets them.

    Caption token i (pads included) sits at (1 + i, 0, 0); the image tokens at (Lc + 1, row, col)
    with Lc the padded caption length; image pad tokens at (0, 0, 0).
    Returns (image_ids (Ni_padded, 3), caption_ids (Lc, 3)), int64.
    """
    cap_padded = _round_up(cap_len, SEQ_MULTIPLE)
    n_img = rows * cols
    img_padded = _round_up(n_img, SEQ_MULTIPLE)
    cap_ids = torch.zeros(cap_padded, 3, dtype=torch.long, device=device)
    cap_ids[:, 0] = torch.arange(1, cap_padded + 1, device=device)
    img_ids = torch.zeros(img_padded, 3, dtype=torch.long, device=device)
    img_ids[:n_img, 0] = cap_padded + 1
    img_ids[:n_img, 1] = torch.arange(rows, device=device).repeat_interleave(cols)
    img_ids[:n_img, 2] = torch.arange(cols, device=device).repeat(rows)
    return img_ids, cap_ids


class RopeEmbedder(nn.Module):
    """Real rotation tables for 3-axis positions: per axis, angles pos · theta^(-2i/d) over its dims.

    Angles are formed in float64 and rounded to float32, and cos/sin come from ``torch.polar``
    as in the official complex64 tables, so the values are bit-identical to theirs (``torch.cos``
    may differ from them by one ulp on CPU). The complex numbers live only here, in a table made
    once per grid; the hot path (``apply_rope``) is real-valued, which inductor can fuse.
    """

    def __init__(self, theta: float, axes_dims: list[int]) -> None:
        super().__init__()
        self.theta = theta
        self.axes_dims = list(axes_dims)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (N, 3) int -> (2, N, head_dim) float32: cos and signed sin, each repeated per pair.

        Row 0 is (c0, c0, c1, c1, ...) and row 1 (-s0, s0, -s1, s1, ...), the layout
        ``apply_rope`` multiplies with."""
        parts = []
        for axis, d in enumerate(self.axes_dims):
            inv = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d))  # (d/2,)
            parts.append((ids[:, axis].to(torch.float64)[:, None] * inv[None]).float())  # (N, d/2)
        angles = torch.cat(parts, dim=-1)
        cos, sin = torch.view_as_real(torch.polar(torch.ones_like(angles), angles)).unbind(-1)  # (N, D/2) each
        return torch.stack([cos.repeat_interleave(2, dim=-1), torch.stack([-sin, sin], dim=-1).flatten(-2)])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (a, b) of x (B, S, H, D) by the angles of ``rope`` (2, S, D), in fp32.

    (a, b) -> (a·c − b·s, b·c + a·s): the complex product (a + ib)(c + is) with the same two
    roundings per component, so fp32 results equal the complex-number form bit for bit on CPU.
    Returns x's dtype.
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (b, a) per pair
    return (xf * rope[0][None, :, None, :] + swapped * rope[1][None, :, None, :]).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """Sinusoid (cos first, max period 1e4) of the scaled time -> Linear-SiLU-Linear."""

    def __init__(self, out_size: int, mid_size: int = 1024, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, mid_size), nn.SiLU(), nn.Linear(mid_size, out_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) already multiplied by t_scale -> (B, out_size) in the weights' dtype."""
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with RMS qk-norm and 3-axis RoPE; no biases."""

    def __init__(self, dim: int, n_heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_heads = n_heads
        head_dim = dim // n_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        # The official block builds diffusers' Attention with qk-norm eps fixed at 1e-5.
        self.norm_q = RMSNorm(head_dim, eps=eps)
        self.norm_k = RMSNorm(head_dim, eps=eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x (B, S, dim), rope (2, S, head_dim) from ``RopeEmbedder`` -> (B, S, dim)."""
        q = self.to_q(x).unflatten(-1, (self.n_heads, -1))  # (B, S, H, D)
        k = self.to_k(x).unflatten(-1, (self.n_heads, -1))
        v = self.to_v(x).unflatten(-1, (self.n_heads, -1))
        q = apply_rope(self.norm_q(q), rope)
        k = apply_rope(self.norm_k(k), rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, S, D)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """w2(silu(w1 x) · w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def scaled_norm(x: torch.Tensor, norm: RMSNorm, scale: torch.Tensor) -> torch.Tensor:
    """RMSNorm then the adaLN scale: norm(x) · (1 + s) with the official roundings (statistics in
    fp32, normalised values cast to x's dtype, times the weight, times 1 + s). One expression, so
    inductor makes it one kernel; no cast beyond the two the bf16 roundings need."""
    return rms_norm(x, norm.weight, norm.eps) * (1.0 + scale)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, norm: RMSNorm, y: torch.Tensor) -> torch.Tensor:
    """x + tanh(g) · norm(y), one expression (one kernel when compiled)."""
    return x + gate.tanh() * rms_norm(y, norm.weight, norm.eps)


class TransformerBlock(nn.Module):
    """Sandwich-norm block. With modulation, c gives (scale_msa, gate_msa, scale_mlp, gate_mlp)
    through one Linear (no SiLU before it); scales enter as 1 + s, gates as tanh(g); no shifts."""

    def __init__(self, config: DiTConfig, modulation: bool) -> None:
        super().__init__()
        dim, eps = config.dim, config.norm_eps
        self.attention = Attention(dim, config.n_heads)
        self.feed_forward = FeedForward(dim, config.ffn_dim)
        self.attention_norm1 = RMSNorm(dim, eps=eps)
        self.attention_norm2 = RMSNorm(dim, eps=eps)
        self.ffn_norm1 = RMSNorm(dim, eps=eps)
        self.ffn_norm2 = RMSNorm(dim, eps=eps)
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.Linear(config.adaln_dim, 4 * dim))

    def forward(self, x: torch.Tensor, rope: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, S, dim), rope (2, S, head_dim), c (B, adaln_dim) or None -> (B, S, dim)."""
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rope))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(4, dim=2)  # (B, 1, dim) each
        attn = self.attention(scaled_norm(x, self.attention_norm1, scale_msa), rope)
        x = gated_residual(x, gate_msa, self.attention_norm2, attn)
        return gated_residual(x, gate_mlp, self.ffn_norm2, self.feed_forward(scaled_norm(x, self.ffn_norm1, scale_mlp)))


class FinalLayer(nn.Module):
    """LayerNorm (no affine, eps 1e-6) · (1 + Linear(SiLU(c))) -> Linear to one patch."""

    def __init__(self, dim: int, adaln_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + self.adaLN_modulation(c).unsqueeze(1)  # (B, 1, dim)
        return self.linear(self.norm_final(x) * scale)


class ZImageDiT(nn.Module):
    """velocity = ZImageDiT(x_t, t, semantic features). See the module docstring."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        dim, key = config.dim, f"{config.patch_size}-{config.all_f_patch_size[0]}"
        self.key = key
        self.t_embedder = TimestepEmbedder(config.adaln_dim, mid_size=1024)
        self.all_x_embedder = nn.ModuleDict({key: nn.Linear(config.patch_dim, dim)})
        self.semantic_embedder = nn.Sequential(
            RMSNorm(config.cap_feat_dim, eps=config.norm_eps), nn.Linear(config.cap_feat_dim, dim)
        )
        self.x_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, dim))
        self.noise_refiner = nn.ModuleList(TransformerBlock(config, modulation=True) for _ in range(config.n_refiner_layers))
        self.context_refiner = nn.ModuleList(TransformerBlock(config, modulation=False) for _ in range(config.n_refiner_layers))
        self.layers = nn.ModuleList(TransformerBlock(config, modulation=True) for _ in range(config.n_layers))
        self.all_final_layer = nn.ModuleDict({key: FinalLayer(dim, config.adaln_dim, config.patch_dim)})
        self.rope = RopeEmbedder(config.rope_theta, config.axes_dims)
        self.rope_cache: dict[tuple, torch.Tensor] = {}  # rope_table's, by grid and device
        self.compiled_core: Optional[CompiledOrEager] = None  # set_compile's

    # ------------------------------------------------------------------ helpers
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None, std: float = 0.02) -> None:
        """Random init for tests and tiny checkpoints: normal(0, std) matrices and pad tokens,
        norms near 1, small biases, and modulation weights large enough that t matters."""
        for name, p in self.named_parameters():
            r = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * r)
            elif "adaLN_modulation" in name or "t_embedder" in name:
                p.copy_(0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.02 * r)
            else:
                p.copy_(std * r if p.dim() > 1 and p.shape[-1] > 1 else r)

    # ------------------------------------------------------------------ compile switch
    def set_compile(self, mode: Optional[str], *, fullgraph: bool = False, backend: Any = "inductor") -> None:
        """Run ``forward_core`` through ``torch.compile(mode=mode)`` (None: eager, the default).

        A failing compile warns once and falls back to eager (``compiling.CompiledOrEager``)."""
        if mode is None:
            self.compiled_core = None
            return
        self.compiled_core = CompiledOrEager(
            self.forward_core, name="decoder DiT", mode=mode, fullgraph=fullgraph, backend=backend
        )

    @property
    def is_compiled(self) -> bool:
        """True while the forward runs compiled (set, and not fallen back to eager)."""
        return self.compiled_core is not None and self.compiled_core.active

    def rope_table(self, rows: int, cols: int, cap_len: int, device: torch.device) -> torch.Tensor:
        """(2, Ni' + Lc, head_dim) rotation table of the [image, caption] sequence, made once per
        grid and device (the sampler's steps share it)."""
        key = (rows, cols, _round_up(cap_len, SEQ_MULTIPLE), str(device))
        table = self.rope_cache.get(key)
        if table is None:
            img_ids, cap_ids = rope_positions(rows, cols, cap_len, device=device)
            table = self.rope(torch.cat([img_ids, cap_ids]))
            if len(self.rope_cache) >= ROPE_CACHE_SIZE:
                self.rope_cache.pop(next(iter(self.rope_cache)))
            self.rope_cache[key] = table
        return table

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, cap_feats: torch.Tensor) -> torch.Tensor:
        """Velocity of the flow at time t.

        x: (B, C, H, W) latent in the model's dtype (H, W even); t: (B,) flow time in [0, 1];
        cap_feats: (B, L, cap_feat_dim) semantic features. Returns (B, C, H, W) in the model's dtype.
        Checks the shapes, then runs ``forward_core`` (compiled when ``set_compile`` asked for it).
        """
        cfg = self.config
        B, C, H, W = x.shape
        L = cap_feats.shape[1]
        if C != cfg.in_channels or cap_feats.shape[0] != B or cap_feats.shape[2] != cfg.cap_feat_dim:
            raise ValueError(
                f"x {tuple(x.shape)} / cap_feats {tuple(cap_feats.shape)}: expected (B, {cfg.in_channels}, H, W) "
                f"and (B, L, {cfg.cap_feat_dim})"
            )
        check_grid(cfg, H, W, L)
        p = cfg.patch_size
        rope = self.rope_table(H // p, W // p, L, x.device)
        core = self.compiled_core if self.compiled_core is not None else self.forward_core
        return core(x, t, cap_feats, rope)

    def forward_core(self, x: torch.Tensor, t: torch.Tensor, cap_feats: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """The network on checked inputs; ``rope`` is ``rope_table`` of this grid. No Python
        branches on tensor values, so torch.compile captures it whole."""
        cfg = self.config
        B, C, H, W = x.shape
        L = cap_feats.shape[1]
        p = cfg.patch_size
        rows, cols = H // p, W // p
        n_img = rows * cols
        img_len = _round_up(n_img, SEQ_MULTIPLE)
        cap_len = rope.shape[1] - img_len

        c = self.t_embedder(t * cfg.t_scale).type_as(x)  # (B, adaln)

        # patches ordered (row, col), each vector (pH, pW, C)
        patches = x.reshape(B, C, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1).reshape(B, n_img, p * p * C)
        img = self.all_x_embedder[self.key](patches)  # (B, Ni, dim)
        img = torch.cat([img, self.x_pad_token.expand(B, img_len - n_img, -1)], dim=1)  # (B, Ni', dim)
        img_rope = rope[:, :img_len]
        for block in self.noise_refiner:
            img = block(img, img_rope, c)

        cap = self.semantic_embedder(cap_feats)  # (B, L, dim)
        cap = torch.cat([cap, self.cap_pad_token.expand(B, cap_len - L, -1)], dim=1)  # (B, Lc, dim)
        cap_rope = rope[:, img_len:]
        for block in self.context_refiner:
            cap = block(cap, cap_rope)

        seq = torch.cat([img, cap], dim=1)  # (B, Ni' + Lc, dim)
        for block in self.layers:
            seq = block(seq, rope, c)

        out = self.all_final_layer[self.key](seq[:, :n_img], c)  # (B, Ni, p*p*C)
        return out.reshape(B, rows, cols, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
