"""Where the model runs: in-process (``LocalBackend``), behind an OpenAI-compatible server
(``HTTPBackend``: our own server or SGLang-Omni), or scripted for tests (``ScriptedBackend``).

All three take the keyword names of ``model_core.LLaDAUni`` (``steps``, ``gen_length``,
``image_h``, ``decoder_steps``, ``seed``, ``progress`` ...) and return its typed results
(``TextResult``, ``ImageResult``, ``InterleavedResult``). Images go in as PIL images or, where
``accepts_codes`` is true, as ``ImageCodes``. An ``ImageResult`` from a backend that cannot return
codes (HTTP) has an empty ``codes`` tensor and a 0x0 grid, and its pixels in ``image``.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

__all__ = ["Backend", "BackendError", "LocalBackend", "HTTPBackend", "ScriptedBackend", "backend_from_args",
           "require_default_model", "shapes_pixel_check"]


class BackendError(RuntimeError):
    """A model call failed in a way the agent should report, not crash on."""


@runtime_checkable
class Backend(Protocol):
    name: str
    accepts_codes: bool  # may images be passed as ImageCodes (no pixel round trip)?

    def chat(self, messages: Any, *, images: Sequence[Any] = (), system: Optional[str] = None, **options: Any): ...
    def understand(self, image: Any, question: str, **options: Any): ...
    def generate_image(self, prompt: str, **options: Any): ...
    def edit_image(self, image: Any, instruction: str, **options: Any): ...
    def generate_interleaved(self, prompt: str, *, images: Sequence[Any] = (), **options: Any): ...
    def encode_image(self, image: Any): ...
    def decode_image(self, codes: Any, h: int, w: int, **options: Any): ...


def _text_result(text: str, seconds: float = 0.0):
    from lladauni.model_core.generation.results import GenerationStats, TextResult

    return TextResult(text, [], [], GenerationStats(seconds=seconds))


def _pixel_result(image: Any, thinking: Optional[str] = None, seconds: float = 0.0):
    import torch

    from lladauni.model_core.generation.results import GenerationStats, ImageResult

    return ImageResult(torch.zeros(0, dtype=torch.long), 0, 0, image=image, thinking=thinking,
                       stats=GenerationStats(seconds=seconds))


# ---------------------------------------------------------------------------------------- local
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def _device_lock(device: str) -> threading.Lock:
    """One lock per device, shared by every LocalBackend in the process: two graph runs never
    run forwards on one GPU at the same time by accident."""
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def require_default_model(hint: str) -> Path:
    """The embedded default checkpoint, or ValueError saying it is missing and what to pass instead
    (for CLIs that fall back to it; checked before anything runs)."""
    from lladauni.model_core.checkpoint import CheckpointError, default_checkpoint

    try:
        return default_checkpoint()
    except CheckpointError as exc:
        raise ValueError(f"no model given and {str(exc).split(';')[0]}; {hint}") from None


def shapes_pixel_check(request: Any, image: Any) -> Optional[dict]:
    """The shapes world's pixel checker on a PIL ``image`` drawn for ``request``: ``{"passed": bool,
    "problems": [str, ...]}`` (the checker's differences, 'missing: a red circle at the top left',
    'unexpected: ...'), or None when the request is not a drawing request of the shapes world
    (``phrasing.parse_request`` reads no scene from it). No model is involved."""
    from lladauni.model_core.training import checker
    from lladauni.model_core.training.phrasing import parse_request

    scene = parse_request(request) if isinstance(request, str) else None
    if scene is None:
        return None
    problems = checker.diff_scenes(scene, checker.try_read_scene(image))
    return {"passed": not problems, "problems": problems}


def backend_from_args(server: Optional[str], checkpoint: Optional[str], *, api_key: Optional[str] = None,
                      device: Optional[str] = None, hint: str) -> Any:
    """What the CLIs run on: ``HTTPBackend(server)``, else ``LocalBackend(checkpoint)``, else the embedded
    default model (checked first; ValueError with ``hint`` when it is missing)."""
    if server:
        return HTTPBackend(server, api_key=api_key)
    if not checkpoint:
        require_default_model(hint)
    return LocalBackend(checkpoint or None, device=device)


class LocalBackend:
    """``model_core.LLaDAUni`` in this process, loaded once on first use.

    ``checkpoint``: a directory or Hugging Face repo id; with neither it nor ``model``, the
    embedded default model (the tiny shapes model, ``model_core.checkpoint.default_checkpoint()``).
    ``model``: an already loaded ``LLaDAUni`` to wrap. ``keep_loaded=False`` unloads after every
    call (one-shot CLI use); ``unload()`` frees the weights explicitly, and they reload on the next
    call unless the backend only wraps a ``model`` it was given. ``decode`` decides whether
    generated images are decoded to pixels.
    """

    name = "local"
    accepts_codes = True

    def __init__(
        self,
        checkpoint: Union[str, os.PathLike, None] = None,
        *,
        model: Any = None,
        device: Optional[str] = None,
        dtype: Any = None,
        decoder_variant: str = "turbo",
        keep_loaded: bool = True,
        decode: bool = True,
        experts: str = "auto",
        expert_offload: bool = False,
    ) -> None:
        self.checkpoint = checkpoint
        self.experts = experts
        self.expert_offload = expert_offload
        self.device = device
        self.dtype = dtype
        self.decoder_variant = decoder_variant
        self.keep_loaded = keep_loaded
        self.decode = decode
        self._model = model
        # it can load (again) what it drops: it loads itself, or it knows the checkpoint of the model it wraps
        self._reloadable = model is None or checkpoint is not None
        self._load_lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def uses_default_model(self) -> bool:
        """True when this backend loads the embedded default model (no checkpoint, no model given)."""
        return self.checkpoint is None and self._reloadable

    @property
    def world(self) -> Optional[str]:
        """The closed world the model declares (its lladauni.json ``world``: "shapes" for the embedded
        default model and any model the shapes build writes), or None for an open-world model, or one
        whose files are not on this disk (a Hugging Face repo id not yet loaded). Loads nothing: a loaded
        model answers itself, a wrapped one by the folder it was loaded from, otherwise the checkpoint
        folder (the embedded default's when none is given). Workflows marked ``requires: full`` refuse
        to run on a closed-world model, and ``pixel_check`` judges drawings only in the shapes world."""
        from lladauni.model_core.checkpoint import DEFAULT_CHECKPOINT_DIR
        from lladauni.model_core.pipeline import read_defaults

        if self._model is not None and hasattr(self._model, "world"):
            return self._model.world
        where = getattr(self._model, "checkpoint_dir", None) if self._model is not None else self.checkpoint
        if where is None and self.uses_default_model:
            where = DEFAULT_CHECKPOINT_DIR
        try:
            world = read_defaults(where).get("world") if where is not None else None
        except (OSError, ValueError, TypeError):
            return None
        return world if isinstance(world, str) else None

    def pixel_check(self, request: str, image: Any) -> Optional[dict]:
        """The pixel checker's verdict on ``image`` (PIL) for ``request`` on the shapes world
        (``shapes_pixel_check``); None on any other model, or when the request is not a shapes
        drawing request. Makes no model call."""
        return shapes_pixel_check(request, image) if self.world == "shapes" else None

    def load(self):
        """Load the model (once) and return it."""
        with self._load_lock:
            if self._model is None:
                from lladauni.model_core.pipeline import LLaDAUni

                comps = ("backbone", "image_tokenizer") + (("decoder",) if self.decode else ())
                self._model = LLaDAUni.from_pretrained(self.checkpoint, device=self.device, dtype=self.dtype,
                                                       components=comps, decoder_variant=self.decoder_variant,
                                                       experts=self.experts, expert_offload=self.expert_offload)
            return self._model

    def describe(self) -> dict:
        """The loaded checkpoint's name, image sizes and decoder (``LLaDAUni.describe``)."""
        return self.load().describe()

    def unload(self) -> None:
        """Drop the weights; they reload on the next call (from the checkpoint, or the embedded
        default model when none was given)."""
        if not self._reloadable:
            raise ValueError("this LocalBackend wraps a model it did not load; unload it where it was made")
        with self._load_lock:
            if self._model is None:
                return
            device = str(self._model.device)
            self._model = None
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _call(self, method: str, *args: Any, **kw: Any):
        model = self.load()
        with _device_lock(str(model.device)):
            try:
                out = getattr(model, method)(*args, **kw)
            finally:
                self.calls[method] += 1
        if not self.keep_loaded and self._reloadable:
            self.unload()
        return out

    def chat(self, messages, *, images=(), system=None, **options):
        # LLaDAUni.chat takes encoded images only (it does not encode pixels the way understand does)
        images = [im if hasattr(im, "codes") else self.encode_image(im) for im in images]
        return self._call("chat", messages, images=images, system=system, **options)

    def understand(self, image, question, **options):
        return self._call("understand", image, question, **options)

    def generate_image(self, prompt, **options):
        options.setdefault("decode", self.decode)
        return self._call("generate_image", prompt, **options)

    def edit_image(self, image, instruction, **options):
        options.setdefault("decode", self.decode)
        return self._call("edit_image", image, instruction, **options)

    def generate_interleaved(self, prompt, *, images=(), **options):
        options.setdefault("decode", self.decode)
        return self._call("generate_interleaved", prompt, images=images, **options)

    def encode_image(self, image):
        from lladauni.model_core.generation.prompts import ImageCodes

        t = self._call("encode_image", image)
        return ImageCodes(t.codes, t.h, t.w)

    def decode_image(self, codes, h, w, **options):
        return self._call("decode_image", codes, h, w, **options)


# ----------------------------------------------------------------------------------------- http
class _RetryConnect:
    """httpx transport wrapper: retries a request only when the connection could not be made
    (nothing reached the server, so a retry cannot run a model call twice)."""

    def __init__(self, inner: Any, retries: int, backoff: float) -> None:
        import httpx

        self._inner = inner
        self.retries = retries
        self.backoff = backoff
        self._errors = (httpx.ConnectError, httpx.ConnectTimeout)

    def handle_request(self, request):
        for attempt in range(self.retries + 1):
            try:
                return self._inner.handle_request(request)
            except self._errors:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._inner.close()


def _data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_from_b64(data: str):
    from PIL import Image

    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad server reply
        raise BackendError(f"the server returned an image that cannot be decoded: {exc}") from None


class HTTPBackend:
    """An OpenAI-compatible ``/v1/chat/completions`` server: ours, or SGLang-Omni's LLaDA2.0-Uni
    server (``flavor="sglang"``).

    Options travel as ``lladauni_agent.wire`` says: SGLang-Omni's names where it has one
    (``dllm_steps``, ``text_max_new_tokens``, ``decode_mode`` ...), our other options by name for
    our server; with ``flavor="sglang"`` an option SGLang-Omni lacks is refused by name, never
    dropped. ``model``: the id to send (None: none, the server's own). ``decoder`` ("turbo" / "normal") asks for that decoder (``decode_mode``); None leaves
    the server's. Replies are read in SGLang-Omni's shapes (``message.image.data``,
    ``message.segments``) and ours. Connection failures are retried ``retries`` times; timeouts and
    HTTP errors are not (the server may already be working on the request). ``transport``
    replaces the network (tests).
    """

    name = "http"
    accepts_codes = False
    _CALL_ONLY = {"progress", "generator"}  # arguments of the call, not options of the model

    def __init__(
        self,
        base_url: str,
        *,
        model: Optional[str] = None,
        api_key: Optional[str] = None,
        flavor: str = "lladauni",
        decoder: Optional[str] = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        transport: Any = None,
    ) -> None:
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected http:// or https://")
        if flavor not in ("lladauni", "sglang"):
            raise ValueError(f"flavor={flavor!r}: 'lladauni' or 'sglang'")
        if decoder not in (None, "turbo", "normal"):
            raise ValueError(f"decoder={decoder!r}: 'turbo', 'normal' or None (the server's)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.flavor = flavor
        self.decoder = decoder
        inner = transport if transport is not None else httpx.HTTPTransport()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=_RetryConnect(inner, retries, backoff),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self.calls: Counter[str] = Counter()

    def close(self) -> None:
        self._client.close()

    # -- request plumbing
    @staticmethod
    def _messages(messages: Any, images: Sequence[Any], system: Optional[str]) -> list[dict]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        out = [{"role": "system", "content": system}] if system else []
        for m in messages:
            if not isinstance(m, Mapping) or not isinstance(m.get("content", ""), str):
                raise ValueError(f"message {m!r}: expected {{'role': ..., 'content': str}}")
            out.append({"role": m.get("role", "user"), "content": m.get("content", "")})
        if images:
            users = [i for i, m in enumerate(out) if m["role"] == "user"]
            if not users:
                raise ValueError("images given but no user message to attach them to")
            m = out[users[-1]]
            for im in images:
                if not hasattr(im, "convert"):
                    raise TypeError(f"HTTPBackend sends pixels only; got {type(im).__name__} (use retokenize='roundtrip')")
            m["content"] = [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images] + [
                {"type": "text", "text": m["content"]}]
        return out

    def _post(self, what: str, task: str, messages: list[dict], modalities: list[str], options: Mapping[str, Any],
              **image_generation: Any) -> tuple[dict, float]:
        from .wire import encode_options

        opts = {k: v for k, v in options.items() if k not in self._CALL_ONLY}
        top, extra = encode_options(task, opts, flavor=self.flavor, decoder=self.decoder)
        extra.update(image_generation)
        body = {"messages": messages, "modalities": modalities, "stream": False, **top}
        if self.model is not None:  # None: whatever the server serves (ours and SGLang-Omni's accept no model)
            body = {"model": self.model, **body}
        if extra:
            body["image_generation"] = extra
        t0 = time.perf_counter()
        self.calls[what] += 1
        return self._reply(what, self._send(what, body)), time.perf_counter() - t0

    def _send(self, what: str, body: dict) -> Any:
        import httpx

        try:
            r = self._client.post("/v1/chat/completions", json=body)
        except httpx.TimeoutException as exc:
            raise BackendError(f"{what}: {self.base_url} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise BackendError(f"{what}: cannot reach {self.base_url}: {exc}") from None
        if r.status_code >= 400:
            raise BackendError(f"{what}: the server answered {r.status_code}: {_error_text(r)[:500]}")
        return r

    @staticmethod
    def _reply(what: str, r: Any) -> dict:
        try:
            return r.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise BackendError(f"{what}: the server's reply is not a chat completion: {r.text[:300]}") from None

    @staticmethod
    def _parts(message: Mapping[str, Any]) -> list[Union[str, Any]]:
        """Text and images of a reply, in order (strings and PIL images): SGLang-Omni's
        ``segments`` when present, else ``content`` (a string or parts) then ``image`` / ``images``."""
        if isinstance(message.get("segments"), list):
            return [_segment(s) for s in message["segments"]]
        parts: list = []
        content = message.get("content")
        if isinstance(content, str) and content:
            parts.append(content)
        elif isinstance(content, list):
            for p in content:
                if p.get("type") == "text" and p.get("text"):
                    parts.append(p["text"])
                elif p.get("type") == "image_url":
                    parts.append(_image_from_b64(p["image_url"]["url"]))
        extra = [message["image"]] if message.get("image") else (message.get("images") or [])
        for im in extra:
            data = im.get("data") or im.get("b64_json") or (im.get("image_url") or {}).get("url")
            if not data:
                raise BackendError(f"the server returned an image entry without data: {sorted(im)}")
            parts.append(_image_from_b64(data))
        return parts

    def _one_image(self, what: str, message: Mapping[str, Any], seconds: float):
        parts = self._parts(message)
        images = [p for p in parts if not isinstance(p, str)]
        if not images:
            raise BackendError(f"{what}: the server returned no image")
        thinking = "".join(p for p in parts if isinstance(p, str)) or None
        return _pixel_result(images[0], thinking=thinking, seconds=seconds)

    # -- the protocol
    def chat(self, messages, *, images=(), system=None, **options):
        msg, s = self._post("chat", "chat", self._messages(messages, images, system), ["text"], options)
        return _text_result("".join(p for p in self._parts(msg) if isinstance(p, str)), s)

    def understand(self, image, question, **options):
        from .wire import WireError

        template = options.pop("template", None)
        if template not in (None, "official"):
            raise WireError(f"template={template!r}: over HTTP the server chooses the prompt form", "template")
        return self.chat(question, images=[image], **options)

    def generate_image(self, prompt, **options):
        modalities = ["text", "image"] if options.get("mode") == "thinking" else ["image"]
        msg, s = self._post("generate_image", "image", self._messages(prompt, (), None), modalities, options)
        return self._one_image("generate_image", msg, s)

    def edit_image(self, image, instruction, **options):
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        msg, s = self._post("edit_image", "edit", self._messages(instruction, images, None), ["image"], options)
        return self._one_image("edit_image", msg, s)

    def generate_interleaved(self, prompt, *, images=(), **options):
        from lladauni.model_core.generation.results import GenerationStats, InterleavedResult

        msg, s = self._post("generate_interleaved", "interleaved", self._messages(prompt, images, None), ["text", "image"],
                            options, mode="interleaved")
        segs = [p if isinstance(p, str) else _pixel_result(p) for p in self._parts(msg)]
        return InterleavedResult(segs, GenerationStats(seconds=s))

    def encode_image(self, image):
        raise BackendError("HTTPBackend cannot encode images to codes (the server takes pixels); use retokenize='roundtrip'")

    def decode_image(self, codes, h, w, **options):
        raise BackendError("HTTPBackend cannot decode codes (the server returns pixels)")


def _segment(seg: Mapping[str, Any]) -> Union[str, Any]:
    """One of SGLang-Omni's interleaved segments -> its text or PIL image."""
    if seg.get("kind") == "text":
        return str(seg.get("data", ""))
    data = seg.get("data") or {}
    url = data.get("url") if isinstance(data, Mapping) else None
    if seg.get("kind") != "image" or not url:
        raise BackendError(f"the server returned a segment that is neither text nor an image: {str(seg)[:200]}")
    return _image_from_b64(url)


def _error_text(r: Any) -> str:
    """The message of an error reply: OpenAI's ``{"error": {"message"}}`` or FastAPI's ``{"detail"}``
    (SGLang-Omni's: a string, or pydantic's list of problems)."""
    try:
        body = r.json()
    except ValueError:
        return r.text
    if not isinstance(body, Mapping):
        return r.text
    err = body.get("error", body.get("detail", r.text))
    if isinstance(err, Mapping):
        return str(err.get("message", err))
    if isinstance(err, list):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', e)}" if isinstance(e, Mapping) else str(e)
                         for e in err)
    return str(err)


# ------------------------------------------------------------------------------------- scripted
Reply = Union[str, Sequence[str], Callable[[str], str]]


class ScriptedBackend:
    """A backend whose answers the caller chooses; for tests, demos and overhead benchmarks.

    ``replies`` maps ``chat``/``understand`` (and ``thinking`` for the thinking text of
    ``generate_image(mode="thinking")``) to a string, a list consumed in order (the last one
    repeats) or a function of the prompt/question. Images are small solid squares whose colour
    is a hash of the prompt and seed, with a matching 2x2 code grid, so reruns are identical.
    ``fail_on={"edit_image": 1}`` makes the first ``edit_image`` call raise ``BackendError``;
    ``delay={"understand": 5.0}`` sleeps in that call; ``journal`` appends one JSON line when
    each call starts and when it completes (flushed and fsynced), so another process can watch.
    """

    name = "scripted"
    accepts_codes = True

    def __init__(
        self,
        replies: Optional[Mapping[str, Reply]] = None,
        *,
        fail_on: Optional[Mapping[str, int]] = None,
        delay: Optional[Mapping[str, float]] = None,
        journal: Union[str, os.PathLike, None] = None,
        size: int = 64,
        interleaved: Optional[Sequence[str]] = None,
    ) -> None:
        self.replies = dict(replies or {})
        self.fail_on = dict(fail_on or {})
        self.delay = dict(delay or {})
        self.journal = Path(journal) if journal else None
        self.size = size
        self.interleaved = list(interleaved) if interleaved is not None else ["Once upon a time.", "<image>", "The end."]
        self.calls: list[tuple[str, str]] = []
        self._count: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _log(self, event: str, method: str, key: str) -> None:
        if self.journal is None:
            return
        with open(self.journal, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "method": method, "key": key}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _enter(self, method: str, key: str, progress: Optional[Callable[[int, int], None]]) -> None:
        with self._lock:
            self._count[method] += 1
            n = self._count[method]
        self._log("start", method, key)
        if progress is not None:
            progress(1, 2)
        if method in self.delay:
            time.sleep(self.delay[method])
        if self.fail_on.get(method) == n:
            self._log("failed", method, key)
            raise BackendError(f"scripted failure in {method} (call {n})")
        if progress is not None:
            progress(2, 2)

    def _done(self, method: str, key: str) -> None:
        with self._lock:
            self.calls.append((method, key))
        self._log("done", method, key)

    def _reply(self, method: str, key: str) -> str:
        r = self.replies.get(method, "yes" if method == "understand" else "ok")
        if callable(r):
            return r(key)
        if isinstance(r, str):
            return r
        with self._lock:
            used = sum(1 for m, _ in self.calls if m == method)
        return r[min(used, len(r) - 1)]

    def _image(self, key: str, seed: Any):
        import torch
        from PIL import Image

        from lladauni.model_core.generation.results import ImageResult

        digest = hashlib.sha256(f"{key}|{seed}".encode()).digest()
        img = Image.new("RGB", (self.size, self.size), tuple(digest[:3]))
        codes = torch.tensor([int.from_bytes(digest[i:i + 2], "big") % 16384 for i in range(0, 8, 2)])
        return ImageResult(codes, 2, 2, image=img)

    @staticmethod
    def _key(x: Any) -> str:
        if isinstance(x, str):
            return x
        if isinstance(x, Sequence):
            return "\n".join(m.get("content", "") if isinstance(m, Mapping) else str(m) for m in x)
        return str(x)

    def chat(self, messages, *, images=(), system=None, progress=None, **options):
        key = self._key(messages)
        self._enter("chat", key, progress)
        out = _text_result(self._reply("chat", key))
        self._done("chat", key)
        return out

    def understand(self, image, question, *, progress=None, **options):
        self._enter("understand", question, progress)
        out = _text_result(self._reply("understand", question))
        self._done("understand", question)
        return out

    def generate_image(self, prompt, *, progress=None, mode="normal", seed=None, **options):
        self._enter("generate_image", prompt, progress)
        out = self._image(prompt, seed)
        if mode == "thinking":
            out.thinking = self._reply("thinking", prompt)
        self._done("generate_image", prompt)
        return out

    def edit_image(self, image, instruction, *, progress=None, seed=None, **options):
        self._enter("edit_image", instruction, progress)
        out = self._image("edit:" + instruction, seed)
        self._done("edit_image", instruction)
        return out

    def generate_interleaved(self, prompt, *, images=(), progress=None, seed=None, max_frames=4, **options):
        from lladauni.model_core.generation.results import GenerationStats, InterleavedResult

        self._enter("generate_interleaved", prompt, progress)
        segs: list = []
        frames = 0
        for s in self.interleaved:
            if s == "<image>":
                if frames >= max_frames:
                    break
                segs.append(self._image(f"{prompt}#{frames}", seed))
                frames += 1
            else:
                segs.append(s)
        self._done("generate_interleaved", prompt)
        return InterleavedResult(segs, GenerationStats())

    def encode_image(self, image):
        from lladauni.model_core.generation.prompts import ImageCodes

        self._enter("encode_image", "", None)
        r = self._image(repr(image.convert("RGB").resize((1, 1)).getpixel((0, 0))), None)
        self._done("encode_image", "")
        return ImageCodes(r.codes, r.h, r.w)

    def decode_image(self, codes, h, w, **options):
        from PIL import Image

        self._enter("decode_image", "", None)
        self._done("decode_image", "")
        return Image.new("RGB", (32 * w, 32 * h), (128, 128, 128))
