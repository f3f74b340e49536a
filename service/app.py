"""The FastAPI app: `create_app(settings)` wires the routers; the lifespan owns the worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api import errors
from service.api.body_limit import BodyLimitMiddleware
from service.api.docs_policy import DocsPolicyMiddleware
from service.api.request_metrics import RequestMetricsMiddleware
from service.api.routes import health, jobs, models, segment, viewer
from service.jobs.dispatch import Dispatcher, InProcessDispatcher
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.settings import Settings, get_settings
from service.worker import InferenceWorker

log = logging.getLogger(__name__)

DESCRIPTION = """Liver segmentation of CT. POST a volume (NIfTI, MHA, NRRD, or a DICOM series) to
`/segment` and get the liver mask back on exactly the input's grid. Not for clinical use."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for these settings (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The store first: a damaged database stops startup before any thread runs, so the
        # process exits instead of hanging on the worker's thread.
        store = JobStore(settings.data_dir)
        worker = InferenceWorker(device=settings.device, queue_size=settings.queue_size, model_dir=settings.model_dir,
                                 backend=settings.backend, decoded_uploads=settings.decoded_uploads)
        try:
            worker.start(warm=[settings.model])
        except Exception:  # serve /healthz and other models; /readyz says why not ready
            log.exception("could not load the default model %r", settings.model)
            worker.start(warm=[])
            worker.ready = False
        dispatcher: Dispatcher
        try:
            if settings.queue_url:  # scale-out: jobs go to Redis, queue workers run them (service.jobs.queue_worker)
                from service.jobs.redis_queue import RedisDispatcher

                dispatcher = await RedisDispatcher.connect(store, settings)
            else:
                dispatcher = InProcessDispatcher(store, JobRunner(store, worker, settings), settings).start()
        except BaseException:
            worker.stop()
            store.close()
            raise
        app.state.settings, app.state.worker, app.state.jobs = settings, worker, store
        app.state.dispatcher = dispatcher
        log.info("liverseg ready on %s with %s", worker.device, settings.model)
        yield
        await dispatcher.aclose()
        worker.stop()
        store.close()

    # A DICOM series comes as one multipart part per file: allow as many parts as an upload may
    # hold files (Starlette's default of 1000 answered a 1,001-slice series with 400).
    # FastAPIOffline: FastAPI with /docs and /redoc served from assets in the package, since
    # FastAPI's own pages load Swagger UI and ReDoc from a CDN, blank on a hospital network.
    docs_url, redoc_url = "/docs", "/redoc"  # FastAPIOffline keeps neither: the policy below needs them
    app = FastAPIOffline(
        title="liverseg", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
        form_limits={"max_files": settings.max_zip_members}, docs_url=docs_url, redoc_url=redoc_url,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    errors.install(app)
    for router in (segment.router, jobs.router, models.router, health.router, viewer.router):
        app.include_router(router)

    app.add_middleware(
        DocsPolicyMiddleware, paths=(docs_url, redoc_url, app.swagger_ui_oauth2_redirect_url)
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    return app
