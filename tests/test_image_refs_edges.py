"""Edges of the server's image input (``tools/runtime.py``): the byte and pixel caps exactly at the
limit and one over it, the pre-decoding size check of data URLs, malformed data URLs, refs that
are not strings, ``file://`` URLs and local paths under (and escaping) the allowed roots; and the
default ``Limits`` as a client of a server started without options meets them (body size, images
per request, steps, tokens, output size, queue length)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading

import httpx
import pytest
from PIL import Image

from lladauni.agent import ScriptedBackend
from lladauni.tools.runtime import Busy, InputError, Limits, ModelWorker, decode_image_bytes, load_image_ref
from lladauni.tools.server import create_app
from lladauni.tools.service import ToolService

MiB = 1024 * 1024


def _png(w: int = 8, h: int = 8, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 90 if mode == "L" else (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png_of_size(n: int) -> bytes:
    """A readable 8x8 PNG of exactly ``n`` bytes (zeros after its IEND chunk, which decoders skip)."""
    raw = _png()
    assert n >= len(raw)
    return raw + b"\0" * (n - len(raw))


def _url(data: bytes, head: str = "data:image/png;base64") -> str:
    return f"{head},{base64.b64encode(data).decode()}"


def _refused(ref, limits: Limits, status: int, message: str) -> None:
    with pytest.raises(InputError) as exc:
        load_image_ref(ref, limits)
    assert exc.value.status == status and message in str(exc.value), (exc.value.status, str(exc.value))


# --------------------------------------------------------------------------- decoded size caps
def test_decode_accepts_exactly_max_image_bytes_and_refuses_one_more():
    data = _png_of_size(3000)
    assert decode_image_bytes(data, Limits(max_image_bytes=3000)).size == (8, 8)
    with pytest.raises(InputError) as exc:
        decode_image_bytes(data, Limits(max_image_bytes=2999))
    assert exc.value.status == 413 and "3,000 bytes is over the 2,999-byte limit" in str(exc.value)


def test_decode_accepts_exactly_max_image_pixels_and_refuses_one_more_row():
    lim = Limits(max_image_pixels=64 * 64)
    assert decode_image_bytes(_png(64, 64), lim).size == (64, 64)
    with pytest.raises(InputError) as exc:
        decode_image_bytes(_png(64, 65), lim)
    assert exc.value.status == 413 and "64x65 pixels is over the 4,096-pixel limit" in str(exc.value)


def test_decode_refuses_a_truncated_image_as_unreadable():
    data = _png(64, 64)
    with pytest.raises(InputError) as exc:
        decode_image_bytes(data[: len(data) - 30], Limits())  # IDAT cut short: the header still reads
    assert exc.value.status == 400 and "not a readable image" in str(exc.value)


def test_decode_refuses_a_png_with_a_broken_chunk_as_unreadable():
    """PIL raises SyntaxError ("broken PNG file") for a damaged chunk name after IDAT: a 400, not a 500."""
    data = bytes.fromhex(
        "89504e470d0a1a0a0000000d494844520000001400000014080200000002eb8a5a0000001d49444154789c6364646266"
        "20173091ad7354f3a8e651cda39a3ea21900809e002ea0312c280000000057451844ae426082")
    with pytest.raises(InputError) as exc:
        decode_image_bytes(data, Limits())
    assert exc.value.status == 400 and "not a readable image" in str(exc.value)


# ------------------------------------------------------------------------------------ data URLs
def test_data_url_decoding_to_exactly_the_cap_is_accepted_and_one_byte_more_is_refused():
    cap = 3000  # a multiple of 3, so the payload has no padding and its length says the size exactly
    assert load_image_ref(_url(_png_of_size(cap)), Limits(max_image_bytes=cap)).size == (8, 8)
    _refused(_url(_png_of_size(cap + 1)), Limits(max_image_bytes=cap), 413, "the data URL is over the 3,000-byte limit")


def test_an_oversized_data_url_is_refused_for_its_size_before_its_base64_is_read():
    # 4004 characters could hold 3003 bytes: over the cap, so 413 even though they are not base64 at all
    _refused("data:image/png;base64," + "@" * 4004, Limits(max_image_bytes=3000), 413, "over the 3,000-byte limit")
    _refused("data:image/png;base64," + "A" * 8000, Limits(max_image_bytes=3000), 413, "over the 3,000-byte limit")


def test_an_unpadded_payload_holding_exactly_the_cap_is_refused_as_bad_base64_not_as_too_large():
    data = _png_of_size(3001)  # 3001 = 3 * 1000 + 1 bytes: base64 ends in "=="
    payload = base64.b64encode(data).decode()
    assert payload.endswith("==") and len(payload.rstrip("=")) == 4002
    # 4002 characters hold at most 3001 bytes, which is not over a 3001-byte cap; the padding is missing
    _refused("data:image/png;base64," + payload.rstrip("="), Limits(max_image_bytes=3001), 400, "not valid base64")


@pytest.mark.parametrize("payload", [
    lambda b64: b64[:40] + "@@@@" + b64[40:],  # characters outside the alphabet
    lambda b64: "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)),  # MIME line breaks
    lambda b64: b64[:20] + " " + b64[20:],
], ids=["junk", "newlines", "space"])
def test_data_url_payload_must_be_strict_base64(payload):
    b64 = base64.b64encode(_png(16, 16)).decode()
    assert load_image_ref("data:image/png;base64," + b64, Limits()).size == (16, 16)
    _refused("data:image/png;base64," + payload(b64), Limits(), 400, "not valid base64")


@pytest.mark.parametrize("head", [
    "data:text/plain;base64",  # base64, but not an image type
    "data:application/octet-stream;base64",
    "data:;base64",
    "data:image/png",  # an image type, but not base64
    "data:image/png;charset=utf-8",
    "data:image/png;base64;x",
], ids=["text", "octet-stream", "no-type", "no-base64", "charset", "base64-not-last"])
def test_data_url_must_be_an_image_type_in_base64(head):
    _refused(_url(_png(), head), Limits(), 400, "data URLs must look like data:image/png;base64,...")


@pytest.mark.parametrize("ref,name", [
    ("", "str"), (None, "NoneType"), (123, "int"), (1.5, "float"), (b"data:image/png;base64,", "bytes"),
    (["/tmp/a.png"], "list"), ({"url": "x"}, "dict"), (True, "bool"),
])
def test_a_ref_that_is_not_a_non_empty_string_is_a_400(tmp_path, ref, name):
    lim = Limits(allowed_roots=(tmp_path,))
    _refused(ref, lim, 400, f"expected a data URL or a local path, got {name}")
    _refused(ref, Limits(), 400, f"expected a data URL or a local path, got {name}")


# ---------------------------------------------------------------------------------- local paths
@pytest.fixture
def roots(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "ok.png").write_bytes(_png(12, 10))
    (outside / "secret.png").write_bytes(_png(12, 10))
    return allowed, outside


def test_a_file_url_under_an_allowed_root_loads_like_its_path(roots):
    allowed, _ = roots
    lim = Limits(allowed_roots=(allowed,))
    assert load_image_ref(f"file://{allowed / 'ok.png'}", lim).size == (12, 10)
    assert load_image_ref(str(allowed / "ok.png"), lim).size == (12, 10)
    _refused(f"file://{allowed / 'missing.png'}", lim, 404, "does not exist")


def test_file_urls_and_paths_outside_the_roots_are_refused(roots):
    allowed, outside = roots
    lim = Limits(allowed_roots=(allowed,))
    _refused(f"file://{outside / 'secret.png'}", lim, 403, "not an absolute path under an allowed root")
    _refused(str(outside / "secret.png"), lim, 403, "allowed root")
    _refused(f"{allowed}/../outside/secret.png", lim, 403, "allowed root")
    _refused("file://ok.png", lim, 403, "allowed root")  # relative
    # "file://" and then no third slash: the rest is not an absolute path, even when it spells one under the root
    _refused("file://" + str(allowed / "ok.png").lstrip("/"), lim, 403, "not an absolute path under an allowed root")
    _refused(str(allowed / "ok.png"), Limits(), 403, "local paths are disabled")  # no roots: no paths at all


def test_symlinks_are_judged_by_where_they_point(roots):
    allowed, outside = roots
    os.symlink(outside / "secret.png", allowed / "escape.png")
    os.symlink(allowed / "ok.png", allowed / "alias.png")
    os.symlink(outside, allowed / "door")
    lim = Limits(allowed_roots=(allowed,))
    _refused(str(allowed / "escape.png"), lim, 403, "allowed root")
    _refused(f"file://{allowed / 'door' / 'secret.png'}", lim, 403, "allowed root")
    assert load_image_ref(str(allowed / "alias.png"), lim).size == (12, 10)


def test_a_local_file_of_exactly_max_image_bytes_loads_and_one_byte_more_is_refused(roots):
    allowed, _ = roots
    (allowed / "exact.png").write_bytes(_png_of_size(2000))
    (allowed / "over.png").write_bytes(_png_of_size(2001))
    lim = Limits(allowed_roots=(allowed,), max_image_bytes=2000)
    assert load_image_ref(str(allowed / "exact.png"), lim).size == (8, 8)
    _refused(str(allowed / "over.png"), lim, 413, "over the 2,000-byte limit")


# ------------------------------------------------------------------------------- default Limits
def test_default_image_byte_cap_is_16_mib():
    data = _png_of_size(16 * MiB)
    assert decode_image_bytes(data, Limits()).size == (8, 8)
    with pytest.raises(InputError) as exc:
        decode_image_bytes(data + b"\0", Limits())
    assert exc.value.status == 413 and "16,777,217 bytes is over the 16,777,216-byte limit" in str(exc.value)


def test_default_pixel_cap_is_4096_by_4096():
    assert decode_image_bytes(_png(4096, 4096, "L"), Limits()).size == (4096, 4096)
    with pytest.raises(InputError) as exc:
        decode_image_bytes(_png(4096, 4097, "L"), Limits())
    assert exc.value.status == 413 and "over the 16,777,216-pixel limit" in str(exc.value)


def test_default_queue_holds_four_requests_behind_the_running_one():
    worker = ModelWorker(ScriptedBackend(), Limits())
    gate = threading.Event()

    async def go():
        jobs = [asyncio.ensure_future(worker.run(lambda b: gate.wait(10))) for _ in range(5)]
        await asyncio.sleep(0)  # all five are admitted: one runs, four wait
        with pytest.raises(Busy):
            await worker.run(lambda b: None)
        gate.set()
        return await asyncio.gather(*jobs)

    assert asyncio.run(go()) == [True] * 5
    assert worker.rejected == 1 and worker.completed == 5


@pytest.fixture(scope="module")
def default_app(tmp_path_factory):
    """A server as ``ToolService(backend)`` builds it: every limit at its default."""
    svc = ToolService(ScriptedBackend(size=32), out_dir=tmp_path_factory.mktemp("defaults"), model_name="m")
    assert svc.limits == Limits()
    return create_app(svc)


def _post(app, path: str, payload=None, content: bytes = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
            if content is not None:
                return await client.post(path, content=content, headers={"Content-Type": "application/json"})
            return await client.post(path, json=payload)

    return asyncio.run(go())


def _chat(images: int = 0, **kw) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": _url(_png())}} for _ in range(images)]
    return {"model": "m", "messages": [{"role": "user", "content": parts + [{"type": "text", "text": "hi"}]}], **kw}


def test_default_body_limit_is_32_mib(default_app):
    body = b"[1]" + b" " * (32 * MiB - 3)  # JSON, but not the object the endpoint wants: it gets that far
    r = _post(default_app, "/v1/chat/completions", content=body)
    assert r.status_code == 400 and "JSON object" in r.text
    r = _post(default_app, "/v1/chat/completions", content=body + b" ")
    assert r.status_code == 413 and "request body over the 33,554,432-byte limit" in r.json()["error"]["message"]


def test_default_allows_8_images_per_request(default_app):
    assert _post(default_app, "/v1/chat/completions", _chat(images=8)).status_code == 200
    r = _post(default_app, "/v1/chat/completions", _chat(images=9))
    assert r.status_code == 400 and r.json()["error"]["message"] == "at most 8 images per request"


def test_default_allows_8192_tokens(default_app):
    assert _post(default_app, "/v1/chat/completions", _chat(max_tokens=8192)).status_code == 200
    r = _post(default_app, "/v1/chat/completions", _chat(max_tokens=8193))
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "max_tokens=8193 is over this server's limit of 8192"


def test_default_allows_256_steps(default_app):
    ok = _post(default_app, "/v1/images/generations", {"prompt": "x", "image_generation": {"dllm_steps": 256}})
    assert ok.status_code == 200
    r = _post(default_app, "/v1/images/generations", {"prompt": "x", "image_generation": {"decoder_steps": 257}})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "image_generation.decoder_steps=257 is over this server's limit of 256"


def test_default_largest_output_side_is_2048(default_app):
    assert _post(default_app, "/v1/images/generations", {"prompt": "x", "size": "2048x2048"}).status_code == 200
    for size in ("2080x2048", "2048x2080"):
        r = _post(default_app, "/v1/images/generations", {"prompt": "x", "size": size})
        assert r.status_code == 400 and "must be a multiple of 32 between 32 and 2048" in r.json()["error"]["message"]


def _padded_png(n):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    raw = buf.getvalue()
    return raw + b"\0" * (n - len(raw))  # zeros after IEND: still a readable PNG of exactly n bytes


@pytest.mark.parametrize("cap,size", [(16 * 1024 * 1024, 16 * 1024 * 1024), (3001, 3001), (3002, 3002), (3002, 3001)])
def test_a_padded_data_url_at_or_under_the_cap_is_accepted(cap, size):
    """The size check counts the decoded bytes, not the '=' padding (a cap that is not a multiple of
    3 used to refuse a data URL of exactly the cap)."""
    data = _padded_png(size)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert load_image_ref(url, Limits(max_image_bytes=cap)).size == (8, 8)
    with pytest.raises(InputError, match="over the"):
        load_image_ref(url, Limits(max_image_bytes=size - 1))
