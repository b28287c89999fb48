"""Typed options per task: the one place where every generation option has its type, default,
range and help.

``ChatOptions``, ``UnderstandOptions``, ``ImageOptions`` (plain and thinking), ``EditOptions`` and
``InterleavedOptions`` are frozen dataclasses (model_core imports without pydantic). Each field is
declared with ``option(default, help, ...)``; ``option_specs(cls)`` reads them back as
``OptionSpec`` rows, from which every boundary is derived: the OpenAI / SGLang-Omni request
schemas, the MCP and LangChain tools, the workflow schema, the HTTP client's wire mapping and the
CLI flags. Adding an option is one edit here.

Construction validates every field and names it: ``ImageOptions(steps=0)`` raises
``ValueError("steps=0: must be >= 1 (denoising steps per 32-token block)")``.
``sampler_config(options, ...)`` is the one function that turns options into the sampler's
``SamplerConfig``.

The official code's behaviour is reachable too: ``sprint_legacy_scores`` / ``sprint_legacy_padding``
reproduce its SPRINT ranking and padding defects (docs/DEFECTS.md), ``eos_early_stop=False`` its
full-length text loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

from .generation.sampler import CFGSpec, SamplerConfig
from .generation.sprint import SprintConfig

__all__ = [
    "ChatOptions", "EditOptions", "ImageOptions", "InterleavedOptions", "MAX_SEED", "OptionSpec", "SamplingOptions",
    "TASK_OPTIONS", "UnderstandOptions", "make_options", "option", "option_specs", "options_help", "sampler_config",
    "takes_options",
]

# the largest seed torch.Generator.manual_seed takes as a non-negative int64; larger seeds are refused
# by name at every boundary (they used to pass validation and fail inside the run)
MAX_SEED = 2**63 - 1


def option(default: Any, help: str, *, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None, multiple_of: Optional[int] = None) -> Any:
    """A dataclass field with its help and range (``choices`` come from a ``Literal`` type)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "multiple_of": multiple_of}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One option as every boundary sees it."""

    name: str
    type: type  # bool, int, float or str
    optional: bool  # None is a value (meaning: see help)
    default: Any
    help: str
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    multiple_of: Optional[int] = None
    choices: Optional[tuple] = None

    def check(self, value: Any) -> Any:
        """The value, checked (ints are accepted for floats); ValueError naming the option."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.name}=None: a value is required ({self.help})")
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is bool and not isinstance(value, bool) or self.type is not bool and (
                isinstance(value, bool) or not isinstance(value, self.type)):
            raise ValueError(f"{self.name}={value!r}: expected {self.type.__name__} ({self.help})")
        problem = self.problem(value)
        if problem:
            raise ValueError(f"{self.name}={value!r}: {problem} ({self.help})")
        return value

    def range_text(self, ascii: bool = False) -> str:
        """The bounds as text, e.g. "≥ 32, multiple of 32" (``ascii``: ">= 32, ...")."""
        ge, le = (">=", "<=") if ascii else ("≥", "≤")
        return ", ".join(f"{word} {_num(v)}" for word, v in ((ge, self.ge), (">", self.gt), (le, self.le),
                                                         ("multiple of", self.multiple_of)) if v is not None)

    def problem(self, value: Any) -> Optional[str]:
        if self.choices is not None and value not in self.choices:
            return "choose one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is float and not math.isfinite(value):
            return "must be finite"
        if self.ge is not None and value < self.ge:
            return f"must be >= {_num(self.ge)}"
        if self.gt is not None and value <= self.gt:
            return f"must be > {_num(self.gt)}"
        if self.le is not None and value > self.le:
            return f"must be <= {_num(self.le)}"
        if self.multiple_of is not None and value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}"
        return None


def _num(v: float) -> str:
    """A bound as text: integers exactly (a seed bound is 9223372036854775807, not 9.22337e+18)."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def _base_type(hint: Any) -> tuple[type, bool, Optional[tuple]]:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), optional, choices
    return hint, optional, None


@functools.lru_cache(maxsize=None)
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The ``OptionSpec`` of every field of an options class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional, choices = _base_type(hints[f.name])
        m = f.metadata
        out.append(OptionSpec(f.name, kind, optional, f.default, m["help"], m["ge"], m["gt"], m["le"],
                              m["multiple_of"], choices))
    return tuple(out)


class _Checked:
    """Validates every field on construction (and on ``dataclasses.replace``)."""

    def __post_init__(self) -> None:
        for spec in option_specs(type(self)):
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))


# --------------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class SamplingOptions(_Checked):
    """What every task shares: the block-diffusion sampler's settings (MODEL_SPEC §5)."""

    steps: int = option(32, "denoising steps per block", ge=1)
    block_length: int = option(32, "tokens per denoising block", ge=1)
    threshold: float = option(0.95, "also commit every proposal at least this confident (1 = only the step quota)", ge=0, le=1)
    temperature: float = option(0.0, "sampling temperature; 0 is greedy", ge=0)
    top_p: Optional[float] = option(None, "nucleus sampling: keep the smallest set with this much probability", gt=0, le=1)
    top_k: Optional[int] = option(None, "sample among the k most likely tokens", ge=1)
    minimal_topk: int = option(1, "steps are capped at gen_length // minimal_topk", ge=1)
    remasking: Literal["low_confidence", "top_k_margin", "neg_entropy", "random"] = option(
        "low_confidence", "confidence used to choose what SPRINT commits")
    use_sprint: bool = option(False, "SPRINT: prune the cached prefix and commit adaptively (faster, approximate)")
    keep_ratio: float = option(0.7, "SPRINT: share of the prefix kept after pruning", gt=0, le=1)
    cache_warmup_steps: int = option(2, "SPRINT: steps per block on the full prefix before pruning", ge=0)
    confidence_alpha: float = option(0.5, "SPRINT: weight of key importance against confidence", ge=0, le=1)
    image_keep_ratio: Optional[float] = option(None, "SPRINT: >= 1 keeps every image token of the prefix", ge=0)
    text_keep_ratio: Optional[float] = option(None, "SPRINT: None or >= 1 keeps every text token of the prefix", ge=0)
    sprint_legacy_scores: bool = option(False, "SPRINT as the official code ranks (its NaN/inf defect)")
    sprint_legacy_padding: bool = option(False, "SPRINT as the official code keeps visible CFG padding (its defect)")
    eos_early_stop: bool = option(True, "stop text generation at the first settled end of text (False: official full loop)")
    cache: Literal["auto", "static", "exact", "none"] = option(
        "auto", "KV cache: static (preallocated, CUDA-graph steps), exact (grown per block) or none (recompute every "
                "step); all give the same tokens; auto: static on CUDA, exact elsewhere")
    seed: Optional[int] = option(None, "random seed (None: unseeded)", ge=0, le=MAX_SEED)
    trace: bool = option(False, "record the positions and confidences committed at every step")


@dataclass(frozen=True)
class ChatOptions(SamplingOptions):
    """``LLaDAUni.chat``: text chat, optionally about images."""

    gen_length: int = option(2048, "most tokens to generate", ge=1)
    template: Literal["auto", "chat_template", "omni"] = option(
        "auto", "chat_template: the checkpoint's; omni: SGLang-Omni's multimodal form; auto: omni when there are images")


@dataclass(frozen=True)
class UnderstandOptions(SamplingOptions):
    """``LLaDAUni.understand``: answer a question about an image."""

    gen_length: int = option(2048, "most tokens to generate", ge=1)
    template: Literal["official", "chat"] = option("official", "official: template-free prompt; chat: SGLang-Omni's chat form")


@dataclass(frozen=True)
class _Decoding(SamplingOptions):
    decode: bool = option(True, "decode the codes to pixels (loads the decoder on first use); False: codes only")
    decoder_steps: Optional[int] = option(None, "diffusion decoder steps (None: the decoder's default)", ge=1)
    cfg_rescale: float = option(0.7, "rescale guided logits toward the conditional spread", ge=0, le=1)


@dataclass(frozen=True)
class ImageOptions(_Decoding):
    """``LLaDAUni.generate_image``: text to image, plain or thinking."""

    steps: int = option(16, "denoising steps per block", ge=1)
    image_h: Optional[int] = option(None, "output height in pixels (None: the checkpoint's size)", ge=32, multiple_of=32)
    image_w: Optional[int] = option(None, "output width in pixels (None: the checkpoint's size)", ge=32, multiple_of=32)
    cfg_scale: float = option(4.0, "classifier-free guidance scale (1 = none)", ge=1)
    gen_length: Optional[int] = option(None, "image tokens to generate (None: the whole grid)", ge=1)
    mode: Literal["normal", "thinking"] = option("normal", "thinking: reason in text and write the image header first")
    thinking_steps: int = option(32, "thinking: denoising steps per block of the reasoning", ge=1)
    thinking_gen_length: int = option(4096, "thinking: most reasoning tokens", ge=1)
    thinking_temperature: float = option(0.0, "thinking: temperature of the reasoning", ge=0)
    thinking_top_p: Optional[float] = option(None, "thinking: nucleus sampling of the reasoning", gt=0, le=1)
    thinking_top_k: Optional[int] = option(None, "thinking: top-k sampling of the reasoning", ge=1)


@dataclass(frozen=True)
class EditOptions(_Decoding):
    """``LLaDAUni.edit_image``: edit an image (or several references) following an instruction."""

    steps: int = option(8, "denoising steps per block", ge=1)
    cfg_text_scale: float = option(4.0, "editing guidance toward the instruction", ge=0)
    cfg_image_scale: float = option(0.0, "editing guidance toward the source image", ge=0)


@dataclass(frozen=True)
class InterleavedOptions(_Decoding):
    """``LLaDAUni.generate_interleaved``: text and images in turn (SGLang-Omni's protocol)."""

    max_frames: int = option(4, "most images to draw", ge=0)
    image_h: Optional[int] = option(None, "fallback height when the model writes no valid header (None: the checkpoint's size)",
                                    ge=32, multiple_of=32)
    image_w: Optional[int] = option(None, "fallback width when the model writes no valid header (None: the checkpoint's size)",
                                    ge=32, multiple_of=32)
    text_gen_length: int = option(1024, "most tokens of each text segment", ge=1)
    image_steps: int = option(16, "denoising steps per block of each image", ge=1)
    cfg_scale: float = option(4.0, "guidance of the first image (1 = none)", ge=0)
    cfg_text_scale: float = option(4.0, "editing guidance of later images toward the text", ge=0)
    cfg_image_scale: float = option(0.0, "editing guidance of later images toward earlier ones", ge=0)


TASK_OPTIONS: dict[str, type] = {"chat": ChatOptions, "understand": UnderstandOptions, "image": ImageOptions,
                                 "edit": EditOptions, "interleaved": InterleavedOptions}


def make_options(cls: type, *layers: Optional[dict]) -> Any:
    """``cls`` from layered dicts (later wins; None values mean "not given"); an unknown name is a
    TypeError that lists the known ones."""
    names = {s.name for s in option_specs(cls)}
    merged: dict = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if k not in names:
                close = sorted(n for n in names if n.split("_")[0] == k.split("_")[0]) or sorted(names)
                raise TypeError(f"{cls.__name__} has no option {k!r}; options: {', '.join(close)}")
            if v is not None:
                merged[k] = v
    return cls(**merged)


def sampler_config(o: SamplingOptions, *, gen_length: int, image_only: bool = False, cfg: Optional[CFGSpec] = None,
                   stop_ids: Sequence[int] = (), **phase: Any) -> SamplerConfig:
    """Options -> the sampler's config. ``phase`` replaces steps / temperature / top_p / top_k /
    record_trace for one phase (thinking mode's reasoning, interleaved images)."""
    run = dict(steps=o.steps, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, record_trace=o.trace)
    unknown = set(phase) - set(run)
    if unknown:
        raise TypeError(f"sampler_config: unknown phase settings {sorted(unknown)}")
    run.update(phase)
    sprint = SprintConfig(keep_ratio=o.keep_ratio, cache_warmup_steps=o.cache_warmup_steps,
                          confidence_alpha=o.confidence_alpha, image_keep_ratio=o.image_keep_ratio,
                          text_keep_ratio=o.text_keep_ratio, remasking=o.remasking,
                          legacy_scores=o.sprint_legacy_scores, legacy_padding=o.sprint_legacy_padding)
    return SamplerConfig(gen_length=gen_length, block_length=o.block_length, threshold=o.threshold,
                         minimal_topk=o.minimal_topk, eos_early_stop=o.eos_early_stop, stop_ids=tuple(stop_ids),
                         image_only=image_only, cfg=cfg, cache="sprint" if o.use_sprint else o.cache, sprint=sprint, **run)



def options_help(cls: type) -> str:
    """One line per option: name, default, range and help (for docstrings and docs)."""
    lines = []
    for s in option_specs(cls):
        rng = s.range_text()
        choices = " | ".join(repr(c) for c in s.choices) if s.choices else ""
        extra = "; ".join(x for x in (choices, rng) if x)
        lines.append(f"    {s.name} = {s.default!r}{f' ({extra})' if extra else ''}: {s.help}")
    return "\n".join(lines)


def takes_options(cls: type):
    """Decorator for a task method taking ``**overrides``: its signature (``help()``, IDEs) and
    docstring list ``cls``'s options as keyword arguments, read from the one declaration."""

    def wrap(fn):
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default) for s in option_specs(cls)]
        fn.__signature__ = sig.replace(parameters=params)
        fn.__doc__ = (fn.__doc__ or "") + (f"\n\n        Options (keyword arguments, or ``options=`` a ``{cls.__name__}``):\n\n"
                                           + options_help(cls).replace("\n", "\n    ").replace("    ", "        ", 1))
        return fn

    return wrap


def options_markdown() -> str:
    """docs/OPTIONS.md: every task's options, generated from the declarations (``python -m
    lladauni.model_core.options > docs/OPTIONS.md``)."""
    out = ["# Task options", "",
           "Generated from `model_core/options.py` (`python -m lladauni.model_core.options > docs/OPTIONS.md`); "
           "a test fails when this page and the declarations differ.", "",
           "Every surface takes these names: `LLaDAUni` methods (keyword arguments or `options=`), "
           "`LocalBackend` / `HTTPBackend`, the workflow `backend:` blocks and node `options:`, the CLI "
           "(`--steps`, `--cfg-scale` ...), the HTTP `image_generation` object (SGLang-Omni's names where it has "
           "one: `dllm_steps`, `text_max_new_tokens`, `decode_mode`; see `lladauni_agent/wire.py`) and the MCP / "
           "LangChain tools. A checkpoint's `lladauni.json` may set its own defaults under `options`; a value "
           "the caller leaves unset (None) takes them. Its top-level `\"world\"` declares a closed world "
           "(known: `\"shapes\"`; any other value is refused when the checkpoint loads): a drawing request, edit "
           "or interleaved prompt outside it raises `OutOfWorldError` (a ValueError; HTTP 400 `out_of_world`, an "
           "MCP tool error) whose message says what the model can draw, and a question naming a colour or kind "
           "the world lacks is answered without the model (\"no: ...\" to a yes/no question). Checkpoints "
           "without the key (the real model) are open.", ""]
    for task, cls in TASK_OPTIONS.items():
        out += [f"## {task}: `{cls.__name__}`", "", (cls.__doc__ or "").strip(), "",
                "| option | type | default | range | what it does |", "| --- | --- | --- | --- | --- |"]
        for s in option_specs(cls):
            kind = " \\| ".join(repr(c) for c in s.choices) if s.choices else s.type.__name__ + (" or None" if s.optional else "")
            out.append(f"| `{s.name}` | {kind} | `{s.default!r}` | {s.range_text()} | {s.help} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(options_markdown(), end="")
