"""The front door of the HTTP servers: which hosts are loopback, the bearer token (a FastAPI
dependency for the OpenAI app, an ASGI check for the MCP app) and the body-size guard."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Callable, Optional

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from .http_errors import TooLarge, Unauthorized, exception_response

__all__ = ["Guard", "bearer", "is_loopback", "require_token", "token_matches"]

bearer = HTTPBearer(auto_error=False)


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


class Guard:
    """ASGI middleware in front of everything: the bearer token on ``protected`` routes (when
    ``api_key`` is set), 413 for a declared Content-Length over the limit, and a stop for bodies
    that stream past it without one."""

    def __init__(self, app: Any, max_bytes: int, api_key: Optional[str] = None, protected: str = "/v1") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key
        self.protected = protected

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"].startswith(self.protected):
            if not token_matches(await bearer(HTTPConnection(scope)), self.api_key):
                return await exception_response(Unauthorized())(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await exception_response(TooLarge(self.max_bytes))(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self.max_bytes)
            return msg

        await self.app(scope, limited, send)
