"""Fused RMSNorm (+ residual) and QK-norm + partial RoPE: references, kernels, ops, benchmark."""

from .op import qk_norm_rope, rms_norm
from .reference import qk_norm_rope_reference, rms_norm_reference

__all__ = ["rms_norm", "qk_norm_rope", "rms_norm_reference", "qk_norm_rope_reference"]
