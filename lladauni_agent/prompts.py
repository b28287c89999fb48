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


# Words a claim may use without the request using them: grammar, and the vocabulary of looking at a
# picture ("the image shows", "is visible", "in the corner"), which states no fact about the content.
# Negations ("not", "nor", "without") are content: a claim that negates needs a request that does.
_STOPWORDS = frozenset("""
    the and are was were has have had its their there here this that these those which who what where
    for from with into onto upon than then also both each every any all some only just very
    but yet can could should must will would may might shall does did done being been
    image picture photo drawing canvas scene view frame shows show shown showing depicts depict depicted
    contains contain containing includes include including displays display displayed features feature
    visible appears appear appearing present seen see drawn located placed positioned position sits sit
    sitting lies lie lying stands stand painted rendered exactly clearly single one shape object thing
    coloured colored corner cell edge side area region part spot place
    draw paint sketch please make create generate render want need give put you
""".split())
_SYNONYMS = {"center": "centre", "middle": "centre", "color": "colour", "upper": "top", "lower": "bottom"}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """The content words of ``text``: alphabetic words of three or more letters that are not stopwords,
    lower-cased, made singular, and with centre/center/middle, colour/color, upper/top and lower/bottom
    each mapped to one form."""
    words = (w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in _STOPWORDS)
    return {_SYNONYMS.get(_singular(w), _singular(w)) for w in words}


_CLAUSES = re.compile(r"[,;]|\b(?:and|plus|with|also|as well as)\b", flags=re.I)


def faithful_claims(claims: list[str], request: str) -> list[str]:
    """The claims every content word of which (``content_words``) the request also uses, in order;
    ``[request]`` when none is left. A model that writes claims can invent facts ("a blue circle"
    for a request of "a blue square"); checking an image against an invented fact punishes a right
    image, so such a claim is dropped.

    Words are compared clause by clause (clauses end at commas, semicolons, "and", "plus", "with"):
    each clause of a claim must find all its content words in one clause of the request, so a claim
    cannot join the colour of one requested shape to the kind of another ("a blue circle" from "a red
    circle and a blue square"). A clause of the request of which the kept claims say less than half the content words is added as a
    claim of its own."""
    asked = [content_words(part) for part in _CLAUSES.split(request)]

    def faithful(claim: str) -> bool:
        return all(any(content_words(part) <= words for words in asked) for part in _CLAUSES.split(claim))

    kept = [c for c in claims if faithful(c)]
    if not kept:
        return [request]
    # what the kept claims leave out of the request is checked as the request words it ("a red circle and a
    # blue square": a lone claim about the circle still leaves the square to check)
    said = set().union(*(content_words(c) for c in kept))
    for part in _CLAUSES.split(request):
        words, text = content_words(part), " ".join(part.split()).strip(" .")
        if words and 2 * len(words & said) < len(words) and text:  # less than half of it said (synonyms differ)
            kept.append(text)
            said |= words
    return kept


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
