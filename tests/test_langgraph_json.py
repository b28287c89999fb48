"""langgraph.json loads, graph by graph, the way ``langgraph dev`` / Agent Server loads it.

The server (the ``langgraph-api`` package behind ``langgraph dev``) takes each ``graphs`` entry
as ``PATH_OR_MODULE:VARIABLE`` (``source.rsplit(":", 1)``). A left part containing ``/`` is a
file: it is executed with ``importlib.util.spec_from_file_location`` under a made-up top-level
name (``"./a/b.py"`` -> ``"__a__b"``), outside any package, so a relative import in it fails.
Anything else is a module, imported with ``importlib.import_module``. The variable must be a
compiled graph (``Pregel``; under ``langgraph dev`` without its own checkpointer or store), a
``StateGraph`` (compiled by the server) or a factory function. ``langgraph dev`` itself appends
its working directory and each directory in ``dependencies`` to ``sys.path`` first.

Each load runs in a fresh interpreter. When ``langgraph_api`` is importable there, its own
loader (``langgraph_api.graph._graph_from_spec``) does the loading; otherwise ``_LOADER``
below replicates it (read from langgraph-api 0.16.7, ``langgraph_api/graph.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "langgraph.json"
GRAPH_NAMES = ("plan_then_draw", "draw_inspect_refine", "visual_reasoning", "interleaved_story")
# Nodes each graph must have (its default build; compared in full against build_graph below).
CORE_NODES = {
    "plan_then_draw": {"start", "plan", "draw", "finish"},
    "draw_inspect_refine": {"start", "claims", "draw", "inspect_claim", "judge", "refine", "finish"},
    "visual_reasoning": {"start", "think", "sketch", "observe", "final_answer", "finish"},
    "interleaved_story": {"start", "interleave", "finish"},
}

# Runs in the child: argv[1] is a JSON list of [graph_id, "path_or_module:variable"] and
# argv[2] the JSON list of langgraph.json "dependencies"; prints one JSON object per graph.
_LOADER = r'''
import importlib, importlib.util, json, os, pathlib, sys

specs, deps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# what `langgraph dev` (langgraph_cli.cli.dev) does before starting the server
cwd = os.getcwd()
sys.path.append(cwd)
for dep in deps:
    dep_path = pathlib.Path(cwd) / dep
    if dep_path.is_dir() and dep_path.exists():
        sys.path.append(str(dep_path))

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

try:
    from langgraph_api.graph import GraphSpec, _graph_from_spec
except ImportError:
    GraphSpec = _graph_from_spec = None

def load_replica(path, module_name, variable):
    # langgraph_api.graph._graph_from_spec
    if module_name:
        module = importlib.import_module(module_name)
    else:
        modname = path.replace("/", "__").replace(".py", "").replace(" ", "_").lstrip(".")
        modspec = importlib.util.spec_from_file_location(modname, path)
        if modspec is None:
            raise ValueError(f"Could not find python file for graph: {path}")
        module = importlib.util.module_from_spec(modspec)
        sys.modules[modname] = module
        modspec.loader.exec_module(module)
    graph = module.__dict__[variable]
    if callable(graph):
        return graph  # a factory: the server calls it per run
    if isinstance(graph, StateGraph):
        return graph.compile()
    if isinstance(graph, Pregel):
        # local_dev refuses a graph that brings its own persistence
        if graph.checkpointer is not None or graph.store is not None:
            raise ValueError(f"{variable}: graph has its own checkpointer/store")
        return graph
    raise ValueError(f"Variable '{variable}' in module '{path}' is not a Graph or Graph factory function")

out = {}
for graph_id, source in specs:
    # langgraph_api.graph.collect_graphs_from_env
    path_or_module, variable = source.rsplit(":", maxsplit=1)
    path, module_name = (path_or_module, None) if "/" in path_or_module else (None, path_or_module)
    if _graph_from_spec is not None:
        graph = _graph_from_spec(GraphSpec(graph_id, path=path, module=module_name, variable=variable, config={}))
        loader = "langgraph_api"
    else:
        graph = load_replica(path, module_name, variable)
        loader = "replica"
    out[graph_id] = {
        "loader": loader,
        "pregel": isinstance(graph, Pregel),
        "type": type(graph).__module__ + "." + type(graph).__qualname__,
        "name": getattr(graph, "name", None),
        "nodes": sorted(graph.get_graph().nodes) if isinstance(graph, Pregel) else None,
        "checkpointer": repr(getattr(graph, "checkpointer", None)),
    }
print(json.dumps(out))
'''


def _config() -> dict:
    return json.loads(CONFIG.read_text())


def _load(specs: list[tuple[str, str]], cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LANGSERVE_GRAPHS")}
    extra = _config().get("env")
    if isinstance(extra, dict):  # langgraph.json "env" (a dict; a string names an .env file)
        env.update({k: str(v) for k, v in extra.items()})
    # what langgraph_api.cli.run_server sets for the in-memory server (langgraph_api.config
    # reads these at import and has no default for some)
    env.update(MIGRATIONS_PATH="__inmem", DATABASE_URI=":memory:", REDIS_URI="fake")
    env.update(N_JOBS_PER_WORKER="1", LANGSMITH_LANGGRAPH_API_VARIANT="local_dev")
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, json.dumps(specs), json.dumps(_config().get("dependencies", []))],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"loading {specs} from {cwd} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _expected_nodes(name: str) -> list[str]:
    from lladauni.agent.graph import build_graph

    return sorted(build_graph(name).get_graph().nodes)


def _check(loaded: dict, names) -> None:
    assert sorted(loaded) == sorted(names)
    for name in names:
        g = loaded[name]
        assert g["pregel"], f"{name}: the server would get {g['type']}, not a compiled graph"
        assert g["type"] == "langgraph.graph.state.CompiledStateGraph"
        assert g["name"] == name
        assert g["checkpointer"] == "None"  # the server supplies it
        assert CORE_NODES[name] <= set(g["nodes"]), (name, g["nodes"])
        assert g["nodes"] == _expected_nodes(name)


def _graph_sources() -> dict[str, str]:
    graphs = _config()["graphs"]
    return {k: v["path"] if isinstance(v, dict) else v for k, v in graphs.items()}


def test_config_names_the_four_graphs_with_dependencies_dot():
    cfg = _config()
    assert cfg["dependencies"] == ["."]
    assert sorted(cfg["graphs"]) == sorted(GRAPH_NAMES)
    for name, source in _graph_sources().items():
        path_or_module, sep, variable = source.rpartition(":")
        assert sep and path_or_module and variable == name, source


def test_every_graph_loads_as_langgraph_dev_loads_it(tmp_path):
    """Each spec through the server's loader. A file spec resolves against the working
    directory of ``langgraph dev`` (the checkout); a module spec is run from a directory outside
    the checkout, so it must come from the installed package (as from a wheel)."""
    sources = _graph_sources()
    file_specs = [(k, v) for k, v in sources.items() if "/" in v.rsplit(":", 1)[0]]
    module_specs = [(k, v) for k, v in sources.items() if (k, v) not in file_specs]
    loaded = {}
    if file_specs:
        loaded.update(_load(file_specs, cwd=ROOT))
    if module_specs:
        loaded.update(_load(module_specs, cwd=tmp_path))
    _check(loaded, GRAPH_NAMES)


def test_graph_modules_also_load_as_file_specs(tmp_path):
    """The same modules named as files (``./lladauni_agent/server_graphs.py:NAME``, the form
    the langgraph docs show first) must load too: the server runs such a file as a top-level
    module, outside any package, so the module may use absolute imports only."""
    specs = []
    for name, source in _graph_sources().items():
        path_or_module, variable = source.rsplit(":", 1)
        if "/" in path_or_module:
            specs.append((name, source))
            continue
        origin = Path(importlib.util.find_spec(path_or_module).origin)
        try:
            path = "./" + origin.relative_to(ROOT).as_posix()  # editable install: as langgraph.json would say it
        except ValueError:
            path = origin.as_posix()  # installed as a wheel: an absolute path, loaded the same way
        specs.append((name, f"{path}:{variable}"))
    loaded = _load(specs, cwd=ROOT)
    _check(loaded, GRAPH_NAMES)


@pytest.mark.skipif(importlib.util.find_spec("langgraph_api") is None, reason="langgraph-api not installed")
def test_loader_is_langgraph_api_when_installed(tmp_path):
    loaded = _load([(n, s) for n, s in _graph_sources().items()][:1], cwd=ROOT)
    assert {g["loader"] for g in loaded.values()} == {"langgraph_api"}
