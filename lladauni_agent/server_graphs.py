"""The graphs as module attributes, for ``langgraph.json`` (``langgraph dev`` / Agent Server).

The server supplies the checkpointer. Runs take the context as JSON (``AgentContext`` fields);
without a ``backend`` the model comes from ``server``/``checkpoint`` in the context or the
``LLADAUNI_SERVER`` / ``LLADAUNI_CHECKPOINT`` environment variables.

``langgraph.json`` names these as module specs (``lladauni.agent.server_graphs:NAME``), which
the server imports with ``importlib.import_module`` from the installed ``lladauni-agent``
(editable checkout or wheel). Imports here stay absolute: a file spec
(``./lladauni_agent/server_graphs.py:NAME``) would load this file as a top-level module outside
any package, where a relative import fails.
"""

from __future__ import annotations

from lladauni.agent.graph import build_graph

plan_then_draw = build_graph("plan_then_draw")
draw_inspect_refine = build_graph("draw_inspect_refine")
visual_reasoning = build_graph("visual_reasoning")
interleaved_story = build_graph("interleaved_story")
