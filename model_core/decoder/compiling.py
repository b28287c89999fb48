"""When and how the decoder runs through ``torch.compile``, and the eager fallback.

Default: compiled on CUDA, eager elsewhere. The switch, strongest first: the ``compile``
argument of ``ImageDecoder`` (True / False), then the environment variable
``LLADAUNI_DECODER_COMPILE`` (``1``/``on`` or ``0``/``off``/``eager``), then the device.

Mode: inductor's ``default`` unless ``compile_mode`` or ``LLADAUNI_DECODER_COMPILE_MODE`` says
otherwise. At 1024² one DiT step is hundreds of milliseconds of GEMMs and attention on the GPU
against a few milliseconds of kernel launches, so CUDA graphs ("reduce-overhead") would save
little while pinning a private pool of activations and overwriting outputs on each replay; what
compiling buys is the fused elementwise work (norms, modulation, RoPE, casts). The autotuning
modes may win a little on the GEMMs but make the first image of a process wait minutes, a bad
default for a library; ``max-autotune-no-cudagraphs`` is one variable away for long-lived servers.

If ``torch.compile`` is missing or fails (when called, or on the first run, where inductor
really compiles), ``CompiledOrEager`` warns once, naming the error and the switch, and runs the
eager function from then on. Out-of-memory errors are re-raised, not treated as compile failures.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Optional

import torch

__all__ = [
    "COMPILE_ENV",
    "COMPILE_MODE_ENV",
    "DEFAULT_COMPILE_MODE",
    "COMPILE_MODES",
    "CompiledOrEager",
    "compile_wanted",
    "compile_mode",
]

log = logging.getLogger(__name__)

COMPILE_ENV = "LLADAUNI_DECODER_COMPILE"
COMPILE_MODE_ENV = "LLADAUNI_DECODER_COMPILE_MODE"
DEFAULT_COMPILE_MODE = "default"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_ON = {"1", "on", "true", "yes", "compile"}
_OFF = {"0", "off", "false", "no", "eager"}


def compile_wanted(requested: Optional[bool], device: torch.device | str) -> bool:
    """Whether to compile: ``requested`` if given, else the environment variable, else CUDA."""
    if requested is not None:
        if not isinstance(requested, bool):
            raise TypeError(f"compile={requested!r}: expected True, False or None (auto: compiled on CUDA)")
        return requested
    raw = os.environ.get(COMPILE_ENV, "").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    if raw:
        raise ValueError(f"{COMPILE_ENV}={raw!r}: use 1/on to compile, 0/off/eager for eager, or unset it (auto)")
    return torch.device(device).type == "cuda"


def compile_mode(requested: Optional[str] = None) -> str:
    """The torch.compile mode: ``requested``, else the environment variable, else the default."""
    mode = requested or os.environ.get(COMPILE_MODE_ENV, "").strip() or DEFAULT_COMPILE_MODE
    if mode not in COMPILE_MODES:
        where = "compile_mode" if requested else COMPILE_MODE_ENV
        raise ValueError(f"{where}={mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    return mode


class CompiledOrEager:
    """Calls ``torch.compile(fn)``; on its first failure warns once and calls ``fn`` from then on.

    ``fn`` returns one tensor (in the CUDA-graph modes it is copied out of the graph's buffer).

    ``fullgraph`` makes a graph break an error (and so a fallback); tests use it, with a
    ``backend`` that records the graph, to prove the function compiles whole. ``dynamic=False``:
    one graph per input shape (grid size, batch).
    """

    def __init__(
        self, fn: Callable[..., Any], *, name: str, mode: str, fullgraph: bool = False, backend: Any = "inductor"
    ) -> None:
        self.fn = fn
        self.name = name
        self.mode = mode
        self.error: Optional[str] = None
        # CUDA-graph modes replay into the same output buffer: mark each call a new step, copy out
        self.cudagraphs = backend == "inductor" and mode in ("reduce-overhead", "max-autotune")
        self.compiled: Optional[Callable[..., Any]] = None
        try:
            # modes belong to inductor; another backend (tests: a graph recorder) takes none
            kw = {"mode": mode} if backend == "inductor" else {}
            self.compiled = torch.compile(fn, backend=backend, dynamic=False, fullgraph=fullgraph, **kw)
        except Exception as exc:  # torch.compile missing, or unsupported on this Python / platform
            self._give_up(exc)

    @property
    def active(self) -> bool:
        """True while the compiled function is in use (no failure so far)."""
        return self.compiled is not None

    def _give_up(self, exc: BaseException) -> None:
        self.compiled = None
        self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        msg = (
            f"torch.compile of the {self.name} failed ({self.error}); running it eagerly from now on. "
            f"Set {COMPILE_ENV}=0 (or pass compile=False) to skip compiling."
        )
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                if self.cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                    return self.compiled(*args).clone()
                return self.compiled(*args)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:
                self._give_up(exc)
        return self.fn(*args)
