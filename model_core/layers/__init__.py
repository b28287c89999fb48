"""Pieces shared by the networks: norms, rotary embeddings, attention dispatch, SwiGLU."""

from .attention import AttentionMask, get_attention_backend, register_attention_backend
from .mlp import SwiGLU
from .norm import RMSNorm
from .rope import PartialRotaryEmbedding, apply_partial_rope

__all__ = [
    "AttentionMask",
    "PartialRotaryEmbedding",
    "RMSNorm",
    "SwiGLU",
    "apply_partial_rope",
    "get_attention_backend",
    "register_attention_backend",
]
