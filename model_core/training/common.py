"""Shared training plumbing: per-step seeding, resumable stage state, progress, loss records.

Every stage derives its randomness for step ``s`` from ``(seed, stage, s)`` alone (numpy and torch
generators made fresh each step), so a run resumed from a saved step draws exactly what an
uninterrupted run would. State files are written atomically (temp file + rename) and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..image_config import PreprocessorConfig
from ..image_preprocess import to_pixel_values
from .shapes import Scene, render

__all__ = ["SAVE_EVERY", "StageLog", "StageRunner", "scene_pixels", "step_rngs", "stage_seed"]

#: Steps between saves of a stage's resumable state (when the stage does not say).
SAVE_EVERY = 250


def stage_seed(seed: int, stage: str, step: int = 0) -> int:
    """A 63-bit seed from (seed, stage name, step)."""
    h = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def step_rngs(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    s = stage_seed(seed, stage, step)
    return np.random.default_rng(s), torch.Generator().manual_seed(s)


def scene_pixels(scenes: list[Scene], size: int, pre: PreprocessorConfig) -> torch.Tensor:
    """Rendered scenes as packed tokenizer pixel rows (N * g * g, 3 * p * p), the tokenizer's input."""
    return torch.cat([to_pixel_values(render(s, size), pre) for s in scenes])


def scene_images(scenes: list[Scene], size: int) -> torch.Tensor:
    """Rendered scenes as (N, 3, size, size) float in [-1, 1] (the VAE's input range)."""
    arr = np.stack([np.asarray(render(s, size), dtype=np.float32) for s in scenes])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0).contiguous()


@dataclass
class StageLog:
    """Per-step losses of a stage (each a dict of named floats) and wall time."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0

    def series(self, name: str = "loss") -> list[float]:
        return [d[name] for d in self.losses if name in d]

    def mean(self, name: str = "loss", first: Optional[int] = None, last: Optional[int] = None) -> float:
        s = self.series(name)
        if first is not None:
            s = s[:first]
        if last is not None:
            s = s[-last:]
        return float(np.mean(s)) if s else float("nan")


class StageRunner:
    """Runs ``step_fn(step) -> dict of losses`` from the saved step to ``total`` steps, saving the
    modules, the optimiser and the log every ``save_every`` steps and at the end."""

    def __init__(
        self,
        name: str,
        work_dir: Optional[str | os.PathLike],
        modules: dict[str, torch.nn.Module],
        optimizer: torch.optim.Optimizer,
        total: int,
        *,
        save_every: Optional[int] = None,
        progress: bool = True,
        scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    ) -> None:
        self.name = name
        self.path = Path(work_dir) / f"{name}.state.pt" if work_dir is not None else None
        self.modules = modules
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.total = total
        self.save_every = save_every if save_every is not None else SAVE_EVERY
        self.progress = progress
        self.log = StageLog()
        self.start = 0

    def resume(self) -> int:
        """Load the saved state when there is one; returns the step to continue from."""
        if self.path is None or not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        for key, mod in self.modules.items():
            mod.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.log = StageLog(json.loads(state["log"]), float(state["seconds"]))
        self.start = int(state["step"])
        return self.start

    def save(self, step: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "log": json.dumps(self.log.losses),
            "seconds": self.log.seconds,
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def run(self, step_fn: Callable[[int], dict], *, resume: bool = True) -> StageLog:
        start = self.resume() if resume else 0
        bar = None
        if self.progress and start < self.total:
            from tqdm import tqdm

            bar = tqdm(total=self.total, initial=start, desc=self.name, leave=True, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for step in range(start, self.total):
                losses = step_fn(step)
                self.log.losses.append({k: round(float(v), 6) for k, v in losses.items()})
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()})
                if (step + 1) % self.save_every == 0 and step + 1 < self.total:
                    self.log.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save(step + 1)
        finally:
            if bar is not None:
                bar.close()
        self.log.seconds += time.perf_counter() - t0
        if start < self.total:
            self.save(self.total)
        return self.log


def cosine_lr(optimizer: torch.optim.Optimizer, total: int, warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to 10% of the base rate."""
    import math

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
