"""LangGraph graphs that think, draw, inspect and refine over a Backend (agent issue).

``Agent(backend).run(prompt, graph=...)`` runs one of ``GRAPHS`` (``build_graph`` compiles them
for other hosts such as ``langgraph dev``). Backends: ``LocalBackend`` (in-process
``model_core.LLaDAUni``), ``HTTPBackend`` (an OpenAI-compatible server), ``ScriptedBackend``
(answers you choose).
"""

from lladauni.model_core.extras import missing_extra_message

try:
    from .agent import Agent, RunResult
    from .backend import Backend, BackendError, HTTPBackend, LocalBackend, ScriptedBackend
    from .context import AgentContext
    from .graph import GRAPHS, build_graph
except ModuleNotFoundError as exc:  # say which extra, in one line, instead of a bare module name
    hint = missing_extra_message(exc, "lladauni.agent")
    if hint is None:
        raise
    raise ModuleNotFoundError(hint, name=exc.name) from None

__all__ = [
    "Agent",
    "AgentContext",
    "Backend",
    "BackendError",
    "GRAPHS",
    "HTTPBackend",
    "LocalBackend",
    "RunResult",
    "ScriptedBackend",
    "build_graph",
]
