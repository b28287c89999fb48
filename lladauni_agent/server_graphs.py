"""The graphs as module attributes, for ``langgraph.json`` (``langgraph dev`` / Agent Server).

The server supplies the checkpointer. Runs take the context as JSON (``AgentContext`` fields);
without a ``backend`` the model comes from ``server``/``checkpoint`` in the context or the
``LLADAUNI_SERVER`` / ``LLADAUNI_CHECKPOINT`` environment variables.
"""

from __future__ import annotations

from .graph import build_graph

plan_then_draw = build_graph("plan_then_draw")
draw_inspect_refine = build_graph("draw_inspect_refine")
visual_reasoning = build_graph("visual_reasoning")
interleaved_story = build_graph("interleaved_story")
