"""Typed configuration of the SigLIP-VQ image tokenizer, read from and written to the published
``image_tokenizer/config.json`` (a GLM-Image config: ``vision_config`` + ``vq_config``) and
``image_tokenizer/preprocessor_config.json``.

As with the backbone config, every known field is a typed attribute, unknown fields are kept in
``extra`` and written back unchanged, so ``from_dict(d).to_dict() == d`` (key order included) for
the published files. Validation raises ``ConfigError`` naming the field and its value.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .config import ConfigError, brief, check_json_depth, check_size_cap, check_type, finite, read_config_file

__all__ = [
    "ImageTokenizerConfig",
    "PREPROCESSOR_SIZE_CAPS",
    "PreprocessorConfig",
    "VISION_SIZE_CAPS",
    "VQ_SIZE_CAPS",
    "VisionConfig",
    "VQConfig",
]

_NOT_FIELDS = ("extra", "source_keys")
_T = TypeVar("_T")


def _from_dict(cls: type[_T], data: Any, **converted: Any) -> _T:
    """Build a file-backed config: known keys become fields, the rest goes to ``extra``."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
    check_json_depth(data, "config")
    known = {f.name for f in dataclasses.fields(cls)} - set(_NOT_FIELDS)
    kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known and k not in converted}
    kwargs.update({k: v for k, v in converted.items() if k in data})
    extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
    try:
        return cls(**kwargs, extra=extra, source_keys=tuple(data))
    except TypeError as exc:  # pragma: no cover - only reachable through a bad dataclass
        raise ConfigError(str(exc)) from None


def _to_dict(cfg: Any) -> dict:
    """Keys of the source file in file order, then fields that differ from the default (all
    fields for a config built in code, except optional fields left at None), then unknown keys."""
    known = {f.name: f for f in dataclasses.fields(cfg) if f.name not in _NOT_FIELDS}

    def plain(value: Any) -> Any:
        return value.to_dict() if dataclasses.is_dataclass(value) else copy.deepcopy(value)

    out: dict = {}
    if cfg.source_keys is not None:
        for key in cfg.source_keys:
            out[key] = plain(getattr(cfg, key)) if key in known else copy.deepcopy(cfg.extra[key])
    for name, f in known.items():
        if name in out:
            continue
        value = getattr(cfg, name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value is None and default is None:
            continue  # an unset optional field: never written, so code-built files match published ones
        if cfg.source_keys is None or value != default:
            out[name] = plain(value)
    for key, value in cfg.extra.items():
        out.setdefault(key, copy.deepcopy(value))
    return out


def _check_types(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_FIELDS or not isinstance(f.type, str) or f.type.endswith("Config"):
            continue
        check_type(f.name, getattr(cfg, f.name), f.type)


#: Hard sanity caps (generous multiples of the published values, in the comments), checked before
#: anything is built; ``LLADAUNI_CONFIG_SIZE_SCALE`` multiplies them all (``model_core.config``).
VISION_SIZE_CAPS = {
    "depth": 1024,  # 40
    "hidden_size": 1 << 16,  # 1,536
    "image_size": 1 << 16,  # 2,048
    "intermediate_size": 1 << 18,  # 6,144
    "num_heads": 1024,  # 16
    "patch_size": 1024,  # 16
}
#: Cap on the side of the learned position table, image_size / patch_size (128 published).
MAX_POSITION_GRID = 1024
VQ_SIZE_CAPS = {
    "embed_dim": 1 << 16,  # 2,048
    "latent_channels": 1 << 16,  # 1,536
    "num_embeddings": 1 << 22,  # 16,384
}
PREPROCESSOR_SIZE_CAPS = {
    "patch_size": 1024,  # 16
    "fixed_size": 8192,  # each side, in pixels (not in the published file)
}


def _check_caps(cfg: Any, caps: dict) -> None:
    for name, cap in caps.items():
        value = getattr(cfg, name)
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            check_size_cap(name, item, cap)


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be > 0")


def _write_json(data: dict, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


@dataclass
class VisionConfig:
    """The 40-layer ViT (MODEL_SPEC §3.1-3.2); field names and order follow ``vision_config``."""

    attention_bias: bool = True
    attention_dropout: float = 0.0
    depth: int = 40
    hidden_act: str = "gelu"
    hidden_size: int = 1536
    image_size: int = 2048
    in_channels: int = 3
    intermediate_size: int = 6144
    layer_norm_eps: float = 1e-6
    model_type: str = "glm_image_vision"
    num_heads: int = 16
    patch_size: int = 16
    spatial_merge_size: int = 1
    extra: dict = field(default_factory=dict)
    source_keys: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_caps(self, VISION_SIZE_CAPS)
        _positive(self, "depth", "hidden_size", "image_size", "intermediate_size", "num_heads", "patch_size", "layer_norm_eps")
        check_size_cap("position grid side (image_size / patch_size)", self.image_size // self.patch_size, MAX_POSITION_GRID)
        if self.model_type != "glm_image_vision":
            raise ConfigError(f"model_type={self.model_type!r}: expected 'glm_image_vision'")
        if self.hidden_act != "gelu":
            raise ConfigError(f"hidden_act={self.hidden_act!r}: only 'gelu' (exact, erf-based) is supported")
        if self.in_channels != 3:
            raise ConfigError(f"in_channels={self.in_channels!r}: the tokenizer reads RGB images (3 channels)")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.spatial_merge_size != 1:
            # With merging the patch order is 2x2-interleaved, which the raster VQ step would scramble.
            raise ConfigError(f"spatial_merge_size={self.spatial_merge_size!r}: only 1 (raster patch order) is supported")
        if not 0 <= self.attention_dropout < 1:
            raise ConfigError(f"attention_dropout={self.attention_dropout!r}: must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def position_grid(self) -> int:
        """Side of the learned position table (128 for the published model)."""
        return self.image_size // self.patch_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row: C * p * p (768)."""
        return self.in_channels * self.patch_size * self.patch_size

    @classmethod
    def from_dict(cls, data: dict) -> "VisionConfig":
        return _from_dict(cls, data)

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass
class VQConfig:
    """The cosine-similarity VQ (MODEL_SPEC §3.1-3.2); names and order follow ``vq_config``."""

    embed_dim: int = 2048
    in_channels: int = 3
    initializer_range: float = 0.02
    latent_channels: int = 1536
    model_type: str = "glm_image_vqmodel"
    num_embeddings: int = 16384
    extra: dict = field(default_factory=dict)
    source_keys: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_caps(self, VQ_SIZE_CAPS)
        _positive(self, "embed_dim", "latent_channels", "num_embeddings")
        if self.model_type != "glm_image_vqmodel":
            raise ConfigError(f"model_type={self.model_type!r}: expected 'glm_image_vqmodel'")

    @classmethod
    def from_dict(cls, data: dict) -> "VQConfig":
        return _from_dict(cls, data)

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclass
class ImageTokenizerConfig:
    """``image_tokenizer/config.json``. Only ``vision_config`` and ``vq_config`` drive the network;
    the GLM-Image text_config and token ids of the file are kept in ``extra``."""

    vision_config: VisionConfig = field(default_factory=VisionConfig)
    vq_config: VQConfig = field(default_factory=VQConfig)
    model_type: str = "glm_image"
    extra: dict = field(default_factory=dict)
    source_keys: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        if self.model_type != "glm_image":
            raise ConfigError(f"model_type={self.model_type!r}: expected 'glm_image' (a GLM-Image tokenizer config)")
        if self.vq_config.latent_channels != self.vision_config.hidden_size:
            raise ConfigError(
                f"vq_config.latent_channels={self.vq_config.latent_channels} must equal "
                f"vision_config.hidden_size={self.vision_config.hidden_size} (quant_conv reads the ViT features)"
            )

    @classmethod
    def from_dict(cls, data: dict) -> "ImageTokenizerConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
        subs = {}
        for key, sub_cls in (("vision_config", VisionConfig), ("vq_config", VQConfig)):
            if key not in data:
                raise ConfigError(f"missing {key!r}: not an image-tokenizer config")
            try:
                subs[key] = sub_cls.from_dict(data[key])
            except ConfigError as exc:
                raise ConfigError(f"{key}.{exc}" if not str(exc).startswith("expected") else f"{key}: {exc}") from None
        return _from_dict(cls, data, **subs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ImageTokenizerConfig":
        return read_config_file(path, cls.from_dict)

    def to_dict(self) -> dict:
        return _to_dict(self)

    def to_json_file(self, path: str | os.PathLike) -> None:
        _write_json(self.to_dict(), path)

    @classmethod
    def full(cls) -> "ImageTokenizerConfig":
        """The published tokenizer: 40 layers, hidden 1536, 16,384 codes of 2048 dims (1.2B parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> "ImageTokenizerConfig":
        """A CPU-sized tokenizer with the real codebook size (codes cover 0..16383): hidden 32,
        2 layers, 2 heads, a 16x16 position table (image_size 256), 16-dim codes."""
        return cls(
            vision_config=VisionConfig(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, image_size=256),
            vq_config=VQConfig(embed_dim=16, latent_channels=32),
        )


@dataclass
class PreprocessorConfig:
    """``image_tokenizer/preprocessor_config.json`` (MODEL_SPEC §2.1); names and order follow the file.

    ``min_pixels``/``max_pixels``/``do_resize``/``resample`` are kept for the round trip but not
    used: like the official code, resizing is done by the purpose-specific policies of
    ``model_core.image_preprocess``.

    ``fixed_size`` (not in the published file; ``None`` by default) is ``[height, width]`` in
    pixels, each a positive multiple of ``patch_size``. When set, the ``understand`` and ``edit``
    purposes resize every image to exactly that size instead of the published policies, and the
    published grid-side rule (``check_grid``) is not applied: the checkpoint's own text tokenizer
    decides which grid sides have size tokens. It is written to the file only when set.
    """

    min_pixels: int = 262144
    max_pixels: int = 4194304
    do_rescale: bool = True
    do_normalize: bool = True
    do_resize: bool = False
    patch_size: int = 16
    temporal_patch_size: int = 1
    merge_size: int = 1
    image_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_processor_type: str = "GlmImageImageProcessor"
    processor_class: str = "GlmImageProcessor"
    resample: int = 3
    rescale_factor: float = 0.00392156862745098
    fixed_size: Optional[list] = None
    extra: dict = field(default_factory=dict)
    source_keys: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_types(self)
        _positive(self, "patch_size", "rescale_factor")
        if self.merge_size != 1:
            raise ConfigError(
                f"merge_size={self.merge_size!r}: must be 1; merged patch order would not match the raster "
                f"order of the VQ codes (an early upstream config had 2)"
            )
        if self.temporal_patch_size != 1:
            raise ConfigError(f"temporal_patch_size={self.temporal_patch_size!r}: must be 1 (single images, 2-D patches)")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and finite(v) for v in value):
                raise ConfigError(f"{name}={brief(value)}: expected three numbers (R, G, B), each finite")
        if not all(s > 0 for s in self.image_std):
            raise ConfigError(f"image_std={self.image_std!r}: every value must be > 0")
        if self.fixed_size is not None:
            fs = self.fixed_size
            if len(fs) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in fs):
                raise ConfigError(f"fixed_size={brief(fs)}: expected [height, width], two positive ints (pixels)")
            if any(v % self.patch_size for v in fs):
                raise ConfigError(
                    f"fixed_size={fs!r}: height and width must be multiples of patch_size={self.patch_size}"
                )
        _check_caps(self, PREPROCESSOR_SIZE_CAPS)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessorConfig":
        return _from_dict(cls, data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "PreprocessorConfig":
        return read_config_file(path, cls.from_dict)

    def to_dict(self) -> dict:
        return _to_dict(self)

    def to_json_file(self, path: str | os.PathLike) -> None:
        _write_json(self.to_dict(), path)
