"""Schema v1 of a YAML workflow, as pydantic models (unknown keys are rejected everywhere).

A workflow declares typed ``inputs``, model ``backend`` settings, ``nodes`` (one of the kinds in
``NODE_KINDS``), ``edges`` between them (``START`` and ``END`` are the entry and the exit) and
``outputs``. ``workflow_json_schema()`` exports the JSON Schema editors use.

``WorkflowLimits`` bounds the work a workflow file and its templates can ask for (the YAML's
size, depth and alias expansion; each template's output, loops, calls and values); a limit that
is passed raises ``WorkflowLimitError`` naming the limit, the value found and how to raise it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from lladauni.model_core.options import MAX_SEED

from ..option_models import StrictModel, task_options_model

__all__ = [
    "WorkflowSpec", "InputSpec", "BackendSpec", "Node", "NODE_KINDS", "NODE_OUTPUTS", "TEMPLATE_FIELDS",
    "EXPRESSION_FIELDS", "ITEM_FIELDS", "workflow_json_schema", "SCHEMA_VERSION", "WorkflowLimits", "WorkflowLimitError",
    "MAX_WORKFLOW_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "MAX_TEMPLATE_OUTPUT", "MAX_TEMPLATE_RANGE",
    "MAX_TEMPLATE_LOOP_ITERATIONS", "MAX_TEMPLATE_CALLS", "MAX_TEMPLATE_BUILT", "MAX_INT_DIGITS", "MAX_TEMPLATE_SECONDS",
]

SCHEMA_VERSION = 1


_Strict = StrictModel  # unknown keys are refused


InputType = Literal["string", "integer", "number", "boolean", "image", "images", "json"]


class InputSpec(_Strict):
    """One run input. ``image`` is a file path (or a PIL image from Python); ``images`` a list of them."""

    type: InputType
    default: Any = None
    description: str = ""


# ---------------------------------------------------------------- model options (per call kind)
# Derived from model_core's typed options (one declaration per option): every option of the task
# except what the node itself decides (the seed, the drawing mode, the frame count, the template)
# and what the agent needs as it is (decoded pixels, no step trace).
Steps = Annotated[int, Field(ge=1, le=1024)]
_NODE_DECIDES = ("seed", "trace", "decode", "template", "mode", "max_frames")
TextOptions = task_options_model("chat", "TextOptions", exclude=_NODE_DECIDES)
ImageOptions = task_options_model("image", "ImageOptions", exclude=_NODE_DECIDES)
EditOptions = task_options_model("edit", "EditOptions", exclude=_NODE_DECIDES)
InterleavedOptions = task_options_model("interleaved", "InterleavedOptions", exclude=_NODE_DECIDES)


class BackendSpec(_Strict):
    """Model settings for every call of a kind; a node's ``options`` override them, and the
    caller's (``run_workflow(..., image_options=...)``, the CLI's ``--size``/``--steps``) override both."""

    seed: Optional[int] = Field(0, ge=0, le=MAX_SEED)
    # how inspect/observe nodes see a generated image: "roundtrip" decodes it to pixels and re-encodes
    # them (the model looks at what the decoder drew); "reuse" hands the model its own codes back
    retokenize: Literal["reuse", "roundtrip"] = "roundtrip"
    text: TextOptions = Field(default_factory=TextOptions)
    image: ImageOptions = Field(default_factory=ImageOptions)
    edit: EditOptions = Field(default_factory=EditOptions)
    interleaved: InterleavedOptions = Field(default_factory=InterleavedOptions)


# ------------------------------------------------------------------------------------- nodes
class _NodeBase(_Strict):
    description: str = ""


class ThinkNode(_NodeBase):
    """Text reasoning (``chat``), optionally looking at images. Output: ``text``."""

    kind: Literal["think"]
    prompt: str
    system: Optional[str] = None
    images: list[str] = Field(default_factory=list)
    options: Optional[TextOptions] = None


class DrawNode(_NodeBase):
    """Text to image, ``normal`` or ``thinking`` mode. Outputs: ``image``, ``text`` (the thinking)."""

    kind: Literal["draw"]
    prompt: str
    mode: Literal["normal", "thinking"] = "normal"
    options: Optional[ImageOptions] = None


class EditNode(_NodeBase):
    """Edit an image, or several reference images (the expression gives a list). Output: ``image``."""

    kind: Literal["edit"]
    image: str
    instruction: str
    options: Optional[EditOptions] = None


class InspectNode(_NodeBase):
    """Ask about an image. ``verdict: yes_no`` reads a leading yes/no into ``verdict``;
    ``verdict: json`` parses the first JSON object into ``data`` (``verdict`` = its boolean
    ``pass``; ``keys`` must all be present). Outputs: ``text``, ``verdict``, ``data``.

    ``for_each`` (an expression giving a list) fans out: one inspection per item, in parallel,
    with ``item`` and ``index`` in ``image`` and ``question``; ``text``, ``verdict`` and ``data``
    are then lists in the items' order, and ``for_each`` the list itself."""

    kind: Literal["inspect"]
    image: str
    question: str
    for_each: Optional[str] = Field(default=None, description="an expression giving a list: one inspection per item, "
                                                              "in parallel; image and question see item and index")
    verdict: Literal["none", "yes_no", "json"] = "none"
    keys: list[str] = Field(default_factory=list)
    options: Optional[TextOptions] = None


class DecodeNode(_NodeBase):
    """Decode an image's VQ codes to pixels (again), e.g. with more decoder steps. Output: ``image``."""

    kind: Literal["decode"]
    image: str
    steps: Optional[Steps] = None


class EncodeNode(_NodeBase):
    """Encode an image's pixels to VQ codes once, so later nodes reuse them. Output: ``image``."""

    kind: Literal["encode"]
    image: str


class InterleaveNode(_NodeBase):
    """Native interleaved text and images. Outputs: ``text``, ``images``, ``image`` (the last)."""

    kind: Literal["interleave"]
    prompt: str
    images: list[str] = Field(default_factory=list)
    max_frames: Union[Annotated[int, Field(ge=1, le=16)], str] = 4
    options: Optional[InterleavedOptions] = None


class Route(_Strict):
    when: str
    to: str


class RouterNode(_NodeBase):
    """The first route whose ``when`` expression is true wins; otherwise ``default``. Output: ``route``."""

    kind: Literal["router"]
    routes: list[Route] = Field(default_factory=list)
    default: str


class LoopNode(_NodeBase):
    """Run ``body`` (node names, in order) until ``until`` is true after a pass, at most
    ``max_iterations`` times (an integer or an expression such as ``inputs.rounds``)."""

    kind: Literal["loop"]
    body: Annotated[list[str], Field(min_length=1)]
    until: Optional[str] = None
    max_iterations: Union[Annotated[int, Field(ge=1, le=1000)], str]


class SubworkflowNode(_NodeBase):
    """Run another workflow file (relative to this one, inside its directory) as one step.
    Outputs: ``outputs`` (the child's outputs), ``text``, ``image``."""

    kind: Literal["subworkflow"]
    workflow: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class CallNode(_NodeBase):
    """Call a Python function the host registered (``register_function``); nothing else is
    importable. Outputs: ``value`` (what it returned, JSON), ``text`` (str of it)."""

    kind: Literal["call"]
    function: str
    args: dict[str, Any] = Field(default_factory=dict)


Node = Annotated[
    Union[ThinkNode, DrawNode, EditNode, InspectNode, DecodeNode, EncodeNode, InterleaveNode, RouterNode, LoopNode,
          SubworkflowNode, CallNode],
    Field(discriminator="kind"),
]
NODE_KINDS = ("think", "draw", "edit", "inspect", "decode", "encode", "interleave", "router", "loop", "subworkflow", "call")

# What ``nodes.<name>.<field>`` may read, per kind (checked at load).
NODE_OUTPUTS: dict[str, list[str]] = {
    "think": ["text"], "draw": ["image", "text"], "edit": ["image"], "inspect": ["text", "verdict", "data", "for_each"],
    "decode": ["image"], "encode": ["image"], "interleave": ["text", "images", "image"], "router": ["route"],
    "loop": ["iteration", "capped"], "subworkflow": ["outputs", "text", "image"], "call": ["value", "text"],
}
TEMPLATE_FIELDS = ("prompt", "system", "instruction", "question")
EXPRESSION_FIELDS = ("image", "until", "max_iterations", "max_frames", "for_each")
ITEM_FIELDS = ("image", "question")  # what sees ``item`` and ``index`` in an inspect node with ``for_each``


class WorkflowSpec(_Strict):
    """A whole workflow file."""

    version: Literal[1] = Field(description="schema version; this is version 1")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    description: str = ""
    requires: Literal["any", "full"] = Field(
        "any", description="the model the workflow needs: 'any' (the embedded shapes model too) or 'full' "
                           "(the full LLaDA2.0-Uni model; refused on the embedded shapes model before any model call)")
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    backend: BackendSpec = Field(default_factory=BackendSpec)
    nodes: Annotated[dict[str, Node], Field(min_length=1)]
    edges: Annotated[list[tuple[str, str]], Field(min_length=1, description="[from, to] pairs; START and END are the ends")]
    outputs: dict[str, Any] = Field(default_factory=dict)


def workflow_json_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file (for ``# yaml-language-server: $schema=...``)."""
    schema = WorkflowSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/lladauni/lladauni/workflows/schema.json"
    schema["title"] = "lladauni workflow (schema v1)"
    return schema


# ----------------------------------------------------------------------------------- limits
# Defaults of ``WorkflowLimits`` (read when a ``WorkflowLimits()`` is made, so setting one of these
# constants raises the limit for every later load).
MAX_WORKFLOW_BYTES = 65_536  # a workflow file (the bundled ones are under 4 KB)
MAX_YAML_DEPTH = 64  # nested mappings and sequences
MAX_YAML_NODES = 100_000  # values in the file once every alias is expanded
MAX_TEMPLATE_OUTPUT = 1_000_000  # characters one render writes (text captured by set blocks and macros too)
MAX_TEMPLATE_RANGE = 100_000  # items of a range(), and of a list that * or + builds
MAX_TEMPLATE_LOOP_ITERATIONS = 100_000  # passes of all {% for %} loops of one render together
MAX_TEMPLATE_CALLS = 20_000  # function, method and macro calls of one render
MAX_TEMPLATE_BUILT = 20_000_000  # characters one render builds, plus what filters and methods read (an item counts 10)
MAX_INT_DIGITS = 4_300  # digits of an integer that * or ** makes (Python's own str() limit)
MAX_TEMPLATE_SECONDS = 5.0  # wall-clock time of one render, the backstop for whatever the counts miss

_CONSTANTS = {"max_bytes": "MAX_WORKFLOW_BYTES", "max_depth": "MAX_YAML_DEPTH", "max_nodes": "MAX_YAML_NODES",
              "max_output_chars": "MAX_TEMPLATE_OUTPUT", "max_range": "MAX_TEMPLATE_RANGE",
              "max_loop_iterations": "MAX_TEMPLATE_LOOP_ITERATIONS", "max_calls": "MAX_TEMPLATE_CALLS",
              "max_built": "MAX_TEMPLATE_BUILT", "max_int_digits": "MAX_INT_DIGITS",
              "max_seconds": "MAX_TEMPLATE_SECONDS"}


def _constant(name: str) -> Any:
    return dataclasses.field(default_factory=lambda: globals()[name])


@dataclasses.dataclass(frozen=True)
class WorkflowLimits:
    """What one workflow may ask of the loader and of each template render. Pass
    ``limits=WorkflowLimits(max_depth=200)`` to ``load_workflow``/``loads_workflow`` (the loaded
    workflow keeps them for its runs), or set the module constant named in each field's comment."""

    max_bytes: int = _constant("MAX_WORKFLOW_BYTES")
    max_depth: int = _constant("MAX_YAML_DEPTH")
    max_nodes: int = _constant("MAX_YAML_NODES")
    max_output_chars: int = _constant("MAX_TEMPLATE_OUTPUT")
    max_range: int = _constant("MAX_TEMPLATE_RANGE")
    max_loop_iterations: int = _constant("MAX_TEMPLATE_LOOP_ITERATIONS")
    max_calls: int = _constant("MAX_TEMPLATE_CALLS")
    max_built: int = _constant("MAX_TEMPLATE_BUILT")
    max_int_digits: int = _constant("MAX_INT_DIGITS")
    max_seconds: float = _constant("MAX_TEMPLATE_SECONDS")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"WorkflowLimits.{f.name} = {v!r}: expected a positive number")

    def exceeded(self, limit: str, found: Any, what: str) -> "WorkflowLimitError":
        """The error for ``what`` (found: ``found``) passing the limit ``limit``."""
        return WorkflowLimitError(limit, getattr(self, limit), found, what)


class WorkflowLimitError(ValueError):
    """A workflow or template passed one of its ``WorkflowLimits``: ``limit`` (the field), ``value``
    (the limit in force), ``found`` (what was asked for), ``problem`` and ``hint`` (how to raise it)."""

    def __init__(self, limit: str, value: Any, found: Any, what: str) -> None:
        self.limit, self.value, self.found = limit, value, found
        self.problem = f"{what}: {found} is over the limit {limit}={value}"
        self.hint = (f"raise it with limits=WorkflowLimits({limit}=...) on load_workflow/loads_workflow, "
                     f"or set lladauni.agent.workflows.schema.{_CONSTANTS[limit]}")
        super().__init__(f"{self.problem} ({self.hint})")
