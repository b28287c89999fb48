"""Import ``lladauni.*`` straight from this checkout, without installing it.

The GPU machine runs the benchmarks on its own torch and triton with no install step, so the
bench scripts map the repository folders under the ``lladauni`` name as pyproject's
``[tool.setuptools.package-dir]`` does (read from pyproject.toml, Python >= 3.11). Where
lladauni is installed already (an editable install or the wheel), this does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: import name -> repository folder
PACKAGE_DIRS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "lladauni":
            spec = importlib.machinery.ModuleSpec("lladauni", None, is_package=True)
            spec.submodule_search_locations = []
            return spec
        folder = PACKAGE_DIRS.get(fullname)
        if folder is None:
            return None
        where = ROOT / folder
        init = where / "__init__.py"
        if init.is_file():
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(where)])
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)  # a namespace folder
        spec.submodule_search_locations = [str(where)]
        return spec


def use_checkout() -> None:
    """Make ``import lladauni.model_core`` (and the rest) work from this checkout."""
    if importlib.util.find_spec("lladauni") is not None:
        return
    sys.meta_path.append(_CheckoutFinder())
