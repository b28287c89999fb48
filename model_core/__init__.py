"""LLaDA2.0-Uni in plain PyTorch, loaded from the published checkpoint layout.

Imports only torch, safetensors, numpy, pillow and (lazily) transformers/tokenizers.
"""

from .backbone import BackboneOutput, KVCache, LLaDA2Backbone
from .checkpoint import CheckpointError, load_backbone, resolve_checkpoint, save_backbone
from .config import BackboneConfig, ConfigError
from .layers.attention import AttentionMask
from .tokenizer import SpecialTokens, TextTokenizer, TokenizerError

__all__ = [
    "AttentionMask",
    "BackboneConfig",
    "BackboneOutput",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "LLaDA2Backbone",
    "SpecialTokens",
    "TextTokenizer",
    "TokenizerError",
    "load_backbone",
    "resolve_checkpoint",
    "save_backbone",
]
