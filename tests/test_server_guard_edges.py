"""Edges of the server's front door: which hosts count as loopback, and the body limit exactly at
``max_bytes`` (declared by Content-Length or streamed without one), one byte over it, and a
Content-Length that is not a number. The ASGI app is driven directly with hand-made messages,
so the headers and chunking are exactly what each test says."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import pytest

from lladauni.agent import ScriptedBackend
from lladauni.tools.runtime import Limits
from lladauni.tools.server import create_app, is_loopback
from lladauni.tools.service import ToolService

LIMIT = 64
PATH = "/v1/chat/completions"


# ---------------------------------------------------------------------------------- loopback
@pytest.mark.parametrize(
    "host,expected",
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),  # all of 127.0.0.0/8 is loopback
        ("::1", True),
        ("0.0.0.0", False),  # every interface
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("example.com", False),  # a hostname other than localhost is not trusted
        ("my-laptop", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


# ---------------------------------------------------------------------------------- body limit
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    svc = ToolService(ScriptedBackend(size=32), limits=Limits(max_body_bytes=LIMIT), out_dir=tmp / "out", model_name="m")
    return create_app(svc)


def _body(size: int) -> bytes:
    """A JSON array (parses, but is not the object the endpoint wants) padded to ``size`` bytes."""
    raw = b"[1]" + b" " * (size - 3)
    assert len(raw) == size
    return raw


def _post(app, chunks: list[bytes], content_length: Optional[bytes]) -> tuple[int, dict]:
    """POST ``chunks`` (one http.request message each) to the app; returns (status, JSON reply)."""

    async def go() -> tuple[int, dict]:
        pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        sent: list[dict] = []

        async def receive() -> dict:
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()  # the client stays connected and sends nothing more
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"host", b"test"), (b"content-type", b"application/json")]
        if content_length is not None:
            headers.append((b"content-length", content_length))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": PATH, "raw_path": PATH.encode(), "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("test", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], json.loads(body)

    return asyncio.run(go())


def _refused(status: int, reply: dict) -> bool:
    return status == 413 and f"over the {LIMIT}-byte limit" in reply["error"]["message"] \
        and reply["error"]["code"] == "request_too_large"


def _read_and_parsed(status: int, reply: dict) -> bool:
    """The whole body got through the guard and was parsed by the endpoint."""
    return status == 400 and "must be a JSON object" in reply["error"]["message"]


def test_content_length_exactly_at_the_limit_is_allowed(app):
    assert _read_and_parsed(*_post(app, [_body(LIMIT)], str(LIMIT).encode()))


def test_content_length_one_byte_over_the_limit_is_refused(app):
    assert _refused(*_post(app, [_body(LIMIT + 1)], str(LIMIT + 1).encode()))


def test_declared_length_over_the_limit_is_refused_before_reading(app):
    # the declaration alone decides: the short body that follows is never read
    assert _refused(*_post(app, [_body(LIMIT)], str(LIMIT + 1).encode()))
    assert _refused(*_post(app, [_body(3)], b"1000000"))


@pytest.mark.parametrize("value", [b"12x", b"-1", b"", b" 64", b"6.4e1", b"0x40", b"abc"])
def test_a_content_length_that_is_not_digits_is_refused(app, value):
    assert _refused(*_post(app, [_body(3)], value))


def test_a_streamed_body_exactly_at_the_limit_is_allowed(app):
    body = _body(LIMIT)
    assert _read_and_parsed(*_post(app, [body], None))
    assert _read_and_parsed(*_post(app, [body[:20], body[20:40], body[40:]], None))
    assert _read_and_parsed(*_post(app, [body, b""], None))  # a trailing empty chunk adds nothing


def test_a_streamed_body_one_byte_over_the_limit_is_refused(app):
    body = _body(LIMIT + 1)
    assert _refused(*_post(app, [body], None))
    assert _refused(*_post(app, [body[:LIMIT], body[LIMIT:]], None))  # the last byte tips it over


def test_small_bodies_pass_with_or_without_a_length(app):
    assert _read_and_parsed(*_post(app, [_body(3)], b"3"))
    assert _read_and_parsed(*_post(app, [_body(10)], None))
