"""Fused MoE router (sigmoid group-limited top-k with expert bias): reference, Triton kernel,
host op and benchmark."""

from .op import group_topk_route, unsupported
from .reference import group_topk_route_reference

__all__ = ["group_topk_route", "group_topk_route_reference", "unsupported"]
