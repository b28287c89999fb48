"""``LLaDAUni``: the whole model behind one object — chat, understanding, text-to-image (plain and
thinking), editing and interleaved text+image output.

Each task takes its typed options (``model_core.options``) as keyword arguments or as one
``options=`` object; their names and defaults follow the official API (MODEL_SPEC §5.2), and the
checkpoint's ``lladauni.json`` may set its own defaults. ``generator`` and a ``progress`` callback
ride along. The work itself is one short pipeline per task in ``model_core.tasks``; this facade
holds the components, loads the ones not asked for at construction on first use (once) and
keeps them on one device.

Official defects fixed here (docs/DEFECTS.md): ``gen_length`` always covers the image grid;
sizes are validated against the size tokens; thinking mode generates and reports the grid the
model wrote; understanding returns the answer, not question + answer; seeds never touch the
global RNG; weights load once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import torch

from . import tasks
from .backbone import LLaDA2Backbone
from .checkpoint import CheckpointError, load_backbone, resolve_checkpoint
from .config import read_json
from .generation.prompts import ChatMessage, ImageCodes, PromptBuilder
from .generation.results import GenerationError, GenerationStats, ImageResult, InterleavedResult, TextResult
from .generation.sampler import BlockDiffusionSampler
from .options import (TASK_OPTIONS, ChatOptions, EditOptions, ImageOptions, InterleavedOptions, UnderstandOptions,
                      make_options, takes_options)
from .tasks.common import Progress, as_codes
from .tokenizer import TextTokenizer
from .world import WORLDS, OutOfWorldError, question_answer as world_question_answer, scope_problem as world_scope_problem

__all__ = ["LLaDAUni", "OutOfWorldError", "TextResult", "ImageResult", "InterleavedResult", "GenerationStats",
           "GenerationError", "WORLDS"]

DEFAULTS_FILE = "lladauni.json"


def read_defaults(checkpoint_dir: Union[str, os.PathLike]) -> dict:
    """Generation defaults a checkpoint ships in ``lladauni.json`` ({} when it has none).

    Known keys: ``image_size`` [height, width] in pixels (the size the model was trained at);
    ``decoder_cfg`` {variant: scale}, the decoder's classifier-free guidance for that variant's sampler
    (``NormClampedCFG(scale)``; 0 = none) in place of the published policy (normal: 1.0, turbo: none);
    ``options`` {task: {option: value}}, the task options (``model_core.options``) the checkpoint
    runs with when the caller gives none (its steps, lengths and sizes); ``world``, the closed world
    the model knows (one of ``WORLDS``; absent for an open-world model), whose requests outside it
    are refused with ``OutOfWorldError`` instead of drawn wrong."""
    path = Path(checkpoint_dir) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    data = read_json(path)  # ConfigError (a ValueError) naming the file: bad JSON, too large or too deep
    if not isinstance(data, dict):
        return {}
    for key, check in (("image_size", _check_image_size), ("decoder_cfg", _check_decoder_cfg), ("options", _check_options),
                       ("world", _check_world)):
        if data.get(key) is not None:
            problem = check(data[key])
            if problem:
                raise ValueError(f"{path}: {key}={data[key]!r}: {problem}")
    return data


def _checkpoint_name(path_or_repo: Any, resolved: Path) -> str:
    """A hub repo id as given; the embedded default model as lladauni/<its folder>; a local
    folder by its name."""
    from .checkpoint import DEFAULT_CHECKPOINT_DIR

    if path_or_repo is None or resolved.resolve() == DEFAULT_CHECKPOINT_DIR.resolve():
        return f"lladauni/{resolved.name}"
    if not Path(path_or_repo).exists():
        return str(path_or_repo)
    return resolved.resolve().name


def _check_image_size(size: Any) -> Optional[str]:
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return None
    return "expected [height, width], two positive ints"


def _check_decoder_cfg(cfg: Any) -> Optional[str]:
    from .decoder.pipeline import VARIANTS

    if isinstance(cfg, dict) and all(
        k in VARIANTS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for k, v in cfg.items()
    ):
        return None
    return f"expected {{variant: scale}} with variants from {sorted(VARIANTS)} and finite scales >= 0"


def _check_world(world: Any) -> Optional[str]:
    if isinstance(world, str) and world in WORLDS:
        return None
    return f"unknown world; known worlds: {list(WORLDS)} (or leave the key out for an open-world model)"


def _check_options(options: Any) -> Optional[str]:
    if not isinstance(options, dict) or set(options) - set(TASK_OPTIONS):
        return f"expected {{task: {{option: value}}}} with tasks from {sorted(TASK_OPTIONS)}"
    for task, given in options.items():
        try:
            make_options(TASK_OPTIONS[task], given if isinstance(given, dict) else {"?": given})
        except (TypeError, ValueError) as exc:
            return f"{task}: {exc}"
    return None


class LLaDAUni:
    """The LLaDA2.0-Uni pipeline. Build with ``LLaDAUni.from_pretrained(path_or_repo, ...)``."""

    def __init__(
        self,
        backbone: LLaDA2Backbone,
        tokenizer: TextTokenizer,
        checkpoint_dir: Optional[Path] = None,
        *,
        image_tokenizer: Any = None,
        decoder: Any = None,
        decoder_variant: str = "turbo",
    ) -> None:
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.checkpoint_dir = checkpoint_dir
        self._image_tokenizer = image_tokenizer
        self._decoder = decoder
        self.decoder_variant = decoder_variant
        self.defaults = read_defaults(checkpoint_dir) if checkpoint_dir is not None else {}
        self.name = checkpoint_dir.name if checkpoint_dir is not None else "lladauni"
        cfg = backbone.config
        self.image_token_offset = cfg.image_token_offset
        if tokenizer.image_code0 is not None and tokenizer.image_code0 != cfg.image_token_offset:
            raise ValueError(
                f"tokenizer's <IMAGE0> is id {tokenizer.image_code0}, the backbone's image_token_offset is {cfg.image_token_offset}"
            )
        self.prompts = PromptBuilder(tokenizer, cfg.image_token_offset)
        sp = tokenizer.special
        self.sampler = BlockDiffusionSampler(backbone, mask_id=sp.mask, eos_id=sp.eos, image_token_offset=cfg.image_token_offset)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: Union[str, os.PathLike, None] = None,
        *,
        device: Union[str, torch.device, None] = None,
        dtype: Optional[torch.dtype] = None,
        components: Sequence[str] = ("backbone",),
        decoder_variant: Literal["turbo", "normal"] = "turbo",
        attn_backend: str = "auto",
        moe_backend: str = "auto",
        revision: Optional[str] = None,
        experts: str = "auto",
        expert_offload: bool = False,
    ) -> "LLaDAUni":
        """Load the backbone and text tokenizer, plus ``image_tokenizer`` and/or ``decoder`` when
        listed in ``components`` (others load on first use, once). With no path, the embedded
        default model (the tiny shapes model shipped in the package) is loaded.

        Low-VRAM modes of the backbone (``model_core.expert_storage``): ``experts="fp8"`` stores
        the routed experts as block-scaled e4m3 (made at load from a bf16 checkpoint, or read
        from an FP8 one; ``"auto"`` keeps what the checkpoint stores, ``"dtype"`` converts to
        ``dtype``); ``expert_offload=True`` keeps them in host memory and streams them per layer."""
        unknown = set(components) - {"backbone", "image_tokenizer", "decoder"}
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; choose from backbone, image_tokenizer, decoder")
        ckpt = resolve_checkpoint(path_or_repo, revision=revision)
        backbone = load_backbone(ckpt, device=device, dtype=dtype, attn_backend=attn_backend, moe_backend=moe_backend,
                                 experts=experts, expert_offload=expert_offload)
        pipe = cls(backbone, TextTokenizer.from_pretrained(ckpt), ckpt, decoder_variant=decoder_variant)
        pipe.name = _checkpoint_name(path_or_repo, ckpt)
        pipe._dtype_request = dtype
        if "image_tokenizer" in components:
            pipe.image_tokenizer  # noqa: B018 - load now
        if "decoder" in components:
            pipe.decoder  # noqa: B018
        return pipe

    def describe(self) -> dict:
        """What servers and CLIs report: the checkpoint's name, its image sizes (the largest side
        its size tokens allow, its default) and the decoder."""
        sides = sorted(self.tokenizer.size_token_ids)
        size = self.defaults.get("image_size", [1024, 1024])
        return {"name": self.name, "max_image_side": 32 * sides[-1] if sides else 0, "min_image_side": 32 * sides[0] if sides else 0,
                "default_image_size": list(size), "decoder_variant": self.decoder_variant,
                "max_positions": self.backbone.config.max_position_embeddings}

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def image_tokenizer(self):
        if self._image_tokenizer is None:
            from .image_tokenizer import ImageTokenizer

            self._image_tokenizer = ImageTokenizer.from_pretrained(
                self._need_dir("image_tokenizer"), device=self.device, dtype=getattr(self, "_dtype_request", None)
            )
        return self._image_tokenizer

    @property
    def decoder(self):
        if self._decoder is None:
            from .decoder import ImageDecoder

            try:
                decoder = ImageDecoder.from_pretrained(
                    self._need_dir("decoder"), self.decoder_variant, device=self.device,
                    dtype=getattr(self, "_dtype_request", None)
                )
            except (CheckpointError, FileNotFoundError, ValueError) as exc:
                raise CheckpointError(f"decoding to pixels needs the image decoder, which cannot be loaded: {exc} "
                                      "(pass decode=False for codes only)") from None
            scale = self.defaults.get("decoder_cfg", {}).get(self.decoder_variant)
            if scale is not None:  # the checkpoint's own guidance policy (lladauni.json)
                from .decoder.samplers import NoGuidance, NormClampedCFG

                guidance = NormClampedCFG(float(scale)) if scale > 0 else NoGuidance()
                decoder.sampler = dataclasses.replace(decoder.sampler, guidance=guidance)
            self._decoder = decoder
        return self._decoder

    # ------------------------------------------------------------------ closed world
    @property
    def world(self) -> Optional[str]:
        """The closed world the checkpoint declares (``lladauni.json`` "world", one of ``WORLDS``), or
        None for an open-world model; it comes with the checkpoint and cannot be set."""
        return self.defaults.get("world")

    def check_in_world(self, request: Any, kind: str = "draw") -> None:
        """Raise ``OutOfWorldError`` (a ValueError saying what is outside and what the model can
        draw) when a drawing request or (``kind="edit"``) an edit instruction lies outside the
        checkpoint's world. An edit need not name a shape ("make it blue")."""
        problem = world_scope_problem(self.world, request, kind)
        if problem:
            raise OutOfWorldError(problem)

    def _need_dir(self, what: str) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError(f"no checkpoint directory to load the {what} from; pass it to LLaDAUni(...)")
        return self.checkpoint_dir

    # ------------------------------------------------------------------ options
    def default_options(self, task: str) -> Any:
        """The options ``task`` runs with when the caller gives none: the checkpoint's own
        (``lladauni.json`` "options") over the published defaults."""
        return self.options_for(task)

    def options_for(self, task: str, options: Any = None, overrides: Optional[dict] = None) -> Any:
        """``options`` (a complete options object) or the checkpoint's defaults, with ``overrides``
        on top (None values leave the default); TypeError for an unknown name, ValueError for a
        bad value, both naming it."""
        cls = TASK_OPTIONS[task]
        if options is None:
            return make_options(cls, self.defaults.get("options", {}).get(task), overrides)
        if not isinstance(options, cls):
            raise TypeError(f"options: expected {cls.__name__}, got {type(options).__name__}")
        return make_options(cls, dataclasses.asdict(options), overrides) if overrides else options

    # ------------------------------------------------------------------ tasks
    @takes_options(ChatOptions)
    def chat(self, messages: Union[str, Sequence[Union[dict, ChatMessage]]], *, images: Sequence[Any] = (),
             system: Optional[str] = None, options: Optional[ChatOptions] = None,
             generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None, **overrides: Any) -> TextResult:
        """Text chat. ``messages``: a string or [{"role", "content"}] / ChatMessage list."""
        o = self.options_for("chat", options, overrides)
        return tasks.chat(self, messages, images, system, o, generator, progress)

    @takes_options(UnderstandOptions)
    def understand(self, image: Any, question: str = "", *, options: Optional[UnderstandOptions] = None,
                   generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                   **overrides: Any) -> TextResult:
        """Answer a question about an image (PIL/path/bytes/array, or already-encoded codes). On a
        shapes-world checkpoint a question naming a colour or kind the world lacks is answered
        without the model ("no: ..." to a yes/no question) with what the model can see."""
        o = self.options_for("understand", options, overrides)
        answer = world_question_answer(self.world, question)
        if answer is not None:  # a colour or kind the world lacks: answered without the model
            return TextResult(answer, [], [], GenerationStats())
        return tasks.understand(self, image, question, o, generator, progress)

    @takes_options(ImageOptions)
    def generate_image(self, prompt: str, *, options: Optional[ImageOptions] = None,
                       generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                       **overrides: Any) -> ImageResult:
        """Text to image (mode ``normal`` or ``thinking``); ``OutOfWorldError`` for a prompt outside
        the checkpoint's world (``world``), before any model work."""
        o = self.options_for("image", options, overrides)
        self.check_in_world(prompt)
        return tasks.generate_image(self, prompt, o, generator, progress)

    @takes_options(EditOptions)
    def edit_image(self, image: Any, instruction: str, *, options: Optional[EditOptions] = None,
                   generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                   **overrides: Any) -> ImageResult:
        """Edit an image (or a list of reference images; the output grid is the first one's);
        ``OutOfWorldError`` for an instruction outside the checkpoint's world."""
        o = self.options_for("edit", options, overrides)
        self.check_in_world(instruction, "edit")
        return tasks.edit_image(self, image, instruction, o, generator, progress)

    @takes_options(InterleavedOptions)
    def generate_interleaved(self, prompt: str, *, images: Sequence[Any] = (), options: Optional[InterleavedOptions] = None,
                             generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None,
                             **overrides: Any) -> InterleavedResult:
        """Interleaved text and images (SGLang-Omni's protocol); ``OutOfWorldError`` for a prompt
        outside the checkpoint's world."""
        o = self.options_for("interleaved", options, overrides)
        self.check_in_world(prompt)
        return tasks.generate_interleaved(self, prompt, images, o, generator, progress)

    def _as_codes(self, image: Any, purpose: str) -> ImageCodes:
        return as_codes(self, image, purpose)

    # ------------------------------------------------------------------ codecs
    def encode_image(self, image: Any, purpose: str = "understand"):
        """Pixels -> ``ImageTokens`` (raw codes, grid, resized image)."""
        return self.image_tokenizer.encode(image, purpose=purpose)

    def decode_image(self, codes: Any, h: int, w: int, *, steps: Optional[int] = None, seed: Optional[int] = None):
        """Codes -> PIL image (32 px per code) with the resident decoder."""
        return self.decoder.decode(codes, h, w, steps=steps, seed=seed)
