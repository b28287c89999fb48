"""``lladauni serve``: an OpenAI-compatible HTTP server over one loaded model.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (text and
``image_url`` parts, SSE streaming), ``POST /v1/images/generations``, ``POST /v1/images/edits``
(multipart), ``POST /v1/workflows/{name}/runs``, ``GET /v1/files/{name}``. Model options travel in
the ``image_generation`` object as in SGLang-Omni. Safe by default: loopback only unless a bearer
token is set, bounded queue (429 + Retry-After), per-request timeouts, a client that disconnects
cancels its work, body and image size limits, local paths only under allowed roots.

Layout: the routes live in ``routes_meta``, ``routes_chat``, ``routes_images`` and
``routes_workflows`` (FastAPI routers; the service comes from the ``http_deps.Service``
dependency), request mapping in ``openai_requests``, errors in ``http_errors``, and the bearer
token (a dependency on every ``/v1`` router) and the body-size ``Guard`` in ``http_auth``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional

from fastapi import Depends, FastAPI

from . import routes_chat, routes_images, routes_meta, routes_workflows
from .http_auth import Guard, is_loopback, require_token
from .http_errors import install_error_handlers
from .service import ToolService

__all__ = ["create_app", "is_loopback", "make_server", "serve", "serve_in_thread"]

_ROUTERS = (routes_meta.router, routes_chat.router, routes_images.router, routes_workflows.router)  # all under /v1


def create_app(service: ToolService, *, api_key: Optional[str] = None) -> Any:
    """The ASGI app. ``api_key``: when set, every ``/v1`` route requires ``Authorization: Bearer``."""
    app = FastAPI(title="lladauni", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.api_key = api_key
    install_error_handlers(app)
    app.include_router(routes_meta.health_router)
    for router in _ROUTERS:
        app.include_router(router, dependencies=[Depends(require_token)])
    return Guard(app, service.limits.max_body_bytes)


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
