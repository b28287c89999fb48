"""OpenAI-style error replies of the HTTP servers: one table from exception class to status and
code, the handlers that read it, and the two errors the front door raises (``TooLarge``,
``Unauthorized``)."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lladauni.agent.backend import BackendError
from lladauni.model_core.generation.results import GenerationError

from .runtime import Busy, Cancelled, InputError

__all__ = ["ERRORS", "TooLarge", "Unauthorized", "error_response", "exception_response", "install_error_handlers"]

log = logging.getLogger("lladauni.server")


class TooLarge(Exception):
    """A request body over ``max_bytes`` (declared, or found while streaming)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body over the {max_bytes:,}-byte limit")


class Unauthorized(Exception):
    """A protected route without the right bearer token."""

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token (Authorization: Bearer ...)")


def error_response(status: int, message: str, code: str, headers: Optional[dict] = None,
                   param: Optional[str] = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# the code of an InputError, whose status rides on the exception
_CODES = {400: "invalid_request", 401: "invalid_api_key", 403: "forbidden", 404: "not_found", 413: "request_too_large",
          415: "unsupported_media_type", 422: "invalid_request"}

# exception class -> (status, code, extra headers); the nearest class of an exception decides
ERRORS: dict[type[Exception], tuple[int, str, Optional[Callable[[Any], dict]]]] = {
    InputError: (400, "invalid_request", None),
    ValueError: (400, "invalid_request", None),  # bad input found by the model
    GenerationError: (422, "generation_failed", None),  # the model's output, not the request
    BackendError: (502, "backend_error", None),
    Busy: (429, "queue_full", lambda exc: {"Retry-After": str(exc.retry_after)}),
    TimeoutError: (504, "timeout", None),
    Cancelled: (499, "client_closed", None),
    TooLarge: (413, "request_too_large", None),
    Unauthorized: (401, "invalid_api_key", lambda exc: {"WWW-Authenticate": "Bearer"}),
}


def exception_response(exc: Exception) -> JSONResponse:
    """The reply for ``exc`` from the row of its nearest class in ``ERRORS`` (as Starlette picks
    handlers); an exception with no row is an internal error."""
    row = next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), None)
    if row is None:
        return error_response(500, f"internal error ({type(exc).__name__}); the server is still up", "internal_error")
    status, code, headers = row
    if isinstance(exc, InputError):
        status, code = exc.status, _CODES.get(exc.status, "invalid_request")
    return error_response(status, str(exc), code, headers(exc) if headers else None)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return exception_response(exc)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed")
    return exception_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """One handler per row of ``ERRORS``, and a 500 (logged) for anything else."""
    for cls in ERRORS:
        app.add_exception_handler(cls, _handle)
    app.add_exception_handler(Exception, _internal)
