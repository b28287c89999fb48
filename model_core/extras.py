"""Which optional extra of the ``lladauni-agent`` distribution provides a missing module, so a
missing extra is one line that names the install command instead of a bare
``ModuleNotFoundError``."""

from __future__ import annotations

from typing import Optional

__all__ = ["DISTRIBUTION", "EXTRA_OF_MODULE", "missing_extra_message"]

DISTRIBUTION = "lladauni-agent"

#: top-level import name -> the extra that installs it (pyproject's optional-dependencies)
EXTRA_OF_MODULE = {
    "langgraph": "agent",
    "httpx": "agent",
    "pydantic": "agent",
    "yaml": "agent",
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "multipart": "server",
    "python_multipart": "server",
    "mcp": "server",
    "langchain_core": "server",
    "triton": "gpu",
}


def missing_extra_message(exc: BaseException, what: str = "this") -> Optional[str]:
    """One line naming the extra to install when ``exc`` is a ModuleNotFoundError for a module
    that one of our extras provides; None for anything else."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = EXTRA_OF_MODULE.get(exc.name.split(".")[0])
    if extra is None:
        return None
    module = exc.name.split(".")[0]
    return f"{what} needs the '{extra}' extra (module {module!r} is not installed): pip install \"{DISTRIBUTION}[{extra}]\""
