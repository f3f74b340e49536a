"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import torch
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import JobsDep, MetricsDep, SettingsDep, WorkerDep
from service.schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
def readyz(worker: WorkerDep, settings: SettingsDep, jobs: JobsDep) -> JSONResponse:
    """The default model is loaded and warmed, and the worker takes work; `queue_depth` counts all
    work waiting: /segment requests at the worker and queued jobs (in any worker's queue)."""
    if not worker.ready:
        return JSONResponse(
            {"error": "not_ready", "detail": f"The model {settings.model!r} is not loaded (see the service log)."},
            status_code=503, headers={"Retry-After": "5"},
        )
    jobs_queued = jobs.counts()["queued"]
    return JSONResponse({
        "status": "ready", "model": settings.model, "device": worker.device,
        "queue_depth": worker.queue_depth + jobs_queued,
        "requests_waiting": worker.queue_depth, "jobs_queued": jobs_queued,
    })


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep, worker: WorkerDep, jobs: JobsDep) -> Response:
    """Prometheus text format: requests, latency per stage, queue depth, jobs by state, GPU memory."""
    metrics.queue_depth.set(worker.queue_depth)
    for state, count in jobs.counts().items():
        metrics.jobs.labels(state).set(count)
    if worker.device.startswith("cuda"):
        metrics.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated(worker.device))
        metrics.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved(worker.device))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
