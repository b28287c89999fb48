"""The allow-list of Python functions that ``call`` nodes may run.

A workflow names a function; only functions the host registered here (or passed to
``load_workflow``/``run_workflow`` as ``functions=``) can be called. No import path in a YAML file
is ever resolved.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

__all__ = ["register_function", "unregister_function", "registered_functions"]

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
