"""LLaDA2.0-Uni in plain PyTorch, loaded from the published checkpoint layout.

Imports only torch, safetensors, numpy, pillow and (lazily) transformers/tokenizers.
"""

from .backbone import BackboneOutput, KVCache, LLaDA2Backbone
from .checkpoint import CheckpointError, load_backbone, resolve_checkpoint, save_backbone
from .config import BackboneConfig, ConfigError
from .decoder import DiTConfig, ImageDecoder
from .generation.prompts import ChatMessage, ImageCodes
from .image_config import ImageTokenizerConfig, PreprocessorConfig
from .image_tokenizer import ImageTokenizer, ImageTokens
from .layers.attention import AttentionMask
from .pipeline import GenerationError, ImageResult, InterleavedResult, LLaDAUni, OutOfWorldError, TextResult
from .tokenizer import SpecialTokens, TextTokenizer, TokenizerError

__all__ = [
    "AttentionMask",
    "BackboneConfig",
    "BackboneOutput",
    "ChatMessage",
    "CheckpointError",
    "ConfigError",
    "DiTConfig",
    "GenerationError",
    "ImageCodes",
    "ImageDecoder",
    "ImageResult",
    "ImageTokenizer",
    "ImageTokenizerConfig",
    "ImageTokens",
    "InterleavedResult",
    "KVCache",
    "LLaDA2Backbone",
    "LLaDAUni",
    "OutOfWorldError",
    "PreprocessorConfig",
    "SpecialTokens",
    "TextResult",
    "TextTokenizer",
    "TokenizerError",
    "load_backbone",
    "resolve_checkpoint",
    "save_backbone",
]
