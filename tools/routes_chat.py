"""``POST /v1/chat/completions``: text, images in and out, interleaved output, the ``-reasoner``
model (the agent graph), and SSE streaming with progress comments."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Callable, Iterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from lladauni.model_core.generation.results import GenerationError

from .http_deps import Service, image_part, image_urls, run_failed_response, run_job
from .openai_requests import check_model, json_body, model_options, reasoner_name, split_messages
from .runtime import Busy, InputError, RunFailed, png_bytes
from .schemas import ChatRequest, ReasonArgs
from .service import ToolService

__all__ = ["chat_job", "message_of", "router", "usage"]

log = logging.getLogger("lladauni.server")

router = APIRouter(prefix="/v1")


# ------------------------------------------------------------------------- request -> job
def _reason_job(svc: ToolService, req: ChatRequest, msgs: list[dict], images: list) -> tuple[Callable, str]:
    """The agent graph (AGENT_ANCHORS.md §5.2): sketch, inspect, answer."""
    ig = req.image_generation
    mode = ig.mode if ig is not None else None
    if mode not in (None, "normal", "thinking", "interleaved"):
        raise InputError(f"image_generation.mode={mode!r}")
    graph_mode = "interleaved" if mode == "interleaved" else "refine" if req.modalities == ["image"] else "sketch"
    args = ReasonArgs(task=msgs[-1]["content"] or "(see the image)", mode=graph_mode, seed=req.seed)
    return svc.reason_job(args, images=images), "reason"


def chat_job(svc: ToolService, req: ChatRequest) -> tuple[Callable, str]:
    """The request -> (a job for the model worker, the kind of its result). As SGLang-Omni decides:
    no "image" modality is a text answer (about the images, if any); otherwise ``mode``
    "interleaved" writes text and images, input images make an edit, and anything else draws
    (``mode`` "normal" by default, or "thinking")."""
    check_model(svc, req.model, reasoning=True)
    msgs, system, images = split_messages(svc, req)
    if req.model == reasoner_name(svc):
        return _reason_job(svc, req, msgs, images)
    ig = req.image_generation
    mode = ig.mode if ig is not None else None
    top = req.top_level()
    prompt = msgs[-1]["content"]
    if "image" not in req.modalities:
        if mode is not None:
            raise InputError(f"image_generation.mode={mode!r} needs modalities including 'image'")
        opts = model_options(svc, "chat", ig, top)
        return (lambda b: b.chat(msgs, images=images, system=system, **opts)), "text"
    if not prompt.strip():
        raise InputError("the last user message needs text (the prompt or instruction)")
    if mode == "interleaved":
        opts = model_options(svc, "interleaved", ig, top)
        return (lambda b: b.generate_interleaved(prompt, images=images, **opts)), "interleaved"
    if images:
        if mode == "thinking":
            raise InputError("image_generation.mode='thinking' applies to text-to-image, not edits")
        opts = model_options(svc, "edit", ig, top)
        src = images if len(images) > 1 else images[0]
        return (lambda b: b.edit_image(src, prompt, **opts)), "image"
    opts = model_options(svc, "image", ig, top)
    return (lambda b: b.generate_image(prompt, **opts)), "image"


# ------------------------------------------------------------------------ result -> message
def _data_url(svc: ToolService, request: Request, image: Any) -> str:
    return image_urls(svc, request, [image], "b64_json")[0]


def _reason_message(svc: ToolService, request: Request, result: dict) -> dict:
    urls = image_urls(svc, request, result["images"], "b64_json")
    msg = {"role": "assistant", "content": result["text"] or (result["error"] or ""),
           "trace": {"status": result["status"], "thread_id": result["thread_id"]}}
    return {**msg, "images": [image_part(u) for u in urls]} if urls else msg


def _interleaved_message(svc: ToolService, request: Request, result: Any, session: str) -> dict:
    """SGLang-Omni's interleaved reply: the text joined in ``content`` and every part, in order,
    in ``segments`` (text, or an inline PNG with its sha256 and size)."""
    segments = []
    for seg in result.segments:
        if isinstance(seg, str):
            data: Any = seg
        elif getattr(seg, "image", None) is not None:
            png = png_bytes(seg.image)
            data = {"kind": "image", "mime_type": "image/png", "url": "data:image/png;base64," + base64.b64encode(png).decode(),
                    "sha256": hashlib.sha256(png).hexdigest(), "size_bytes": len(png)}
        else:
            continue
        segments.append({"type": "segment", "session_id": session, "segment_index": len(segments),
                         "kind": "text" if isinstance(seg, str) else "image", "data": data})
    text = "".join(s for s in result.segments if isinstance(s, str))
    return {"role": "assistant", "content": text, "segments": segments}


def message_of(svc: ToolService, request: Request, result: Any, kind: str, session: str = "") -> dict:
    """The assistant message of a finished job of ``kind``, in SGLang-Omni's shapes: text in
    ``content``; an image in ``image`` {"data": base64 PNG, "format": "png"} (and, for OpenAI-style
    clients, as an ``image_url`` part in ``images``) with thinking text in ``content``."""
    if kind == "reason":
        return _reason_message(svc, request, result)
    if kind == "text":
        return {"role": "assistant", "content": result.text}
    if kind == "interleaved":
        return _interleaved_message(svc, request, result, session)
    if result.image is None:
        raise RuntimeError("the backend returned codes without pixels (decode disabled)")
    url = _data_url(svc, request, result.image)
    msg: dict = {"role": "assistant"}
    if result.thinking:
        msg["content"] = result.thinking
    return {**msg, "image": {"data": url.split(",", 1)[1], "format": "png"}, "images": [image_part(url)]}


def usage(result: Any, kind: str) -> dict:
    n = len(getattr(result, "token_ids", []) or []) if kind == "text" else 0
    return {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}


# ---------------------------------------------------------------------------------- route
@router.post("/chat/completions")
async def chat_completions(request: Request, svc: Service) -> Any:
    req = await json_body(request, ChatRequest)
    job, kind = await asyncio.to_thread(chat_job, svc, req)  # image decoding stays off the event loop
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": svc.model_name}
    if not req.stream:
        try:
            result = await run_job(svc, request, job)
        except RunFailed as exc:  # the agent graph ended without its answer: not a 200 with the error as content
            return run_failed_response(exc)
        return {**head, "object": "chat.completion", "system_fingerprint": None,
                "choices": [{"index": 0, "message": message_of(svc, request, result, kind, head["id"]), "finish_reason": "stop",
                             "logprobs": None}], "usage": usage(result, kind)}
    svc.worker.check_room()  # refuse now (429) rather than after the 200 and the stream started
    return StreamingResponse(_stream(svc, request, req, job, kind, head), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -------------------------------------------------------------------------------- streaming
def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _chunk(head: dict, delta: dict, finish: Optional[str] = None) -> str:
    return _sse({**head, "object": "chat.completion.chunk", "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})


def _sse_error(exc: Exception) -> str:
    """A failure after the 200 was sent, as an SSE error event (a failed agent run: code 422, with
    its thread id)."""
    status = 429 if isinstance(exc, Busy) else 504 if isinstance(exc, TimeoutError) else \
        400 if isinstance(exc, ValueError) else 422 if isinstance(exc, GenerationError) else 500
    if status == 500:
        log.exception("stream failed")
    message = str(exc) if status < 500 else f"internal error ({type(exc).__name__})"
    extra = {"thread_id": exc.thread_id, "status": exc.status} if isinstance(exc, RunFailed) else {}
    return _sse({"error": {"message": message, "type": "server_error", "code": status, **extra}})


def _result_chunks(svc: ToolService, request: Request, req: ChatRequest, result: Any, kind: str,
                   head: dict) -> Iterator[str]:
    """The finished message as chunks: interleaved parts in order, else text in 64-character pieces
    and then the images; the stop chunk, usage if asked for, and ``[DONE]``."""
    msg = message_of(svc, request, result, kind, head["id"])
    msg.pop("role")
    if "segments" in msg:  # interleaved: one chunk per segment, in order
        for seg in msg["segments"]:
            yield _chunk(head, {"content": seg["data"]} if seg["kind"] == "text" else
                         {"images": [image_part(seg["data"]["url"])], "segment": seg})
    else:
        text = msg.get("content") or ""
        for i in range(0, len(text), 64):
            yield _chunk(head, {"content": text[i:i + 64]})
        if msg.get("images"):
            yield _chunk(head, {"images": msg["images"]})
    yield _chunk(head, {}, "stop")
    if req.stream_options and req.stream_options.include_usage:
        yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(result, kind)})
    yield "data: [DONE]\n\n"


async def _stream(svc: ToolService, request: Request, req: ChatRequest, job: Callable, kind: str, head: dict):
    loop = asyncio.get_running_loop()
    progress: asyncio.Queue = asyncio.Queue()

    def on_progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(progress.put_nowait, (done, total))

    yield _chunk(head, {"role": "assistant", "content": ""})
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
        yield _sse_error(exc)
        return
    finally:
        if not task.done():  # the client went away: the stream is cancelled here
            task.cancel()
    for line in _result_chunks(svc, request, req, result, kind, head):
        yield line
