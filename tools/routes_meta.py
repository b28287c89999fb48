"""``GET /health`` (open), ``GET /v1/models`` and ``GET /v1/files/{name}``."""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse

from .http_deps import Service
from .openai_requests import reasoner_name
from .runtime import InputError

__all__ = ["health_router", "router"]

health_router = APIRouter()
router = APIRouter(prefix="/v1")


@health_router.get("/health")
async def health(svc: Service) -> dict:
    return {"status": "ok", "model": svc.model_name, "queue": svc.worker.stats()}


@router.get("/models")
async def models(svc: Service) -> dict:
    """The loaded checkpoint under its name, with its image sizes, and the agent alias."""
    limits = {"max_image_side": svc.max_image_side, "default_image_size": svc.model.get("default_image_size"),
              "decoder": svc.model.get("decoder_variant")}
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "lladauni",
                                        "checkpoint": svc.model.get("name"), **limits}
                                       for name in (svc.model_name, reasoner_name(svc))]}


@router.get("/files/{name}")
async def files(name: str, svc: Service) -> FileResponse:
    if not re.fullmatch(r"[0-9a-f]{32}\.png", name) or not (svc.files_dir / name).is_file():
        raise InputError(f"no file {name!r}", 404)
    return FileResponse(svc.files_dir / name, media_type="image/png")
