"""The HTTP front door under hostile clients, over real sockets on loopback.

Attackers connect from 127.0.0.2 and the legitimate client from 127.0.0.1 (both loopback on
Linux), so the per-client connection cap sees two clients. Timeouts are made small through
``ConnectionLimits`` so the file stays fast. Covered: half-open and silent connections, bodies
short of their Content-Length, the per-client and global connection caps, JSON nested too deep,
raw protocol errors answered in the OpenAI error shape, a 500 that keeps its keep-alive
connection, and hypothesis fuzzing of raw request bytes (never a 5xx, never a hang)."""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json
import select
import socket
import time
from typing import Optional

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lladauni.agent import ScriptedBackend
from lladauni.tools.http_limits import ConnectionLimits, JsonDepth, TooDeep
from lladauni.tools.mcp_server import build_mcp_server, mcp_http_app
from lladauni.tools.runtime import Limits
from lladauni.tools.server import serve_in_thread
from lladauni.tools.service import ToolService

ATTACKER = "127.0.0.2"
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-"
IMAGE = {"prompt": "a fox"}


class _Broken(ScriptedBackend):
    """A backend whose image call fails with an error the server has no row for (a 500)."""

    def generate_image(self, prompt, **kw):
        if prompt == "boom":
            raise RuntimeError("the model fell over")
        return super().generate_image(prompt, **kw)


def _service(tmp_path, backend=None) -> ToolService:
    return ToolService(backend or ScriptedBackend(size=32), limits=Limits(max_body_bytes=256 * 1024),
                       out_dir=tmp_path / "out", model_name="m")


def _serve(svc, app=None, limits=None, **door):
    return serve_in_thread(svc, app=app, limits=limits or ConnectionLimits(**door))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(url: str, source: str = ATTACKER, timeout: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", _port(url)))
    return s


def _until_closed(s: socket.socket, within: float) -> tuple[bytes, Optional[float]]:
    """Everything the server sends until it closes the connection, and after how many seconds it
    did (None: still open after ``within``)."""
    t0 = time.monotonic()
    data = b""
    while True:
        s.settimeout(max(0.01, within - (time.monotonic() - t0)))
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return data, time.monotonic() - t0
        except socket.timeout:
            return data, None
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk


def _closed_by(socks: list, until: float) -> set:
    """Those of ``socks`` the server closes before monotonic time ``until``."""
    waiting, closed = set(socks), set()
    while waiting and time.monotonic() < until:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, until - time.monotonic()))
        for s in ready:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                closed.add(s)
                waiting.discard(s)
    return closed


def _reply(raw: bytes) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one raw HTTP response with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body[:int(headers["content-length"])])


def _openai_error(body: dict) -> dict:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def _legit_is_served(url: str, within: float) -> None:
    t0 = time.monotonic()
    with httpx.Client(timeout=within) as c:
        assert c.get(url + "/health").status_code == 200
        r = c.post(url + "/v1/images/generations", json=IMAGE)
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
    assert time.monotonic() - t0 < within


# ------------------------------------------------------------------------- slow and half-open clients
def test_a_half_header_flood_from_another_address_leaves_a_legit_client_alone(tmp_path):
    with _serve(_service(tmp_path), header_timeout_s=2.5, max_connections_per_client=32) as url:
        t0 = time.monotonic()
        socks = [_connect(url) for _ in range(300)]
        for s in socks:
            s.sendall(HALF_HEAD)
        refused = _closed_by(socks, time.monotonic() + 0.3)
        assert len(refused) == 300 - 32  # the excess at once
        _legit_is_served(url, within=2.0)  # while every other attacker socket is still held
        held = [s for s in socks if s not in refused]
        assert not _closed_by(held, t0 + 2.3)
        assert _closed_by(held, t0 + 4.5) == set(held)  # the rest at the head timeout
        for s in socks:
            s.close()


def test_silent_and_dripping_connections_are_closed_at_the_head_timeout(tmp_path):
    with _serve(_service(tmp_path), header_timeout_s=1.0) as url:
        silent, drip = _connect(url), _connect(url)
        t0 = time.monotonic()
        for byte in HALF_HEAD[:4]:  # a byte every 0.2 s must not restart the clock (else: closed at 1.6 s)
            drip.sendall(bytes([byte]))
            time.sleep(0.2)
        data, _ = _until_closed(drip, 3.0)
        assert 0.95 < time.monotonic() - t0 < 1.45
        status, _, body = _reply(data)
        assert status == 408 and "header_timeout_s" in _openai_error(body)["message"]
        assert _closed_by([silent], t0 + 2.0) == {silent}
        _legit_is_served(url, within=2.0)
        silent.close()
        drip.close()


def test_a_body_short_of_its_length_gets_408_and_is_closed(tmp_path):
    with _serve(_service(tmp_path), body_timeout_s=1.5) as url:
        t0 = time.monotonic()
        flood = [_connect(url) for _ in range(40)]
        for s in flood:
            s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\":")
        _legit_is_served(url, within=1.2)
        assert not _closed_by(flood, t0 + 1.4)
        for s in flood:
            data, _ = _until_closed(s, 3.0)
            assert time.monotonic() - t0 < 3.5
            status, headers, body = _reply(data)
            err = _openai_error(body)
            assert status == 408 and headers["connection"] == "close" and err["code"] == "request_timeout"
            assert "10 of 100 bytes" in err["message"] and "body_timeout_s" in err["message"]
            s.close()


def test_a_client_over_its_connection_cap_is_refused_at_once(tmp_path):
    with _serve(_service(tmp_path), max_connections_per_client=4) as url:
        held = [_connect(url) for _ in range(4)]
        time.sleep(0.2)  # let the server accept them
        extra = _connect(url)
        data, after = _until_closed(extra, 2.0)
        assert after is not None and after < 1.0
        status, headers, body = _reply(data)
        err = _openai_error(body)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert all(part in err["message"] for part in ("127.0.0.2", "max_connections_per_client", "4"))
        _legit_is_served(url, within=2.0)  # another address is not counted against it
        held.pop().close()
        time.sleep(0.2)
        again = _connect(url)  # a freed slot is reusable
        again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _reply(_until_closed(again, 2.0)[0])[0] == 200
        for s in held + [extra, again]:
            s.close()


def test_a_full_server_evicts_waiting_sockets_not_requests_in_flight(tmp_path):
    svc = _service(tmp_path, ScriptedBackend(size=32, delay={"generate_image": 1.0}))
    with _serve(svc, header_timeout_s=5.0, max_connections_per_client=None, max_connections=40) as url:
        with httpx.Client(timeout=10) as c:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                slow = pool.submit(c.post, url + "/v1/images/generations", json=IMAGE)
                time.sleep(0.3)  # the slow request is in flight
                socks = [_connect(url) for _ in range(300)]
                for s in socks:
                    s.sendall(HALF_HEAD)
                with httpx.Client(timeout=3) as other:
                    assert other.get(url + "/health").status_code == 200
                assert slow.result().status_code == 200
        open_now = sum(_until_closed(s, 0.05)[1] is None for s in socks)
        assert open_now <= 40
        for s in socks:
            s.close()


def test_an_idle_keep_alive_connection_is_the_first_to_make_room(tmp_path):
    """After its response a keep-alive connection waits for a head again: it is the oldest
    waiting one, so a full server closes it first, and the half-open sockets after it stay."""
    with _serve(_service(tmp_path), max_connections_per_client=None, max_connections=3) as url:
        idle = _connect(url)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive, now idle
        half = [_connect(url) for _ in range(2)]
        for s in half:
            s.sendall(HALF_HEAD)
        time.sleep(0.2)
        assert not _closed_by([idle, *half], time.monotonic() + 0.2)  # 3 open: at the cap, none closed
        newest = _connect(url)
        assert _closed_by([idle, *half], time.monotonic() + 1.0) == {idle}
        newest.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _reply(_until_closed(newest, 2.0)[0])[0] == 200
        for s in [idle, newest, *half]:
            s.close()


# ------------------------------------------------------------------------- every client error is a 4xx
def _post_raw(url: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    r = httpx.post(url + path, content=body, headers={"Content-Type": content_type}, timeout=10)
    return r.status_code, r.json()


def test_json_nested_too_deep_is_a_400_that_names_the_limit(tmp_path):
    with _serve(_service(tmp_path), max_json_depth=32) as url:
        for body in (b"[" * 2000 + b"]" * 2000, b'{"a":' * 2000 + b"1" + b"}" * 2000,
                     b'{"prompt": "x", "image_generation": ' + b"[" * 33 + b"]" * 33 + b"}"):
            status, reply = _post_raw(url, "/v1/images/generations", body)
            err = _openai_error(reply)
            assert status == 400 and "max_json_depth" in err["message"] and "32" in err["message"], err
        brackets = "[{" * 3000 + '\\"' + "]}" * 10  # inside a string (with an escaped quote): not nesting
        status, reply = _post_raw(url, "/v1/images/generations", json.dumps({"prompt": brackets}).encode())
        assert status == 200, reply
        status, reply = _post_raw(url, "/v1/images/generations", json.dumps(IMAGE).encode("utf-16"))
        assert status == 400 and "UTF-8" in _openai_error(reply)["message"]


def test_protocol_errors_are_answered_in_the_openai_shape(tmp_path):
    with _serve(_service(tmp_path), max_head_bytes=4096) as url:
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000):  # a head that grows past the limit
            s = _connect(url, "127.0.0.1")
            s.sendall(raw)
            data, after = _until_closed(s, 2.0)
            s.close()
            status, headers, body = _reply(data)
            assert 400 <= status < 500 and headers["content-type"] == "application/json"
            assert "max_head_bytes" in _openai_error(body)["message"]


def test_a_500_keeps_the_keep_alive_connection(tmp_path):
    with _serve(_service(tmp_path, _Broken(size=32))) as url:
        conn = http.client.HTTPConnection("127.0.0.1", _port(url), timeout=10)
        conn.request("GET", "/health")
        conn.getresponse().read()
        sock = conn.sock
        for i in range(20):
            body = json.dumps({"prompt": "boom" if i % 2 == 0 else f"ok {i}"})
            conn.request("POST", "/v1/images/generations", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            reply = json.loads(r.read())
            if i % 2 == 0:
                assert r.status == 500 and _openai_error(reply)["code"] == "internal_error"
                assert r.getheader("connection") != "close"
            else:
                assert r.status == 200 and reply["data"]
            assert conn.sock is sock, f"the connection was dropped after request {i}"
        conn.close()


def test_the_mcp_app_has_the_same_front_door(tmp_path):
    svc = _service(tmp_path)
    door = ConnectionLimits(header_timeout_s=0.5, max_json_depth=16)
    app = mcp_http_app(svc, build_mcp_server(svc), api_key="tok", limits=door)
    with _serve(svc, app=app, limits=door) as url:
        s = _connect(url)
        s.sendall(HALF_HEAD)
        assert _until_closed(s, 2.0)[1] is not None
        s.close()
        r = httpx.post(url + "/mcp", content=b"[" * 100 + b"]" * 100, timeout=5,
                       headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
        assert r.status_code == 400 and "max_json_depth" in _openai_error(r.json())["message"]


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\/ab\u00e9\u2200', max_size=8)  # brackets, quotes, backslashes, non-ASCII
TRICKY_JSON = st.recursive(st.none() | st.integers() | TRICKY_TEXT,
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TRICKY_TEXT, kids, max_size=3),
                           max_leaves=30)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value=TRICKY_JSON, limit=st.integers(1, 8), cuts=st.lists(st.integers(0, 10_000), max_size=6),
       ensure_ascii=st.booleans())
def test_the_streaming_depth_check_agrees_with_the_parser(value, limit, cuts, ensure_ascii):
    raw = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    points = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    scan = JsonDepth(limit)
    try:
        for a, b in zip(points, points[1:]):
            scan.feed(raw[a:b], last=b == len(raw))
        refused = False
    except TooDeep:
        refused = True
    assert refused == (_depth(json.loads(raw)) > limit), raw


# ------------------------------------------------------------------------- fuzzing raw request bytes
TALLY: collections.Counter = collections.Counter()  # outcomes of the fuzz cases, for the summary test
BOUND_S = 3.0  # no case may take longer (the server's timeouts below are 0.15 s)
PATHS = [b"/health", b"/v1/models", b"/v1/chat/completions", b"/v1/images/generations", b"/v1/images/edits",
         b"/v1/workflows/draw-check-refine/runs", b"/v1/files/../../etc/passwd", b"/%ff%00", b"*", b"/" + b"a" * 300]
HEADER_NAMES = [b"Content-Type", b"Transfer-Encoding", b"Expect", b"Connection", b"Authorization", b"Accept",
                b"Content-Encoding", b"X-Junk"]
HEADER_VALUES = [b"application/json", b"multipart/form-data; boundary=x", b"text/plain", b"chunked", b"gzip",
                 b"100-continue", b"close", b"keep-alive", b"Bearer x", b"\xff\xfe", b""]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=20)


@st.composite
def _bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["json", "request", "valid", "nested", "binary", "empty"]))
    if kind == "valid":  # an image request the endpoint accepts, or a chat one
        text = draw(st.text(min_size=1, max_size=20))
        chat = {"messages": [{"role": "user", "content": text}]}
        return json.dumps(draw(st.sampled_from([{"prompt": text}, chat]))).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "request":
        fields = draw(st.dictionaries(st.sampled_from(["prompt", "model", "messages", "size", "n", "image_generation",
                                                       "inputs", "stream"]), JSON, max_size=4))
        return json.dumps(fields).encode()
    if kind == "nested":
        depth = draw(st.integers(0, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'["[",', b"]"), (b'{"\\"":[', b"]}")]))
        return opener * depth + b"1" + closer * depth * draw(st.integers(0, 1))
    return draw(st.binary(max_size=300)) if kind == "binary" else b""


@st.composite
def _requests(draw) -> tuple[bytes, bool, bool]:
    """(raw bytes, whether the request is complete as framed, whether it is a well-formed request
    the server must answer 200). One in five is well-formed, to catch a front door that refuses
    what it should serve."""
    if not draw(st.integers(0, 4)):
        text = "x" + draw(TRICKY_TEXT)  # brackets, quotes and backslashes in a string are not nesting
        chat = {"messages": [{"role": "user", "content": text}]}
        path, body = draw(st.sampled_from([(b"/v1/images/generations", {"prompt": text}), (b"/v1/chat/completions", chat)]))
        raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        return head % (path, len(raw)) + raw, True, True
    method = draw(st.sampled_from([b"POST"] * 4 + [b"GET", b"HEAD", b"PUT", b"OPTIONS", b"G T", b""]))
    path = draw(st.sampled_from(PATHS) if draw(st.integers(0, 3)) else st.binary(max_size=30))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"XYZ"]))
    headers = [b"Host: x"] if draw(st.booleans()) or version == b"HTTP/1.1" else []
    headers += [n + b": " + draw(st.sampled_from(HEADER_VALUES) if draw(st.integers(0, 3)) else st.binary(max_size=12))
                for n in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=3))]
    body = draw(_bodies())
    framing = draw(st.sampled_from(["exact", "short", "long", "none", "garbage", "chunked"]))
    complete = framing != "short"
    if framing == "exact":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 1000))))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % draw(st.integers(0, len(body))))
    elif framing == "garbage":
        junk = draw(st.sampled_from([b"-1", b"1e3", b"0x10", b"", b"99999999999999999999"]))
        headers.append(b"Content-Length: " + junk)
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = (b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    head = method + b" " + path + b" " + version + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    cut = draw(st.sampled_from([None, None, None, "head"]))
    if cut == "head":  # a head that never ends
        return head[:draw(st.integers(0, len(head)))], False, False
    return head + b"\r\n" + body, complete, False


def _one_case(url: str, raw: bytes, complete: bool, well_formed: bool, method: str) -> str:
    """Send one raw request on a fresh connection; "handled" when it got a non-5xx answer (a 200
    if ``well_formed``), or (for a request that is not complete as framed) was closed, all within
    ``BOUND_S``."""
    s = _connect(url, timeout=BOUND_S)
    t0 = time.monotonic()
    try:
        s.sendall(raw)
        r = http.client.HTTPResponse(s, method=method)
        r.begin()
        r.read()
        TALLY[f"answered {r.status}"] += 1
        if r.status >= 500:
            outcome = "5xx"
        else:
            outcome = "refused a good request" if well_formed and r.status != 200 else "handled"
    except (http.client.RemoteDisconnected, http.client.BadStatusLine, http.client.IncompleteRead,
            ConnectionResetError, BrokenPipeError):
        outcome = "dropped" if complete else "handled"  # closed at a timeout, or refused as unframeable
    except socket.timeout:
        outcome = "hung"
    finally:
        s.close()
    return "slow" if outcome == "handled" and time.monotonic() - t0 > BOUND_S else outcome


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    svc = _service(tmp_path_factory.mktemp("fuzz"))
    with _serve(svc, header_timeout_s=0.15, body_timeout_s=0.15, keep_alive_s=0.15) as url:
        yield url


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=_requests())
def test_fuzzed_raw_requests_never_get_a_5xx_or_hang(fuzz_server, case):
    raw, complete, well_formed = case
    method = raw.split(b" ", 1)[0].decode("latin-1")
    outcome = _one_case(fuzz_server, raw, complete, well_formed, method)
    TALLY["tried"] += 1
    TALLY[outcome] += 1
    assert outcome == "handled", (outcome, raw[:300])


def test_fuzz_tally_and_the_server_still_serves(fuzz_server):
    """Runs after the fuzzing above (file order): everything tried was handled, and a legit client
    is still served."""
    print(f"\nraw-HTTP fuzz: tried {TALLY['tried']}, handled {TALLY['handled']}, "
          f"lost {TALLY['tried'] - TALLY['handled']} ({dict(TALLY)})")
    assert TALLY["tried"] == 0 or TALLY["handled"] == TALLY["tried"]
    _legit_is_served(fuzz_server, within=3.0)


def test_the_server_commands_take_the_front_door_limits_as_flags(monkeypatch):
    """``lladauni serve`` / ``mcp --transport http`` flags reach ConnectionLimits (0: no per-client
    cap, for a server behind a reverse proxy)."""
    from lladauni.tools import cli, mcp_server, server
    from lladauni.tools.http_limits import ConnectionLimits

    seen = []
    monkeypatch.setattr(server, "serve", lambda service, **kw: seen.append(kw["limits"]))
    monkeypatch.setattr(mcp_server, "run_mcp", lambda service, **kw: seen.append(kw["limits"]))
    flags = ["--header-timeout", "2.5", "--body-timeout", "4", "--max-connections-per-client", "0"]
    assert cli.main(["serve", *flags]) == 0
    assert cli.main(["mcp", "--transport", "http", *flags]) == 0
    assert cli.main(["serve"]) == 0
    assert all(isinstance(x, ConnectionLimits) for x in seen)
    assert [(x.header_timeout_s, x.body_timeout_s, x.max_connections_per_client) for x in seen] == [
        (2.5, 4.0, None), (2.5, 4.0, None), (10.0, 30.0, 128)]
    assert cli.main(["serve", "--max-connections-per-client", "-3"]) != 0 and len(seen) == 3


def test_every_accepted_connection_sends_small_writes_at_once(tmp_path, monkeypatch):
    """TCP_NODELAY on each accepted socket: h11 writes a response's head and body separately, and
    with Nagle's algorithm the body waited for the client's delayed ACK (about 40 ms per
    keep-alive request on a socket handed to uvicorn, as ``serve_in_thread`` does)."""
    import socket

    from lladauni.tools import http_limits

    seen = []
    real = http_limits.no_delay

    def spy(transport):
        real(transport)
        sock = transport.get_extra_info("socket")
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(http_limits, "no_delay", spy)
    with _serve(_service(tmp_path)) as url:
        with httpx.Client() as c:
            assert [c.get(url + "/health").status_code for _ in range(3)] == [200, 200, 200]
    assert seen and all(seen), seen  # one keep-alive connection, TCP_NODELAY on


def test_the_documented_defaults_of_the_front_door():
    """The defaults the module docstring, docs/HARDENING.md and the CLI help promise."""
    from lladauni.tools.http_limits import ConnectionLimits
    from lladauni.tools.runtime import MAX_REQUEST_DEPTH

    d = ConnectionLimits()
    assert (d.header_timeout_s, d.body_timeout_s, d.body_deadline_s, d.keep_alive_s) == (10.0, 30.0, 300.0, 5.0)
    assert (d.max_connections_per_client, d.max_head_bytes, d.max_json_depth) == (128, 16 * 1024, 64)
    assert MAX_REQUEST_DEPTH == d.max_json_depth and 0 < d.max_connections <= 4096


def test_no_delay_leaves_sockets_it_cannot_tune_alone():
    """No socket (a test transport) or a Unix socket: nothing to set, and no error."""
    import socket

    from lladauni.tools.http_limits import no_delay

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name):
            return self.sock if name == "socket" else None

    no_delay(Transport(None))
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        no_delay(Transport(a))
    t = socket.socket()
    with t:
        no_delay(Transport(t))
        assert t.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_closed_connections_free_their_places():
    """Admit and release many more connections than the caps, one after another: none is refused,
    and the counts return to zero (a count that only grows would fill the server)."""
    from lladauni.tools.http_limits import ConnectionLimits, ConnectionRegistry

    reg = ConnectionRegistry(ConnectionLimits(max_connections=2, max_connections_per_client=1))
    for i in range(10):
        conn = object()
        assert reg.admit(conn, "10.0.0.1") is None, f"connection {i} refused after {i} closed ones"
        reg.release(conn, "10.0.0.1")
    assert reg.open == 0 and reg.per_client == {}
    first, second = object(), object()
    assert reg.admit(first, "10.0.0.1") is None
    assert b"429" in reg.admit(second, "10.0.0.1").split(b"\r\n")[0]  # the per-client cap still holds


@pytest.mark.parametrize("field", ["header_timeout_s", "body_timeout_s", "body_deadline_s", "keep_alive_s",
                                   "max_head_bytes", "max_json_depth", "max_connections_per_client", "max_connections"])
def test_a_zero_or_negative_front_door_limit_is_refused_by_name(field):
    from lladauni.tools.http_limits import ConnectionLimits

    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"ConnectionLimits.{field}={bad}: must be > 0"):
            ConnectionLimits(**{field: bad})


def test_a_full_server_with_every_request_in_flight_answers_503_with_retry_after():
    """When every open connection has a request in flight there is nobody to evict: the new
    connection gets a 503 with Retry-After (half-open ones are evicted instead, tested above)."""
    from lladauni.tools.http_limits import ConnectionLimits, ConnectionRegistry

    reg = ConnectionRegistry(ConnectionLimits(max_connections=1))
    busy = object()
    assert reg.admit(busy, "10.0.0.1") is None
    reg.set_waiting(busy, False)  # its request is being served
    reply = reg.admit(object(), "10.0.0.2")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head.lower()
    assert json.loads(body)["error"]["code"] == "server_busy" and reg.open == 1
