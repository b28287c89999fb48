"""``lladauni mcp``: the five tools over MCP (official ``mcp`` SDK, stdio or streamable HTTP).

Every tool reports progress while the model works, returns its image as MCP image content *and*
as a file path (some hosts drop image content; AGENT_ANCHORS.md §5.1), and inline images larger
than ``inline_limit`` bytes are returned as a path only. Inputs are typed (the JSON schemas come
from ``tools.schemas``); bad input comes back as a tool error the calling model can read.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
from typing import Annotated, Any, Callable, Optional

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import BaseModel

from .runtime import Busy, Cancelled, InputError, RunFailed, png_bytes
from .service import TOOLS, ToolResult, ToolService, tool_args

__all__ = ["TOOLS", "build_mcp_server", "run_mcp"]



def _to_mcp(service: ToolService, r: ToolResult, inline_limit: int) -> CallToolResult:
    paths = list(r.get("paths") or [])
    content: list[Any] = []
    for im in r["images"]:
        data = png_bytes(im)
        path = service.save(im)
        paths.append(str(path))
        if len(data) <= inline_limit:
            content.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type="image/png"))
    meta = {k: v for k, v in r.items() if k != "images"}
    meta["paths"] = paths
    text = r.get("text") or ""
    summary = (text + "\n" if text else "") + (f"images: {', '.join(paths[-len(r['images']):])}" if r["images"] else "")
    content.insert(0, TextContent(type="text", text=summary or "done"))
    return CallToolResult(content=content, structured_content=json.loads(json.dumps(meta, default=str)))


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _typed(model: type[BaseModel], impl: Callable) -> Callable:
    """An ``async def tool(ctx, **fields)`` whose signature is ``model``'s fields, so the SDK
    publishes the same typed input schema the HTTP and LangChain surfaces use."""

    async def tool(ctx: Context, **kw: Any) -> CallToolResult:
        return await impl(kw, ctx)

    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for name, f in model.model_fields.items():
        default = inspect.Parameter.empty if f.is_required() else f.default
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[f.annotation, f]))
    tool.__signature__ = inspect.Signature(params, return_annotation=CallToolResult)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params}
    return tool


class _CheckedServer(MCPServer):
    """An ``MCPServer`` that checks a call's arguments against the tool's typed model before the
    SDK does (the SDK's own model, built from the signature, drops unknown keys silently): an
    unknown argument (with a did-you-mean), a wrong type or a lone surrogate is a tool error
    naming it, and nothing runs."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        if name in TOOLS:
            try:
                tool_args(TOOLS[name][0], arguments)
            except InputError as exc:
                return _error(f"bad input: {exc}")
        return await super().call_tool(name, arguments, context)


def build_mcp_server(service: ToolService, *, inline_limit: int = 2 * 1024 * 1024) -> MCPServer:
    """An ``MCPServer`` with the five tools over ``service``. A run that fails (an agent or
    workflow run that ends "failed", a model error) is a tool error with its text, never a success."""
    size = service.model.get("default_image_size")
    mcp = _CheckedServer("lladauni", instructions=f"{service.model_name} (LLaDA2.0-Uni): generate, edit and understand images; "
                    "visual reasoning; workflows. Images in: data URLs or local paths under the server's allowed roots. "
                    f"Image sides: multiples of 32 up to {service.max_image_side} px"
                    + (f"; default size {size[1]}x{size[0]}." if size else "."))

    for name, (model, job_name, description) in TOOLS.items():
        def make(model: type[BaseModel] = model, job_name: str = job_name) -> Callable:
            async def impl(kw: dict, ctx: Context) -> CallToolResult:
                loop = asyncio.get_running_loop()
                events: asyncio.Queue = asyncio.Queue()
                try:
                    job = getattr(service, job_name)(tool_args(model, kw))  # None: not given
                except (InputError, ValueError) as exc:
                    return _error(f"bad input: {exc}")

                def on_progress(done: int, total: int) -> None:
                    loop.call_soon_threadsafe(events.put_nowait, (done, total))

                async def forward() -> None:
                    n = 0  # progress must increase, across the several model calls of an agent run
                    while True:
                        done, total = await events.get()
                        n += 1
                        await ctx.report_progress(n, None, f"block {done}/{total}")

                pump = asyncio.ensure_future(forward())
                try:
                    r = await service.worker.run(job, on_progress=on_progress)
                except Busy as exc:
                    return _error(str(exc))
                except (TimeoutError, Cancelled) as exc:
                    return _error(f"stopped: {exc}")
                except RunFailed as exc:
                    return _error(f"{exc} (trace: {exc.trace})")
                except ValueError as exc:
                    return _error(f"bad input: {exc}")
                except Exception as exc:  # noqa: BLE001 - a failure the calling model should read
                    return _error(f"{job_name.removesuffix('_job')} failed: {type(exc).__name__}: {exc}")
                finally:
                    await asyncio.sleep(0)  # let queued progress go out first
                    pump.cancel()
                return _to_mcp(service, r, inline_limit)

            return _typed(model, impl)

        mcp.tool(name=name, description=description)(make())
    return mcp


def run_mcp(service: ToolService, *, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8000,
            api_key: Optional[str] = None, limits: Any = None) -> None:
    """Serve over stdio, or streamable HTTP at ``/mcp`` (loopback unless ``api_key`` is set) behind
    the OpenAI server's front door: ``limits`` is an ``http_limits.ConnectionLimits`` (head and
    body timeouts, connection caps, JSON depth), its defaults when None."""
    mcp = build_mcp_server(service)
    if transport == "stdio":
        mcp.run("stdio")
        return
    import uvicorn

    from .http_limits import ConnectionLimits, uvicorn_config

    limits = limits or ConnectionLimits()
    app = mcp_http_app(service, mcp, host=host, api_key=api_key, limits=limits)
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port, log_level="warning")).run()


def mcp_http_app(service: ToolService, mcp: MCPServer, *, host: str = "127.0.0.1", api_key: Optional[str] = None,
                 limits: Any = None) -> Any:
    """The streamable HTTP app at ``/mcp`` behind the same guard as the OpenAI server (``limits``:
    its ``ConnectionLimits``, for the JSON depth and body timeouts)."""
    from .http_auth import Guard, is_loopback

    if not is_loopback(host) and not api_key:
        raise ValueError(f"host={host!r} is reachable from other machines: set an API key to bind beyond 127.0.0.1")
    app = mcp.streamable_http_app(max_request_body_size=service.limits.max_body_bytes, host=host)
    return Guard(app, service.limits.max_body_bytes, api_key, protected="/mcp", limits=limits)
