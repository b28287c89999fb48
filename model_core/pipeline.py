"""``LLaDAUni``: the whole model behind one object — chat, understanding, text-to-image (plain and
thinking), editing and interleaved text+image output.

Keyword names and defaults follow the official API (MODEL_SPEC §5.2) so its users feel at home,
plus ``seed``/``generator``, a ``progress`` callback and an optional ``trace``. Components load
once and stay resident; ones not asked for at construction load on first use.

Official defects fixed here (docs/DEFECTS.md): ``gen_length`` always covers the image grid;
sizes are validated against the size tokens; thinking mode generates and reports the grid the
model wrote; understanding returns the answer, not question + answer; seeds never touch the
global RNG; weights load once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import torch

from .backbone import LLaDA2Backbone
from .checkpoint import load_backbone, resolve_checkpoint
from .generation.prompts import SYSTEM_PROMPTS, UNCONDITION, ChatMessage, ImageCodes, PromptBuilder
from .generation.results import GenerationError, GenerationStats, ImageResult, InterleavedResult, TextResult
from .generation.sampler import BlockDiffusionSampler, CFGSpec, SamplerConfig, SamplerResult
from .generation.sprint import SprintConfig
from .tokenizer import TextTokenizer

__all__ = ["LLaDAUni", "TextResult", "ImageResult", "InterleavedResult", "GenerationStats", "GenerationError"]

Progress = Callable[[int, int], None]


DEFAULTS_FILE = "lladauni.json"


def read_defaults(checkpoint_dir: Union[str, os.PathLike]) -> dict:
    """Generation defaults a checkpoint ships in ``lladauni.json`` ({} when it has none).

    Known keys: ``image_size`` [height, width] in pixels (the size the model was trained at);
    ``decoder_cfg`` {variant: scale}, the decoder's classifier-free guidance for that variant's sampler
    (``NormClampedCFG(scale)``; 0 = none) in place of the published policy (normal: 1.0, turbo: none)."""
    path = Path(checkpoint_dir) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    size = data.get("image_size") if isinstance(data, dict) else None
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"{path}: image_size={size!r}: expected [height, width], two positive ints")
    cfg = data.get("decoder_cfg") if isinstance(data, dict) else None
    if cfg is not None:
        from .decoder.pipeline import VARIANTS

        if not isinstance(cfg, dict) or not all(
            k in VARIANTS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for k, v in cfg.items()
        ):
            raise ValueError(
                f"{path}: decoder_cfg={cfg!r}: expected {{variant: scale}} with variants from {sorted(VARIANTS)} "
                "and finite scales >= 0"
            )
    return data if isinstance(data, dict) else {}


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
    ) -> "LLaDAUni":
        """Load the backbone and text tokenizer, plus ``image_tokenizer`` and/or ``decoder`` when
        listed in ``components`` (others load on first use, once). With no path, the embedded
        default model (the tiny shapes model shipped in the package) is loaded."""
        unknown = set(components) - {"backbone", "image_tokenizer", "decoder"}
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; choose from backbone, image_tokenizer, decoder")
        ckpt = resolve_checkpoint(path_or_repo, revision=revision)
        backbone = load_backbone(ckpt, device=device, dtype=dtype, attn_backend=attn_backend, moe_backend=moe_backend)
        pipe = cls(backbone, TextTokenizer.from_pretrained(ckpt), ckpt, decoder_variant=decoder_variant)
        pipe._dtype_request = dtype
        if "image_tokenizer" in components:
            pipe.image_tokenizer  # noqa: B018 - load now
        if "decoder" in components:
            pipe.decoder  # noqa: B018
        return pipe

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

            decoder = ImageDecoder.from_pretrained(
                self._need_dir("decoder"), self.decoder_variant, device=self.device, dtype=getattr(self, "_dtype_request", None)
            )
            scale = self.defaults.get("decoder_cfg", {}).get(self.decoder_variant)
            if scale is not None:  # the checkpoint's own guidance policy (lladauni.json)
                from .decoder.samplers import NoGuidance, NormClampedCFG

                guidance = NormClampedCFG(float(scale)) if scale > 0 else NoGuidance()
                decoder.sampler = dataclasses.replace(decoder.sampler, guidance=guidance)
            self._decoder = decoder
        return self._decoder

    def _should_decode(self, decode: Optional[bool]) -> bool:
        """decode=None: only when a decoder is loaded; True: load it if needed; False: codes only."""
        return self._decoder is not None if decode is None else bool(decode)

    def _need_dir(self, what: str) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError(f"no checkpoint directory to load the {what} from; pass it to LLaDAUni(...)")
        return self.checkpoint_dir

    # ------------------------------------------------------------------ shared plumbing
    def _generator(self, seed: Optional[int], generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
        if generator is not None:
            return generator
        if seed is None:
            return None
        return torch.Generator(device=self.device).manual_seed(int(seed))

    @staticmethod
    def _cache_mode(use_sprint: bool, cache: str) -> str:
        return "sprint" if use_sprint else cache

    def _run(self, prompt_ids: list[int], cfg: SamplerConfig, gen: Optional[torch.Generator], progress: Optional[Progress]) -> SamplerResult:
        return self.sampler.generate(prompt_ids, cfg, generator=gen, progress=progress)

    def _check_length(self, prompt_len: int, gen_length: int, what: str) -> None:
        limit = self.backbone.config.max_position_embeddings
        if prompt_len + gen_length > limit:
            raise ValueError(
                f"{what}: prompt ({prompt_len} tokens) + gen_length ({gen_length}) = {prompt_len + gen_length} "
                f"exceeds the model's {limit} positions"
            )

    def _image_size(self, image_h: Optional[int], image_w: Optional[int], fallback: int) -> tuple[int, int]:
        """Requested output size, with the checkpoint's default (``lladauni.json``) filling gaps."""
        dh, dw = self.defaults.get("image_size", (fallback, fallback))
        return (dh if image_h is None else image_h), (dw if image_w is None else image_w)

    def _grid_from_pixels(self, image_h: int, image_w: int) -> tuple[int, int]:
        """Output pixels -> code grid (32 px per code), validated against the size tokens."""
        for name, v in (("image_h", image_h), ("image_w", image_w)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 32:
                raise ValueError(f"{name}={v!r}: must be a positive multiple of 32 (one code covers 32x32 output pixels)")
        h, w = image_h // 32, image_w // 32
        for side in (h, w):
            self.tokenizer.size_token_id(side)  # raises ValueError naming the side
        return h, w

    def _as_codes(self, image: Any, purpose: str) -> ImageCodes:
        if isinstance(image, ImageCodes):
            return image
        if isinstance(image, ImageResult):
            return image.as_codes
        if self._is_encoded(image):
            return ImageCodes(image.codes, image.h, image.w)
        try:
            toks = self.image_tokenizer.encode(image, purpose=purpose)
        except ValueError as exc:
            raise ValueError(f"cannot encode the image: {exc}") from None
        return ImageCodes(toks.codes, toks.h, toks.w)

    def _sampler_config(self, *, image_only: bool, use_sprint: bool, cache: str, sprint: dict, trace: bool, **kw) -> SamplerConfig:
        return SamplerConfig(
            image_only=image_only, cache=self._cache_mode(use_sprint, cache), record_trace=trace,
            sprint=SprintConfig(**sprint), **kw,
        )

    # ------------------------------------------------------------------ text
    def chat(
        self,
        messages: Union[str, Sequence[Union[dict, ChatMessage]]],
        *,
        images: Sequence[Any] = (),
        system: Optional[str] = None,
        template: Literal["auto", "chat_template", "omni"] = "auto",
        steps: int = 32,
        block_length: int = 32,
        gen_length: int = 2048,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        minimal_topk: int = 1,
        use_sprint: bool = False,
        remasking: str = "low_confidence",
        keep_ratio: float = 0.7,
        cache_warmup_steps: int = 2,
        confidence_alpha: float = 0.5,
        image_keep_ratio: Optional[float] = None,
        text_keep_ratio: Optional[float] = None,
        cache: str = "exact",
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Progress] = None,
        trace: bool = False,
    ) -> TextResult:
        """Text chat. ``messages``: a string or [{"role", "content"}] / ChatMessage list.

        template ``chat_template`` renders the checkpoint's chat template (text only);
        ``omni`` is the SGLang-Omni multimodal form (images at the start of their message);
        ``auto`` picks ``omni`` when there are images.
        """
        msgs = self._encode_message_images(self._messages(messages, images))
        has_images = any(m.images for m in msgs)
        if template == "auto":
            template = "omni" if has_images else "chat_template"
        if template == "chat_template":
            if has_images:
                raise ValueError("the checkpoint's chat template has no image support; use template='omni'")
            rendered = [{"role": m.role, "content": m.text} for m in msgs]
            if system is not None:
                rendered = [{"role": "system", "content": system}] + [r for r in rendered if r["role"] != "system"]
            prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(rendered))
        elif template == "omni":
            prompt = self.prompts.chat(msgs, system=system)
        else:
            raise ValueError(f"template={template!r}: 'auto', 'chat_template' or 'omni'")
        return self._text(prompt, locals())

    def understand(
        self,
        image: Any,
        question: str = "",
        *,
        template: Literal["official", "chat"] = "official",
        steps: int = 32,
        block_length: int = 32,
        gen_length: int = 2048,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        minimal_topk: int = 1,
        use_sprint: bool = False,
        remasking: str = "low_confidence",
        keep_ratio: float = 0.7,
        cache_warmup_steps: int = 2,
        confidence_alpha: float = 0.5,
        image_keep_ratio: Optional[float] = None,
        text_keep_ratio: Optional[float] = None,
        cache: str = "exact",
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Progress] = None,
        trace: bool = False,
    ) -> TextResult:
        """Answer a question about an image (PIL/path/bytes/array, or already-encoded codes).

        ``official`` is the template-free prompt of ``understand_image``; ``chat`` the SGLang-Omni
        chat form. Returns the answer only (the official code returns question + answer).
        """
        codes = self._as_codes(image, "understand")
        prompt = self.prompts.understanding(codes, question, template=template)
        return self._text(prompt, locals())

    def _text(self, prompt: list[int], a: dict) -> TextResult:
        if not prompt:
            raise ValueError("empty prompt")
        self._check_length(len(prompt), a["gen_length"], "text generation")
        cfg = self._sampler_config(
            image_only=False, use_sprint=a["use_sprint"], cache=a["cache"], trace=a["trace"],
            sprint=dict(keep_ratio=a["keep_ratio"], cache_warmup_steps=a["cache_warmup_steps"], confidence_alpha=a["confidence_alpha"],
                        image_keep_ratio=a["image_keep_ratio"], text_keep_ratio=a["text_keep_ratio"], remasking=a["remasking"]),
            gen_length=a["gen_length"], block_length=a["block_length"], steps=a["steps"], threshold=a["threshold"],
            temperature=a["temperature"], top_p=a["top_p"], top_k=a["top_k"], minimal_topk=a["minimal_topk"],
        )
        r = self._run(prompt, cfg, self._generator(a["seed"], a["generator"]), a["progress"])
        stats = GenerationStats()
        stats.add(r)
        ids = r.generated.tolist()
        return TextResult(self.tokenizer.decode(ids, skip_special_tokens=True), ids, prompt, stats, r.trace)

    def _encode_message_images(self, msgs: list[ChatMessage]) -> list[ChatMessage]:
        """Encode raw images (PIL, paths, bytes, arrays) of all messages together, so that several
        images get the several-image budget; already-encoded ones are kept."""
        raw = [(mi, ii) for mi, m in enumerate(msgs) for ii, im in enumerate(m.images) if not self._is_encoded(im)]
        if raw:
            total = sum(len(m.images) for m in msgs)
            try:
                toks = self.image_tokenizer.encode([msgs[mi].images[ii] for mi, ii in raw], purpose="understand", multi_image=total > 1)
            except ValueError as exc:
                raise ValueError(f"cannot encode the image: {exc}") from None
            for (mi, ii), t in zip(raw, toks):
                msgs[mi].images[ii] = ImageCodes(t.codes, t.h, t.w)
        for m in msgs:
            m.images = [self._as_codes(im, "understand") for im in m.images]
        return msgs

    @staticmethod
    def _is_encoded(image: Any) -> bool:
        return isinstance(image, (ImageCodes, ImageResult)) or (
            hasattr(image, "codes") and hasattr(image, "h") and hasattr(image, "w") and not hasattr(image, "size")
        )

    @staticmethod
    def _messages(messages: Any, images: Sequence[Any]) -> list[ChatMessage]:
        if isinstance(messages, str):
            messages = [ChatMessage("user", messages)]
        out: list[ChatMessage] = []
        for m in messages:
            if isinstance(m, ChatMessage):
                out.append(ChatMessage(m.role, m.text, list(m.images)))
            elif isinstance(m, dict) and isinstance(m.get("content", ""), str):
                out.append(ChatMessage(m.get("role", "user"), m.get("content", "")))
            else:
                raise ValueError(f"message {m!r}: expected a ChatMessage or {{'role': ..., 'content': str}}")
        if not out:
            raise ValueError("no messages")
        if images:
            last_user = max((i for i, m in enumerate(out) if m.role == "user"), default=None)
            if last_user is None:
                raise ValueError("images given but no user message to attach them to")
            out[last_user].images = list(images) + out[last_user].images
        return out

    # ------------------------------------------------------------------ images
    def generate_image(
        self,
        prompt: str,
        *,
        image_h: Optional[int] = None,
        image_w: Optional[int] = None,
        steps: int = 16,
        block_length: int = 32,
        cfg_scale: float = 4.0,
        cfg_rescale: float = 0.7,
        gen_length: Optional[int] = None,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        use_sprint: bool = False,
        remasking: str = "low_confidence",
        keep_ratio: float = 0.7,
        cache_warmup_steps: int = 2,
        confidence_alpha: float = 0.5,
        image_keep_ratio: Optional[float] = None,
        text_keep_ratio: Optional[float] = None,
        mode: Literal["normal", "thinking"] = "normal",
        thinking_steps: int = 32,
        thinking_gen_length: int = 4096,
        thinking_temperature: float = 0.0,
        thinking_top_p: Optional[float] = None,
        thinking_top_k: Optional[int] = None,
        decode: Optional[bool] = None,
        decoder_steps: Optional[int] = None,
        cache: str = "exact",
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Progress] = None,
        trace: bool = False,
    ) -> ImageResult:
        """Text to image. ``image_h``/``image_w`` are output pixels (32 per code); None means the
        checkpoint's default size (``lladauni.json``), else 1024.

        mode ``thinking``: the model first writes its reasoning and the image header itself; the
        codes are generated for the grid it wrote (reported in the result).
        """
        h, w = self._grid_from_pixels(*self._image_size(image_h, image_w, 1024))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        gen = self._generator(seed, generator)
        stats = GenerationStats()
        sprint = dict(keep_ratio=keep_ratio, cache_warmup_steps=cache_warmup_steps, confidence_alpha=confidence_alpha,
                      image_keep_ratio=image_keep_ratio, text_keep_ratio=text_keep_ratio, remasking=remasking)
        thinking_text = None
        if mode == "normal":
            cond, null = self.prompts.text_to_image(prompt, h, w)
        elif mode == "thinking":
            phase1 = self.prompts.thinking_phase1(prompt)
            self._check_length(len(phase1), thinking_gen_length, "thinking phase")
            tcfg = self._sampler_config(
                image_only=False, use_sprint=use_sprint, cache=cache, trace=False, sprint=sprint,
                gen_length=thinking_gen_length, block_length=block_length, steps=thinking_steps,
                temperature=thinking_temperature, top_p=thinking_top_p, top_k=thinking_top_k,
                stop_ids=(self.tokenizer.special.boi,),
            )
            r1 = self._run(phase1, tcfg, gen, progress)
            stats.add(r1)
            out = r1.tokens.tolist()
            boi = self.tokenizer.special.boi
            if out[-1] != boi:
                raise GenerationError(
                    f"thinking phase ended without an image header (<boi>) after {len(out) - len(phase1)} tokens; "
                    f"try a larger thinking_gen_length or a different seed"
                )
            body = out[len(phase1):]
            (h, w), head_start = self._parse_header(body, (h, w))
            thinking_text = self.tokenizer.decode(body[:head_start], skip_special_tokens=True)
            cond = phase1 + body[:head_start] + self.prompts.header(h, w)
            null = self.prompts.thinking_null(h, w)
        else:
            raise ValueError(f"mode={mode!r}: 'normal' or 'thinking'")
        n = h * w
        gen_length = n if gen_length is None else gen_length
        if gen_length < n:
            raise ValueError(f"gen_length={gen_length} is smaller than the {h}x{w} grid ({n} codes)")
        self._check_length(len(cond), gen_length, "image generation")
        cfg = self._sampler_config(
            image_only=True, use_sprint=use_sprint, cache=cache, trace=trace, sprint=sprint,
            gen_length=gen_length, block_length=block_length, steps=steps, threshold=threshold,
            temperature=temperature, top_p=top_p, top_k=top_k,
            cfg=CFGSpec("simple", null_ids=null, scale=cfg_scale, rescale=cfg_rescale),
        )
        r = self._run(cond, cfg, gen, progress)
        stats.add(r)
        codes = (r.generated[:n] - self.image_token_offset).cpu()
        result = ImageResult(codes, h, w, thinking=thinking_text, prompt_ids=cond, stats=stats, trace=r.trace)
        if self._should_decode(decode):
            result.image = self.decode_image(codes, h, w, steps=decoder_steps, seed=seed)
        return result

    def _parse_header(self, body: list[int], requested: tuple[int, int]) -> tuple[tuple[int, int], int]:
        """Find ``<|image|> <h> <w> <boi>`` at the end of ``body``: (grid, index where it starts).

        A malformed header (no <|image|>, or size ids that are not size tokens) is replaced by the
        requested one, starting where the model's <boi> stood."""
        sizes = {v: k for k, v in self.tokenizer.size_token_ids.items()}
        sp = self.tokenizer.special
        if len(body) >= 4 and body[-4] == sp.image_start and body[-3] in sizes and body[-2] in sizes:
            return (sizes[body[-3]], sizes[body[-2]]), len(body) - 4
        start = len(body) - 1
        if start >= 1 and body[start - 1] in sizes:
            start -= 1
        if start >= 1 and body[start - 1] in sizes:
            start -= 1
        if start >= 1 and body[start - 1] == sp.image_start:
            start -= 1
        return requested, start

    def edit_image(
        self,
        image: Any,
        instruction: str,
        *,
        steps: int = 8,
        block_length: int = 32,
        cfg_text_scale: float = 4.0,
        cfg_image_scale: float = 0.0,
        cfg_rescale: float = 0.7,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        use_sprint: bool = False,
        remasking: str = "low_confidence",
        keep_ratio: float = 0.7,
        cache_warmup_steps: int = 2,
        confidence_alpha: float = 0.5,
        decode: Optional[bool] = None,
        decoder_steps: Optional[int] = None,
        cache: str = "exact",
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Progress] = None,
        trace: bool = False,
    ) -> ImageResult:
        """Edit an image (or several reference images; the output grid is the first one's) with
        the 3-way editing CFG. Raw images are cropped with the editing preprocessing."""
        sources = [self._as_codes(im, "edit") for im in (image if isinstance(image, (list, tuple)) else [image])]
        h, w = sources[0].h, sources[0].w
        full, no_text, no_image = self.prompts.editing(sources, instruction, h, w)
        n = h * w
        self._check_length(len(full), n, "editing")
        cfg = self._sampler_config(
            image_only=True, use_sprint=use_sprint, cache=cache, trace=trace,
            sprint=dict(keep_ratio=keep_ratio, cache_warmup_steps=cache_warmup_steps, confidence_alpha=confidence_alpha, remasking=remasking),
            gen_length=n, block_length=block_length, steps=steps, threshold=threshold,
            temperature=temperature, top_p=top_p, top_k=top_k,
            cfg=CFGSpec("editing", null_ids=no_text, null_image_ids=no_image, text_scale=cfg_text_scale,
                        image_scale=cfg_image_scale, rescale=cfg_rescale),
        )
        r = self._run(full, cfg, self._generator(seed, generator), progress)
        stats = GenerationStats()
        stats.add(r)
        codes = (r.generated[:n] - self.image_token_offset).cpu()
        result = ImageResult(codes, h, w, prompt_ids=full, stats=stats, trace=r.trace)
        if self._should_decode(decode):
            result.image = self.decode_image(codes, h, w, steps=decoder_steps, seed=seed)
        return result

    def generate_interleaved(
        self,
        prompt: str,
        *,
        images: Sequence[Any] = (),
        max_frames: int = 4,
        image_h: Optional[int] = None,
        image_w: Optional[int] = None,
        text_gen_length: int = 1024,
        steps: int = 32,
        image_steps: int = 16,
        block_length: int = 32,
        cfg_scale: float = 4.0,
        cfg_text_scale: float = 4.0,
        cfg_image_scale: float = 0.0,
        cfg_rescale: float = 0.7,
        threshold: float = 0.95,
        temperature: float = 0.0,
        decode: Optional[bool] = None,
        decoder_steps: Optional[int] = None,
        cache: str = "exact",
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Progress] = None,
    ) -> InterleavedResult:
        """Interleaved text and images in the SGLang-Omni protocol: text until the model writes
        ``<|image|> h w <boi>``, then h·w codes and ``<|/image|>``, repeated up to ``max_frames``.

        The first frame is guided by a null prompt (simple CFG); later frames by editing CFG
        (no-text: every image so far with <uncondition> instead of the instruction; no-image:
        the instruction alone). A malformed header falls back to ``image_h`` x ``image_w``.
        """
        default_grid = self._grid_from_pixels(*self._image_size(image_h, image_w, 512))
        if max_frames < 0:
            raise ValueError(f"max_frames={max_frames}: must be >= 0")
        gen = self._generator(seed, generator)
        sources = [self._as_codes(im, "understand") for im in images]
        system = SYSTEM_PROMPTS["interleaved"]
        context = self.prompts.chat([ChatMessage("user", prompt, sources)], system=system)
        null_base = self.prompts.chat([ChatMessage("user", UNCONDITION)], system=system)
        no_image_base = self.prompts.chat([ChatMessage("user", prompt)], system=system)
        stats = GenerationStats()
        segments: list[Union[str, ImageResult]] = []
        frames: list[ImageCodes] = []
        boi = self.tokenizer.special.boi
        while True:
            budget = min(text_gen_length, self.backbone.config.max_position_embeddings - len(context))
            if budget <= 0:
                break
            tcfg = SamplerConfig(
                gen_length=budget, block_length=block_length, steps=steps, threshold=threshold, temperature=temperature,
                cache=cache, stop_ids=(boi,) if len(frames) < max_frames else (),
            )
            r = self._run(context, tcfg, gen, progress)
            stats.add(r)
            body = r.generated.tolist()
            if not body or body[-1] != boi:
                text = self.tokenizer.decode(body, skip_special_tokens=True)
                if text:
                    segments.append(text)
                break
            (h, w), head_start = self._parse_header(body, default_grid)
            text = self.tokenizer.decode(body[:head_start], skip_special_tokens=True)
            if text:
                segments.append(text)
            head = self.prompts.header(h, w)
            context = context + body[:head_start] + head
            n = h * w
            if len(context) + n + 1 > self.backbone.config.max_position_embeddings:
                break
            if not frames:
                guide = CFGSpec("simple", null_ids=null_base + head, scale=cfg_scale, rescale=cfg_rescale)
            else:
                no_text = self.prompts.chat([ChatMessage("user", UNCONDITION, sources + frames)], system=system) + head
                guide = CFGSpec("editing", null_ids=no_text, null_image_ids=no_image_base + head,
                                text_scale=cfg_text_scale, image_scale=cfg_image_scale, rescale=cfg_rescale)
            icfg = SamplerConfig(gen_length=n, block_length=block_length, steps=image_steps, threshold=threshold,
                                 image_only=True, cache=cache, cfg=guide)
            ri = self._run(context, icfg, gen, progress)
            stats.add(ri)
            codes = (ri.generated[:n] - self.image_token_offset).cpu()
            frame = ImageResult(codes, h, w, prompt_ids=list(context))
            if self._should_decode(decode):
                frame.image = self.decode_image(codes, h, w, steps=decoder_steps, seed=seed)
            segments.append(frame)
            frames.append(frame.as_codes)
            context = context + ri.generated[:n].tolist() + [self.tokenizer.special.image_end]
        return InterleavedResult(segments, stats)

    # ------------------------------------------------------------------ codecs
    def encode_image(self, image: Any, purpose: str = "understand"):
        """Pixels -> ``ImageTokens`` (raw codes, grid, resized image)."""
        return self.image_tokenizer.encode(image, purpose=purpose)

    def decode_image(self, codes: Any, h: int, w: int, *, steps: Optional[int] = None, seed: Optional[int] = None):
        """Codes -> PIL image (32 px per code) with the resident decoder."""
        return self.decoder.decode(codes, h, w, steps=steps, seed=seed)
