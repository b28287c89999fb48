"""Quality of the shapes model on held-out scenes of the shapes world.

    python -m bench.shapes_eval                      # the embedded default model, 100 scenes per metric
    python -m bench.shapes_eval --n 20 --metrics understanding t2i
    python -m bench.shapes_eval --checkpoint DIR --json out.json --write-results

Drives any ``lladauni_agent`` Backend (``LocalBackend`` on the embedded default checkpoint unless
``--checkpoint`` is given) with the model options ``lladauni_agent.context.SHAPES_OPTIONS``. Images
are 96x96 (a 3x3 code grid). Scenes are examples ``0 .. n-1`` of ``ShapesWorld(seed)``
(``--seed``, default 1000; training draws its scenes from other seeds, though a scene of one or two
shapes may still coincide with one seen in training: the world has few of them). Every random choice
comes from an explicit seed: the scene, its questions and its edits from ``example_rng(seed, i)``,
and every model call for scene ``i`` from the generation seed ``S_i = seed + 64 * i`` (redraws use
``S_i + 1``, ``S_i + 2``, ...). A backend call that raises counts as wrong (and as an error).

Definitions (each metric is an accuracy, correct / total):

* **understanding**: each scene is rendered with ``shapes.render(scene, 96)`` and every question of
  ``shapes.questions`` is asked with ``backend.understand(image, question)``. An answer is correct
  when, after normalising (lower case; special tokens dropped; '-', '_' and runs of whitespace made
  one space; leading and trailing punctuation and whitespace stripped), its head equals the expected
  answer. The head is the longest answer phrase of the world (a position, a colour, yes, no) that the
  answer starts with and that is followed by a non-alphanumeric character or the end, else the leading
  run of letters and digits; so "Yes, there is one." is "yes", while "top left" is not "top" and "12"
  is not "1". Reported per question kind (count, color, position, presence) and overall.
  **captioning**: ``tasks.DESCRIBE_QUESTION``; correct when ``shapes.parse_caption(answer)`` has the
  scene's signature (same shapes, colours and cells, nothing more).
* **text-to-image**: ``backend.generate_image(caption, image_h=96, image_w=96, seed=S_i)``; correct
  when ``checker.scene_matches(scene, image)`` (exactly the requested shapes in the requested cells).
  The same with ``mode="thinking"`` (plan, then image) on its own line.
* **edits**: every edit of ``shapes.edits`` (recolor, move, add, remove; those that apply):
  ``backend.edit_image(render(edit.source, 96), edit.instruction, seed=S_i + j)``; correct when the
  output matches ``edit.target`` by the checker. Per edit kind and overall.
* **loop vs single shot**, on the same captions and seeds:
  (a) single shot: one ``generate_image`` at seed ``S_i``;
  (b) the loop: ``workflows/draw-check-refine.yaml`` through ``run_workflow`` with ``max_rounds`` 2
  and seed ``S_i`` (so its first draw is (a)'s image); its final image is judged by the checker;
  (c) single shot at equal model calls: ``k`` = the loop's mean number of model calls per prompt,
  rounded up; ``k`` draws at seeds ``S_i .. S_i + k - 1`` and the prompt counts as correct only if
  the LAST draw is (a blind redraw cannot pick a good one);
  (d) best of ``m = ceil(k / 2)`` draws with the model's own check: draw at ``S_i``, ``S_i + 1``, ...,
  ask each draw ``tasks.CHECK_QUESTION`` (the workflow's check) and keep the first the model answers
  yes to, else the last draw; stops at the first yes.
  Model calls are backend calls (chat, understand, generate_image, edit_image,
  generate_interleaved); forwards are the backbone forwards of their results (``result.stats.forwards``;
  0 for backends that do not report them). The gain is (b) minus (a) in percentage points. Draws at
  the same prompt and seed are made once and reused by (a), (c) and (d) with their calls and
  forwards counted each time they are used.
  **loop_thinking**: the same four with every draw in thinking mode (the workflow's ``draw`` node
  with ``mode: thinking``), where single-shot failures are mostly wrong codes from the backbone
  rather than decoder mistakes the image tokenizer cannot see.

Progress goes to stderr, the markdown table to stdout; ``--json OUT`` writes every figure and the
first wrong answers of each metric; ``--write-results`` writes ``bench/out/shapes_eval.{json,md}``
and replaces (or appends) the ``## shapes_eval`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from lladauni.model_core.training import checker, phrasing, puzzles, shapes, tasks

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "RESULTS.md"
OUT = ROOT / "out"
SECTION = "shapes_eval"
SIZE = 96
SEED_STRIDE = 64
WORKFLOW = "draw-check-refine"
METRICS = ("understanding", "t2i", "t2i_thinking", "colors", "edits", "loop", "loop_thinking", "reasoning")
PHRASINGS = ("train", "heldout")
"""Phrasing splits the language metrics are measured in (``phrasing``): frames training uses, frames it never sees."""
QUESTION_KINDS = ("count", "color", "position", "presence")
MODEL_CALLS = ("chat", "understand", "generate_image", "edit_image", "generate_interleaved")
_KEEP_WRONG = 5  # wrong answers kept per metric in the JSON, for diagnosis

__all__ = [
    "CountingBackend",
    "Tally",
    "answer_correct",
    "answer_head",
    "caption_correct",
    "evaluate",
    "format_markdown",
    "gen_seed",
    "machine_description",
    "main",
    "normalize_answer",
    "write_results",
]


# ------------------------------------------------------------------------------------- scoring
def normalize_answer(text: str) -> str:
    """Lower case, special tokens dropped, '-'/'_'/whitespace runs -> one space, outer punctuation stripped."""
    from lladauni.agent.prompts import clean

    t = clean(str(text)).lower().replace("centre", "center")
    t = re.sub(r"[\s_\-]+", " ", t)
    return t.strip(string.whitespace + string.punctuation)


_PHRASES = sorted(set(shapes.POSITIONS) | set(shapes.COLORS) | {"yes", "no"}, key=len, reverse=True)


def answer_head(norm: str) -> str:
    """The answer phrase a normalised answer starts with (longest first), else its first alphanumeric run."""
    for p in _PHRASES:
        if norm == p or (norm.startswith(p) and not norm[len(p)].isalnum()):
            return p
    m = re.match(r"[a-z0-9]+", norm)
    return m.group(0) if m else ""


def answer_correct(answer: str, expected: str) -> bool:
    """Whether a short answer gives the expected one (see the module docstring)."""
    return answer_head(normalize_answer(answer)) == normalize_answer(expected)


def caption_correct(answer: str, scene: shapes.Scene) -> bool:
    """Whether a caption names exactly the scene's shapes (kind, colour, cell)."""
    from lladauni.agent.prompts import clean

    try:
        return shapes.parse_caption(clean(str(answer))).signature() == scene.signature()
    except ValueError:
        return False


def gen_seed(seed: int, index: int) -> int:
    """The generation seed of scene ``index``: redraws use the next ``SEED_STRIDE - 1`` seeds."""
    return seed + SEED_STRIDE * index


def text_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    """The generator of the phrasings for scene ``index`` (``salt`` keeps questions, edits and requests apart)."""
    return np.random.default_rng([int(seed), int(index), 1000 + int(salt)])


def phrased_questions(seed: int, ex: shapes.Example, split: str | None) -> list[str]:
    """The questions of ``ex`` phrased in ``split``'s frames (None: the canonical questions)."""
    if split is None:
        return [q.question for q in ex.questions]
    rng = text_rng(seed, ex.index, 1)
    return [phrasing.question_text(q, rng, split) for q in ex.questions]


def phrased_describe(seed: int, ex: shapes.Example, split: str | None) -> str:
    return tasks.DESCRIBE_QUESTION if split is None else phrasing.describe_text(text_rng(seed, ex.index, 2), split)


def phrased_request(seed: int, ex: shapes.Example, split: str | None) -> str:
    return ex.caption if split is None else phrasing.request_text(ex.scene, text_rng(seed, ex.index, 3), split)


def phrased_edits(seed: int, ex: shapes.Example, split: str | None) -> list[str]:
    if split is None:
        return [e.instruction for e in ex.edits]
    rng = text_rng(seed, ex.index, 4)
    return [phrasing.edit_text(e, rng, split) for e in ex.edits]


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy (0, 0 for no trials)."""
    if total <= 0:
        return 0.0, 0.0
    p = correct / total
    d = 1 + z * z / total
    c = (p + z * z / (2 * total)) / d
    h = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / d
    return max(0.0, c - h), min(1.0, c + h)


@dataclass
class Tally:
    correct: int = 0
    total: int = 0
    errors: int = 0
    wrong: list = field(default_factory=list)

    def add(self, ok: bool, *, error: bool = False, detail: Any = None) -> None:
        self.total += 1
        self.correct += int(bool(ok))
        self.errors += int(error)
        if not ok and detail is not None and len(self.wrong) < _KEEP_WRONG:
            self.wrong.append(detail)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy, "errors": self.errors,
                "first_wrong": self.wrong}

    @staticmethod
    def merge(parts: Sequence["Tally"]) -> "Tally":
        t = Tally()
        for p in parts:
            t.correct += p.correct
            t.total += p.total
            t.errors += p.errors
            t.wrong += p.wrong[: max(0, _KEEP_WRONG - len(t.wrong))]
        return t


# ------------------------------------------------------------------------------------- backend
def _forwards(result: Any) -> int:
    return int(getattr(getattr(result, "stats", None), "forwards", 0) or 0)


class CountingBackend:
    """A Backend that passes every call through and counts model calls and backbone forwards."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.forwards = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in MODEL_CALLS:
            return attr

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            out = attr(*args, **kw)
            self.forwards += _forwards(out)
            return out

        return counted

    def take(self) -> tuple[int, int]:
        """(calls, forwards) since the last take."""
        out = (self.calls, self.forwards)
        self.calls = self.forwards = 0
        return out


_ERRORS = (RuntimeError, ValueError)  # BackendError, GenerationError, bad sizes: a wrong answer, not a crash


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


class _Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.t0 = label, total, 0, time.perf_counter()

    def step(self) -> None:
        self.done += 1
        _say(f"\r{self.label}: {self.done}/{self.total} ({time.perf_counter() - self.t0:.0f} s)",
             end="\n" if self.done == self.total else "")


def _image_opts(options: Mapping[str, Mapping[str, Any]]) -> dict:
    return {**options.get("image", {}), "image_h": SIZE, "image_w": SIZE}


# ------------------------------------------------------------------------------------- metrics
def eval_understanding(backend: Any, examples: Sequence[shapes.Example], options: Mapping, seed: int,
                       split: str | None = "train") -> dict:
    """Every question of every scene and a caption, phrased in ``split``'s frames (None: canonical)."""
    kinds = {k: Tally() for k in QUESTION_KINDS}
    cap = Tally()
    text = dict(options.get("text", {}))
    prog = _Progress(f"understanding ({split or 'canonical'} phrasings)", len(examples))
    for ex in examples:
        image = shapes.render(ex.scene, SIZE)
        s = gen_seed(seed, ex.index)
        for qa, question in zip(ex.questions, phrased_questions(seed, ex, split)):
            try:
                ans, err = backend.understand(image, question, seed=s, **text).text, False
            except _ERRORS as exc:
                ans, err = f"<error: {exc}>", True
            kinds[qa.kind].add(answer_correct(ans, qa.answer), error=err,
                               detail={"scene": ex.index, "question": question, "expected": qa.answer, "got": ans})
        describe = phrased_describe(seed, ex, split)
        try:
            ans, err = backend.understand(image, describe, seed=s, **text).text, False
        except _ERRORS as exc:
            ans, err = f"<error: {exc}>", True
        cap.add(caption_correct(ans, ex.scene), error=err,
                detail={"scene": ex.index, "question": describe, "expected": ex.caption, "got": ans})
        prog.step()
    overall = Tally.merge(list(kinds.values()))
    return {"phrasing": split or "canonical", "questions": {**{k: t.as_dict() for k, t in kinds.items()},
                                                             "overall": overall.as_dict()},
            "caption": cap.as_dict()}


def _draw(backend: Any, caption: str, seed: int, options: Mapping, mode: str = "normal") -> tuple[Any, bool]:
    """(result or None, error?) of one text-to-image call."""
    try:
        kw = {"mode": mode} if mode != "normal" else {}
        return backend.generate_image(caption, seed=seed, **kw, **_image_opts(options)), False
    except _ERRORS as exc:
        _say(f"\n  generate_image failed ({type(exc).__name__}: {exc})")
        return None, True


def _matches(scene: shapes.Scene, result: Any) -> bool:
    image = getattr(result, "image", None)
    return image is not None and checker.scene_matches(scene, image)


def _found(result: Any) -> str:
    image = getattr(result, "image", None)
    if image is None:
        return "<no image>"
    found = checker.try_read_scene(image)
    return "<unreadable: two shapes in one cell>" if found is None else shapes.caption(found)


def eval_t2i(backend: Any, examples: Sequence[shapes.Example], options: Mapping, seed: int, mode: str = "normal",
             split: str | None = None) -> dict:
    """One drawing per scene from its request phrased in ``split``'s frames (None: the canonical caption)."""
    all_ = Tally()
    by_n: dict[int, Tally] = {}
    label = "text-to-image" + (" (thinking)" if mode == "thinking" else "") + f" ({split or 'canonical'} phrasings)"
    prog = _Progress(label, len(examples))
    for ex in examples:
        request = phrased_request(seed, ex, split)
        r, err = _draw(backend, request, gen_seed(seed, ex.index), options, mode)
        ok = _matches(ex.scene, r)
        detail = {"scene": ex.index, "prompt": request, "expected": ex.caption, "drawn": _found(r)}
        if mode == "thinking" and r is not None:
            detail["thinking"] = getattr(r, "thinking", None)
        all_.add(ok, error=err, detail=detail)
        by_n.setdefault(len(ex.scene), Tally()).add(ok)
        prog.step()
    return {"phrasing": split or "canonical", "overall": all_.as_dict(),
            "by_shapes": {str(n): t.as_dict() for n, t in sorted(by_n.items())}}


def one_shape_scenes() -> list[shapes.Scene]:
    """All 216 scenes of one shape (every kind, colour and cell)."""
    return [shapes.Scene((shapes.Shape(k, c, p),)) for p in shapes.POSITIONS for c in shapes.COLORS for k in shapes.SHAPES]


def eval_colors(backend: Any, options: Mapping, seed: int) -> dict:
    """Colour fidelity: each of the 216 one-shape scenes drawn once from its canonical caption (seed + i), judged by
    the pixel checker; per colour and overall. These include training scenes: the question is whether the drawn
    image keeps the requested colour, which the decoder, not the backbone, decides."""
    per = {c: Tally() for c in shapes.COLORS}
    held = Tally()
    scenes = one_shape_scenes()
    prog = _Progress("colour fidelity (216 one-shape scenes)", len(scenes))
    for i, scene in enumerate(scenes):
        r, err = _draw(backend, shapes.caption(scene), seed + i, options)
        ok = _matches(scene, r)
        per[scene.shapes[0].color].add(ok, error=err, detail={"prompt": shapes.caption(scene), "drawn": _found(r)})
        if shapes.scene_split(scene) == "heldout":
            held.add(ok)
        prog.step()
    return {"colors": {c: t.as_dict() for c, t in per.items()}, "overall": Tally.merge(list(per.values())).as_dict(),
            "heldout_scenes": held.as_dict()}


def eval_edits(backend: Any, examples: Sequence[shapes.Example], options: Mapping, seed: int,
               split: str | None = None) -> dict:
    """Every edit of every scene, its instruction phrased in ``split``'s frames (None: canonical)."""
    kinds = {k: Tally() for k in shapes.EDIT_KINDS}
    opts = dict(options.get("edit", {}))
    prog = _Progress(f"edits ({split or 'canonical'} phrasings)", len(examples))
    for ex in examples:
        s = gen_seed(seed, ex.index)
        for j, (e, instruction) in enumerate(zip(ex.edits, phrased_edits(seed, ex, split))):
            try:
                r, err = backend.edit_image(shapes.render(e.source, SIZE), instruction, seed=s + j, **opts), False
            except _ERRORS as exc:
                _say(f"\n  edit_image failed ({type(exc).__name__}: {exc})")
                r, err = None, True
            kinds[e.kind].add(_matches(e.target, r), error=err,
                              detail={"scene": ex.index, "source": shapes.caption(e.source), "instruction": instruction,
                                      "expected": shapes.caption(e.target), "drawn": _found(r)})
        prog.step()
    return {"phrasing": split or "canonical", "kinds": {k: t.as_dict() for k, t in kinds.items()},
            "overall": Tally.merge(list(kinds.values())).as_dict()}


@dataclass
class _Draw:
    result: Any
    ok: bool
    error: bool
    calls: int
    forwards: int


def _check_image(backend: Any, result: Any) -> Any:
    """What the workflow's check would hand the backend: the codes when it takes them, else the pixels."""
    codes = getattr(result, "codes", None)
    if getattr(backend, "accepts_codes", False) and codes is not None and int(codes.numel()) > 0:
        return result.as_codes
    return result.image


def loop_workflow(mode: str = "normal") -> Any:
    """The bundled ``draw-check-refine`` workflow, its ``draw`` node in ``mode`` (normal | thinking)."""
    import dataclasses

    from lladauni.agent.workflows import load_workflow

    if mode not in ("normal", "thinking"):
        raise ValueError(f"mode={mode!r}: 'normal' or 'thinking'")
    wf = load_workflow(WORKFLOW)
    nodes = {**wf.spec.nodes, "draw": wf.spec.nodes["draw"].model_copy(update={"mode": mode})}
    return dataclasses.replace(wf, spec=wf.spec.model_copy(update={"nodes": nodes}))


def eval_loop(backend: Any, examples: Sequence[shapes.Example], options: Mapping, seed: int, max_rounds: int = 2,
              runs_dir: Optional[Path] = None, mode: str = "normal") -> dict:
    """(a) single shot, (b) draw-check-refine, (c) k blind draws (last kept), (d) best of k/2 by self-check;
    every draw in ``mode`` (normal | thinking)."""
    from lladauni.agent.artifacts import ArtifactStore
    from lladauni.agent.prompts import parse_verdict
    from lladauni.agent.workflows import run_workflow

    wf = loop_workflow(mode)

    counting = CountingBackend(backend)
    draws: dict[tuple[int, int], _Draw] = {}

    def draw(ex: shapes.Example, j: int) -> _Draw:
        if (ex.index, j) not in draws:
            counting.take()
            r, err = _draw(counting, ex.caption, gen_seed(seed, ex.index) + j, options, mode)
            calls, fwd = counting.take()
            draws[ex.index, j] = _Draw(r, _matches(ex.scene, r), err, calls, fwd)
        return draws[ex.index, j]

    n = len(examples)
    t0 = time.perf_counter()
    single = Tally()
    prog = _Progress("loop: (a) single shot", n)
    for ex in examples:
        d = draw(ex, 0)
        single.add(d.ok, error=d.error, detail={"scene": ex.index, "prompt": ex.caption, "drawn": _found(d.result)})
        prog.step()
    single_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    loop, agree = Tally(), Tally()
    loop_calls, loop_fwd, rounds = [], [], []
    prog = _Progress(f"loop: (b) {WORKFLOW}", n)
    tmp = None
    if runs_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="shapes_eval_")
        runs_dir = Path(tmp.name)
    text, edit = dict(options.get("text", {})), dict(options.get("edit", {}))
    try:
        for ex in examples:
            counting.take()
            run_dir = Path(runs_dir) / f"scene-{ex.index:04d}"
            res = run_workflow(wf, {"prompt": ex.caption, "max_rounds": max_rounds}, counting, run_dir=run_dir,
                               seed=gen_seed(seed, ex.index), text_options=text, image_options=_image_opts(options),
                               edit_options=edit)
            calls, fwd = counting.take()
            loop_calls.append(calls)
            loop_fwd.append(fwd)
            outputs = res.state.get("outputs") or {}
            ref = outputs.get("image")
            ok = False
            if res.status in ("done", "capped") and isinstance(ref, dict) and ref.get("png"):
                ok = checker.scene_matches(ex.scene, ArtifactStore(run_dir).load_image(ref))
            rounds.append(sum(1 for ev in res.state.get("timeline", []) if ev.get("node") == "fix"))
            loop.add(ok, error=res.status not in ("done", "capped"),
                     detail={"scene": ex.index, "prompt": ex.caption, "status": res.status, "error": res.error,
                             "run_dir": str(run_dir) if tmp is None else None})
            if outputs.get("passed") is not None:
                agree.add(bool(outputs["passed"]) == ok)
            prog.step()
    finally:
        if tmp is not None:
            tmp.cleanup()
    loop_s = time.perf_counter() - t0

    mean_calls = sum(loop_calls) / n if n else 0.0
    k = max(1, min(SEED_STRIDE, math.ceil(mean_calls - 1e-9)))
    t0 = time.perf_counter()
    last = Tally()
    last_calls, last_fwd = [], []
    prog = _Progress(f"loop: (c) {k} blind draws", n)
    for ex in examples:
        ds = [draw(ex, j) for j in range(k)]
        last.add(ds[-1].ok, error=ds[-1].error)
        last_calls.append(sum(d.calls for d in ds))
        last_fwd.append(sum(d.forwards for d in ds))
        prog.step()
    last_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    m = max(1, math.ceil(k / 2))
    best = Tally()
    best_calls, best_fwd = [], []
    prog = _Progress(f"loop: (d) best of {m} by self-check", n)
    for ex in examples:
        calls = fwd = 0
        kept = None
        question = tasks.CHECK_QUESTION.format(prompt=ex.caption)
        for j in range(m):
            d = draw(ex, j)
            calls, fwd, kept = calls + d.calls, fwd + d.forwards, d
            image = None if d.result is None else _check_image(backend, d.result)
            if image is None:
                continue
            counting.take()
            try:
                verdict = parse_verdict(counting.understand(image, question, seed=gen_seed(seed, ex.index), **text).text)
            except _ERRORS:
                verdict = None
            c, f = counting.take()
            calls, fwd = calls + c, fwd + f
            if verdict:
                break
        best.add(bool(kept and kept.ok), error=bool(kept and kept.error))
        best_calls.append(calls)
        best_fwd.append(fwd)
        prog.step()
    best_s = time.perf_counter() - t0

    def line(t: Tally, calls: list, fwd: list, seconds: float, **extra: Any) -> dict:
        return {**t.as_dict(), "mean_calls": sum(calls) / n if n else 0.0, "mean_forwards": sum(fwd) / n if n else 0.0,
                "seconds": seconds, **extra}

    return {
        "mode": mode,
        "max_rounds": max_rounds,
        "k": k,
        "m": m,
        "single": line(single, [draws[ex.index, 0].calls for ex in examples],
                       [draws[ex.index, 0].forwards for ex in examples], single_s),
        "loop": line(loop, loop_calls, loop_fwd, loop_s, mean_fix_rounds=sum(rounds) / n if n else 0.0,
                     self_verdict_agrees=agree.as_dict()),
        "equal_calls_last": line(last, last_calls, last_fwd, last_s),
        "best_of_self_check": line(best, best_calls, best_fwd, best_s),
        "gain_points": 100.0 * (loop.accuracy - single.accuracy),
    }


def eval_reasoning(backend: Any, n: int, seed: int, options: Mapping, runs_dir: Optional[Path] = None,
                   phrasing_split: Optional[str] = "train") -> dict:
    """Multi-step spatial questions (``puzzles.make_puzzle`` on held-out scenes, ``puzzle_rng(seed, i)``): answered
    directly (one ``understand`` of the start image with the whole question) and by the ``visual_reasoning``
    graph with ``sketch="steps"`` (each step an edit of the last sketch, then the question asked of the last
    sketch). Both judged by the short-answer rule against the answer read off the final scene. ``phrasing_split``:
    the steps and question in the grammar's training frames, or (None) canonical, for a model taught only those."""
    from lladauni.agent import Agent

    direct, sketched = Tally(), Tally()
    by_steps: dict[int, list[Tally]] = {}
    counting = CountingBackend(backend)
    calls = {"direct": 0, "sketch": 0}
    text, image_opts, edit = dict(options.get("text", {})), _image_opts(options), dict(options.get("edit", {}))
    tmp = tempfile.TemporaryDirectory(prefix="shapes_reasoning_") if runs_dir is None else None
    root = Path(tmp.name) if tmp is not None else Path(runs_dir)
    prog = _Progress("visual reasoning (direct, then sketched)", n)
    try:
        for i in range(n):
            p = puzzles.make_puzzle(puzzles.puzzle_rng(seed, i), split="heldout", phrasing_split=phrasing_split)
            image = shapes.render(p.source, SIZE)
            s = gen_seed(seed, i)
            counting.take()
            try:
                ans, err = counting.understand(image, p.text, seed=s, **text).text, False
            except _ERRORS as exc:
                ans, err = f"<error: {exc}>", True
            calls["direct"] += counting.take()[0]
            ok_d = answer_correct(ans, p.question.answer)
            direct.add(ok_d, error=err, detail={"puzzle": i, "question": p.text, "expected": p.question.answer, "got": ans})
            agent = Agent(counting, runs_dir=root, seed=s, text_options=text, image_options=image_opts, edit_options=edit)
            res = agent.run(p.text, images=[image], graph="visual_reasoning", sketch="steps",
                            max_iterations=len(p.steps), thread_id=f"puzzle-{seed}-{i:04d}")
            calls["sketch"] += counting.take()[0]
            ok_s = res.error is None and answer_correct(res.answer or "", p.question.answer)
            sketched.add(ok_s, error=res.error is not None,
                         detail={"puzzle": i, "question": p.text, "expected": p.question.answer, "got": res.answer,
                                 "error": res.error})
            pair = by_steps.setdefault(len(p.steps), [Tally(), Tally()])
            pair[0].add(ok_d)
            pair[1].add(ok_s)
            prog.step()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"phrasing": phrasing_split or "canonical", "direct": {**direct.as_dict(), "mean_calls": calls["direct"] / n},
            "sketched": {**sketched.as_dict(), "mean_calls": calls["sketch"] / n},
            "by_steps": {str(k): {"direct": v[0].as_dict(), "sketched": v[1].as_dict()} for k, v in sorted(by_steps.items())},
            "gain_points": 100.0 * (sketched.accuracy - direct.accuracy)}


# ------------------------------------------------------------------------------------- driver
def evaluate(backend: Any, *, n: int = 100, seed: int = 1000, options: Optional[Mapping] = None,
             metrics: Sequence[str] = METRICS, max_rounds: int = 2, runs_dir: Optional[Path] = None,
             split: str = "heldout", reasoning_phrasing: Optional[str] = "train") -> dict:
    """Every metric of ``metrics`` on scenes ``0 .. n-1`` of ``ShapesWorld(seed, split)`` (held-out scenes unless
    told otherwise); language metrics in training and held-out phrasings. JSON-able figures."""
    from lladauni.agent.context import SHAPES_OPTIONS

    options = dict(SHAPES_OPTIONS if options is None else options)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(METRICS)}")
    if n < 1:
        raise ValueError(f"n={n}: need at least one scene")
    examples = shapes.ShapesWorld(seed, split=split).examples(n)
    out: dict[str, Any] = {"config": {"n": n, "seed": seed, "split": split, "size": SIZE, "max_rounds": max_rounds,
                                      "backend": getattr(backend, "name", type(backend).__name__),
                                      "options": json.loads(json.dumps(options, default=str))}}
    for name in METRICS:
        if name not in metrics:
            continue
        t0 = time.perf_counter()
        if name == "understanding":
            r = eval_understanding(backend, examples, options, seed, "train")
            r["heldout_phrasing"] = eval_understanding(backend, examples, options, seed, "heldout")
        elif name == "t2i":
            r = eval_t2i(backend, examples, options, seed)
            r["phrasings"] = {sp: eval_t2i(backend, examples, options, seed, split=sp)["overall"] for sp in PHRASINGS}
        elif name == "t2i_thinking":
            r = eval_t2i(backend, examples, options, seed, mode="thinking")
        elif name == "colors":
            r = eval_colors(backend, options, seed)
        elif name == "edits":
            r = eval_edits(backend, examples, options, seed)
            r["heldout_phrasing"] = eval_edits(backend, examples, options, seed, "heldout")
        elif name == "reasoning":
            r = eval_reasoning(backend, n, seed, options, Path(runs_dir) / "reasoning" if runs_dir is not None else None,
                               reasoning_phrasing)
        else:
            mode = "thinking" if name == "loop_thinking" else "normal"
            sub = Path(runs_dir) / mode if runs_dir is not None and mode != "normal" else runs_dir
            r = eval_loop(backend, examples, options, seed, max_rounds, sub, mode=mode)
        r["seconds"] = time.perf_counter() - t0
        out[name] = r
    return out


def _pct(t: Mapping) -> str:
    return f"{100 * t['accuracy']:.1f}%"


def _row(label: str, t: Mapping, seconds: str = "") -> str:
    err = f" ({t['errors']} errors)" if t.get("errors") else ""
    return f"| {label} | {t['correct']}/{t['total']}{err} | {_pct(t)} | {seconds} |"


def format_markdown(results: Mapping, *, model: str = "", machine: str = "") -> str:
    """The ``## shapes_eval`` section of RESULTS.md for the figures of :func:`evaluate`."""
    c = results["config"]
    o = c["options"]
    lines = [
        "## shapes_eval: the shapes model on held-out scenes",
        "",
        f"{model or 'Model: ' + str(c['backend'])}; {c['n']} held-out scenes of world seed {c['seed']} (training uses "
        f"other seeds), {SIZE}x{SIZE} images (3x3 codes), options `SHAPES_OPTIONS` (text {o.get('text')}, "
        f"image {o.get('image')}, edit {o.get('edit')}). Definitions in `bench/shapes_eval.py`: short answers count when "
        "their normalised head equals the expected answer; captions when `parse_caption` gives the scene's signature; "
        "images when the pixel checker reads exactly the requested scene. Generation seed of scene i: seed + 64 i.",
        "",
        "| metric | correct | accuracy | seconds |",
        "|---|---|---|---|",
    ]
    if "understanding" in results:
        u = results["understanding"]
        for k in QUESTION_KINDS:
            lines.append(_row(f"understanding: {k} questions", u["questions"][k]))
        lines.append(_row("understanding: all questions", u["questions"]["overall"], f"{u['seconds']:.1f}"))
        lines.append(_row("understanding: captioning (`Describe the image.`)", u["caption"]))
    for key, label in (("t2i", "text-to-image"), ("t2i_thinking", "text-to-image, thinking mode")):
        if key in results:
            r = results[key]
            by = ", ".join(f"{n} shape{'s' if n != '1' else ''} {_pct(t)}" for n, t in r["by_shapes"].items())
            lines.append(_row(f"{label} ({by})", r["overall"], f"{r['seconds']:.1f}"))
    if "edits" in results:
        e = results["edits"]
        for k in shapes.EDIT_KINDS:
            lines.append(_row(f"edits: {k}", e["kinds"][k]))
        lines.append(_row("edits: all", e["overall"], f"{e['seconds']:.1f}"))
    for loop_key in ("loop", "loop_thinking"):
        if loop_key not in results:
            continue
        lp = results[loop_key]
        drawn = ", every draw in thinking mode" if lp.get("mode") == "thinking" else ""
        lines += [
            "",
            f"### Loop vs single shot{drawn} (same captions and seeds; loop = `workflows/{WORKFLOW}.yaml`, max_rounds "
            f"{lp['max_rounds']})",
            "",
            "(a) one draw at the scene's seed S_i; (b) the workflow at seed S_i (its first draw is (a)'s image), its "
            "final image judged by the pixel checker; (c) k = the loop's mean model calls rounded up: k blind draws at "
            "seeds S_i .. S_i+k-1, correct only if the last one is (a blind redraw cannot pick); (d) up to m = ceil(k/2) "
            "draws, each asked the workflow's check question, keeping the first the model says yes to (else the last). "
            "Model calls are backend calls, forwards the backbone forwards their results report; a draw at one prompt "
            "and seed is made once and counted wherever it is used.",
            "",
            "| method | correct | accuracy | model calls / prompt | forwards / prompt | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in (("single", "(a) single shot"), ("loop", "(b) draw-check-refine"),
                           ("equal_calls_last", f"(c) {lp['k']} blind draws, last kept"),
                           ("best_of_self_check", f"(d) best of {lp['m']} draws by the model's own check")):
            t = lp[key]
            err = f" ({t['errors']} errors)" if t.get("errors") else ""
            lines.append(f"| {label} | {t['correct']}/{t['total']}{err} | {_pct(t)} | {t['mean_calls']:.2f} | "
                         f"{t['mean_forwards']:.1f} | {t['seconds']:.1f} |")
        agree = lp["loop"]["self_verdict_agrees"]
        lines += [
            "",
            f"Gain of the loop over single shot: {lp['gain_points']:+.1f} points; over (c) "
            f"{100 * (lp['loop']['accuracy'] - lp['equal_calls_last']['accuracy']):+.1f}; over (d) "
            f"{100 * (lp['loop']['accuracy'] - lp['best_of_self_check']['accuracy']):+.1f}. Mean fix rounds "
            f"{lp['loop']['mean_fix_rounds']:.2f}; the loop's own final verdict agreed with the pixel checker on "
            f"{agree['correct']}/{agree['total']} prompts.",
        ]
    lines.append("")
    if machine:
        lines += [f"_Measured {dt.date.today().isoformat()} on {machine}._", ""]
    return "\n".join(lines)


def _get(r: Mapping, path: str) -> Optional[Mapping]:
    cur: Any = r
    for key in path.split("."):
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


# (label, path into one seed's results, aim or None)
HEADLINES: tuple[tuple[str, str, Optional[float]], ...] = (
    *((f"understanding, training phrasings: {k}", f"understanding.questions.{k}", None) for k in QUESTION_KINDS),
    ("understanding, training phrasings: all questions", "understanding.questions.overall", 0.95),
    *((f"understanding, held-out phrasings: {k}", f"understanding.heldout_phrasing.questions.{k}", None) for k in QUESTION_KINDS),
    ("understanding, held-out phrasings: all questions", "understanding.heldout_phrasing.questions.overall", 0.85),
    ("captioning, training phrasings", "understanding.caption", None),
    ("captioning, held-out phrasings", "understanding.heldout_phrasing.caption", None),
    ("text-to-image, canonical captions", "t2i.overall", 0.92),
    ("text-to-image, training phrasings", "t2i.phrasings.train", None),
    ("text-to-image, held-out phrasings", "t2i.phrasings.heldout", 0.80),
    ("text-to-image, thinking mode (single shot)", "t2i_thinking.overall", 0.75),
    *((f"colour fidelity: {c} (36 scenes)", f"colors.colors.{c}", None) for c in shapes.COLORS),
    ("colour fidelity: all 216 one-shape scenes", "colors.overall", 0.97),
    *((f"edits, canonical: {k}", f"edits.kinds.{k}", None) for k in shapes.EDIT_KINDS),
    ("edits, canonical: all", "edits.overall", 0.85),
    ("edits, held-out phrasings: all", "edits.heldout_phrasing.overall", None),
    ("loop, normal mode: (a) single shot", "loop.single", None),
    ("loop, normal mode: (b) draw-check-refine", "loop.loop", None),
    ("loop, normal mode: (c) blind redraws at equal calls, last kept", "loop.equal_calls_last", None),
    ("loop, normal mode: (d) best of draws by the model's own check", "loop.best_of_self_check", None),
    ("loop, thinking mode: (a) single shot", "loop_thinking.single", None),
    ("loop, thinking mode: (b) draw-check-refine", "loop_thinking.loop", None),
    ("loop, thinking mode: (c) blind redraws at equal calls, last kept", "loop_thinking.equal_calls_last", None),
    ("visual reasoning: answered directly", "reasoning.direct", None),
    ("visual reasoning: sketched step by step (visual_reasoning, sketch=steps)", "reasoning.sketched", None),
)
GAINS: tuple[tuple[str, str, str, float], ...] = (
    ("normal-mode loop over (c) blind redraws at equal calls", "loop.loop", "loop.equal_calls_last", 5.0),
    ("normal-mode loop over (a) single shot", "loop.loop", "loop.single", 5.0),
    ("thinking-mode loop over (a) single shot", "loop_thinking.loop", "loop_thinking.single", 0.0),
    ("visual reasoning: sketched over direct", "reasoning.sketched", "reasoning.direct", 10.0),
)


def pooled(runs: Sequence[Mapping]) -> dict:
    """Headline figures pooled over seeds: {label: {correct, total, accuracy, ci, per_seed, aim}} and the gains
    {label: {points, per_seed, aim}} (points of the pooled accuracies; per seed, each seed's own)."""
    rows: dict[str, dict] = {}
    for label, path, aim in HEADLINES:
        parts = [t for t in (_get(r, path) for r in runs) if t is not None]
        if not parts:
            continue
        c, n = sum(t["correct"] for t in parts), sum(t["total"] for t in parts)
        calls = [t["mean_calls"] for t in parts if "mean_calls" in t]
        rows[label] = {"correct": c, "total": n, "accuracy": c / n if n else 0.0, "ci": wilson(c, n),
                       "per_seed": [t["accuracy"] for t in parts], "aim": aim,
                       "mean_calls": sum(calls) / len(calls) if calls else None}
    gains: dict[str, dict] = {}
    for label, a, b, aim in GAINS:
        pairs = [(_get(r, a), _get(r, b)) for r in runs]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if not pairs:
            continue
        acc = lambda ts: sum(t["correct"] for t in ts) / max(1, sum(t["total"] for t in ts))  # noqa: E731
        gains[label] = {"points": 100 * (acc([x for x, _ in pairs]) - acc([y for _, y in pairs])),
                        "per_seed": [100 * (x["accuracy"] - y["accuracy"]) for x, y in pairs], "aim": aim}
    return {"rows": rows, "gains": gains}


def format_pooled(runs: Sequence[Mapping], *, model: str = "", machine: str = "") -> str:
    """The ``## shapes_eval`` section for several seeds: pooled figures with 95% Wilson intervals."""
    pool = pooled(runs)
    c = runs[0]["config"]
    seeds = ", ".join(str(r["config"]["seed"]) for r in runs)
    lines = [
        "## shapes_eval: the shapes model on held-out scenes and phrasings",
        "",
        f"{model or 'Model: ' + str(c['backend'])}; world seeds {seeds}, {c['n']} scenes each from the held-out part "
        "of the scene space (`shapes.scene_split`: no training stream ever draws them, `tests/test_held_out.py`), "
        f"{SIZE}x{SIZE} images, options `SHAPES_OPTIONS`. Held-out phrasings use only frames training never sees "
        "(`phrasing.py`, `Frame.held_out`); training phrasings are the grammar's training frames. Definitions in "
        "`bench/shapes_eval.py`; colour fidelity draws each of the 216 one-shape scenes once per seed. Counts are "
        "pooled over the seeds; the interval is the 95% Wilson score interval; per seed in the last column.",
        "",
        "| metric | correct | accuracy | 95% interval | aim | per seed | model calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in pool["rows"].items():
        lo, hi = row["ci"]
        aim = f">= {100 * row['aim']:.0f}%" if row["aim"] is not None else ""
        calls = f"{row['mean_calls']:.2f}" if row["mean_calls"] is not None else ""
        per = " / ".join(f"{100 * a:.1f}" for a in row["per_seed"])
        lines.append(f"| {label} | {row['correct']}/{row['total']} | {100 * row['accuracy']:.1f}% | "
                     f"{100 * lo:.1f}-{100 * hi:.1f}% | {aim} | {per} | {calls} |")
    if pool["gains"]:
        lines += ["", "| gain | points (pooled) | per seed | aim |", "|---|---|---|---|"]
        for label, g in pool["gains"].items():
            per = " / ".join(f"{p:+.1f}" for p in g["per_seed"])
            aim = f">= +{g['aim']:.0f}" if g["aim"] else ""
            lines.append(f"| {label} | {g['points']:+.1f} | {per} | {aim} |")
    lines.append("")
    if machine:
        lines += [f"_Measured {dt.date.today().isoformat()} on {machine}._", ""]
    return "\n".join(lines)


def write_results(md: str, path: Path = RESULTS, section: str = SECTION) -> None:
    """Replace the ``## <section>`` section of RESULTS.md (up to the next ``## `` heading), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    head = f"## {section}"
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == head or ln.startswith((head + ":", head + " "))), None)
    section = md.strip("\n").splitlines()
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section + ([""] if end < len(lines) else [])
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def machine_description() -> str:
    """The machine a result was measured on: GPU (when there is one), CPU, cores, torch and its threads."""
    import torch

    dev = f"{torch.cuda.get_device_name(0)} GPU, " if torch.cuda.is_available() else ""
    return (f"{dev}{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main(argv: Optional[Sequence[str]] = None, backend: Any = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shapes_eval",
                                 description="Quality of the shapes model on held-out scenes (see the module docstring).")
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the embedded default model)")
    ap.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    ap.add_argument("--n", type=int, default=100, help="held-out scenes per metric and seed (default: 100)")
    ap.add_argument("--seed", type=int, default=None, help="one world seed (same as --seeds SEED)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="world seeds of the held-out scenes, pooled with 95%% intervals (default: 1000 2000 3000)")
    ap.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    ap.add_argument("--max-rounds", type=int, default=2, help="fix rounds of the loop (default: 2)")
    ap.add_argument("--keep-runs", metavar="DIR",
                    help="keep the loop's workflow runs (reports) here (loop_thinking's under DIR/thinking)")
    ap.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    ap.add_argument("--write-results", action="store_true",
                    help="write bench/out/shapes_eval.{json,md} and the '## shapes_eval' section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.keep_runs and Path(args.keep_runs).is_dir() and any(Path(args.keep_runs).iterdir()):
        print(f"error: --keep-runs {args.keep_runs} is not empty (each scene's run needs a fresh directory)", file=sys.stderr)
        return 2

    model = ""
    load_s = 0.0
    if backend is None:
        from lladauni.agent.backend import LocalBackend
        from lladauni.model_core.checkpoint import CheckpointError, default_checkpoint

        if args.checkpoint is None:
            try:
                ckpt = default_checkpoint()
            except CheckpointError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            model = f"Embedded default model (`{ckpt.relative_to(ROOT.parent) if ROOT.parent in ckpt.parents else ckpt}`)"
        else:
            model = f"Checkpoint `{args.checkpoint}`"
        backend = LocalBackend(args.checkpoint, device=args.device)
        t0 = time.perf_counter()
        _say("loading the model ...")
        backend.load()
        load_s = time.perf_counter() - t0
    seeds = args.seeds or ([args.seed] if args.seed is not None else [1000, 2000, 3000])
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        keep = Path(args.keep_runs) / f"seed-{seed}" if args.keep_runs else None
        r = evaluate(backend, n=args.n, seed=seed, metrics=args.metrics, max_rounds=args.max_rounds, runs_dir=keep)
        r["config"].update(model=model, load_seconds=load_s, seconds=time.perf_counter() - t0)
        runs.append(r)
    machine = machine_description()
    md = format_pooled(runs, model=model, machine=machine)
    print(md)
    results = {"seeds": seeds, "runs": runs, "pooled": pooled(runs)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.write_results:
        OUT.mkdir(exist_ok=True)
        (OUT / f"{SECTION}.json").write_text(json.dumps(results, indent=2, default=str))
        (OUT / f"{SECTION}.md").write_text(md)
        write_results(md)
        _say(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
