"""``lladauni serve``: an OpenAI-compatible HTTP server over one loaded model.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (text and
``image_url`` parts, SSE streaming), ``POST /v1/images/generations``, ``POST /v1/images/edits``
(multipart), ``POST /v1/workflows/{name}/runs``, ``GET /v1/files/{name}``. Model options travel in
the ``image_generation`` object as in SGLang-Omni. Safe by default: loopback only unless a bearer
token is set, bounded queue (429 + Retry-After), per-request timeouts, a client that disconnects
cancels its work, body and image size limits, local paths only under allowed roots.

The front door (``limits=ConnectionLimits(...)`` on ``create_app``, ``make_server``, ``serve`` and
``serve_in_thread``; defaults in brackets, details in ``http_limits``): a request head must arrive
within ``header_timeout_s`` (10 s) and a body may pause at most ``body_timeout_s`` (30 s) and take
at most ``body_deadline_s`` (300 s) in all (408, then closed); at most
``max_connections_per_client`` (128) connections per client address (429 at once) and
``max_connections`` (half the open-file limit, at most 4096) in all, where a full server closes
the connection that has waited longest for a request head rather than refuse a new one;
``keep_alive_s`` (5 s) idle between requests; an unfinished head buffered up to ``max_head_bytes``
(16 KiB, then 431); JSON bodies
nested at most ``max_json_depth`` (64) deep, checked before parsing. Every client error is a 4xx
with an OpenAI error body, and an internal error (500) leaves the keep-alive connection usable.

Layout: the routes live in ``routes_meta``, ``routes_chat``, ``routes_images`` and
``routes_workflows`` (FastAPI routers; the service comes from the ``http_deps.Service``
dependency), request mapping in ``openai_requests``, errors in ``http_errors``, and the bearer
token (a dependency on every ``/v1`` router) and the body ``Guard`` in ``http_auth``, connection
limits in ``http_limits``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

from fastapi import Depends, FastAPI

from . import routes_chat, routes_images, routes_meta, routes_workflows
from .http_auth import Guard, is_loopback, require_token
from .http_errors import install_error_handlers
from .http_limits import ConnectionLimits, uvicorn_config
from .service import ToolService

__all__ = ["ConnectionLimits", "create_app", "is_loopback", "make_server", "serve", "serve_in_thread"]

_ROUTERS = (routes_meta.router, routes_chat.router, routes_images.router, routes_workflows.router)  # all under /v1


def create_app(service: ToolService, *, api_key: Optional[str] = None,
               limits: Optional[ConnectionLimits] = None) -> Any:
    """The ASGI app. ``api_key``: when set, every ``/v1`` route requires ``Authorization: Bearer``;
    ``limits``: the body limits of the front door (JSON depth, body timeouts)."""
    app = FastAPI(title="lladauni", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.api_key = api_key
    install_error_handlers(app)
    app.include_router(routes_meta.health_router)
    for router in _ROUTERS:
        app.include_router(router, dependencies=[Depends(require_token)])
    return Guard(app, service.limits.max_body_bytes, limits=limits)


def _check_host(host: str, api_key: Optional[str]) -> None:
    if not is_loopback(host) and not api_key:
        raise ValueError(f"host={host!r} is reachable from other machines: set an API key (--api-key or "
                         "LLADAUNI_API_KEY) to bind beyond 127.0.0.1")


def serve(service: ToolService, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          log_level: str = "info", limits: Optional[ConnectionLimits] = None) -> None:
    """Run the server (blocking). Refuses to bind beyond loopback without ``api_key``."""
    make_server(service, host=host, port=port, api_key=api_key, limits=limits, log_level=log_level).run()


def make_server(service: ToolService, *, host: str = "127.0.0.1", port: int = 0, api_key: Optional[str] = None,
                limits: Optional[ConnectionLimits] = None, log_level: str = "warning"):
    """An unstarted ``uvicorn.Server`` (tests and embedding): same checks as ``serve``."""
    import uvicorn

    _check_host(host, api_key)
    limits = limits or ConnectionLimits()
    app = create_app(service, api_key=api_key, limits=limits)
    return uvicorn.Server(uvicorn_config(app, limits, host=host, port=port, log_level=log_level, lifespan="off"))


@contextlib.contextmanager
def serve_in_thread(service: ToolService, *, api_key: Optional[str] = None, app: Any = None,
                    limits: Optional[ConnectionLimits] = None):
    """Serve on 127.0.0.1:<a free port> in a background thread (tests, benchmarks, notebooks);
    yields the base URL and stops the server on exit. ``app`` replaces the OpenAI app (e.g. MCP;
    its own ``Guard`` holds its body limits); ``limits`` apply to the connections either way."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if app is None:
        server = make_server(service, port=port, api_key=api_key, limits=limits)
    else:
        server = uvicorn.Server(uvicorn_config(app, limits, log_level="warning"))
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
