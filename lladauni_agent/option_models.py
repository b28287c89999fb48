"""Pydantic models derived from model_core's typed task options (``model_core.options``).

Every boundary that validates options with pydantic (the workflow schema's option blocks, the
HTTP request schemas, the MCP and LangChain tools) builds its model here, so a name, type,
default, range and help exist once: in the dataclass.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from lladauni.model_core.options import TASK_OPTIONS, OptionSpec, option_specs

__all__ = ["StrictModel", "field_for", "options_model", "task_options_model"]


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys (every request and workflow schema)."""

    model_config = ConfigDict(extra="forbid")


def _annotation(spec: OptionSpec) -> Any:
    base: Any = Literal[spec.choices] if spec.choices else spec.type  # type: ignore[valid-type]
    return Optional[base] if spec.optional else base


def field_for(spec: OptionSpec, *, default: Any = ..., optional: bool = False, description: Optional[str] = None,
              nullable: bool = True) -> tuple:
    """(annotation, FieldInfo) for ``create_model``. ``optional``: None is accepted and means
    "not given" (the default applies further down); ``default`` replaces the spec's default;
    ``nullable=False`` keeps the plain type in the JSON schema (an omitted field is still None:
    simpler schemas for tool-calling models)."""
    ann = _annotation(spec)
    if optional and not spec.optional and nullable:
        ann = Optional[ann]
    value = (None if optional else spec.default) if default is ... else default
    bounds = {k: getattr(spec, k) for k in ("ge", "gt", "le", "multiple_of") if getattr(spec, k) is not None}
    return ann, Field(default=value, description=description or spec.help, **bounds)


def options_model(name: str, specs: tuple[OptionSpec, ...], *, all_optional: bool = True, base: type = StrictModel,
                  defaults: Optional[dict] = None, doc: str = "", nullable: bool = True) -> type:
    """A pydantic model with one field per spec (unknown keys refused). ``all_optional``: every
    field defaults to None, meaning "not given"; ``defaults`` overrides chosen defaults."""
    fields = {}
    for s in specs:
        d = (defaults or {}).get(s.name, ...)
        fields[s.name] = field_for(s, default=d, optional=all_optional and d is ..., nullable=nullable)
    model = create_model(name, __base__=base, __doc__=doc or None, **fields)
    return model


def task_options_model(task: str, name: Optional[str] = None, *, exclude: tuple[str, ...] = ()) -> type:
    """The all-optional pydantic model of one task's options (``exclude``: names left out)."""
    cls = TASK_OPTIONS[task]
    specs = tuple(s for s in option_specs(cls) if s.name not in exclude)
    return options_model(name or cls.__name__, specs, doc=(cls.__doc__ or "").strip())
