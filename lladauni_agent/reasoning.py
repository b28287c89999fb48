"""Reading a multi-step visual question without the model.

``split_steps`` cuts a question such as "Move the red circle to the center. Then make the blue
square green. What color is the shape in the center?" into the steps to sketch, one edit each,
and the question to ask of the last sketch. The ``visual_reasoning`` graph's ``sketch="steps"``
mode and the bundled ``visual-reasoning-sketch`` workflow (as the ``split_steps`` function of a
``call`` node) use it.
"""

from __future__ import annotations

import re

__all__ = ["split_steps", "CONNECTIVES"]

CONNECTIVES = ("after that", "then", "next", "finally")
"""Words that only order the steps; dropped from the front of a step or of the question."""

_SENTENCE = re.compile(r"[^.!?;]*[.!?;]+|[^.!?;]+$")
_INNER_SPLIT = re.compile(r"\s*,?\s+and\s+then\s+|\s*,\s*then\s+", re.IGNORECASE)
_LEADING = re.compile(r"^(?:\s*(?:" + "|".join(CONNECTIVES) + r")\b\s*[,:]?|\s*[,:])+\s*", re.IGNORECASE)


def _tidy(text: str) -> str:
    """Connectives and commas off the front, spaces collapsed, the first letter upper case."""
    t = " ".join(_LEADING.sub("", text).split()).strip(" ,:")
    return t[:1].upper() + t[1:]


def _step(text: str) -> list[str]:
    """One step sentence as steps: split at 'and then' / ', then', each tidied and ending in '.'."""
    body = text.strip().rstrip(".!;").strip()
    out = []
    for part in _INNER_SPLIT.split(body):
        t = _tidy(part).rstrip(" ,.!;")
        if any(c.isalpha() for c in t):
            out.append(t + ".")
    return out


def split_steps(question: str) -> tuple[list[str], str]:
    """(steps, final question) of a multi-step question.

    Sentences ending in '.', '!' or ';' before a final sentence ending in '?' are steps; a leading
    'Then', 'Next', 'After that' or 'Finally' and commas (or colons) are dropped, 'and then' (or ', then')
    inside a sentence splits it, and every step comes back capitalised and ending in '.'. A
    question with no steps (one sentence, no final '?', or a '?' before the end) comes back as
    ``([], question)``, stripped.
    """
    if not isinstance(question, str):
        raise TypeError(f"split_steps: question must be a string, got {type(question).__name__}")
    text = " ".join(question.split())
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    if len(sentences) < 2 or not sentences[-1].endswith("?") or any(s.endswith("?") for s in sentences[:-1]):
        return [], text
    steps = [t for s in sentences[:-1] for t in _step(s)]
    if not steps:
        return [], text
    return steps, _tidy(sentences[-1])
