"""How other systems call lladauni: the ``lladauni`` CLI now; MCP, OpenAI-compatible HTTP and
LangChain tools later."""

__all__: list[str] = []
