"""The five tools as LangChain ``StructuredTool``s (same typed schemas as MCP and HTTP).

Each tool answers ``(content, artifact)`` (``response_format="content_and_artifact"``): the text
a calling model reads (answer plus image file paths) and a dict with the PIL images and metadata,
which LangChain puts on ``ToolMessage.artifact``. Calls go through the same bounded worker as the
servers, so one model never runs two forwards at once.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from langchain_core.tools import StructuredTool, ToolException
from pydantic import ValidationError

from .runtime import Busy, InputError
from .schemas import validation_message
from .service import TOOLS, ToolResult, ToolService, tool_args

__all__ = ["as_langchain_tools"]


def _content(service: ToolService, r: ToolResult) -> tuple[str, dict]:
    paths = list(r.get("paths") or []) + [str(service.save(im)) for im in r["images"]]
    lines = [r["text"]] if r.get("text") else []
    if paths:
        lines.append("images: " + ", ".join(paths))
    artifact = {**{k: v for k, v in r.items()}, "paths": paths}
    return "\n".join(lines) or "done", artifact


def _failure(job_name: str, exc: Exception) -> ToolException:
    """The ``ToolException`` of a call that ran and failed (a full queue, a timeout, a failed run ...)."""
    if isinstance(exc, (Busy, TimeoutError, ValueError)):
        return ToolException(str(exc))
    return ToolException(f"{job_name.removesuffix('_job')} failed: {exc}")


def _bad_arguments(model: type) -> Callable[[ValidationError], str]:
    """``handle_validation_error``: the arguments' problems by field (an unknown one with a did-you-mean)."""
    return lambda exc: f"bad input: {validation_message(exc, model)}"


def as_langchain_tools(backend_or_service: Union[Any, ToolService], *, timeout: Optional[float] = None,
                       **service_kw: Any) -> list[StructuredTool]:
    """``StructuredTool``s for generate_image, edit_image, understand_image, reason_visually and
    run_workflow over a ``Backend`` (wrapped in a ``ToolService(backend, **service_kw)``) or an
    existing ``ToolService``. Bad input (an unknown argument is named), a full queue and a failed
    run (an agent or workflow run that ends "failed", a model error) raise ``ToolException``; the
    tools set ``handle_tool_error`` and ``handle_validation_error``, so a tool call answers a
    ``ToolMessage`` with ``status="error"`` and the message, which the calling model reads."""
    service = backend_or_service if isinstance(backend_or_service, ToolService) else ToolService(backend_or_service, **service_kw)
    tools = []
    for name, (model, job_name, description) in TOOLS.items():
        def make(model: type = model, job_name: str = job_name):
            def prepare(kw: dict) -> Any:
                try:
                    return getattr(service, job_name)(tool_args(model, kw))
                except (InputError, ValueError) as exc:
                    raise ToolException(f"bad input: {exc}") from None

            def run_sync(**kw: Any) -> tuple[str, dict]:
                job = prepare(kw)
                try:
                    return _content(service, service.worker.run_sync(job, timeout=timeout))
                except Exception as exc:  # noqa: BLE001 - every failure is the tool's error, for the model to read
                    raise _failure(job_name, exc) from None

            async def run_async(**kw: Any) -> tuple[str, dict]:
                job = prepare(kw)
                try:
                    return _content(service, await service.worker.run(job, timeout=timeout))
                except Exception as exc:  # noqa: BLE001 - every failure is the tool's error, for the model to read
                    raise _failure(job_name, exc) from None

            return run_sync, run_async

        func, coro = make()
        tools.append(StructuredTool.from_function(func=func, coroutine=coro, name=name, description=description,
                                                  args_schema=model, response_format="content_and_artifact",
                                                  handle_tool_error=True, handle_validation_error=_bad_arguments(model)))
    return tools
