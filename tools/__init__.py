"""How other systems call lladauni: the ``lladauni`` CLI, an OpenAI-compatible HTTP server
(``lladauni serve``, ``tools.server``), an MCP server (``lladauni mcp``, ``tools.mcp_server``) and
LangChain tools (``as_langchain_tools``). The servers need the ``server`` extra; nothing heavy is
imported until used, so ``lladauni --help`` works without it."""

from __future__ import annotations

from typing import Any

__all__ = ["as_langchain_tools"]


def as_langchain_tools(backend_or_service: Any, **kw: Any) -> list:
    """The five tools (generate_image, edit_image, understand_image, reason_visually,
    run_workflow) as LangChain ``StructuredTool``s; see ``tools.langchain_tools``."""
    from .langchain_tools import as_langchain_tools as make

    return make(backend_or_service, **kw)
