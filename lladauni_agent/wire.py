"""The HTTP wire protocol, both ways: how task options travel in an OpenAI-style chat completion.

We speak SGLang-Omni's LLaDA2.0-Uni protocol (``SGLANG_OMNI`` names the commit these facts come
from), with our own options as extensions:

- top-level OpenAI fields: ``temperature``, ``top_p``, ``top_k``, ``seed`` and ``max_tokens``
  (chat and understanding: ``gen_length``; thinking: ``thinking_gen_length``; interleaved:
  ``text_gen_length``);
- the ``image_generation`` object: SGLang-Omni's names where it has one (``dllm_steps`` for the
  image tokens' steps, ``text_max_new_tokens``, ``decode_mode`` for the decoder), every other task
  option by its model_core name (our server reads them; SGLang-Omni's would ignore them, so a
  client talking to SGLang-Omni refuses them by name instead of dropping them);
- ``mode``: ``normal`` / ``thinking`` (text to image) or ``interleaved``.

``encode_options`` is the client side (``HTTPBackend``), ``decode_options`` the server side; both
read the option declarations in ``model_core.options``, so a new option travels without an edit here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lladauni.model_core.options import TASK_OPTIONS, OptionSpec, option_specs

__all__ = ["DECODE_MODES", "SGLANG_IMAGE_KEYS", "SGLANG_OMNI", "WireError", "coerce_text", "decode_options",
           "encode_options", "max_tokens_option", "wire_names"]

SGLANG_OMNI = "sgl-project/sglang-omni@8eea11fc5f2e2db767f2d0b1e4a5867b57b5ee9b"

# SGLang-Omni's decode_mode <-> our decoder variants
DECODE_MODES = {"normal": "normal", "decoder-turbo": "turbo"}

# option -> its SGLang-Omni name in image_generation, per task
_RENAMES: dict[str, dict[str, str]] = {
    "chat": {"steps": "dllm_steps"},  # SGLang-Omni has no chat options; the name is the diffusion LM's steps
    "understand": {"steps": "dllm_steps"},
    "image": {"steps": "dllm_steps"},
    "edit": {"steps": "dllm_steps"},
    "interleaved": {"image_steps": "dllm_steps", "text_gen_length": "text_max_new_tokens"},
}
# options that travel as top-level OpenAI fields
_TOP = ("temperature", "top_p", "top_k", "seed")
_MAX_TOKENS = {"chat": "gen_length", "understand": "gen_length", "image": "thinking_gen_length",
               "interleaved": "text_gen_length"}
# what SGLang-Omni's server reads in image_generation, per task (wire names; SGLANG_OMNI protocol.py
# ImageGenerationParams, proto/segments.py InterleavedGenerationParams); chat requests carry none
SGLANG_IMAGE_KEYS: dict[str, frozenset] = {
    "chat": frozenset(), "understand": frozenset(),
    "image": frozenset({"mode", "decode_mode", "decoder_steps", "seed", "cfg_scale", "cfg_rescale", "image_h", "image_w",
                        "dllm_steps"}),
    "edit": frozenset({"decode_mode", "decoder_steps", "seed", "cfg_text_scale", "cfg_image_scale", "cfg_rescale",
                       "dllm_steps"}),
    "interleaved": frozenset({"mode", "max_frames", "text_max_new_tokens", "dllm_steps", "cfg_scale", "cfg_text_scale",
                              "cfg_image_scale", "cfg_rescale", "decoder_steps", "seed", "decode_mode"}),
}
_SGLANG_TOP = frozenset({"temperature", "top_p", "top_k", "seed", "max_tokens"})
# what only a local call can do (an HTTP reply carries pixels and no trace)
_LOCAL_ONLY = {"decode": True, "trace": False}


class WireError(ValueError):
    """A request option that cannot travel or be read; ``param`` is its wire path."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


def _specs(task: str) -> dict[str, OptionSpec]:
    return {s.name: s for s in option_specs(TASK_OPTIONS[task])}


def max_tokens_option(task: str) -> Optional[str]:
    """The option the top-level ``max_tokens`` sets for ``task`` (None: it sets nothing)."""
    return _MAX_TOKENS.get(task)


def wire_names(task: str) -> dict[str, str]:
    """option -> its name in ``image_generation`` (every option of the task that travels there)."""
    renames = _RENAMES.get(task, {})
    top_only = _MAX_TOKENS[task] if task in ("chat", "understand") else None
    return {n: renames.get(n, n) for n in _specs(task) if n not in _TOP and n not in _LOCAL_ONLY and n != top_only}


# ----------------------------------------------------------------------------------- client side
def encode_options(task: str, options: Mapping[str, Any], *, flavor: str = "lladauni",
                   decoder: Optional[str] = None) -> tuple[dict, dict]:
    """Task options -> (top-level fields, image_generation object). ``flavor="sglang"`` refuses,
    by name, every option SGLang-Omni's server would ignore. None values are "not given"."""
    specs = _specs(task)
    names = wire_names(task)
    top: dict = {}
    ig: dict = {}
    for k, v in options.items():
        if v is None:
            continue
        if k not in specs:
            raise TypeError(f"{task}: no option {k!r}")
        v = specs[k].check(v)
        if k in _LOCAL_ONLY:
            if v != _LOCAL_ONLY[k]:
                raise WireError(f"{k}={v!r} cannot travel over HTTP (the server returns decoded pixels and no trace)", k)
        elif k in _TOP:
            top[k] = v
            if k == "seed" and task not in ("chat", "understand"):
                ig["seed"] = v  # SGLang-Omni seeds the decoder from image_generation.seed
        elif k == _MAX_TOKENS.get(task) and task in ("chat", "understand"):
            top["max_tokens"] = v
        else:
            ig[names.get(k, k)] = v
    if decoder is not None and task in ("image", "edit", "interleaved"):
        ig["decode_mode"] = {v: k for k, v in DECODE_MODES.items()}[decoder]
    if flavor == "sglang":
        _refuse_unknown_to_sglang(task, top, ig)
    elif flavor != "lladauni":
        raise ValueError(f"flavor={flavor!r}: 'lladauni' or 'sglang'")
    return top, ig


def _refuse_unknown_to_sglang(task: str, top: dict, ig: dict) -> None:
    extra = sorted(set(ig) - SGLANG_IMAGE_KEYS[task]) + sorted(set(top) - _SGLANG_TOP)
    if extra:
        option = {w: n for n, w in wire_names(task).items()}
        named = [f"{k} (option {option[k]})" if option.get(k, k) != k else k for k in extra]
        raise WireError(f"SGLang-Omni's LLaDA2.0-Uni server has no {task} option(s) {', '.join(named)} "
                        f"(it would ignore them); leave them unset or use a lladauni server", extra[0])


# ----------------------------------------------------------------------------------- server side
def decode_options(task: str, top: Mapping[str, Any], ig: Mapping[str, Any], *, loaded_decoder: Optional[str] = None,
                   label: Optional[str] = None, sources: Optional[dict] = None) -> dict:
    """(top-level fields, image_generation) -> task options, each checked against its declaration.
    WireError names the offending key; unknown keys are refused, never dropped. ``label`` names
    the request kind in messages; ``sources`` (if given) receives option -> the wire path it came from."""
    specs = _specs(task)
    by_wire = {w: n for n, w in wire_names(task).items()}
    by_wire.update({n: n for n in by_wire.values() if n not in by_wire})  # our names are accepted too
    out: dict = {}
    where: dict = {} if sources is None else sources
    for k, v in ig.items():
        if v is None or k == "mode" and task != "image":
            continue
        if k == "decode_mode":
            _check_decoder(v, loaded_decoder)
            continue
        if k == "format":
            if v != "png":
                raise WireError(f"image_generation.format={v!r}: only 'png'", "image_generation.format")
            continue
        name = "seed" if k == "seed" else by_wire.get(k)
        if name is None:
            raise WireError(f"image_generation: {k} do(es) not apply to {label or task} requests (accepted: "
                            f"{', '.join(sorted(set(by_wire) | {'seed', 'decode_mode'}))})", f"image_generation.{k}")
        _put(out, name, v, specs[name], f"image_generation.{k}")
        where[name] = f"image_generation.{k}"
    for k in (*_TOP, "max_tokens"):
        name = _MAX_TOKENS.get(task) if k == "max_tokens" else k
        if top.get(k) is not None and name in specs and name not in out:
            out[name] = _checked(specs[name], top[k], k)
            where[name] = k
    return out
def _put(out: dict, name: str, value: Any, spec: OptionSpec, where: str) -> None:
    if name in out and out[name] != value:
        raise WireError(f"{where}: {name} is given twice with different values", where)
    out[name] = _checked(spec, value, where)


def _checked(spec: OptionSpec, value: Any, where: str) -> Any:
    try:
        return spec.check(value)
    except ValueError as exc:
        raise WireError(f"{where}: {exc}", where) from None


def _check_decoder(mode: Any, loaded: Optional[str]) -> None:
    if mode not in DECODE_MODES:
        raise WireError(f"image_generation.decode_mode={mode!r}: choose one of {', '.join(map(repr, DECODE_MODES))}",
                        "image_generation.decode_mode")
    if loaded is not None and DECODE_MODES[mode] != loaded:
        raise WireError(f"image_generation.decode_mode={mode!r}: this server loaded the {loaded!r} decoder "
                        f"(decode_mode {[k for k, v in DECODE_MODES.items() if v == loaded][0]!r})",
                        "image_generation.decode_mode")


def coerce_text(task: str, name: str, text: str) -> Any:
    """A form field's text -> the option's type (multipart requests carry strings)."""
    specs = _specs(task)
    spec = specs.get({w: n for n, w in wire_names(task).items()}.get(name, name))
    if spec is None or spec.type is str:
        return text
    try:
        if spec.type is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.strip().lower()]
        return spec.type(text)
    except (KeyError, ValueError):
        raise WireError(f"{name}={text!r}: expected {spec.type.__name__}", name) from None
