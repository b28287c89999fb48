"""Edges of the server's front door: which hosts count as loopback, the body limit exactly at
``max_bytes`` (declared by Content-Length or streamed without one), one byte over it, and a
Content-Length that is not a number; the JSON nesting limit exactly at and one past
``max_json_depth`` with the body split at every byte; a stalled body; how ``Guard`` ends a
request whose app fails before, during or after its response. The ASGI app is driven directly
with hand-made messages, so the headers and chunking are exactly what each test says."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import pytest

from lladauni.agent import ScriptedBackend
from lladauni.tools.http_auth import Guard
from lladauni.tools.http_limits import ConnectionLimits
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


def _exchange(app, chunks: list[bytes], content_length: Optional[bytes], stalled: bool = False,
              content_type: bytes = b"application/json", path: str = PATH) -> tuple[int, dict, bytes]:
    """POST ``chunks`` (one http.request message each; ``stalled``: the last one says more is
    coming, and nothing comes) to the app; returns (status, headers, body) of the reply."""

    async def go() -> tuple[int, dict, bytes]:
        pending = [{"type": "http.request", "body": c, "more_body": stalled or i < len(chunks) - 1}
                   for i, c in enumerate(chunks)]
        sent: list[dict] = []

        async def receive() -> dict:
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()  # the client stays connected and sends nothing more
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"host", b"test"), (b"content-type", content_type)]
        if content_length is not None:
            headers.append((b"content-length", content_length))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("test", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body

    return asyncio.run(go())


def _post(app, chunks: list[bytes], content_length: Optional[bytes], **kw) -> tuple[int, dict]:
    """POST ``chunks`` to the app; returns (status, JSON reply)."""
    status, _, body = _exchange(app, chunks, content_length, **kw)
    return status, json.loads(body)


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


# ---------------------------------------------------------------------------------- JSON depth
DEPTH = 8


@pytest.fixture(scope="module")
def deep_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deep")
    svc = ToolService(ScriptedBackend(size=32), limits=Limits(max_body_bytes=4096), out_dir=tmp / "out", model_name="m")
    return create_app(svc, limits=ConnectionLimits(max_json_depth=DEPTH, body_timeout_s=0.2))


def _too_deep(status: int, reply: dict) -> bool:
    return status == 400 and f"max_json_depth={DEPTH}" in reply["error"]["message"]


# strings full of brackets, escaped quotes and escaped backslashes (the last closes its string),
# then real nesting: the outer array plus ``n`` more levels
_TRICKY = rb'["[{[{", "\"[[[", "\\", "a\\\"]]", '


def _nested(levels: int) -> bytes:
    return _TRICKY + b"[" * levels + b"]" * levels + b"]"


def test_json_exactly_at_the_depth_limit_passes_at_every_split(deep_app):
    body = _nested(DEPTH - 1)
    json.loads(body)  # valid JSON, DEPTH deep
    for cut in range(len(body) + 1):
        assert _read_and_parsed(*_post(deep_app, [body[:cut], body[cut:]], None)), cut


def test_json_one_level_past_the_limit_is_refused_at_every_split(deep_app):
    body = _nested(DEPTH)
    json.loads(body)
    for cut in range(len(body) + 1):
        assert _too_deep(*_post(deep_app, [body[:cut], body[cut:]], None)), cut
    assert _too_deep(*_post(deep_app, [bytes([b]) for b in body], None))  # a byte at a time


def test_objects_count_as_deep_as_arrays(deep_app):
    assert _too_deep(*_post(deep_app, [b'{"a":' * (DEPTH + 1) + b"1" + b"}" * (DEPTH + 1)], None))
    assert _too_deep(*_post(deep_app, [b"[" * 2000 + b"]" * 2000], None))
    assert _read_and_parsed(*_post(deep_app, [b'["' + b"[" * 3000 + b'"]'], None))  # inside a string: not nesting


def test_a_utf16_body_is_refused_naming_utf8(deep_app):
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        status, reply = _post(deep_app, ['{"prompt": "x"}'.encode(encoding)], None)
        assert status == 400 and "not UTF-8" in reply["error"]["message"], encoding
    assert _read_and_parsed(*_post(deep_app, ["\ufeff[1]".encode("utf-8")], None))  # a UTF-8 BOM is UTF-8


def test_a_multipart_body_is_not_read_as_json(deep_app):
    body = b"--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n" + b"[" * 100 + b"\r\n--x--\r\n"
    status, reply = _post(deep_app, [body], None, content_type=b"multipart/form-data; boundary=x",
                          path="/v1/images/edits")
    assert status == 400 and "needs an image" in reply["error"]["message"]


def test_a_stalled_body_gets_408_and_closes_the_connection(deep_app):
    status, headers, body = _exchange(deep_app, [b'{"prom'], b"40", stalled=True)
    err = json.loads(body)["error"]
    assert status == 408 and headers["connection"] == "close" and err["code"] == "request_timeout"
    assert "6 of 40 bytes" in err["message"] and "body_timeout_s" in err["message"]


# ---------------------------------------------------------------------------------- failures
def _failing_app(when: str):
    """An ASGI app that raises RuntimeError before, in the middle of, or after its response."""

    async def app(scope, receive, send):
        if when == "before":
            raise RuntimeError("broke before answering")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": when == "during"})
        raise RuntimeError(f"broke {when} answering")

    return Guard(app, 1024)


def test_a_failure_before_the_response_is_a_500_in_the_openai_shape():
    status, reply = _post(_failing_app("before"), [b"{}"], b"2")
    assert status == 500 and reply["error"]["code"] == "internal_error" and "RuntimeError" in reply["error"]["message"]


def test_a_failure_after_a_whole_response_keeps_the_connection():
    assert _exchange(_failing_app("after"), [b"{}"], b"2")[::2] == (200, b"part")  # no exception reaches uvicorn


def test_a_failure_in_the_middle_of_a_response_still_closes_it():
    with pytest.raises(RuntimeError, match="broke during"):
        _exchange(_failing_app("during"), [b"{}"], b"2")


def test_the_encoding_is_told_from_the_first_four_bytes_however_they_arrive():
    """UTF-16/32 without a BOM (told apart only by their zero bytes among the first four) are
    refused whether the body arrives whole, byte by byte or in odd pieces; UTF-8 bodies of one to
    four bytes pass."""
    from lladauni.tools.http_limits import JsonDepth
    from lladauni.tools.runtime import InputError

    def feed(data: bytes, size: int) -> None:
        d = JsonDepth(64)
        pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        for i, piece in enumerate(pieces):
            d.feed(piece, last=i == len(pieces) - 1)

    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        data = '{"prompt": "x"}'.encode(encoding)
        for size in (1, 2, 3, 5, len(data)):
            with pytest.raises(InputError, match="not UTF-8"):
                feed(data, size)
    for text in ("1", "[]", "[1]", "[10]", '{"a": [1, 2]}'):
        for size in (1, 2, 3, 4):
            feed(text.encode(), size)


def test_a_top_level_string_full_of_brackets_is_not_nesting():
    """The scan starts outside any string and without a pending backslash: a body that is one
    JSON string (of brackets, or starting with an escaped quote) nests nothing."""
    from lladauni.tools.http_limits import JsonDepth

    for body in ('"' + "[" * 500 + '"', '"\\"' + "{" * 500 + '"', '["' + "[" * 300 + '\\\\"]'):
        for size in (1, 7, len(body)):
            d = JsonDepth(64)
            for i in range(0, len(body), size):
                d.feed(body[i:i + size].encode())
            assert d.depth == 0 and not d.in_string, (body[:20], size)
