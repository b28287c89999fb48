"""Import names that are ours alone, one-way dependencies, and a package table that matches the
folders. (The built wheel in a fresh venv is checked by .ci/wheel_check, which CI runs.)"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIRS: dict[str, str] = SETUPTOOLS["package-dir"]
#: the layers, lowest first: each may import only itself and the layers before it
LAYERS = ["lladauni.kernels", "lladauni.model_core", "lladauni.agent", "lladauni.tools"]
OLD_NAMES = {"model_core", "kernels", "tools", "lladauni_agent", "workflows"}


def _py_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    for name, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        if base in path.parents:
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([name, *parts])
    rel = path.relative_to(ROOT).with_suffix("")  # tests/, bench/: packages of the checkout
    return ".".join(p for p in rel.parts if p != "__init__")


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute names of every import in the file (function-level ones included), with lines."""
    tree = ast.parse(path.read_text(), str(path))
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((name, node.lineno))
    return out


def test_one_root_name():
    assert all(name.startswith("lladauni.") for name in PACKAGE_DIRS)
    assert all(p.startswith("lladauni.") for p in SETUPTOOLS["packages"])
    assert PYPROJECT["project"]["scripts"] == {"lladauni": "lladauni.tools.cli:main"}


def test_every_code_folder_is_a_listed_package():
    found = set()
    for name, folder in PACKAGE_DIRS.items():
        for d in [ROOT / folder, *sorted(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if "__pycache__" in d.parts:
                continue
            if any(d.glob("*.py")) or d == ROOT / folder:
                found.add(".".join([name, *d.relative_to(ROOT / folder).parts]))
    assert found == set(SETUPTOOLS["packages"])


def test_generic_folders_have_no_init():
    """A folder with an __init__.py named kernels/, tools/ or workflows/ at the checkout root would
    shadow another distribution whenever Python runs there (cwd is first on sys.path)."""
    for folder in ("kernels", "tools", "workflows"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_running_from_the_checkout_root_does_not_shadow_hugging_face_kernels():
    pytest.importorskip("kernels")  # transformers >= 5.25 pulls it
    code = (
        "import sys, kernels; assert sys.path[0] in ('', {root!r}), sys.path[0]; "
        "print(kernels.__file__); from kernels import get_kernel; import diffusers, transformers"
    ).format(root=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(ROOT / "kernels")), r.stdout


def test_no_file_imports_the_old_top_level_names():
    bad = []
    folders = [*PACKAGE_DIRS.values(), "tests", "bench"]
    for folder in folders:
        for f in _py_files(folder):
            for name, line in _imports(f):
                if name and name.split(".")[0] in OLD_NAMES:
                    bad.append(f"{f.relative_to(ROOT)}:{line}: {name}")
    assert not bad, bad


def _layer(name: str) -> int | None:
    for i, root in enumerate(LAYERS):
        if name == root or name.startswith(root + "."):
            return i
    return None


def test_dependencies_flow_one_way():
    """kernels imports nothing of ours; model_core only kernels; agent only model_core (and so
    kernels); tools only the layers below. Function-level imports count too: no import circle."""
    bad = []
    for name, folder in PACKAGE_DIRS.items():
        own = _layer(name)
        if own is None:
            continue
        for f in _py_files(folder):
            for imported, line in _imports(f):
                other = _layer(imported or "")
                if other is not None and other > own:
                    bad.append(f"{f.relative_to(ROOT)}:{line}: {name} imports {imported}")
                if own == 0 and imported and imported.startswith("lladauni.") and other != 0:
                    bad.append(f"{f.relative_to(ROOT)}:{line}: kernels imports {imported}")
    assert not bad, bad


def test_importing_every_kernels_module_loads_nothing_else_of_ours():
    mods = sorted(_module_name(f) for f in _py_files("kernels") if f.name not in ("bench.py", "_bench.py"))
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "ours = sorted(m for m in sys.modules if m.startswith('lladauni.') and not m.startswith('lladauni.kernels'))\n"
        "assert not ours, ours\nprint(len(sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_missing_extra_names_it():
    from lladauni.model_core.extras import EXTRA_OF_MODULE, missing_extra_message

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)
    msg = missing_extra_message(ModuleNotFoundError("No module named 'langgraph.graph'", name="langgraph.graph"), "lladauni run")
    assert msg == "lladauni run needs the 'agent' extra (module 'langgraph' is not installed): pip install \"lladauni-agent[agent]\""
    assert missing_extra_message(ModuleNotFoundError("x", name="numpyy")) is None
    assert missing_extra_message(ValueError("langgraph")) is None


def _cli_without(blocked: tuple[str, ...], args: list[str]) -> subprocess.CompletedProcess:
    """``lladauni ARGS`` in a child where the top-level modules ``blocked`` cannot be imported."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lladauni.tools.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)


def test_the_cli_names_the_extra_when_the_agent_layer_cannot_import():
    """Without langgraph, `lladauni demo` and `lladauni run` print one line naming the extra."""
    for args in (["demo", "--out", "x"], ["run", "draw-check-refine"], ["validate", "a.yaml"]):
        r = _cli_without(("langgraph",), args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"error: lladauni {args[0]} needs the 'agent' extra (module 'langgraph' is not installed): "
            'pip install "lladauni-agent[agent]"'
        ], r.stderr


def test_the_cli_names_the_server_extra_for_serve_and_mcp():
    """`lladauni serve` / `mcp` without fastapi or mcp: the same one line, naming the server extra."""
    for command, module in (("serve", "fastapi"), ("mcp", "mcp")):
        r = _cli_without(("fastapi", "mcp"), [command])
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"error: lladauni {command} needs the 'server' extra (module {module!r} is not installed): "
            'pip install "lladauni-agent[server]"'
        ], r.stderr
