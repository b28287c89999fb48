"""Typed configuration of the LLaDA2.0-Uni backbone, read from and written to the published
``config.json`` schema (``model_type`` ``llada2_moe``).

Every field of the published file is a typed attribute; fields we do not know are kept in
``extra`` and written back unchanged, so ``BackboneConfig.from_dict(d).to_dict() == d`` for the
published file. Validation raises ``ValueError`` naming the field and its value.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "BACKBONE_SIZE_CAPS",
    "BackboneConfig",
    "ConfigError",
    "JSON_BYTES_ENV",
    "MAX_EXPERT_TENSORS",
    "MAX_JSON_DEPTH",
    "PRESETS",
    "SIZE_SCALE_ENV",
    "brief",
    "check_json_depth",
    "check_size_cap",
    "check_type",
    "read_json",
]


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range."""


# Fields that only describe the file (no effect on the network); typed but not validated
# beyond their type.
_META_FIELDS = ("architectures", "auto_map", "model_type", "torch_dtype", "transformers_version")

# ---------------------------------------------------------------------------------- size caps
#: Environment variable that multiplies every size cap of every config (a number >= 1).
SIZE_SCALE_ENV = "LLADAUNI_CONFIG_SIZE_SCALE"

#: Hard sanity caps on the backbone's sizes, checked before anything is built: generous multiples
#: (16x to 128x) of the published values, so a corrupt or hostile config.json (``num_experts:
#: 1000000000``) fails at once instead of hanging. Raise them all with ``LLADAUNI_CONFIG_SIZE_SCALE``.
BACKBONE_SIZE_CAPS = {
    "vocab_size": 1 << 22,  # published 173,568
    "hidden_size": 1 << 16,  # 2,048
    "intermediate_size": 1 << 18,  # 5,120
    "moe_intermediate_size": 1 << 16,  # 512
    "num_hidden_layers": 1024,  # 20
    "num_attention_heads": 1024,  # 16
    "num_key_value_heads": 1024,  # 4
    "head_dim": 1 << 14,  # 128
    "max_position_embeddings": 1 << 22,  # 8,192
    "num_experts": 1 << 14,  # 256
    "num_shared_experts": 64,  # 1
}
#: Cap on the routed-expert matrices of the published layout, (num_hidden_layers -
#: first_k_dense_replace) x num_experts x 3 (14,592 published): each is one tensor name to check.
MAX_EXPERT_TENSORS = 1 << 18


def size_scale() -> float:
    """The factor of ``LLADAUNI_CONFIG_SIZE_SCALE`` (1 when unset)."""
    raw = os.environ.get(SIZE_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ConfigError(f"{SIZE_SCALE_ENV}={raw!r}: expected a number >= 1 (the factor every config size cap is multiplied by)")
    return value


def check_size_cap(name: str, value: int, cap: int) -> None:
    """Raise ``ConfigError`` when ``value`` is over ``cap`` times ``LLADAUNI_CONFIG_SIZE_SCALE``."""
    limit = int(cap * size_scale())
    if value > limit:
        raise ConfigError(
            f"{name}={brief(value)}: over the sanity limit of {limit:,} (a guard against corrupt or hostile "
            f"configs); if the model really is this large, set {SIZE_SCALE_ENV} to a factor > 1 "
            f"(every config size limit is multiplied by it)"
        )


def brief(value: Any, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters (a huge integer is described by its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class BackboneConfig:
    """The MoE diffusion backbone (MODEL_SPEC §4.1). Defaults are the published values."""

    # -- file metadata -------------------------------------------------------------------
    architectures: list = field(default_factory=lambda: ["LLaDA2MoeModelLM"])
    auto_map: dict = field(
        default_factory=lambda: {
            "AutoConfig": "configuration_llada2uni_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
            "AutoModelForCausalLM": "modeling_llada2uni_moe.LLaDA2MoeModelLM",
        }
    )
    model_type: str = "llada2_moe"
    torch_dtype: str = "bfloat16"
    transformers_version: str = "4.51.0"
    # -- vocabulary ----------------------------------------------------------------------
    vocab_size: int = 173568
    image_token_offset: int = 157184
    pad_token_id: int = 156892
    tie_word_embeddings: bool = False
    # -- transformer ---------------------------------------------------------------------
    hidden_size: int = 2048
    intermediate_size: int = 5120
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int = 128
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = False
    rms_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    max_position_embeddings: int = 8192
    rope_theta: float = 600000
    rope_parameters: dict = field(
        default_factory=lambda: {"rope_type": "default", "rope_theta": 600000, "partial_rotary_factor": 0.5}
    )
    partial_rotary_factor: float = 0.5
    use_cache: bool = False
    sliding_window: Optional[int] = None
    # -- mixture of experts --------------------------------------------------------------
    num_experts: int = 256
    num_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int = 512
    first_k_dense_replace: int = 1
    output_router_logits: bool = False
    # -- unknown fields of the file, written back unchanged -------------------------------
    extra: dict = field(default_factory=dict)
    # Keys of the file this config was read from, in file order: to_dict() writes them back in
    # that order and adds only fields that differ from the default, so a round trip is exact.
    source_keys: Optional[tuple] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived fields
    @property
    def rotary_dim(self) -> int:
        """Number of leading head dims that carry RoPE (64 of 128 in the published model)."""
        return int(self.head_dim * self.rope_parameters.get("partial_rotary_factor", 1.0))

    @property
    def rope_base(self) -> float:
        return self.rope_parameters["rope_theta"]

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def qkv_size(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // self.n_group

    @property
    def shared_intermediate_size(self) -> int:
        return self.moe_intermediate_size * self.num_shared_experts

    @property
    def image_vocab_size(self) -> int:
        """Number of image codes (16,384): ids ``image_token_offset .. vocab_size-1``."""
        return self.vocab_size - self.image_token_offset

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.num_experts > 0 and layer_idx >= self.first_k_dense_replace

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        self._validate_types_and_caps()
        if self.model_type != "llada2_moe":
            raise ConfigError(f"model_type={self.model_type!r}: expected 'llada2_moe' (a LLaDA2.0-Uni backbone config)")
        positive = (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "moe_intermediate_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        for name in ("rms_norm_eps", "rope_theta", "routed_scaling_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act={self.hidden_act!r}: only 'silu' is supported")
        if self.sliding_window is not None:
            raise ConfigError(f"sliding_window={self.sliding_window!r}: sliding-window attention is not supported")
        if self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=True: the published model has a separate lm_head")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if not 0 < self.image_token_offset < self.vocab_size:
            raise ConfigError(
                f"image_token_offset={self.image_token_offset}: must lie inside the vocabulary (vocab_size={self.vocab_size})"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id}: outside the vocabulary (vocab_size={self.vocab_size})")
        self._validate_rope()
        self._validate_moe()

    def _validate_types_and_caps(self) -> None:
        """Every field of its type, every size under its cap (``BACKBONE_SIZE_CAPS``)."""
        for f in dataclasses.fields(self):
            if f.name in ("extra", "source_keys"):
                continue
            check_type(f.name, getattr(self, f.name), f.type)
        for name, cap in BACKBONE_SIZE_CAPS.items():
            check_size_cap(name, getattr(self, name), cap)
        moe_layers = max(0, self.num_hidden_layers - max(0, self.first_k_dense_replace))
        check_size_cap(
            f"routed expert tensors ({moe_layers} MoE layers x num_experts={self.num_experts} x 3)",
            moe_layers * max(0, self.num_experts) * 3,
            MAX_EXPERT_TENSORS,
        )

    def _validate_rope(self) -> None:
        rp = self.rope_parameters
        for key in ("rope_type", "rope_theta"):
            if key not in rp:
                raise ConfigError(f"rope_parameters={brief(rp)}: missing key {key!r}")
        check_type("rope_parameters.rope_theta", rp["rope_theta"], "float")
        if rp["rope_type"] != "default":
            raise ConfigError(f"rope_parameters.rope_type={brief(rp['rope_type'])}: only 'default' RoPE is supported")
        prf = rp.get("partial_rotary_factor", 1.0)
        if not isinstance(prf, (int, float)) or isinstance(prf, bool) or not 0 < prf <= 1:
            raise ConfigError(f"rope_parameters.partial_rotary_factor={brief(prf)}: must be in (0, 1]")
        if not math.isclose(prf, self.partial_rotary_factor):
            raise ConfigError(
                f"partial_rotary_factor={self.partial_rotary_factor!r} disagrees with "
                f"rope_parameters.partial_rotary_factor={prf!r}"
            )
        if not math.isclose(float(rp["rope_theta"]), float(self.rope_theta)):
            raise ConfigError(
                f"rope_theta={self.rope_theta!r} disagrees with rope_parameters.rope_theta={rp['rope_theta']!r}"
            )
        rd = self.head_dim * prf
        if rd != int(rd) or int(rd) % 2:
            raise ConfigError(
                f"partial_rotary_factor={prf!r}: head_dim={self.head_dim} × factor must be an even integer"
            )

    def _validate_moe(self) -> None:
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ConfigError(
                f"first_k_dense_replace={self.first_k_dense_replace}: must be in [0, num_hidden_layers={self.num_hidden_layers}]"
            )
        if self.num_experts < 0 or self.num_shared_experts < 0:
            raise ConfigError(f"num_experts={self.num_experts}, num_shared_experts={self.num_shared_experts}: must be >= 0")
        if self.num_experts > 0:
            if self.n_group <= 0 or self.num_experts % self.n_group:
                raise ConfigError(f"n_group={self.n_group}: must divide num_experts={self.num_experts}")
            if self.num_experts // self.n_group < 2:
                raise ConfigError(
                    f"n_group={self.n_group}: each group needs >= 2 experts (groups are scored by their top-2 sum)"
                )
            if not 0 < self.topk_group <= self.n_group:
                raise ConfigError(f"topk_group={self.topk_group}: must be in [1, n_group={self.n_group}]")
            reachable = self.topk_group * self.num_experts // self.n_group
            if not 0 < self.num_experts_per_tok <= reachable:
                raise ConfigError(
                    f"num_experts_per_tok={self.num_experts_per_tok}: must be in [1, {reachable}] "
                    f"(topk_group × experts per group)"
                )

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict) -> "BackboneConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        check_json_depth(data, "config")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "source_keys"}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
        # Fields the file omits take the published defaults; the official config class derives
        # rope_parameters from rope_theta / partial_rotary_factor when it is absent.
        if "rope_parameters" not in data:
            kwargs["rope_parameters"] = {
                "rope_type": "default",
                "rope_theta": data.get("rope_theta", cls.rope_theta),
                "partial_rotary_factor": data.get("partial_rotary_factor", cls.partial_rotary_factor),
            }
        return cls(**kwargs, extra=extra, source_keys=tuple(data))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BackboneConfig":
        return read_config_file(path, cls.from_dict)

    def to_dict(self) -> dict:
        known = {f.name: f for f in dataclasses.fields(self) if f.name not in ("extra", "source_keys")}
        out: dict = {}
        if self.source_keys is not None:
            for key in self.source_keys:
                out[key] = copy.deepcopy(getattr(self, key) if key in known else self.extra[key])
        for name, f in known.items():
            if name in out:
                continue
            value = getattr(self, name)
            dflt = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if self.source_keys is None or value != dflt:
                out[name] = copy.deepcopy(value)
        for key, value in self.extra.items():
            out.setdefault(key, copy.deepcopy(value))
        return out

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")

    def replace(self, **changes: Any) -> "BackboneConfig":
        """A validated copy with some fields changed (keeps rope fields consistent)."""
        data = self.to_dict()
        data.update(changes)
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {sorted(unknown)}")
        if ("rope_theta" in changes or "partial_rotary_factor" in changes) and "rope_parameters" not in changes:
            data["rope_parameters"] = dict(
                data["rope_parameters"],
                rope_theta=data["rope_theta"],
                partial_rotary_factor=data["partial_rotary_factor"],
            )
        return BackboneConfig.from_dict(data)

    # ------------------------------------------------------------------ presets
    @classmethod
    def full(cls) -> "BackboneConfig":
        """The published LLaDA2.0-Uni backbone (16.3B parameters, 1.5B active)."""
        return cls()

    @classmethod
    def tiny(cls) -> "BackboneConfig":
        """A CPU-sized backbone with the real vocabulary and special ids (for tests and demos).

        hidden 64, 3 layers (layer 0 dense), 16 experts in 4 groups, top-2 groups, top-4 experts,
        one shared expert, GQA 4/2 heads of 32 dims with partial rotary 0.5.
        """
        return cls().replace(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            num_experts=16,
            num_experts_per_tok=4,
            n_group=4,
            topk_group=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            first_k_dense_replace=1,
        )

    @classmethod
    def preset(cls, name: str) -> "BackboneConfig":
        try:
            return PRESETS[name]()
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


PRESETS = {"full": BackboneConfig.full, "tiny": BackboneConfig.tiny}


#: Environment variable that raises the size limit of a JSON file read by ``read_json`` (bytes).
JSON_BYTES_ENV = "LLADAUNI_MAX_JSON_BYTES"
#: Largest JSON file ``read_json`` reads by default (the published weight index is 1.3 MB).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Deepest nesting of arrays and objects accepted in a config or index file (the published files have 3).
MAX_JSON_DEPTH = 32


def json_byte_limit(max_bytes: Optional[int] = None) -> int:
    """``max_bytes``, else ``LLADAUNI_MAX_JSON_BYTES``, else ``MAX_JSON_BYTES``."""
    if max_bytes is not None:
        return max_bytes
    raw = os.environ.get(JSON_BYTES_ENV, "").strip()
    if not raw:
        return MAX_JSON_BYTES
    if not raw.isdigit():
        raise ConfigError(f"{JSON_BYTES_ENV}={raw!r}: expected a whole number of bytes")
    return int(raw)


def read_json(path: str | os.PathLike, *, max_bytes: Optional[int] = None) -> Any:
    """A JSON file's content; FileNotFoundError, or ConfigError naming the file when it is not a
    regular file, is over ``max_bytes`` (default ``MAX_JSON_BYTES``, or ``LLADAUNI_MAX_JSON_BYTES``),
    is not UTF-8 JSON, or nests deeper than ``MAX_JSON_DEPTH``."""
    path = os.fspath(path)
    limit = json_byte_limit(max_bytes)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (OSError, ValueError) as exc:  # a loop of links, a name too long, a NUL in the name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot be read ({reason})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: not a regular file")
    if info.st_size > limit:
        raise ConfigError(
            f"{path}: {info.st_size:,} bytes, over the {limit:,}-byte limit for a JSON file (set {JSON_BYTES_ENV} to raise it)"
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise ConfigError(f"{path}: over the {limit:,}-byte limit for a JSON file (set {JSON_BYTES_ENV} to raise it)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, 4300+ digit integers
        raise ConfigError(f"{path}: not valid JSON ({type(exc).__name__}: {brief(str(exc), 200)})") from None
    check_json_depth(data, path)
    return data


def check_json_depth(data: Any, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``ConfigError`` naming ``what`` when lists and dicts nest deeper than ``limit``
    (iterative, so a structure that contains itself is refused too)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, (list, tuple)):
            children = list(value)
        else:
            continue
        if depth > limit:
            raise ConfigError(f"{what}: JSON nested deeper than {limit} levels; a config file needs a few")
        stack.extend((child, depth + 1) for child in children)


def read_config_file(path: str | os.PathLike, from_dict: Any) -> Any:
    """``from_dict(json of path)``, with every config error prefixed by the file's path."""
    data = read_json(path)
    try:
        return from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


def check_type(name: str, value: Any, annotation: Any) -> None:
    """Raise ``ConfigError`` unless ``value`` fits the dataclass field ``annotation`` (a string under
    ``from __future__ import annotations``: int, float, bool, str, list, dict, or Optional of one)."""
    ann = str(annotation)
    if ann.startswith("Optional["):
        if value is None:
            return
        ann = ann[len("Optional["):-1]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and finite(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
    }.get(ann)
    if ok is None:
        raise AssertionError(f"unhandled annotation {ann} for {name}")
    if not ok:
        got = "a non-finite or out-of-range number" if ann == "float" and isinstance(value, (int, float)) else type(value).__name__
        raise ConfigError(f"{name}={brief(value)}: expected {ann}, got {got}")


def finite(value: float) -> bool:
    """Whether a number is finite and fits a float (a JSON integer of 400 digits does not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
