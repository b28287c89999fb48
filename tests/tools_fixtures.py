"""Shared helpers for the tools tests: a server on a free loopback port, stopped by the test."""

from __future__ import annotations

import base64
import io
from typing import Any, Optional

from PIL import Image

from lladauni.tools.server import serve_in_thread


def running(service: Any, api_key: Optional[str] = None, app: Any = None):
    """Serve on 127.0.0.1:<free port> in a thread, stopped (and checked stopped) on exit."""
    return serve_in_thread(service, api_key=api_key, app=app)


def png_bytes(size: int = 64, color: tuple = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def data_url(size: int = 64, color: tuple = (200, 30, 30)) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(size, color)).decode()


def b64_image(data: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return im.convert("RGB")
