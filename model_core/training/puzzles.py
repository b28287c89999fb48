"""Multi-step spatial questions about a shapes scene: apply two or three moves, recolourings or removals,
then ask what is where.

    "Move the red circle to the center. Then make the blue square green. What colour is the shape in the center?"

Each step is one edit of the scene the previous steps left (named as that scene has it: a recoloured shape is
named by its new colour), phrased by the grammar (``phrasing.edit_text``); the question is about the final
scene and is chosen to hang on the steps (the cell a shape moved to or from, a recoloured shape, the count
after a removal). The answer is read off the final scene, so it is exact. The shapes model is never trained
on these questions: they measure whether sketching each step (``visual_reasoning``) beats answering at once.

Imports only numpy (through ``shapes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import phrasing
from .shapes import QA, Edit, Scene, check_split, make_edit, position_phrase, sample_scene

__all__ = ["Puzzle", "make_puzzle", "puzzle_rng"]

STEP_KINDS = ("move", "recolor", "remove")


@dataclass(frozen=True)
class Puzzle:
    """The start scene, its steps (edits in order), the question about the end scene, and the whole text."""

    source: Scene
    steps: tuple[Edit, ...]
    instructions: tuple[str, ...]
    question: QA
    text: str

    @property
    def target(self) -> Scene:
        return self.steps[-1].target


def puzzle_rng(seed: int, index: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng([int(seed), int(index), 7])


def _question(steps: list[Edit], end: Scene, rng: np.random.Generator) -> QA:
    """A question whose answer depends on the steps."""
    last = steps[-1]
    options: list[QA] = []
    for e in steps:
        if e.kind == "remove":
            options.append(QA("count", "How many shapes are there?", str(len(end)), ("count_all",)))
        moved = e.kind == "move"
        cell = e.value if moved else e.shape.position
        there = end.at(cell)
        if there is not None:
            options.append(QA("color", f"What color is the shape {position_phrase(cell)}?", there.color, ("color_at", cell)))
        if moved and end.at(e.shape.position) is None:
            s = e.shape
            options.append(QA("presence", f"Is there a {s.name} {position_phrase(s.position)}?", "no",
                              ("is_there_at", s.color, s.kind, s.position)))
    final = [s for s in end.shapes if s.position in {last.value, last.shape.position}] or list(end.shapes)
    s = final[int(rng.integers(len(final)))]
    options.append(QA("position", f"Where is the {s.name}?", s.position, ("where", s.color, s.kind)))
    return options[int(rng.integers(len(options)))]


def make_puzzle(rng: np.random.Generator, split: Optional[str] = "heldout", n_steps: Optional[int] = None,
                phrasing_split: Optional[str] = "train") -> Puzzle:
    """A puzzle on a scene of ``split`` with two or three steps (``n_steps``); texts phrased in
    ``phrasing_split``'s frames (None: the canonical instructions and questions)."""
    check_split(split)
    n = int(rng.integers(2, 4)) if n_steps is None else int(n_steps)
    if not 1 <= n <= 4:
        raise ValueError(f"n_steps={n_steps}: 1 to 4")
    while True:
        scene = sample_scene(rng, min_shapes=2, split=split)
        steps: list[Edit] = []
        current = scene
        for _ in range(n):
            e = None
            for _ in range(8):
                e = make_edit(current, STEP_KINDS[int(rng.integers(len(STEP_KINDS)))], rng)
                if e is not None:
                    break
            if e is None:
                break
            steps.append(e)
            current = e.target
        if len(steps) == n:
            break
    qa = _question(steps, current, rng)
    if phrasing_split is None:
        instructions = [e.instruction for e in steps]
        question = qa.question
    else:
        instructions = [phrasing.edit_text(e, rng, phrasing_split) for e in steps]
        question = phrasing.question_text(qa, rng, phrasing_split)
        if not question.rstrip().endswith("?"):  # "Count the shapes." is a request, not the question a reader ends on
            question = qa.question
    parts = [instructions[0].rstrip(".!? ") + "."]
    parts += ["Then " + (i[:1].lower() + i[1:] if i[1:2].islower() else i).rstrip(".!? ") + "." for i in instructions[1:]]
    question = question.rstrip(".!? ") + "?"
    return Puzzle(scene, tuple(steps), tuple(instructions), qa, " ".join(parts + [question]))
