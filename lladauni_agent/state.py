"""The graphs' state: primitives and small TypedDicts only (strict msgpack serialises them).

Images appear as ``ImageRef`` (files in the run directory), never as pixels. Lists that several
nodes (or parallel ``Send`` tasks) append to carry ``operator.add`` reducers; everything else is
last-writer-wins. Every loop counts ``iteration`` against ``max_iterations``.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, Optional

from typing_extensions import TypedDict  # langgraph-api reads input/output schemas only from this one on Python < 3.12

__all__ = ["ImageRef", "Verdict", "TimelineEvent", "AgentState", "InspectTask", "Status"]

Status = Literal["running", "done", "capped", "failed", "stopped"]


class ImageRef(TypedDict):
    sha256: str  # content hash (of the png and/or codes hashes)
    png: Optional[str]  # run-relative path of the PNG, or None (codes only)
    codes: Optional[str]  # run-relative path of the codes file, or None (pixels only)
    h: int  # code grid (0 when no codes)
    w: int
    width: int  # pixels (0 when not decoded)
    height: int
    origin: str  # input | generate | edit | sketch | interleaved | decode


class Verdict(TypedDict):
    iteration: int
    claim_index: int
    claim: str
    passed: Optional[bool]  # None: the answer was neither yes nor no (counts as a failure)
    answer: str
    image: str  # sha256 of the inspected image
    retokenize: str  # which path actually ran: reuse | roundtrip
    error: Optional[str]


class TimelineEvent(TypedDict, total=False):
    node: str
    kind: str  # text | image | claims | verdict | review | error | note
    iteration: int
    text: str
    image: ImageRef
    seconds: float  # model time of the call behind this event
    data: dict[str, Any]


class AgentState(TypedDict, total=False):
    # inputs
    prompt: str
    inputs: list[ImageRef]
    max_iterations: int
    # plan / claims
    plan: str
    current_prompt: str
    claims: list[str]
    # loop bookkeeping
    iteration: int
    retokenize: str
    current: Optional[ImageRef]
    best: Optional[ImageRef]
    best_score: float
    notes: list[str]  # visual_reasoning: thoughts and observations so far
    action: str  # visual_reasoning: what think decided (answer | sketch | final | none)
    current_sketch: str  # visual_reasoning: what to draw next
    # outputs
    images: Annotated[list[ImageRef], operator.add]
    verdicts: Annotated[list[Verdict], operator.add]
    timeline: Annotated[list[TimelineEvent], operator.add]
    answer: str
    status: Status
    error: Optional[str]
    graph: str


class InspectTask(TypedDict):
    """The payload a ``Send`` hands to one ``inspect_claim`` task."""

    claim: str
    claim_index: int
    image: ImageRef
    iteration: int
    retokenize: str
