"""The five tools as LangChain ``StructuredTool``s (same typed schemas as MCP and HTTP).

Each tool answers ``(content, artifact)`` (``response_format="content_and_artifact"``): the text
a calling model reads (answer plus image file paths) and a dict with the PIL images and metadata,
which LangChain puts on ``ToolMessage.artifact``. Calls go through the same bounded worker as the
servers, so one model never runs two forwards at once.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from langchain_core.tools import StructuredTool, ToolException

from .runtime import Busy, InputError
from .service import TOOLS, ToolResult, ToolService

__all__ = ["as_langchain_tools"]


def _content(service: ToolService, r: ToolResult) -> tuple[str, dict]:
    paths = list(r.get("paths") or []) + [str(service.save(im)) for im in r["images"]]
    lines = [r["text"]] if r.get("text") else []
    if paths:
        lines.append("images: " + ", ".join(paths))
    artifact = {**{k: v for k, v in r.items()}, "paths": paths}
    return "\n".join(lines) or "done", artifact


def as_langchain_tools(backend_or_service: Union[Any, ToolService], *, timeout: Optional[float] = None,
                       **service_kw: Any) -> list[StructuredTool]:
    """``StructuredTool``s for generate_image, edit_image, understand_image, reason_visually and
    run_workflow over a ``Backend`` (wrapped in a ``ToolService(backend, **service_kw)``) or an
    existing ``ToolService``. Bad input and a full queue raise ``ToolException`` (shown to the
    model when the tool's ``handle_tool_error`` is set, which it is)."""
    service = backend_or_service if isinstance(backend_or_service, ToolService) else ToolService(backend_or_service, **service_kw)
    tools = []
    for name, (model, job_name, description) in TOOLS.items():
        def make(model: type = model, job_name: str = job_name):
            def prepare(kw: dict) -> Any:
                try:
                    return getattr(service, job_name)(model.model_validate({k: v for k, v in kw.items() if v is not None}))
                except (InputError, ValueError) as exc:
                    raise ToolException(f"bad input: {exc}") from None

            def run_sync(**kw: Any) -> tuple[str, dict]:
                job = prepare(kw)
                try:
                    return _content(service, service.worker.run_sync(job, timeout=timeout))
                except (Busy, TimeoutError, ValueError) as exc:
                    raise ToolException(str(exc)) from None

            async def run_async(**kw: Any) -> tuple[str, dict]:
                job = prepare(kw)
                try:
                    return _content(service, await service.worker.run(job, timeout=timeout))
                except (Busy, TimeoutError, ValueError) as exc:
                    raise ToolException(str(exc)) from None

            return run_sync, run_async

        func, coro = make()
        tools.append(StructuredTool.from_function(func=func, coroutine=coro, name=name, description=description,
                                                  args_schema=model, response_format="content_and_artifact",
                                                  handle_tool_error=True))
    return tools
