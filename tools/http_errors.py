"""OpenAI-style error replies of the HTTP servers: one table from exception class to status and
code, the handlers that read it, and the errors the front door raises (``TooLarge``,
``Unauthorized``, ``BodyTimeout``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from lladauni.agent.backend import BackendError
from lladauni.model_core.generation.results import GenerationError
from lladauni.model_core.pipeline import OutOfWorldError

from .runtime import Busy, Cancelled, InputError

__all__ = ["ERRORS", "BodyTimeout", "TooLarge", "Unauthorized", "error_body", "error_response", "exception_response",
           "exception_status", "install_error_handlers"]


class TooLarge(Exception):
    """A request body over ``max_bytes`` (declared, or found while streaming)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body over the {max_bytes:,}-byte limit")


class Unauthorized(Exception):
    """A protected route without the right bearer token."""

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token (Authorization: Bearer ...)")


class BodyTimeout(Exception):
    """A request body that stopped short of its end (``body_timeout_s``) or took too long in all
    (``body_deadline_s``); answered 408 with ``Connection: close``."""


def error_body(status: int, message: str, code: str, param: Optional[str] = None) -> dict:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: str, headers: Optional[dict] = None,
                   param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


# the code of an InputError, whose status rides on the exception
_CODES = {400: "invalid_request", 401: "invalid_api_key", 403: "forbidden", 404: "not_found", 413: "request_too_large",
          415: "unsupported_media_type", 422: "invalid_request"}

# exception class -> (status, code, extra headers); the nearest class of an exception decides
ERRORS: dict[type[Exception], tuple[int, str, Optional[Callable[[Any], dict]]]] = {
    InputError: (400, "invalid_request", None),
    ValueError: (400, "invalid_request", None),  # bad input found by the model
    OutOfWorldError: (400, "out_of_world", None),  # outside the checkpoint's closed world: the message says what it knows
    GenerationError: (422, "generation_failed", None),  # the model's output, not the request
    BackendError: (502, "backend_error", None),
    Busy: (429, "queue_full", lambda exc: {"Retry-After": str(exc.retry_after)}),
    TimeoutError: (504, "timeout", None),
    Cancelled: (499, "client_closed", None),
    ClientDisconnect: (499, "client_closed", None),  # the client left mid-body: nobody to answer, nothing to log
    TooLarge: (413, "request_too_large", None),
    BodyTimeout: (408, "request_timeout", lambda exc: {"Connection": "close"}),
    # a backstop: input nested past what Python's parsers can recurse through (bodies are checked
    # against max_json_depth before parsing; this catches any other path, e.g. a form field)
    RecursionError: (400, "nesting_too_deep", None),
    Unauthorized: (401, "invalid_api_key", lambda exc: {"WWW-Authenticate": "Bearer"}),
}


def exception_status(exc: Exception) -> int:
    """The HTTP status ``exception_response`` gives ``exc``."""
    if isinstance(exc, InputError):
        return exc.status
    return next((ERRORS[cls][0] for cls in type(exc).__mro__ if cls in ERRORS), 500)


def exception_response(exc: Exception) -> JSONResponse:
    """The reply for ``exc`` from the row of its nearest class in ``ERRORS`` (as Starlette picks
    handlers); an exception with no row is an internal error."""
    row = next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), None)
    if row is None:
        return error_response(500, f"internal error ({type(exc).__name__}); the server is still up", "internal_error")
    status, code, headers = row
    if isinstance(exc, InputError):
        status, code = exc.status, _CODES.get(exc.status, "invalid_request")
    message = str(exc)
    if isinstance(exc, RecursionError):
        message = (f"the request is nested too deeply to read ({exc}); flatten it (JSON bodies may nest at most "
                   "max_json_depth levels)")
    return error_response(status, message, code, headers(exc) if headers else None)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return exception_response(exc)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises it after this reply; http_auth.Guard logs it and keeps the connection
    return exception_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """One handler per row of ``ERRORS``, and a 500 for anything else (logged by ``Guard``, which
    keeps the keep-alive connection open after it)."""
    for cls in ERRORS:
        app.add_exception_handler(cls, _handle)
    app.add_exception_handler(Exception, _internal)
