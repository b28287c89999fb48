"""Command-line flags derived from model_core's typed task options: one flag per option, with
its type, choices and help from the declaration (``model_core.options``). Every default is
"not given", so the checkpoint's own defaults (``lladauni.json``) apply; the help shows the
published default and range."""

from __future__ import annotations

import argparse
from typing import Any

from lladauni.model_core.options import TASK_OPTIONS, OptionSpec, option_specs

__all__ = ["FLAG_ALIASES", "add_option_flags", "flag_of", "options_from_args"]

# the short names the CLI had before the flags were derived; they stay as aliases
FLAG_ALIASES = {"image_h": ("--height",), "image_w": ("--width",), "cfg_scale": ("--cfg",),
                "cfg_text_scale": ("--cfg-text",), "cfg_image_scale": ("--cfg-image",), "use_sprint": ("--sprint",)}
_NOT_FLAGS = ("trace",)  # the CLI prints no step trace


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(s: OptionSpec) -> str:
    bounds = s.range_text(ascii=True)
    return f"{s.help} (default: {s.default!r}{'; ' + bounds if bounds else ''})".replace("%", "%%")


def add_option_flags(p: argparse.ArgumentParser, task: str) -> None:
    group = p.add_argument_group(f"{task} options", "unset flags take the checkpoint's defaults (lladauni.json), "
                                                    "else the published ones shown here")
    for s in option_specs(TASK_OPTIONS[task]):
        if s.name in _NOT_FLAGS:
            continue
        kw: dict[str, Any] = {"dest": s.name, "default": None, "help": _help(s)}
        if s.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = s.type
            if s.choices:
                kw["choices"] = s.choices
        group.add_argument(flag_of(s.name), *FLAG_ALIASES.get(s.name, ()), **kw)


def options_from_args(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The options the user set on the command line (None: not given)."""
    return {s.name: getattr(args, s.name) for s in option_specs(TASK_OPTIONS[task])
            if getattr(args, s.name, None) is not None}
