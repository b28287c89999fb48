"""What every tool surface shares: one worker thread in front of the model (bounded queue,
cancellation, deadlines), a backend proxy that lets a cancelled request stop between denoising
blocks, and image input with size limits and allowed roots.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import errno
import io
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lladauni.model_core.generation.results import GenerationError
from lladauni.model_core.tokenizer import lone_surrogate

__all__ = ["MAX_REQUEST_DEPTH", "Busy", "Cancelled", "InputError", "Limits", "ModelWorker", "RunFailed", "check_request_data",
           "decode_image_bytes", "load_image_ref", "png_bytes", "png_b64"]

# how deeply a request's JSON may nest (objects and arrays); OpenAI bodies need about 5 levels
MAX_REQUEST_DEPTH = 64


class InputError(ValueError):
    """A request the client must fix (the server answers 4xx with this message)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Busy(RuntimeError):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the model queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a model call whose client left or whose deadline passed."""


class RunFailed(GenerationError):
    """An agent or workflow run that ended without its result (status "failed", or any status but
    done / capped): every surface reports it as a failure (HTTP 422 ``run_failed``, MCP
    ``is_error``, a LangChain tool error), with the run's error and thread id."""

    def __init__(self, kind: str, status: str, error: Optional[str], thread_id: str, trace: str = "") -> None:
        reason = error or f"the run ended with status {status!r} and no error message (see its trace)"
        super().__init__(f"the {kind} run {thread_id} {status}: {reason}")
        self.status, self.error, self.thread_id, self.trace = status, reason, thread_id, trace


# ------------------------------------------------------------------------------ request data
def _text_problem(text: str, where: str, kind: str) -> Optional[str]:
    at = lone_surrogate(text)
    if at is None:
        return None
    return (f"{where}: the {kind} holds a lone surrogate ({at}), which is not valid Unicode and cannot reach the "
            "model; send UTF-8 text (in JSON, a \\ud800-style escape must be one half of a pair)")


def check_request_data(data: Any, where: str = "", max_depth: int = MAX_REQUEST_DEPTH) -> None:
    """Refuse (``InputError`` naming the field) request data that nests deeper than ``max_depth``,
    holds a string or key with a lone surrogate (JSON can carry one; no tokenizer, file or
    response can) or an integer beyond 64 bits (no option takes one, and a run's checkpoints
    cannot store one). Iterative, so hostile nesting cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(data, where, 0)]
    while stack:
        value, at, depth = stack.pop()
        if isinstance(value, str):
            problem = _text_problem(value, at or "body", "text")
            if problem:
                raise InputError(problem)
            continue
        if isinstance(value, int) and not -2**63 <= value < 2**63:
            shown = str(value) if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
            raise InputError(f"{at or 'body'}: {shown} is beyond the 64-bit integers this server takes "
                             f"({-2**63} to {2**63 - 1})")
        if not isinstance(value, (dict, list, tuple)):
            continue
        if depth >= max_depth:
            raise InputError(f"{at or 'body'}: the request nests deeper than {max_depth} levels of objects and arrays; "
                             "flatten it (this limit is MAX_REQUEST_DEPTH in lladauni.tools.runtime)")
        if isinstance(value, dict):
            for k, v in value.items():
                name = str(k)
                problem = _text_problem(name, at or "body", "key " + ascii(name))
                if problem:
                    raise InputError(problem)
                stack.append((v, f"{at}.{name}" if at else name, depth + 1))
        else:
            stack.extend((v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value))


@dataclass
class Limits:
    """Safety limits. ``allowed_roots``: local image paths must resolve under one of them
    (none by default: only data URLs and uploads)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_image_side: int = 2048  # largest output side a request may ask for
    max_images_per_request: int = 8
    max_steps: int = 256
    max_tokens: int = 8192
    queue_size: int = 4  # requests waiting behind the running one
    timeout_s: float = 600.0
    allowed_roots: Sequence[Path] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------ images
def decode_image_bytes(data: bytes, limits: Limits, what: str = "image"):
    """Bytes -> RGB PIL image, refusing oversized files and decompression bombs (413) before
    decoding; the decoding itself is model_core's ``load_image`` (its formats, scan cap, alpha
    and 16-bit handling), whose ``ValueError`` for anything unreadable becomes a 400."""
    from PIL import Image

    from lladauni.model_core.image_preprocess import load_image

    if len(data) > limits.max_image_bytes:
        raise InputError(f"{what}: {len(data):,} bytes is over the {limits.max_image_bytes:,}-byte limit", 413)
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds (SyntaxError, struct.error ...) on bad headers
        raise InputError(f"{what}: not a readable image ({type(exc).__name__}: {exc})") from None
    if w * h > limits.max_image_pixels:
        raise InputError(f"{what}: {w}x{h} pixels is over the {limits.max_image_pixels:,}-pixel limit", 413)
    try:
        return load_image(data, max_pixels=limits.max_image_pixels, min_side=1)
    except ValueError as exc:
        raise InputError(f"{what}: not a readable image ({exc})") from None


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(Path(r).resolve()) for r in roots)


def load_image_ref(ref: str, limits: Limits, what: str = "image"):
    """A data URL (``data:image/...;base64,...``), ``file://`` URL or local path under an allowed
    root -> PIL image. Remote URLs are refused (the server fetches nothing)."""
    if not isinstance(ref, str) or not ref:
        got = "str (an empty one)" if ref == "" else type(ref).__name__
        raise InputError(f"{what}: expected a data URL or a local path, got {got}")
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if not head.endswith(";base64") or not head[5:].startswith("image/"):
            raise InputError(f"{what}: data URLs must look like data:image/png;base64,... (got {head[:40]!r})")
        # decoded size before decoding: 3 bytes per 4 characters, less the '=' padding
        if len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("="))) > limits.max_image_bytes:
            raise InputError(f"{what}: the data URL is over the {limits.max_image_bytes:,}-byte limit", 413)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{what}: the data URL is not valid base64") from None
        return decode_image_bytes(data, limits, what)
    if ref.startswith(("http://", "https://")):
        raise InputError(f"{what}: remote URLs are not fetched; send a data URL or upload the file")
    if not limits.allowed_roots:
        raise InputError(f"{what}: local paths are disabled on this server (start it with --allow-path DIR)", 403)
    if "\x00" in ref:
        raise InputError(f"{what}: a path cannot hold a NUL character")
    try:
        data = _read_local(ref, limits, what)
    except OSError as exc:  # the OS refused the path: a symlink loop, a name too long, no permission ...
        reason = "does not exist" if exc.errno == errno.ENOENT else f"cannot be read: {exc.strerror or exc}"
        raise InputError(f"{what}: {_short(ref)} {reason}", _OS_STATUS.get(exc.errno, 400)) from None
    except RuntimeError as exc:  # pathlib (Python < 3.13) reports a symlink loop met while resolving this way
        raise InputError(f"{what}: {_short(ref)} cannot be read: Too many levels of symbolic links ({exc})") from None
    return decode_image_bytes(data, limits, what)


# errno -> the status of a local path the OS refused (any other errno: 400)
_OS_STATUS = {errno.ENOENT: 404, errno.EACCES: 403, errno.EPERM: 403}


def _short(ref: str) -> str:
    """``ref`` for a message: quoted, and cut to its first and last 60 characters when longer."""
    return repr(ref if len(ref) <= 130 else ref[:60] + "..." + ref[-60:])


def _read_local(ref: str, limits: Limits, what: str) -> bytes:
    """The bytes of an absolute local path that resolves under an allowed root; OSError as the OS says."""
    path = Path(ref[7:] if ref.startswith("file://") else ref)
    resolved = path.resolve()  # follows symlinks, so a link cannot point out of the roots
    if not path.is_absolute() or not _under(resolved, limits.allowed_roots):
        raise InputError(f"{what}: {_short(ref)} is not an absolute path under an allowed root", 403)
    info = resolved.stat()  # FileNotFoundError (404), ENAMETOOLONG, ELOOP ... as OSError
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what}: {_short(ref)} is not a file" + (" (a directory)" if stat.S_ISDIR(info.st_mode) else ""))
    if info.st_size > limits.max_image_bytes:
        raise InputError(f"{what}: {_short(ref)} is over the {limits.max_image_bytes:,}-byte limit", 413)
    return resolved.read_bytes()


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: Any) -> str:
    return base64.b64encode(png_bytes(image)).decode()


# ------------------------------------------------------------------------------------ worker
class _Guarded:
    """A backend proxy for one request: every model call checks ``check`` first and passes a
    progress callback that checks it between denoising blocks (cooperative cancellation), and
    forwards progress to ``on_progress``."""

    def __init__(self, backend: Any, check: Callable[[], None], on_progress: Optional[Callable[[int, int], None]]):
        self._backend = backend
        self._check = check
        self._on_progress = on_progress
        self.name = backend.name
        self.accepts_codes = backend.accepts_codes

    def __getattr__(self, method: str) -> Any:
        fn = getattr(self._backend, method)
        if method not in ("chat", "understand", "generate_image", "edit_image", "generate_interleaved",
                          "encode_image", "decode_image"):
            return fn

        def call(*args: Any, **kw: Any) -> Any:
            self._check()
            if method not in ("encode_image", "decode_image"):  # these take no progress callback
                inner = kw.pop("progress", None)

                def progress(done: int, total: int) -> None:
                    self._check()
                    if inner is not None:
                        inner(done, total)
                    if self._on_progress is not None:
                        self._on_progress(done, total)

                kw["progress"] = progress
            out = fn(*args, **kw)
            self._check()
            return out

        return call


class ModelWorker:
    """One thread runs model work, one job at a time (never two forwards at once); at most
    ``limits.queue_size`` jobs wait behind it, the rest get ``Busy``. A job whose caller is
    cancelled (client gone) or whose deadline passes stops at its next progress check; it keeps
    its queue slot until the thread has really left the model."""

    def __init__(self, backend: Any, limits: Limits) -> None:
        self.backend = backend
        self.limits = limits
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lladauni-model")
        self._lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.completed = 0
        self.cancelled = 0
        self.rejected = 0
        self._recent: list[float] = []

    @property
    def capacity(self) -> int:
        return self.limits.queue_size + 1

    def retry_after(self) -> int:
        avg = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, int(avg * max(1, self.pending) + 0.999))

    def _admit(self) -> None:
        with self._lock:
            if self.pending >= self.capacity:
                self.rejected += 1
                raise Busy(self.retry_after())
            self.pending += 1

    def _release(self, _fut: Any = None) -> None:
        with self._lock:
            self.pending -= 1

    def check_room(self) -> None:
        """Busy now if the queue is full (e.g. before a stream's 200 is sent); takes no place."""
        self._admit()
        self._release()

    def _job(self, fn: Callable[[Any], Any], stop: threading.Event, deadline: float,
             on_progress: Optional[Callable[[int, int], None]]) -> Any:
        def check() -> None:
            if stop.is_set():
                raise Cancelled("the client went away")
            if time.monotonic() > deadline:
                raise Cancelled("the request timed out")

        check()
        t0 = time.perf_counter()
        try:
            return fn(_Guarded(self.backend, check, on_progress))
        finally:
            with self._lock:
                self._recent = (self._recent + [time.perf_counter() - t0])[-16:]

    async def run(self, fn: Callable[[Any], Any], *, timeout: Optional[float] = None,
                  on_progress: Optional[Callable[[int, int], None]] = None) -> Any:
        """Run ``fn(backend)`` on the model thread; raises ``Busy``, ``TimeoutError`` or
        ``asyncio.CancelledError`` (after asking the job to stop)."""
        self._admit()
        timeout = self.limits.timeout_s if timeout is None else timeout
        stop = threading.Event()
        try:
            fut = self._pool.submit(self._job, fn, stop, time.monotonic() + timeout, on_progress)
        except BaseException:
            self._release()
            raise
        fut.add_done_callback(self._release)
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except asyncio.TimeoutError:
            stop.set()
            fut.cancel()
            with self._lock:
                self.cancelled += 1
            raise TimeoutError(f"the request took longer than its {timeout:g} s timeout") from None
        except asyncio.CancelledError:
            stop.set()
            fut.cancel()
            with self._lock:
                self.cancelled += 1
            raise
        except Cancelled as exc:  # the deadline check inside the job fired first
            raise TimeoutError(str(exc)) from None
        with self._lock:
            self.completed += 1
        return out

    def run_sync(self, fn: Callable[[Any], Any], *, timeout: Optional[float] = None,
                 on_progress: Optional[Callable[[int, int], None]] = None) -> Any:
        """``run`` for callers without an event loop (LangChain tools)."""
        self._admit()
        stop = threading.Event()
        timeout = self.limits.timeout_s if timeout is None else timeout
        fut = self._pool.submit(self._job, fn, stop, time.monotonic() + timeout, on_progress)
        fut.add_done_callback(self._release)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            stop.set()
            fut.cancel()
            raise TimeoutError(f"the request took longer than its {timeout:g} s timeout") from None
        except Cancelled as exc:
            raise TimeoutError(str(exc)) from None

    def stats(self) -> dict:
        with self._lock:
            return {"pending": self.pending, "capacity": self.capacity, "completed": self.completed,
                    "cancelled": self.cancelled, "rejected": self.rejected}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
