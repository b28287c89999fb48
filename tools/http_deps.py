"""What the OpenAI routes share: the service as a dependency (``request.app.state.service``),
running a job on its worker until done or until the client leaves, and images as URLs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Callable, Optional

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from .http_errors import error_body
from .runtime import Cancelled, RunFailed, png_b64
from .service import ToolService

__all__ = ["Service", "get_service", "image_part", "image_urls", "run_failed_response", "run_job", "until_done_or_gone"]


def get_service(request: Request) -> ToolService:
    return request.app.state.service


Service = Annotated[ToolService, Depends(get_service)]


async def until_done_or_gone(request: Request, coro: Any) -> Any:
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


async def run_job(svc: ToolService, request: Request, job: Callable, on_progress: Optional[Callable] = None) -> Any:
    """Run ``job`` on the model worker for this request (cancelled if the client leaves)."""
    return await until_done_or_gone(request, svc.worker.run(job, on_progress=on_progress))


def image_urls(svc: ToolService, request: Request, images: list, fmt: str) -> list[str]:
    """``fmt`` "url": saved files served under ``/v1/files``; otherwise PNG data URLs."""
    if fmt == "url":
        base = str(request.base_url).rstrip("/")
        return [f"{base}/v1/files/{svc.save(im).name}" for im in images]
    return ["data:image/png;base64," + png_b64(im) for im in images]


def run_failed_response(exc: RunFailed) -> JSONResponse:
    """A run that ended without its result: 422 ``run_failed``, an OpenAI-style error body with the
    run's error, its status and its thread id (the server keeps its trace under that id)."""
    body = error_body(422, str(exc), "run_failed")
    body["error"].update(status=exc.status, thread_id=exc.thread_id)
    return JSONResponse(body, status_code=422)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}
