"""The allow-list of Python functions that ``call`` nodes may run.

A workflow names a function; only functions the host registered here (or passed to
``load_workflow``/``run_workflow`` as ``functions=``) can be called. No import path in a YAML file
is ever resolved.

Registered by default (``BUILTIN_FUNCTIONS``; JSON in, JSON out): the reply parsers the Python
graphs use (``prompts.py``) and two small helpers the bundled graph workflows need:

* ``clean(text)`` -> the text without special/image tokens, spaces collapsed per line;
* ``parse_claims(text, limit=4)`` -> one claim per line (bullets stripped, duplicates dropped);
* ``parse_verdict(text)`` -> ``true``/``false`` from a leading yes/no, ``null`` when neither;
* ``parse_action(text)`` -> ``{"action": "answer"|"sketch"|"none", "body": ...}`` (``ANSWER:``/``SKETCH:``);
* ``verdict_score(items, verdicts)`` -> ``{"score", "passed", "total", "failed"}``: the share of
  verdicts that are ``true``, and the items whose verdict is not (in order);
* ``keep_best(best, image, score)`` -> ``{"image", "score"}``: ``image`` when ``score`` beats
  ``best.score`` (ties keep the earlier one), else ``best``;
* ``concat(first, second)`` -> the two lists joined (``null`` counts as empty);
* ``value(value)`` -> ``value`` unchanged: names an expression's result once (``nodes.N.value``);
* ``split_steps(question)`` -> ``{"steps": [...], "question": ...}``: a multi-step visual question cut
  into the steps to sketch and the final question (``lladauni_agent.reasoning.split_steps``);
* ``require(value, message)`` -> ``value`` when it is truthy, else the node fails with ``message``
  (a plain error for a missing input, say).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from .. import prompts
from ..reasoning import split_steps

__all__ = ["register_function", "unregister_function", "registered_functions", "BUILTIN_FUNCTIONS"]

_REGISTRY: dict[str, Callable[..., Any]] = {}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")


def register_function(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Allow ``call`` nodes to run ``fn`` as ``name``. ``fn`` gets the node's ``args`` as keyword
    arguments (rendered) and returns JSON-able data. Returns ``fn`` (usable as a decorator helper)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"function name {name!r}: letters, digits, '_' and '.', starting with a letter or '_'")
    if not callable(fn):
        raise TypeError(f"register_function({name!r}, ...): {fn!r} is not callable")
    _REGISTRY[name] = fn
    return fn


def unregister_function(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"no function {name!r} is registered")
    del _REGISTRY[name]


def registered_functions(extra: Optional[Mapping[str, Callable[..., Any]]] = None) -> dict[str, Callable[..., Any]]:
    """The global registry plus ``extra`` (``extra`` wins)."""
    for name, fn in (extra or {}).items():
        if not isinstance(name, str) or not _NAME.match(name) or not callable(fn):
            raise ValueError(f"functions: {name!r} -> {fn!r} is not a valid name and callable")
    return {**_REGISTRY, **(extra or {})}


# ------------------------------------------------------------------------------- built-ins
def _parse_claims(text: str, limit: int = 4) -> list[str]:
    return prompts.parse_claims(text, limit)


def _parse_action(text: str) -> dict[str, str]:
    action, body = prompts.parse_action(text)
    return {"action": action, "body": body}


def _verdict_score(items: list[Any], verdicts: list[Any]) -> dict[str, Any]:
    if len(items) != len(verdicts):
        raise ValueError(f"verdict_score: {len(items)} items but {len(verdicts)} verdicts")
    passed, score = prompts.verdict_tally(verdicts)
    return {"score": score, "passed": passed, "total": len(verdicts),
            "failed": [x for x, v in zip(items, verdicts) if v is not True]}


def _keep_best(best: Optional[Mapping[str, Any]], image: Any, score: float) -> dict[str, Any]:
    if best and best.get("score") is not None and score <= best["score"]:
        return dict(best)
    return {"image": image, "score": score}


def _concat(first: Optional[list[Any]], second: Optional[list[Any]]) -> list[Any]:
    return list(first or []) + list(second or [])


def _split_steps(question: str) -> dict[str, Any]:
    steps, final = split_steps(question)
    return {"steps": steps, "question": final}


def _require(value: Any, message: str) -> Any:
    if not value:
        raise ValueError(str(message))
    return value


BUILTIN_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "clean": prompts.clean, "parse_claims": _parse_claims, "parse_verdict": prompts.parse_verdict,
    "parse_action": _parse_action, "verdict_score": _verdict_score, "keep_best": _keep_best, "concat": _concat,
    "value": lambda value: value, "split_steps": _split_steps, "require": _require,
}
_REGISTRY.update(BUILTIN_FUNCTIONS)
