"""Prompts the graphs send to the model, and the parsers that read its answers.

LLaDA2.0-Uni has no tool calling, so replies are plain text read with tolerant parsers: a line
per claim, a leading yes/no for a verdict, ``SKETCH:`` / ``ANSWER:`` tags for visual reasoning
(Visual Sketchpad's THOUGHT/ACTION/ANSWER convention, reduced to what one model can do).
"""

from __future__ import annotations

import re
from typing import Literal, Optional, Sequence

PLAN = (
    "Write a short visual plan for an image of: {prompt}\n"
    "Describe the subject, composition, colours and style in two to four sentences."
)
DRAW_FROM_PLAN = "{prompt}. {plan}"

CLAIMS = (
    "List the separate facts that an image made for the following request must show. "
    "Write one short statement per line that can be checked by looking at the image.\n"
    "Request: {prompt}"
)
INSPECT = (
    'Look at the image. Is this statement true of it: "{claim}"? '
    "Answer yes or no first, then give one short reason."
)
EDIT = "Change the image so that: {failed}."
REDRAW = "{prompt}. Make sure that: {failed}."

REASON = (
    "Answer the question by thinking step by step. If a drawing would help, write SKETCH: followed by "
    "what to draw. When you know the answer, write ANSWER: followed by the answer.\n"
    "Question: {question}\n{notes}"
)
OBSERVE = "This sketch was drawn to help answer the question: {question}\nWhat does it show that helps?"
FINAL = (
    "Answer the question now in one or two sentences, starting with ANSWER:.\n"
    "Question: {question}\n{notes}"
)

_SPECIAL = re.compile(r"<\|[^|>]*\|>|<IMAGE\d+>|<[a-z_]*boi>|<eoi>")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def clean(text: str) -> str:
    """Drop special and image tokens the decoder may leave in text; collapse spaces per line."""
    lines = (" ".join(_SPECIAL.sub(" ", ln).split()) for ln in text.splitlines())
    return "\n".join(ln for ln in lines if ln)


def _usable(line: str) -> bool:
    return 3 <= len(line) <= 300 and sum(c.isalpha() for c in line) >= 3


def parse_claims(text: str, limit: int) -> list[str]:
    """One claim per non-empty line, bullets and numbers stripped, duplicates dropped."""
    out: list[str] = []
    for line in clean(text).splitlines():
        c = _BULLET.sub("", line).strip().rstrip(".")
        if _usable(c) and c.lower() not in (o.lower() for o in out):
            out.append(c)
    return out[:limit]


def parse_verdict(text: str) -> Optional[bool]:
    """True/False from a leading yes/no (after cleaning); None when the answer says neither."""
    words = re.findall(r"[a-z]+", clean(text).lower())
    if not words:
        return None
    if words[0] in ("yes", "true", "correct"):
        return True
    if words[0] in ("no", "false", "incorrect", "not"):
        return False
    return None


def parse_action(text: str) -> tuple[Literal["answer", "sketch", "none"], str]:
    """The first ``ANSWER:`` or ``SKETCH:`` in the reply (answer wins when both appear on one line)."""
    t = clean(text)
    m = re.search(r"\b(ANSWER|SKETCH)\s*:\s*(.*)", t, flags=re.S)
    if not m:
        return "none", t
    kind = "answer" if m.group(1) == "ANSWER" else "sketch"
    body = m.group(2).strip()
    if kind == "sketch":
        body = body.split("ANSWER:")[0].strip().splitlines()[0] if body else ""
    return kind, body


def verdict_tally(verdicts: Sequence[Optional[bool]]) -> tuple[int, float]:
    """(how many verdicts are a yes, their share of all); an unclear verdict (None) is not a yes."""
    passed = sum(1 for v in verdicts if v is True)
    return passed, passed / max(1, len(verdicts))


def notes_block(notes: list[str]) -> str:
    return "\n".join(notes[-8:])
