"""Closed worlds a checkpoint may declare (``lladauni.json`` "world"), and what each one refuses.

A closed-world model knows a small, fixed world (the embedded default model: one to three coloured
shapes on a 3x3 grid). A request outside it is answered with what is outside and what the model can
draw or see, instead of a silent wrong drawing. ``LLaDAUni`` asks this module; the world's own rules
live beside the data that defines it (``training.phrasing`` for the shapes world)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["WORLDS", "OutOfWorldError", "scope_problem", "question_answer"]


class OutOfWorldError(ValueError):
    """A request that lies outside the closed world the checkpoint declares (``lladauni.json``
    "world"): the message says what is outside and what the model can draw or see."""


_YES_NO_OPENERS = frozenset(("is", "are", "do", "does", "did", "can", "could", "was", "were", "has", "have", "will",
                             "would", "should", "may"))


def _shapes_scope(request: str, kind: str) -> Optional[str]:
    from .training.phrasing import scope_problem as shapes_scope

    return shapes_scope(request, edit=kind == "edit")


def _shapes_question(question: str) -> Optional[str]:
    from .training.phrasing import outside_words, world_summary

    found = outside_words(question)
    if not found:
        return None
    words = re.findall(r"[a-z]+", question.lower())
    reason = f"'{', '.join(found)}' is outside what this model can see. {world_summary()}"
    return f"no: {reason}" if words and words[0] in _YES_NO_OPENERS else reason


@dataclass(frozen=True)
class _World:
    scope: Callable[[str, str], Optional[str]]  # (request, "draw" | "edit") -> why it is outside, or None
    question: Callable[[str], Optional[str]]  # question -> the answer when it names something outside, or None


_RULES: dict[str, _World] = {"shapes": _World(_shapes_scope, _shapes_question)}

WORLDS: tuple[str, ...] = tuple(_RULES)
"""The worlds a checkpoint may declare."""


def scope_problem(world: Optional[str], request: Any, kind: str = "draw") -> Optional[str]:
    """Why a drawing request (``kind="draw"``) or edit instruction (``kind="edit"``) lies outside
    ``world``, ending with what the model can draw; None when it may lie inside, when ``world`` is None
    (an open-world model), or when the request is no text (the task itself refuses that)."""
    if world is None or not isinstance(request, str):
        return None
    return _RULES[world].scope(request, kind)


def question_answer(world: Optional[str], question: Any) -> Optional[str]:
    """The answer to a question about an image of ``world`` that names something the world lacks ("Is
    there a black hexagon?" -> "no: ..." and what the model can see; other questions: what it can see),
    given without a model call; None when the question names nothing outside (or ``world`` is None)."""
    if world is None or not isinstance(question, str):
        return None
    return _RULES[world].question(question)
