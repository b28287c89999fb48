"""``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits`` (multipart)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from fastapi import APIRouter, Request

from .http_deps import Service, image_urls, run_job
from lladauni.agent.wire import WireError, coerce_text, wire_names
from lladauni.model_core.options import MAX_SEED

from .openai_requests import check_model, json_body, model_options, parse_json
from .runtime import InputError, Limits, decode_image_bytes, load_image_ref
from .schemas import ImagesRequest
from .service import ToolService, parse_size_checked

__all__ = ["image_params", "router"]

router = APIRouter(prefix="/v1/images")


def _seeded(opts: dict, i: int) -> dict:
    """The options of the ``i``-th of ``n`` images: consecutive seeds when a seed is given."""
    return dict(opts, seed=opts["seed"] + i) if opts.get("seed") is not None else opts


def _check_seeds(opts: dict, n: int) -> None:
    """The ``n`` consecutive seeds must all be valid seeds (refused now, not inside the run)."""
    seed = opts.get("seed")
    if seed is not None and seed + n - 1 > MAX_SEED:
        raise InputError(f"seed={seed} with n={n}: the images take seeds {seed} to {seed + n - 1}, and a seed must be "
                         f"<= {MAX_SEED}; choose a seed <= {MAX_SEED - n + 1}")


def _payloads(urls: list[str], fmt: str) -> list[dict]:
    """``{"url": ...}`` or ``{"b64_json": ...}`` (the data URL without its header) per image."""
    if fmt == "url":
        return [{"url": u} for u in urls]
    return [{"b64_json": u.split(",", 1)[1]} for u in urls]


# SGLang-Omni's image endpoints take the image parameters at the top level (or as form fields),
# two of them under the names diffusers uses
_ALIASES = {"num_inference_steps": "decoder_steps", "guidance_scale": "cfg_scale"}
_OPENAI_ONLY = {"user"}  # OpenAI fields that change nothing here


def image_params(task: str, given: dict[str, Any], *, text: bool = False) -> dict[str, Any]:
    """Top-level image parameters -> ``image_generation`` keys (SGLang-Omni's names: aliases
    resolved, ``width`` + ``height`` together); a key no task option answers to is refused by
    name. ``text``: values are form strings, converted to the options' types."""
    known = set(wire_names(task).values()) | set(wire_names(task)) | set(_ALIASES) | {"width", "height", "decode_mode", "seed", "mode"}
    bad = sorted(k for k in given if k not in known and k not in _OPENAI_ONLY)
    if bad:
        from lladauni.agent.workflows.loader import did_you_mean

        choices = sorted(known | {"prompt", "n", "size", "response_format", "model"})
        raise InputError("unsupported image parameters: " + ", ".join(f"{k} ({did_you_mean(k, choices)})" for k in bad))
    out: dict[str, Any] = {}
    for k, v in given.items():
        if k in _OPENAI_ONLY:
            continue
        name = {"width": "image_w", "height": "image_h"}.get(k, _ALIASES.get(k, k))
        try:
            v = coerce_text(task, name, v) if text and isinstance(v, str) else v
        except WireError as exc:
            raise InputError(f"{k}: {exc}" if k != name else str(exc)) from None
        if name in out and out[name] != v:
            raise InputError(f"{k}={v!r} disagrees with {name}={out[name]!r}")
        out[name] = v
    if ("image_w" in out) != ("image_h" in out) and ("width" in given or "height" in given):
        raise InputError("width and height go together (or use size)")
    return out


@router.post("/generations")
async def images_generations(request: Request, svc: Service) -> dict:
    req = await json_body(request, ImagesRequest)
    check_model(svc, req.model)
    ig = {**image_params("image", dict(req.model_extra or {})),
          **(req.image_generation.model_dump(exclude_none=True) if req.image_generation else {})}
    if req.size is not None:
        h, w = parse_size_checked(req.size)
        if (ig.get("image_h", h), ig.get("image_w", w)) != (h, w):
            raise InputError(f"size={req.size!r} disagrees with image_h={ig.get('image_h')}, image_w={ig.get('image_w')}")
        ig["size"] = req.size
    opts = model_options(svc, "image", ig)
    _check_seeds(opts, req.n)

    def job(b: Any) -> list:
        return [b.generate_image(req.prompt, **_seeded(opts, i)) for i in range(req.n)]

    results = await run_job(svc, request, job)
    urls = image_urls(svc, request, [r.image for r in results], req.response_format)
    return {"created": int(time.time()), "data": [
        {**p, "revised_prompt": r.thinking} for p, r in zip(_payloads(urls, req.response_format), results, strict=True)]}


async def _read_edit_form(request: Request, lim: Limits) -> tuple[dict[str, Any], dict[str, Any], list]:
    """The multipart form -> (plain fields, ``image_generation`` fields, (field, bytes) uploads)."""
    form = await request.form(max_files=lim.max_images_per_request + 1, max_fields=64,
                              max_part_size=lim.max_image_bytes)
    fields: dict[str, Any] = {}
    ig: dict[str, Any] = {}
    params: dict[str, Any] = {}
    uploads = []
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            if key in ("image", "image[]"):
                uploads.append((key, await value.read()))
            elif key != "mask":
                raise InputError(f"unexpected file field {key!r}")
            else:
                raise InputError("mask is not supported: LLaDA2.0-Uni edits from the instruction alone")
        elif key == "image_generation":
            obj = parse_json(value, "image_generation")
            if not isinstance(obj, dict):
                raise InputError("image_generation: not a JSON object")
            ig.update(obj)
        elif m := re.fullmatch(r"image_generation\[(\w+)\]", key):
            ig[m.group(1)] = value
        elif key in ("url", "url[]"):  # repeatable: source images by URL
            fields.setdefault(key, []).append(value)
        elif key in _FORM_FIELDS:
            fields[key] = value
        else:
            params[key] = value
    ig = {**image_params("edit", params, text=True), **{k: _typed(k, v) for k, v in ig.items()}}
    if not uploads and not fields.get("url") and not fields.get("url[]"):
        raise InputError("images/edits needs an image file field")
    if not fields.get("prompt", "").strip():
        raise InputError("images/edits needs a non-empty prompt")
    return fields, ig, uploads


_FORM_FIELDS = {"prompt", "n", "model", "response_format", "size"}


def _typed(name: str, value: Any) -> Any:
    """``image_generation[name]`` form values are strings: the edit option's type."""
    try:
        return coerce_text("edit", name, value) if isinstance(value, str) else value
    except WireError as exc:
        raise InputError(f"image_generation.{exc}") from None


def _edit_params(svc: ToolService, fields: dict[str, Any], ig: dict[str, Any]) -> tuple[dict, int, str]:
    """The form's options, ``n`` and ``response_format``, checked."""
    try:
        n = int(fields.get("n", 1))
    except ValueError as exc:
        raise InputError(f"n: {exc}") from None
    if not 1 <= n <= 4:
        raise InputError(f"n={n}: must be between 1 and 4")
    check_model(svc, fields.get("model"))
    fmt = fields.get("response_format", "b64_json")
    if fmt not in ("b64_json", "url"):
        raise InputError(f"response_format={fmt!r}: b64_json or url")
    if fields.get("size") not in (None, "auto"):
        parse_size_checked(fields["size"])  # edits keep the source's size; reject garbage anyway
    return ig, n, fmt


@router.post("/edits")
async def images_edits(request: Request, svc: Service) -> dict:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InputError("images/edits takes multipart/form-data (fields: image, prompt)", 415)
    lim = svc.limits
    fields, ig, uploads = await _read_edit_form(request, lim)
    urls = fields.get("url", []) + fields.get("url[]", [])
    if len(uploads) + len(urls) > lim.max_images_per_request:
        raise InputError(f"at most {lim.max_images_per_request} images per request")
    images = await asyncio.to_thread(lambda: [decode_image_bytes(data, lim, f"{key}[{i}]")
                                              for i, (key, data) in enumerate(uploads)]
                                     + [load_image_ref(u, lim, f"url[{i}]") for i, u in enumerate(urls)])
    ig, n, fmt = _edit_params(svc, fields, ig)
    opts = model_options(svc, "edit", ig)
    _check_seeds(opts, n)
    src = images if len(images) > 1 else images[0]
    prompt = fields["prompt"]

    def job(b: Any) -> list:
        return [b.edit_image(src, prompt, **_seeded(opts, i)) for i in range(n)]

    results = await run_job(svc, request, job)
    urls = image_urls(svc, request, [r.image for r in results], fmt)
    return {"created": int(time.time()), "data": _payloads(urls, fmt)}
