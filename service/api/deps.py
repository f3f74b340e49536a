"""Dependencies, as aliases that keep the routes short (full-stack-fastapi-template style)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import Unauthorized
from service.jobs.dispatch import Dispatcher
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.settings import Settings
from service.worker import InferenceWorker


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_worker(request: Request) -> InferenceWorker:
    return request.app.state.worker


def get_jobs(request: Request) -> JobStore:
    return request.app.state.jobs


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when LIVERSEG_API_KEYS is set.")


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """401 unless API keys are off or the request carries one of them in X-API-Key."""
    if not settings.api_keys:
        return
    if key is None or not any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
        raise Unauthorized("A valid API key is required in the X-API-Key header.")
