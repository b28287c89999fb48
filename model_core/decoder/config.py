"""Typed configuration of the Z-Image DiT decoder, read from and written to the published
``decoder/config.json`` schema (``_class_name`` ``ZImageTransformer2DModel``).

The published file is stale in two fields (MODEL_SPEC §12): it says ``cap_feat_dim`` 2560 and
``axes_lens`` [1536, 512, 512], while the weights need a 4096-wide semantic embedder and the
official loader forces [32768, 1024, 1024]. ``DiTConfig.from_dict`` reads the file as it is;
``with_loader_overrides`` applies what the loader must (see ``model_core.decoder.loading``).
Validation raises ``ConfigError`` naming the field and its value.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import ConfigError, brief, check_json_depth, check_size_cap, check_type, read_config_file

__all__ = ["DiTConfig", "DIT_SIZE_CAPS", "OFFICIAL_AXES_LENS", "ADALN_DIM", "SEQ_MULTIPLE"]

# What the official loader (decoder/decode.py) forces regardless of the file.
OFFICIAL_AXES_LENS = [32768, 1024, 1024]
# Width of the timestep embedding that drives every modulation (min(dim, 256) in Z-Image).
ADALN_DIM = 256
# Image and caption token runs are each padded to a multiple of this with a learned token.
SEQ_MULTIPLE = 32
#: Hard sanity caps (generous multiples of the published values, in the comments), checked before
#: anything is built; ``LLADAUNI_CONFIG_SIZE_SCALE`` multiplies them all (``model_core.config``).
DIT_SIZE_CAPS = {
    "in_channels": 1024,  # 16
    "dim": 1 << 16,  # 3,840
    "n_layers": 1024,  # 30
    "n_refiner_layers": 1024,  # 2
    "n_heads": 1024,  # 30
    "n_kv_heads": 1024,  # 30
    "cap_feat_dim": 1 << 16,  # 4,096
}


@dataclass
class DiTConfig:
    """The Z-Image transformer of ``decoder/`` and ``decoder-turbo/`` (MODEL_SPEC §6.2).

    Defaults are what the published weights need (cap_feat_dim 4096, axes_lens [32768, 1024,
    1024]), not the stale values of the file.
    """

    _class_name: str = "ZImageTransformer2DModel"
    _diffusers_version: str = "0.37.0.dev0"
    all_patch_size: list = field(default_factory=lambda: [2])
    all_f_patch_size: list = field(default_factory=lambda: [1])
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    n_kv_heads: int = 30
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 4096
    siglip_feat_dim: Optional[int] = None
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: list = field(default_factory=lambda: [32, 48, 48])
    axes_lens: list = field(default_factory=lambda: list(OFFICIAL_AXES_LENS))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived fields
    @property
    def patch_size(self) -> int:
        return self.all_patch_size[0]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the SwiGLU feed-forward: int(dim / 3 * 8) (10,240 for dim 3840)."""
        return int(self.dim / 3 * 8)

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_DIM)

    @property
    def patch_dim(self) -> int:
        """Length of one flattened latent patch (pH, pW, C): 64 for the published model."""
        return self.patch_size * self.patch_size * self.in_channels

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "extra":
                check_type(f.name, getattr(self, f.name), f.type)
        for name, cap in DIT_SIZE_CAPS.items():
            check_size_cap(name, getattr(self, name), cap)
        if self._class_name != "ZImageTransformer2DModel":
            raise ConfigError(f"_class_name={self._class_name!r}: expected 'ZImageTransformer2DModel'")
        for name in ("in_channels", "dim", "n_layers", "n_heads", "n_kv_heads", "cap_feat_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.n_refiner_layers < 0:
            raise ConfigError(f"n_refiner_layers={self.n_refiner_layers!r}: must be >= 0")
        for name in ("norm_eps", "rope_theta", "t_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.all_patch_size != [2] or self.all_f_patch_size != [1]:
            raise ConfigError(
                f"all_patch_size={brief(self.all_patch_size)}, all_f_patch_size={brief(self.all_f_patch_size)}: "
                "only the published [2] / [1] patching is supported"
            )
        if self.siglip_feat_dim is not None:
            raise ConfigError(f"siglip_feat_dim={self.siglip_feat_dim!r}: the Omni (SigLIP) variant is not supported")
        if not self.qk_norm:
            raise ConfigError("qk_norm=False: the published decoder normalises queries and keys")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.n_kv_heads != self.n_heads:
            # The Z-Image block has no grouped-query attention; the official code ignores the field.
            raise ConfigError(f"n_kv_heads={self.n_kv_heads}: must equal n_heads={self.n_heads} (no GQA in Z-Image)")
        if len(self.axes_dims) != 3 or len(self.axes_lens) != 3:
            raise ConfigError(f"axes_dims={brief(self.axes_dims)}, axes_lens={brief(self.axes_lens)}: need three axes each")
        for name in ("axes_dims", "axes_lens"):
            for v in getattr(self, name):
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ConfigError(f"{name}={brief(getattr(self, name))}: entries must be positive integers")
                check_size_cap(name + " entry", v, 1 << 22)  # axes_lens: 32,768 in the official loader
        if any(d % 2 for d in self.axes_dims):
            raise ConfigError(f"axes_dims={self.axes_dims!r}: every axis needs an even number of dims")
        if sum(self.axes_dims) != self.head_dim:
            raise ConfigError(
                f"axes_dims={self.axes_dims!r} sums to {sum(self.axes_dims)}, head_dim is {self.head_dim} (dim / n_heads)"
            )

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict) -> "DiTConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        check_json_depth(data, "config")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "DiTConfig":
        return read_config_file(path, cls.from_dict)

    def to_dict(self) -> dict:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(copy.deepcopy(self.extra))
        return out

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")

    def replace(self, **changes: Any) -> "DiTConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def full(cls) -> "DiTConfig":
        """The published decoder: 6,160,808,512 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> "DiTConfig":
        """CPU-sized: dim 64, 2 heads of 32 dims (RoPE axes 8/12/12), 2 layers, 1 refiner each,
        semantic features 32 wide."""
        return cls(dim=64, n_heads=2, n_kv_heads=2, n_layers=2, n_refiner_layers=1, cap_feat_dim=32, axes_dims=[8, 12, 12])

    @classmethod
    def mid(cls) -> "DiTConfig":
        """A mid-size CPU benchmark config: dim 512, 4 heads of 128 (published RoPE axes), 6 layers."""
        return cls(dim=512, n_heads=4, n_kv_heads=4, n_layers=6, n_refiner_layers=2, cap_feat_dim=256)
