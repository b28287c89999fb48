"""LangGraph graphs that think, draw, inspect and refine over a Backend (agent issue)."""

__all__: list[str] = []
