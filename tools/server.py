"""``lladauni serve``: an OpenAI-compatible HTTP server over one loaded model.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (text and
``image_url`` parts, SSE streaming), ``POST /v1/images/generations``, ``POST /v1/images/edits``
(multipart), ``POST /v1/workflows/{name}/runs``, ``GET /v1/files/{name}``. Model options travel in
the ``image_generation`` object as in SGLang-Omni. Safe by default: loopback only unless a bearer
token is set, bounded queue (429 + Retry-After), per-request timeouts, a client that disconnects
cancels its work, body and image size limits, local paths only under allowed roots.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import time
import uuid
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError

from lladauni.agent.backend import BackendError
from lladauni.model_core.generation.results import GenerationError

from .runtime import Busy, Cancelled, InputError, decode_image_bytes, load_image_ref, png_b64
from .schemas import ChatRequest, ImageGenerationOptions, ImagesRequest, ReasonArgs, WorkflowArgs, WorkflowRunRequest
from .service import ToolService, parse_size_checked

__all__ = ["create_app", "is_loopback", "make_server", "serve", "serve_in_thread"]

log = logging.getLogger("lladauni.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _TooLarge(Exception):
    pass


class _Guard:
    """ASGI middleware in front of everything: the bearer token on ``protected`` routes, 413 for a
    declared Content-Length over the limit, and a stop for bodies that stream past it without one."""

    def __init__(self, app: Any, max_bytes: int, api_key: Optional[str], protected: str = "/v1") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key
        self.protected = protected

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith(self.protected):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return await _error(401, "missing or wrong bearer token (Authorization: Bearer ...)", "invalid_api_key",
                                    {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _error(413, f"request body over the {self.max_bytes:,}-byte limit", "request_too_large")(
                scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        await self.app(scope, limited, send)


def _error(status: int, message: str, code: str, headers: Optional[dict] = None, param: Optional[str] = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


_CODES = {400: "invalid_request", 401: "invalid_api_key", 403: "forbidden", 404: "not_found", 413: "request_too_large",
          415: "unsupported_media_type", 422: "invalid_request"}


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


async def _json_body(request: Request, model: type) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from None


async def _until_done_or_gone(request: Request, coro: Any) -> Any:
    """Await ``coro``; if the client disconnects first, cancel it (which stops the model work)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise Cancelled("the client went away")
    finally:
        if not task.done():
            task.cancel()


# ----------------------------------------------------------------------------- option mapping
_TEXT = {"block_length", "threshold", "use_sprint", "cache", "seed"}
_IMAGE = _TEXT | {"image_h", "image_w", "cfg_scale", "cfg_rescale", "decoder_steps", "thinking_steps",
                  "thinking_temperature", "mode"}
_EDIT = _TEXT | {"cfg_text_scale", "cfg_image_scale", "cfg_rescale", "decoder_steps"}
_INTERLEAVED = {"block_length", "threshold", "cache", "seed", "image_h", "image_w", "cfg_scale", "cfg_text_scale",
                "cfg_image_scale", "cfg_rescale", "decoder_steps", "max_frames", "image_steps"}
_ALLOWED = {"text": _TEXT, "image": _IMAGE, "edit": _EDIT, "interleaved": _INTERLEAVED}


def _model_options(svc: ToolService, kind: str, ig: Optional[ImageGenerationOptions], *, max_tokens: Optional[int] = None,
                   temperature: Optional[float] = None, seed: Optional[int] = None, size: Optional[str] = None,
                   backend: Any = None) -> dict:
    """The ``image_generation`` object and top-level OpenAI fields -> keyword arguments of the
    backend call of ``kind``; an option that does not apply is a 400 naming it."""
    given = ig.model_dump(exclude_none=True) if ig is not None else {}
    variant = given.pop("decoder_variant", None)
    loaded = getattr(backend, "decoder_variant", None)
    if variant is not None and loaded is not None and variant != loaded:
        raise InputError(f"image_generation.decoder_variant={variant!r}: this server loaded the {loaded!r} decoder")
    mode = given.get("mode")
    if kind != "image":
        given.pop("mode", None)
    size = given.pop("size", size)
    if size is not None:
        given["image_h"], given["image_w"] = parse_size_checked(size)
    opts: dict = {}
    steps = given.pop("dllm_steps", None)
    if steps is not None:
        opts["steps"] = steps
    if kind != "interleaved" and "image_steps" in given:  # our HTTPBackend's alias of dllm_steps
        opts.setdefault("steps", given.pop("image_steps"))
    bad = sorted(set(given) - _ALLOWED[kind])
    if bad:
        raise InputError(f"image_generation: {', '.join(bad)} do(es) not apply to {kind} requests"
                         + (f" (mode={mode!r})" if mode else ""))
    opts.update(given)
    for k in ("steps", "image_steps", "thinking_steps", "decoder_steps"):
        if k in opts and opts[k] > svc.limits.max_steps:
            raise InputError(f"image_generation.{k}={opts[k]} is over this server's limit of {svc.limits.max_steps}")
    if "image_h" in opts or "image_w" in opts:
        svc.check_size(opts.get("image_h", 1024), opts.get("image_w", 1024))
    if max_tokens is not None:
        if max_tokens > svc.limits.max_tokens:
            raise InputError(f"max_tokens={max_tokens} is over this server's limit of {svc.limits.max_tokens}")
        key = {"text": "gen_length", "image": "thinking_gen_length", "interleaved": "text_gen_length"}.get(kind)
        if key:
            opts[key] = max_tokens
    if temperature is not None and kind in ("text", "image", "edit", "interleaved"):
        opts["temperature"] = temperature
    if seed is not None:
        opts.setdefault("seed", seed)
    return svc.options(kind, **opts)


def _split_messages(svc: ToolService, req: ChatRequest) -> tuple[list[dict], Optional[str], list[Any]]:
    """OpenAI messages -> (text messages, system prompt, images of the last user message)."""
    system: Optional[str] = None
    msgs: list[dict] = []
    images: list[Any] = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            text = "".join(p.text for p in m.content if p.type == "text")
            urls = [p.image_url.url for p in m.content if p.type == "image_url"]
            if urls and m.role != "user":
                raise InputError(f"messages[{i}]: images are only accepted in user messages")
            if len(images) + len(urls) > svc.limits.max_images_per_request:
                raise InputError(f"at most {svc.limits.max_images_per_request} images per request")
            images += [load_image_ref(u, svc.limits, f"messages[{i}].image_url") for u in urls]
        else:
            text = m.content or ""
        if m.role in ("system", "developer"):
            system = text if system is None else system + "\n" + text
        else:
            msgs.append({"role": m.role, "content": text})
    if not msgs or msgs[-1]["role"] != "user":
        raise InputError("messages: the last message must be from the user")
    return msgs, system, images


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def create_app(service: ToolService, *, api_key: Optional[str] = None) -> Any:
    """The ASGI app. ``api_key``: when set, every ``/v1`` route requires ``Authorization: Bearer``."""
    svc = service
    app = FastAPI(title="lladauni", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(exc.status, str(exc), _CODES.get(exc.status, "invalid_request"))

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:  # bad input found by the model
        return _error(400, str(exc), "invalid_request")

    @app.exception_handler(GenerationError)
    async def _unusable(request: Request, exc: GenerationError) -> JSONResponse:  # the model's output, not the request
        return _error(422, str(exc), "generation_failed")

    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError) -> JSONResponse:
        return _error(502, str(exc), "backend_error")

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(429, str(exc), "queue_full", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TimeoutError)
    async def _timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return _error(504, str(exc), "timeout")

    @app.exception_handler(Cancelled)
    async def _gone(request: Request, exc: Cancelled) -> JSONResponse:
        return _error(499, str(exc), "client_closed")

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return _error(413, f"request body over the {svc.limits.max_body_bytes:,}-byte limit", "request_too_large")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"internal error ({type(exc).__name__}); the server is still up", "internal_error")

    reasoner = svc.model_name + "-reasoner"

    def check_model(name: Optional[str], reasoning: bool = False) -> None:
        if reasoning and name == reasoner:
            return
        if name is not None and name not in (svc.model_name, "lladauni", "default"):
            raise InputError(f"unknown model {name!r}; this server serves {svc.model_name!r}", 404)

    async def run(request: Request, job: Callable, on_progress: Optional[Callable] = None) -> Any:
        return await _until_done_or_gone(request, svc.worker.run(job, on_progress=on_progress))

    def image_urls(request: Request, images: list, fmt: str) -> list[str]:
        if fmt == "url":
            base = str(request.base_url).rstrip("/")
            return [f"{base}/v1/files/{svc.save(im).name}" for im in images]
        return ["data:image/png;base64," + png_b64(im) for im in images]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": svc.model_name, "queue": svc.worker.stats()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lladauni"}
                                           for name in (svc.model_name, reasoner)]}

    @app.get("/v1/files/{name}")
    async def files(name: str) -> FileResponse:
        if not re.fullmatch(r"[0-9a-f]{32}\.png", name) or not (svc.files_dir / name).is_file():
            raise InputError(f"no file {name!r}", 404)
        return FileResponse(svc.files_dir / name, media_type="image/png")

    # ---------------------------------------------------------------------- chat completions
    def chat_job(req: ChatRequest) -> tuple[Callable, str]:
        check_model(req.model, reasoning=True)
        msgs, system, images = _split_messages(svc, req)
        ig = req.image_generation
        if req.model == reasoner:  # the agent graph (AGENT_ANCHORS.md §5.2): sketch, inspect, answer
            mode = ig.mode if ig is not None else None
            if mode not in (None, "normal", "thinking", "interleaved"):
                raise InputError(f"image_generation.mode={mode!r}")
            graph_mode = "interleaved" if mode == "interleaved" else "refine" if req.modalities == ["image"] else "sketch"
            args = ReasonArgs(task=msgs[-1]["content"] or "(see the image)", mode=graph_mode, seed=req.seed)
            return svc.reason_job(args, images=images), "reason"
        mode = ig.mode if ig is not None else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        common = dict(max_tokens=max_tokens, temperature=req.temperature, seed=req.seed, backend=svc.backend)
        prompt = msgs[-1]["content"]
        if "image" not in req.modalities:
            if mode is not None:
                raise InputError(f"image_generation.mode={mode!r} needs modalities including 'image'")
            opts = _model_options(svc, "text", ig, **common)
            return (lambda b: b.chat(msgs, images=images, system=system, **opts)), "text"
        if not prompt.strip():
            raise InputError("the last user message needs text (the prompt or instruction)")
        if mode == "interleaved":
            opts = _model_options(svc, "interleaved", ig, **common)
            return (lambda b: b.generate_interleaved(prompt, images=images, **opts)), "interleaved"
        if images:
            if mode == "thinking":
                raise InputError("image_generation.mode='thinking' applies to text-to-image, not edits")
            opts = _model_options(svc, "edit", ig, **common)
            src = images if len(images) > 1 else images[0]
            return (lambda b: b.edit_image(src, prompt, **opts)), "image"
        if "text" in req.modalities and mode is None:
            ig = (ig or ImageGenerationOptions()).model_copy(update={"mode": "thinking"})
        opts = _model_options(svc, "image", ig, **common)
        return (lambda b: b.generate_image(prompt, **opts)), "image"

    def message_of(request: Request, result: Any, kind: str) -> dict:
        if kind == "reason":
            urls = image_urls(request, result["images"], "b64_json")
            msg = {"role": "assistant", "content": result["text"] or (result["error"] or ""),
                   "trace": {"status": result["status"], "thread_id": result["thread_id"]}}
            return {**msg, "images": [_image_part(u) for u in urls]} if urls else msg
        if kind == "text":
            return {"role": "assistant", "content": result.text}
        if kind == "interleaved":
            parts = []
            for seg in result.segments:
                if isinstance(seg, str):
                    parts.append({"type": "text", "text": seg})
                elif getattr(seg, "image", None) is not None:
                    parts.append(_image_part(image_urls(request, [seg.image], "b64_json")[0]))
            return {"role": "assistant", "content": parts}
        if result.image is None:
            raise RuntimeError("the backend returned codes without pixels (decode disabled)")
        url = image_urls(request, [result.image], "b64_json")[0]
        return {"role": "assistant", "content": result.thinking or "", "images": [_image_part(url)]}

    def usage(result: Any, kind: str) -> dict:
        n = len(getattr(result, "token_ids", []) or []) if kind == "text" else 0
        return {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req = await _json_body(request, ChatRequest)
        job, kind = await asyncio.to_thread(chat_job, req)  # image decoding stays off the event loop
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        head = {"id": cid, "created": created, "model": svc.model_name}
        if not req.stream:
            result = await run(request, job)
            return {**head, "object": "chat.completion", "system_fingerprint": None,
                    "choices": [{"index": 0, "message": message_of(request, result, kind), "finish_reason": "stop",
                                 "logprobs": None}], "usage": usage(result, kind)}
        svc.worker._admit()  # refuse now (429) rather than after the 200 and the stream started
        svc.worker._release()
        return StreamingResponse(stream(request, req, job, kind, head), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stream(request: Request, req: ChatRequest, job: Callable, kind: str, head: dict):
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue = asyncio.Queue()

        def on_progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(progress.put_nowait, (done, total))

        def chunk(delta: dict, finish: Optional[str] = None, **extra: Any) -> str:
            body = {**head, "object": "chat.completion.chunk", "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        task = asyncio.ensure_future(svc.worker.run(job, on_progress=on_progress))
        try:
            while not task.done():
                getter = asyncio.ensure_future(progress.get())
                await asyncio.wait({task, getter}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    done, total = getter.result()
                    yield f": progress {done}/{total}\n\n"  # an SSE comment: clients skip it
                else:
                    getter.cancel()
                    yield ": waiting\n\n"
            result = task.result()
        except Exception as exc:  # noqa: BLE001 - the 200 is sent: report the failure as an SSE error event
            status = 429 if isinstance(exc, Busy) else 504 if isinstance(exc, TimeoutError) else \
                400 if isinstance(exc, ValueError) else 422 if isinstance(exc, GenerationError) else 500
            if status == 500:
                log.exception("stream failed")
            message = str(exc) if status < 500 else f"internal error ({type(exc).__name__})"
            yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error', 'code': status}})}\n\n"
            return
        finally:
            if not task.done():  # the client went away: the stream is cancelled here
                task.cancel()
        msg = message_of(request, result, kind)
        msg.pop("role")
        if isinstance(msg.get("content"), list):  # interleaved: one chunk per segment, in order
            for part in msg["content"]:
                yield chunk({"content": part["text"]} if part["type"] == "text" else {"images": [part]})
        else:
            text = msg.get("content") or ""
            for i in range(0, len(text), 64):
                yield chunk({"content": text[i:i + 64]})
            if msg.get("images"):
                yield chunk({"images": msg["images"]})
        yield chunk({}, "stop")
        if req.stream_options and req.stream_options.include_usage:
            body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(result, kind)}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"

    # ---------------------------------------------------------------------------- images
    @app.post("/v1/images/generations")
    async def images_generations(request: Request) -> dict:
        req = await _json_body(request, ImagesRequest)
        check_model(req.model)
        opts = _model_options(svc, "image", req.image_generation, size=req.size, backend=svc.backend)

        def job(b: Any) -> list:
            out = []
            for i in range(req.n):
                o = dict(opts, seed=opts["seed"] + i) if opts.get("seed") is not None else opts
                out.append(b.generate_image(req.prompt, **o))
            return out

        results = await run(request, job)
        urls = image_urls(request, [r.image for r in results], req.response_format)
        key = "url" if req.response_format == "url" else "b64_json"
        return {"created": int(time.time()), "data": [
            {key: u if key == "url" else u.split(",", 1)[1], "revised_prompt": r.thinking} for u, r in zip(urls, results, strict=True)]}

    @app.post("/v1/images/edits")
    async def images_edits(request: Request) -> dict:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise InputError("images/edits takes multipart/form-data (fields: image, prompt)", 415)
        lim = svc.limits
        form = await request.form(max_files=lim.max_images_per_request + 1, max_fields=64,
                                  max_part_size=lim.max_image_bytes)
        fields: dict[str, Any] = {}
        ig: dict[str, Any] = {}
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
                try:
                    ig.update(json.loads(value))
                except (json.JSONDecodeError, TypeError):
                    raise InputError("image_generation: not a JSON object") from None
            elif m := re.fullmatch(r"image_generation\[(\w+)\]", key):
                ig[m.group(1)] = value
            else:
                fields[key] = value
        if not uploads:
            raise InputError("images/edits needs an image file field")
        if not fields.get("prompt", "").strip():
            raise InputError("images/edits needs a non-empty prompt")
        images = await asyncio.to_thread(lambda: [decode_image_bytes(data, lim, f"{key}[{i}]")
                                                  for i, (key, data) in enumerate(uploads)])
        try:
            igo = ImageGenerationOptions.model_validate(ig)
            n = int(fields.get("n", 1))
        except (ValidationError, ValueError) as exc:
            msg = _validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
            raise InputError(f"image_generation: {msg}") from None
        if not 1 <= n <= 4:
            raise InputError(f"n={n}: must be between 1 and 4")
        check_model(fields.get("model"))
        fmt = fields.get("response_format", "b64_json")
        if fmt not in ("b64_json", "url"):
            raise InputError(f"response_format={fmt!r}: b64_json or url")
        if fields.get("size") not in (None, "auto"):
            parse_size_checked(fields["size"])  # edits keep the source's size; reject garbage anyway
        opts = _model_options(svc, "edit", igo, backend=svc.backend)
        src = images if len(images) > 1 else images[0]
        prompt = fields["prompt"]

        def job(b: Any) -> list:
            return [b.edit_image(src, prompt, **(dict(opts, seed=opts["seed"] + i) if opts.get("seed") is not None else opts))
                    for i in range(n)]

        results = await run(request, job)
        urls = image_urls(request, [r.image for r in results], fmt)
        key = "url" if fmt == "url" else "b64_json"
        return {"created": int(time.time()), "data": [{key: u if key == "url" else u.split(",", 1)[1]} for u in urls]}

    # -------------------------------------------------------------------------- workflows
    @app.get("/v1/workflows")
    async def list_workflows() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "workflow"} for name in sorted(svc.workflows())]}

    @app.post("/v1/workflows/{name}/runs")
    async def workflow_run(name: str, request: Request) -> dict:
        req = await _json_body(request, WorkflowRunRequest)
        job = await asyncio.to_thread(svc.workflow_job, WorkflowArgs(name=name, inputs=req.inputs, seed=req.seed))
        r = await run(request, job)
        return {"id": r["thread_id"], "object": "workflow.run", "workflow": name, "status": r["status"],
                "answer": r["text"], "error": r["error"], "outputs": r.get("outputs", {}),
                "images": image_urls(request, r["images"], req.response_format)}

    return _Guard(app, svc.limits.max_body_bytes, api_key)


def serve(service: ToolService, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          log_level: str = "info") -> None:
    """Run the server (blocking). Refuses to bind beyond loopback without ``api_key``."""
    import uvicorn

    if not is_loopback(host) and not api_key:
        raise ValueError(f"host={host!r} is reachable from other machines: set an API key (--api-key or "
                         "LLADAUNI_API_KEY) to bind beyond 127.0.0.1")
    app = create_app(service, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5, limit_concurrency=256)


def make_server(service: ToolService, *, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None):
    """An unstarted ``uvicorn.Server`` (tests and embedding): same checks as ``serve``."""
    import uvicorn

    if not is_loopback(host) and not api_key:
        raise ValueError(f"host={host!r} is reachable from other machines: set an API key to bind beyond 127.0.0.1")
    app = create_app(service, api_key=api_key)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=5,
                                         limit_concurrency=256, lifespan="off"))


@contextlib.contextmanager
def serve_in_thread(service: ToolService, *, api_key: Optional[str] = None, app: Any = None):
    """Serve on 127.0.0.1:<a free port> in a background thread (tests, benchmarks, notebooks);
    yields the base URL and stops the server on exit. ``app`` replaces the OpenAI app (e.g. MCP)."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if app is None:
        server = make_server(service, port=port, api_key=api_key)
    else:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="lladauni-server")
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()
