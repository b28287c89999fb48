"""Connection-level limits of the HTTP servers: the part of the front door below the ASGI app.

``ConnectionLimits`` holds every knob (``make_server``/``serve``/``run_mcp`` take one):

- ``header_timeout_s`` (10): a connection must deliver a whole request head within this many
  seconds of opening, or of the end of its previous response; otherwise it is closed (with a
  408 when part of a head had arrived). Bytes that trickle in do not restart the clock.
- ``body_timeout_s`` (30) and ``body_deadline_s`` (300): the longest wait for the next piece of
  a request body, and for the whole body after the head; a body that stops short of its
  Content-Length gets a 408 (OpenAI error body, ``Connection: close``). Enforced by
  ``http_auth.Guard``.
- ``max_connections_per_client`` (128; None: no cap): open connections per client address;
  the next one gets a 429 and is closed at once. Behind a reverse proxy every client has the
  proxy's address: set None there and cap at the proxy.
- ``max_connections`` (None: half the open-file limit, at most 4096): open connections in all.
  When full, the connection that has waited longest for a request head (half-open or idle
  keep-alive) is closed to make room; only when every connection has a request in flight is
  the new one refused (503). Half-open sockets can never fill it.
- ``keep_alive_s`` (5): idle time allowed between requests on a keep-alive connection.
- ``max_head_bytes`` (16 KiB): the most of an unfinished request head (request line and
  headers) that is buffered (h11's ``max_incomplete_event_size``); past it the answer is 431, and
  a malformed head gets a 400, both in the OpenAI error shape.
- ``max_json_depth`` (64): the deepest nesting of arrays and objects in a JSON body, checked by
  ``Guard`` while the body streams in, before anything parses it (brackets inside strings do
  not count); deeper is a 400 that names the limit.

Work is bounded elsewhere: the service queue answers 429 + Retry-After when full.

``uvicorn_config`` builds the ``uvicorn.Config`` with these limits: h11 as the protocol, through
uvicorn's documented ``http=<protocol class>`` option, with ``GuardedH11Protocol`` (uvicorn's
``H11Protocol`` plus the head timeout, the caps and JSON protocol errors). It relies on these
attributes of ``H11Protocol``: ``transport``, ``loop``, ``conn`` (the ``h11.Connection``),
``cycle`` (and its ``response_complete``), and the methods ``on_response_complete`` and
``send_400_response``; ``tests/test_hostile_http.py`` covers each.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Optional

import h11
import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .http_errors import error_body
from .runtime import MAX_REQUEST_DEPTH, InputError

__all__ = ["ConnectionLimits", "ConnectionRegistry", "GuardedH11Protocol", "JsonDepth", "TooDeep", "protocol_class",
           "raw_error", "uvicorn_config"]


def _default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(4096, soft // 2 if soft != resource.RLIM_INFINITY else 4096))


@dataclass(frozen=True)
class ConnectionLimits:
    """The front door's limits; see the module docstring for each field."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_deadline_s: float = 300.0
    max_connections_per_client: Optional[int] = 128
    max_connections: Optional[int] = None
    keep_alive_s: float = 5.0
    max_head_bytes: int = 16 * 1024
    max_json_depth: int = MAX_REQUEST_DEPTH  # the same bound check_request_data applies after parsing

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "body_deadline_s", "keep_alive_s", "max_head_bytes",
                     "max_json_depth", "max_connections_per_client", "max_connections"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ConnectionLimits.{name}={value!r}: must be > 0"
                                 + (" (or None for no cap)" if name.startswith("max_connections") else ""))
        if self.max_connections is None:
            object.__setattr__(self, "max_connections", _default_max_connections())


# ----------------------------------------------------------------------------------- JSON depth
class TooDeep(InputError):
    """A JSON body nested deeper than ``max_json_depth``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the JSON body is nested deeper than {limit} levels of arrays/objects (max_json_depth="
                         f"{limit}); flatten it, or raise ConnectionLimits.max_json_depth", 400)


_DELTA = np.zeros(256, dtype=np.int32)
_DELTA[[ord("["), ord("{")]] = 1
_DELTA[[ord("]"), ord("}")]] = -1
_BACKSLASH, _QUOTE = ord("\\"), ord('"')
_PLAIN = bytes(c for c in range(256) if c not in b'[]{}"')  # what a chunk without backslashes can drop


class JsonDepth:
    """Tracks the nesting depth of a JSON document fed in chunks, in bulk (numpy, no per-byte
    Python loop): brackets count only outside strings; a quote ends a string unless an odd run of
    backslashes precedes it; escapes and strings may span chunks. ``feed`` raises ``TooDeep``
    past ``limit``, and ``InputError`` for a body in UTF-16/32 (JSON travels as UTF-8: RFC 8259;
    there a byte-level scan would be wrong)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self.in_string = 0  # 1 inside a string at the end of the last chunk
        self.backslashes = 0  # parity of the run of backslashes that ended the last chunk
        self.head = b""  # the first 4 bytes, to tell the encoding

    def feed(self, chunk: bytes, last: bool = False) -> None:
        if len(self.head) < 4:
            self.head += chunk[:4 - len(self.head)]
            if len(self.head) == 4 or last:
                self._check_encoding()
        if not chunk:
            return
        if not self.backslashes and b"\\" not in chunk:  # no escapes: only quotes and brackets matter
            self._scan(np.frombuffer(chunk.translate(None, _PLAIN), dtype=np.uint8), None)
            return
        b = np.frombuffer(chunk, dtype=np.uint8)
        idx = np.arange(len(b), dtype=np.int64)
        last_other = np.maximum.accumulate(np.where(b == _BACKSLASH, -1, idx))  # last index <= i not a backslash
        run = idx - last_other + np.where(last_other < 0, self.backslashes, 0)  # backslashes ending at i
        escaped = np.empty(len(b), dtype=bool)
        escaped[0] = self.backslashes % 2 == 1
        escaped[1:] = run[:-1] % 2 == 1
        self._scan(b, escaped)
        self.backslashes = int(run[-1]) % 2

    def _scan(self, b: np.ndarray, escaped: Optional[np.ndarray]) -> None:
        if not len(b):
            return
        quotes = b == _QUOTE if escaped is None else (b == _QUOTE) & ~escaped
        inside = (np.cumsum(quotes, dtype=np.int64) + self.in_string) % 2 == 1
        depth = self.depth + np.cumsum(np.where(inside, 0, _DELTA[b]), dtype=np.int64)
        if int(depth.max()) > self.limit:
            raise TooDeep(self.limit)
        self.depth, self.in_string = int(depth[-1]), int(inside[-1])

    def _check_encoding(self) -> None:
        if self.head and json.detect_encoding(self.head) not in ("utf-8", "utf-8-sig"):
            raise InputError(f"the body looks like {json.detect_encoding(self.head).upper()}, not UTF-8: send JSON as "
                             "UTF-8 (RFC 8259)", 400)


# ----------------------------------------------------------------------------------- connections
def raw_error(status: int, message: str, code: str, headers: tuple = ()) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI error body and ``Connection: close``, for the
    protocol layer, which answers outside any ASGI request."""
    body = json.dumps(error_body(status, message, code)).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def no_delay(transport: Any) -> None:
    """Send small writes at once (TCP_NODELAY). h11 writes a response's head and body separately;
    with Nagle's algorithm on, the body waited for the client's delayed ACK: about 40 ms per
    keep-alive request on a socket handed to uvicorn (``serve_in_thread``)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ConnectionRegistry:
    """The open connections of one server: a count per client address, and those waiting for a
    request head, oldest first (the ones a full server closes to make room)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.per_client: dict[str, int] = {}
        self.waiting: dict[Any, None] = {}  # insertion-ordered: the longest-waiting first
        self.open = 0

    def admit(self, conn: Any, client: str) -> Optional[bytes]:
        """Count ``conn`` in, or return the refusal to write on it."""
        cap = self.limits.max_connections_per_client
        if cap is not None and self.per_client.get(client, 0) >= cap:
            return raw_error(429, f"too many open connections from {client}: the limit is {cap} per client address "
                             "(max_connections_per_client); reuse connections, or close some", "too_many_connections",
                             (("retry-after", "1"),))
        if self.open >= self.limits.max_connections:
            if not self.waiting:
                return raw_error(503, f"the server has {self.open} connections open, all with requests in flight "
                                 f"(max_connections={self.limits.max_connections}); retry shortly", "server_busy",
                                 (("retry-after", "1"),))
            next(iter(self.waiting)).evict()
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self.open += 1
        return None

    def release(self, conn: Any, client: str) -> None:
        self.waiting.pop(conn, None)
        self.open -= 1
        left = self.per_client[client] - 1
        if left:
            self.per_client[client] = left
        else:
            del self.per_client[client]

    def set_waiting(self, conn: Any, waiting: bool) -> None:
        if not waiting:
            self.waiting.pop(conn, None)
        elif conn not in self.waiting:
            self.waiting[conn] = None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus: the connection caps (``ConnectionRegistry``), a deadline for
    every request head, and protocol errors answered in the OpenAI error shape. ``registry`` is
    set per server by ``protocol_class``."""

    registry: ConnectionRegistry

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self.client_key = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "local"
        self.head_timer: Any = None
        self.counted = False
        self.refused = self.registry.admit(self, self.client_key)
        if self.refused is not None:
            transport.write(self.refused)
            transport.close()
            return
        self.counted = True
        no_delay(transport)
        super().connection_made(transport)
        self.watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.refused is not None:
            return  # never handed to uvicorn
        self.forget()
        super().connection_lost(exc)

    def watch(self) -> None:
        """Waiting for a request head (none yet, or the last response is done): count the
        connection as waiting and make sure a head deadline runs; a request in flight: neither."""
        waiting = not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)
        if self.counted:
            self.registry.set_waiting(self, waiting)
        if not waiting and self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        elif waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.registry.limits.header_timeout_s, self.head_timeout)

    def head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head arrived
            t = self.registry.limits.header_timeout_s
            self.transport.write(raw_error(408, f"the request head did not arrive whole within {t:g} s "
                                           "(header_timeout_s); send the request line and headers at once",
                                           "request_timeout"))
        self.evict()

    def evict(self) -> None:
        """Close the connection, out of the counts at once (``connection_lost`` comes later)."""
        self.forget()
        self.transport.close()

    def forget(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.counted:
            self.counted = False
            self.registry.release(self, self.client_key)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as an OpenAI error: 431 for a head over
        ``max_head_bytes``, else 400."""
        limit = self.registry.limits.max_head_bytes
        if len(self.conn.trailing_data[0]) > limit:
            reply = raw_error(431, f"the request head is over the {limit:,}-byte limit (max_head_bytes); send fewer or "
                              "shorter headers", "request_header_too_large")
        else:
            reply = raw_error(400, "invalid HTTP request: a malformed request line, header or body framing (the head "
                              f"may be at most {limit:,} bytes: max_head_bytes)", "invalid_request")
        self.transport.write(reply)
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type:
    """A ``GuardedH11Protocol`` class with its own registry: one per server."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"registry": ConnectionRegistry(limits)})


def uvicorn_config(app: Any, limits: Optional[ConnectionLimits] = None, **kwargs: Any) -> uvicorn.Config:
    """``uvicorn.Config`` for ``app`` behind ``limits``: no ``limit_concurrency`` (work is bounded by
    the service queue, connections by the caps), no WebSocket upgrades (no route uses them)."""
    limits = limits or ConnectionLimits()
    return uvicorn.Config(app, http=protocol_class(limits), ws="none", timeout_keep_alive=limits.keep_alive_s,
                          h11_max_incomplete_event_size=limits.max_head_bytes, limit_concurrency=None, **kwargs)
