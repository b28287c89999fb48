"""``GET /v1/workflows`` and ``POST /v1/workflows/{name}/runs``."""

from __future__ import annotations

import asyncio

from typing import Any

from fastapi import APIRouter, Request

from .http_deps import Service, image_urls, run_failed_response, run_job
from .openai_requests import json_body
from .runtime import RunFailed
from .schemas import WorkflowArgs, WorkflowRunRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1/workflows")


@router.get("")
async def list_workflows(svc: Service) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "workflow"} for name in sorted(svc.workflows())]}


@router.post("/{name}/runs")
async def workflow_run(name: str, request: Request, svc: Service) -> Any:
    """Run the workflow; 200 only for a run that finished (done or capped). Bad inputs are a 400
    before it runs; a run that fails (a model call, a step) is a 422 ``run_failed`` with its error."""
    req = await json_body(request, WorkflowRunRequest)
    job = await asyncio.to_thread(svc.workflow_job, WorkflowArgs(name=name, inputs=req.inputs, seed=req.seed))
    try:
        r = await run_job(svc, request, job)
    except RunFailed as exc:
        return run_failed_response(exc)
    return {"id": r["thread_id"], "object": "workflow.run", "workflow": name, "status": r["status"],
            "answer": r["text"], "error": r["error"], "outputs": r.get("outputs", {}),
            "images": image_urls(svc, request, r["images"], req.response_format)}
