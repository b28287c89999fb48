"""LangGraph graphs that think, draw, inspect and refine over a Backend (agent issue).

``Agent(backend).run(prompt, graph=...)`` runs one of ``GRAPHS`` (``build_graph`` compiles them
for other hosts such as ``langgraph dev``). Backends: ``LocalBackend`` (in-process
``model_core.LLaDAUni``), ``HTTPBackend`` (an OpenAI-compatible server), ``ScriptedBackend``
(answers you choose).

Names load on first use: the backends (``lladauni.agent.backend``) work without langgraph, so
the model commands of the CLI run on a base install; the graphs need the ``agent`` extra, and
a missing one is named in one line.
"""

import importlib
from typing import Any

from lladauni.model_core.extras import missing_extra_message

_WHERE = {
    "Agent": "agent", "RunResult": "agent",
    "Backend": "backend", "BackendError": "backend", "HTTPBackend": "backend", "LocalBackend": "backend",
    "ScriptedBackend": "backend",
    "AgentContext": "context",
    "GRAPHS": "graph", "build_graph": "graph",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lladauni.agent' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_WHERE[name]}", __name__)
    except ModuleNotFoundError as exc:  # say which extra, in one line, instead of a bare module name
        hint = missing_extra_message(exc, "lladauni.agent")
        if hint is None:
            raise
        raise ModuleNotFoundError(hint, name=exc.name) from None
    value = getattr(module, name)
    globals()[name] = value
    return value
