"""The front door of the HTTP servers at the ASGI level: which hosts are loopback, the bearer
token (a FastAPI dependency for the OpenAI app, an ASGI check for the MCP app), and ``Guard``:
body size, JSON nesting and body timeouts (the limits of ``http_limits.ConnectionLimits``), and
every request ending in an answer. The connection level (head timeout, connection caps) is in
``http_limits``."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from typing import Any, Callable, Optional

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from .http_errors import BodyTimeout, TooLarge, Unauthorized, exception_response, exception_status
from .http_limits import ConnectionLimits, JsonDepth
from .runtime import InputError

__all__ = ["BodyReader", "Guard", "Reply", "bearer", "is_loopback", "require_token", "token_matches"]

bearer = HTTPBearer(auto_error=False)
log = logging.getLogger("lladauni.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_matches(credentials: Optional[HTTPAuthorizationCredentials], api_key: str) -> bool:
    """``Authorization: Bearer <api_key>``, compared in constant time."""
    return credentials is not None and hmac.compare_digest(credentials.credentials.encode(), api_key.encode())


async def require_token(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
    """The dependency on the ``/v1`` routes: when the app has an ``api_key``, a 401 without it."""
    api_key = request.app.state.api_key
    if api_key and not token_matches(credentials, api_key):
        raise Unauthorized()


class BodyReader:
    """The ``receive`` the app gets: the request body checked as it streams in, against the byte
    limit, the JSON nesting limit (unless multipart) and the body timeouts. The first error is
    kept in ``error`` (and raised to the app)."""

    def __init__(self, receive: Callable, max_bytes: int, limits: ConnectionLimits, headers: dict) -> None:
        self.inner = receive
        self.max_bytes = max_bytes
        self.limits = limits
        self.declared = headers.get(b"content-length", b"").decode("latin-1") or None
        scan = not headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        self.depth = JsonDepth(limits.max_json_depth) if scan else None
        self.deadline = asyncio.get_running_loop().time() + limits.body_deadline_s
        self.seen = 0
        self.done = False
        self.error: Optional[Exception] = None

    async def receive(self) -> dict:
        if self.done:  # the body is in: what follows is a wait for the disconnect, however long
            return await self.inner()
        try:
            msg = await self._next()
            if msg["type"] == "http.request":
                self._take(msg.get("body", b""), not msg.get("more_body", False))
            else:
                self.done = True
            return msg
        except (TooLarge, BodyTimeout, InputError) as exc:
            self.error, self.done = exc, True
            raise

    async def _next(self) -> dict:
        left = self.deadline - asyncio.get_running_loop().time()
        wait = min(self.limits.body_timeout_s, left)
        try:
            if wait <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(self.inner(), wait)
        except asyncio.TimeoutError:
            got = f"{self.seen:,} of {self.declared} bytes" if self.declared else f"{self.seen:,} bytes"
            if wait < self.limits.body_timeout_s:
                raise BodyTimeout(f"the request body did not arrive within {self.limits.body_deadline_s:g} s "
                                  f"(body_deadline_s): {got} arrived; send it faster") from None
            raise BodyTimeout(f"the request body stopped short: {got} arrived, then nothing for "
                              f"{self.limits.body_timeout_s:g} s (body_timeout_s); send the whole body") from None

    def _take(self, body: bytes, last: bool) -> None:
        self.seen += len(body)
        if self.seen > self.max_bytes:
            raise TooLarge(self.max_bytes)
        if self.depth is not None:
            self.depth.feed(body, last)
        self.done = last


class Reply:
    """The ``send`` the app gets: tracks how far the response went, and drops what the app sends
    once the front door has its own answer (``BodyReader.error``) and nothing went out yet."""

    def __init__(self, send: Callable, body: BodyReader) -> None:
        self.inner = send
        self.body = body
        self.started = self.complete = False

    async def send(self, msg: dict) -> None:
        if self.body.error is not None and not self.started:
            return
        self.started = True
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            self.complete = True
        await self.inner(msg)


class Guard:
    """ASGI middleware in front of everything: the bearer token on ``protected`` routes (when
    ``api_key`` is set), 413 for a declared Content-Length over the limit and for bodies that
    stream past it, the JSON nesting limit and the body timeouts of ``limits`` (``BodyReader``),
    and the end of every request: a front-door error gets its 4xx whatever the app made of it;
    an internal error is logged and answered 500 without closing the keep-alive connection
    (Starlette re-raises after its 500, which made uvicorn close it)."""

    def __init__(self, app: Any, max_bytes: int, api_key: Optional[str] = None, protected: str = "/v1",
                 limits: Optional[ConnectionLimits] = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key
        self.protected = protected
        self.limits = limits or ConnectionLimits()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"].startswith(self.protected):
            if not token_matches(await bearer(HTTPConnection(scope)), self.api_key):
                return await exception_response(Unauthorized())(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await exception_response(TooLarge(self.max_bytes))(scope, receive, send)
        body = BodyReader(receive, self.max_bytes, self.limits, headers)
        reply = Reply(send, body)
        try:
            await self.app(scope, body.receive, reply.send)
        except Exception as exc:  # noqa: BLE001 - every failure ends in an answer here
            await self._failed(exc, scope, receive, reply)
            return
        if body.error is not None and not reply.started:  # the app swallowed it
            await exception_response(body.error)(scope, receive, send)

    @staticmethod
    async def _failed(exc: Exception, scope: dict, receive: Callable, reply: Reply) -> None:
        error = reply.body.error if reply.body.error is not None and not reply.started else exc
        if exception_status(error) >= 500:
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
        if reply.complete:
            return  # answered already (a 500 from Starlette): the connection stays usable
        if reply.started:
            raise exc  # half a response: only closing the connection can end it
        await exception_response(error)(scope, receive, reply.inner)
