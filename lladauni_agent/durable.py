"""What makes a run durable beyond LangGraph's checkpoints: a journal of model calls, a state file
that is checked before it is trusted, and one-line reasons when a run cannot resume.

**The call journal.** LangGraph saves a node's writes in the background after the node returns,
and the next checkpoint after that, so a process killed between a model call's return and those
writes reruns the node, and with it the call. ``CallJournal`` wraps the backend: every call made
inside a graph task is written to ``run_dir/calls/`` (one safetensors file: the result's tensors
and PNG bytes, its structure as JSON, a digest over both) before the node sees the result. A node
rerun after a kill finds its calls there (same task id, same request fingerprint, same
occurrence) and gets the saved results instead of calling the model again. A journal file that
fails its digest is ignored and the call is made again, never trusted.

**The state file.** ``open_state_db`` refuses a file that is not SQLite, fails SQLite's integrity
check, or was not written by lladauni (a marker table), naming the file and what to do. Every
checkpoint blob carries a SHA-256 of its bytes (``ChecksummedSerializer``), so corruption inside a
blob, which SQLite's own check cannot see, is found when the blob is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["CallJournal", "ChecksummedSerializer", "ResumeError", "StateFileError", "open_state_db",
           "write_atomic", "JOURNALED_METHODS", "STATE_FORMAT"]

JOURNALED_METHODS = ("chat", "understand", "generate_image", "edit_image", "generate_interleaved",
                     "encode_image", "decode_image")
STATE_FORMAT = 1  # lladauni_state.format: checkpoint blobs carry a SHA-256 (ChecksummedSerializer)
_MAGIC = b"LLU1"


class StateFileError(ValueError):
    """The state file cannot be trusted: not SQLite, corrupt, foreign, or a blob failing its checksum."""


class ResumeError(ValueError):
    """A run that cannot resume, with the reason and what to do, in one line."""

    def __init__(self, thread_id: str, reason: str, todo: str) -> None:
        super().__init__(f"cannot resume run {thread_id!r}: {reason}; {todo}")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` so that a kill at any point leaves the old file or the new one, never a part."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the state file -------------------------------------------------------------------------------

def open_state_db(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` (created if missing) that has passed SQLite's integrity check and
    carries lladauni's marker; raises ``StateFileError`` naming the file otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        _check_state_db(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_state_db(conn: sqlite3.Connection, path: Path) -> None:
    todo = "move it away or pass another state file (runs kept in it cannot resume)"
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise StateFileError(f"state file {path} is not a readable SQLite database ({exc}); {todo}") from None
    if verdict != ["ok"]:
        raise StateFileError(f"state file {path} is corrupt (SQLite integrity check: {'; '.join(verdict[:3])}); {todo}")
    if "lladauni_state" in tables:
        row = conn.execute("SELECT format FROM lladauni_state").fetchone()
        if row is None or row[0] != STATE_FORMAT:
            raise StateFileError(f"state file {path} has state format {row[0] if row else None}, this lladauni "
                                 f"reads format {STATE_FORMAT}; {todo}")
        return
    if tables:  # a file without tables (new, or its first write rolled back) becomes a state file
        kind = ("written by an older lladauni (no checksums)" if tables <= {"checkpoints", "writes"}
                else f"not a lladauni state file (tables: {', '.join(sorted(tables)[:5])})")
        raise StateFileError(f"state file {path} is {kind}; {todo}")
    with conn:  # one statement, so a kill leaves the marker whole or absent
        conn.execute(f"CREATE TABLE lladauni_state AS SELECT {int(STATE_FORMAT)} AS format")


class ChecksummedSerializer:
    """LangGraph's serializer protocol around another serializer: each blob is stored as
    ``LLU1 + sha256(type, data) + data`` and checked when read."""

    def __init__(self, inner: Any, where: str) -> None:
        self.inner = inner
        self.where = where

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, data = self.inner.dumps_typed(obj)
        return kind, _MAGIC + hashlib.sha256(kind.encode() + data).digest() + data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        blob = bytes(blob or b"")
        head, digest, body = blob[:4], blob[4:36], blob[36:]
        if head != _MAGIC or hashlib.sha256(kind.encode() + body).digest() != digest:
            raise StateFileError(f"state file {self.where}: a checkpoint fails its checksum (the file was changed "
                                 "or damaged); move it away or pass another state file")
        return self.inner.loads_typed((kind, body))


# -- the call journal -----------------------------------------------------------------------------

def _fingerprint(obj: Any, h: Any) -> None:
    """Feed a request's content into ``h``: tensors, arrays and images by their bytes, containers in order."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):  # by its bytes: a long array's repr elides the middle
        h.update(f"N{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif hasattr(obj, "tobytes") and hasattr(obj, "mode") and hasattr(obj, "size"):  # PIL image
        h.update(f"I{obj.mode}{obj.size}".encode())
        h.update(obj.tobytes())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"D{type(obj).__name__}".encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            _fingerprint(getattr(obj, f.name), h)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _fingerprint(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _fingerprint(v, h)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def _result_classes() -> dict[str, type]:
    from lladauni.model_core.generation.prompts import ImageCodes
    from lladauni.model_core.generation.results import (GenerationStats, ImageResult, InterleavedResult,
                                                         TextResult)
    from lladauni.model_core.generation.sampler import StepRecord

    return {c.__name__: c for c in (GenerationStats, TextResult, ImageResult, InterleavedResult, StepRecord, ImageCodes)}


class _Unjournalable(Exception):
    """A result holding something the journal does not store; the call simply is not journaled."""


def _encode(obj: Any, blobs: dict) -> Any:
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        name = f"t{len(blobs)}"
        blobs[name] = obj.detach().cpu().contiguous()
        return {"$t": "tensor", "blob": name}
    if hasattr(obj, "save") and hasattr(obj, "mode") and hasattr(obj, "size"):  # PIL image, stored losslessly
        buf = io.BytesIO()
        obj.save(buf, format="PNG")
        name = f"t{len(blobs)}"
        blobs[name] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        return {"$t": "png", "blob": name}
    if isinstance(obj, (list, tuple)):
        return {"$t": "list", "items": [_encode(v, blobs) for v in obj]}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"$t": "dict", "items": {k: _encode(v, blobs) for k, v in obj.items()}}
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in _result_classes():
        return {"$t": "dc", "cls": type(obj).__name__,
                "fields": {f.name: _encode(getattr(obj, f.name), blobs) for f in dataclasses.fields(obj) if f.init}}
    raise _Unjournalable(type(obj).__name__)


def _decode(obj: Any, blobs: dict) -> Any:
    if not isinstance(obj, dict):
        return obj
    kind = obj["$t"]
    if kind == "tensor":
        return blobs[obj["blob"]].clone()
    if kind == "png":
        from PIL import Image

        with Image.open(io.BytesIO(blobs[obj["blob"]].numpy().tobytes())) as im:
            im.load()
            return im.copy()
    if kind == "list":
        return [_decode(v, blobs) for v in obj["items"]]
    if kind == "dict":
        return {k: _decode(v, blobs) for k, v in obj["items"].items()}
    cls = _result_classes()[obj["cls"]]  # only the known result classes are ever revived
    return cls(**{k: _decode(v, blobs) for k, v in obj["fields"].items()})


def _digest(structure: str, blobs: dict) -> str:
    h = hashlib.sha256(structure.encode())
    for name in sorted(blobs):
        _fingerprint(blobs[name], h)
    return h.hexdigest()


def _task_key() -> Optional[tuple[str, Any]]:
    """(checkpoint namespace, config object) of the graph task running this call, or None outside one."""
    try:
        from langgraph.config import get_config

        cfg = get_config()
    except (ImportError, RuntimeError):
        return None
    ns = cfg.get("configurable", {}).get("checkpoint_ns")
    return (ns, cfg) if ns else None


class CallJournal:
    """A backend whose calls inside graph tasks are journaled under ``root`` (see the module doc).
    Everything else (attributes, calls outside a graph) passes through to ``inner``."""

    def __init__(self, inner: Any, root: os.PathLike | str) -> None:
        self.inner = inner
        self.root = Path(root)
        self.replayed = 0  # calls answered from the journal in this process
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[Any, dict[str, int]]] = {}  # ns -> (config of this execution, occurrences)

    def __getattr__(self, name: str) -> Any:
        inner = getattr(self.inner, name)
        if name in JOURNALED_METHODS and callable(inner):
            return lambda *args, **kw: self._call(name, inner, args, kw)
        return inner

    def _slot(self, method: str, args: tuple, kw: dict) -> Optional[Path]:
        task = _task_key()
        if task is None:
            return None
        ns, cfg = task
        h = hashlib.sha256(method.encode())
        _fingerprint([list(args), {k: v for k, v in kw.items() if k != "progress"}], h)
        request = h.hexdigest()
        with self._lock:
            seen_cfg, counts = self._seen.get(ns, (None, {}))
            if seen_cfg is not cfg:  # a new execution of this task (first run, or a rerun): count afresh
                counts = {}
            n = counts.get(request, 0)
            counts[request] = n + 1
            self._seen[ns] = (cfg, counts)
        name = hashlib.sha256(f"{ns}\0{request}\0{n}".encode()).hexdigest()[:32]
        return self.root / f"{name}.safetensors"

    def _call(self, method: str, fn: Callable, args: tuple, kw: dict) -> Any:
        slot = self._slot(method, args, kw)
        if slot is not None and slot.is_file():
            saved = self._read(slot)
            if saved is not _MISSING:
                self.replayed += 1
                return saved
        out = fn(*args, **kw)
        if slot is not None:
            self._write(slot, out)
        return out

    def _read(self, slot: Path) -> Any:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(slot), framework="pt") as f:
                meta = f.metadata() or {}
                blobs = {name: f.get_tensor(name) for name in f.keys()}
            if meta.get("digest") != _digest(meta.get("result", ""), blobs):
                return _MISSING
            return _decode(json.loads(meta["result"]), blobs)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return _MISSING  # damaged: never trusted, the call is made again

    def _write(self, slot: Path, out: Any) -> None:
        from safetensors.torch import save

        blobs: dict = {}
        try:
            structure = json.dumps(_encode(out, blobs))
        except _Unjournalable:
            return
        write_atomic(slot, save(blobs, metadata={"result": structure, "digest": _digest(structure, blobs)}))


_MISSING = object()
