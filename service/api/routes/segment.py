"""POST /segment: a CT in, the liver mask (or its summary) out, synchronously."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from service.api.deps import MetricsDep, SettingsDep, WorkerDep, require_api_key
from service.api.responses import ERRORS
from service.api.uploads import FileField, FilesField, collect, spool
from service.errors import TimedOut
from service.metrics import Metrics
from service.options import SegmentParams
from service.segmentation import SegmentUpload
from service.settings import Settings
from service.summary import summary_headers
from service.worker import InferenceWorker

router = APIRouter(tags=["segmentation"], dependencies=[Depends(require_api_key)])
# The summary as a reference to its component (Job holds it, so it is there): an inline
# Summary.model_json_schema() kept pydantic's "#/$defs/..." references, which ReDoc refused
# ("Invalid reference token: $defs") and so showed no page at all.
SUMMARY_REF = {"$ref": "#/components/schemas/Summary"}


@router.post(
    "/segment",
    responses={
        200: {
            "description": "The mask (.nii.gz, uint8, the input's exact geometry), its summary, a SEG or a confidence map.",
            "content": {"application/gzip": {}, "application/dicom": {}, "application/json": {"schema": SUMMARY_REF}},
        },
        **ERRORS,
    },
    response_class=Response,
)
async def segment(
    request: Request,
    params: Annotated[SegmentParams, Query()],
    settings: SettingsDep,
    worker: WorkerDep,
    metrics: MetricsDep,
    file: FileField = None,
    files: FilesField = None,
) -> Response:
    """Segment the liver in one CT and answer when it is done (large studies: use /jobs)."""
    parts = collect(file, files)
    run = SegmentUpload(params, settings, worker)  # an unknown model or option: before the upload is read
    deadline = time.monotonic() + settings.request_timeout_s
    # Decode only into a free slot (Settings.decoded_uploads), in arrival order: with many
    # clients the others wait here as files on disk, not as volumes in memory.
    ticket = worker.decode_ticket()
    try:
        with tempfile.TemporaryDirectory(prefix="upload-", dir=settings.data_dir) as folder:
            uploads = await run_in_threadpool(spool, parts, Path(folder))
            while not await run_in_threadpool(ticket.wait, min(1.0, max(deadline - time.monotonic(), 0.0))):
                if time.monotonic() >= deadline:
                    raise _timed_out(settings)
                if await request.is_disconnected():
                    return Response(status_code=499)  # nginx's "client closed request": nobody reads it
            await run_in_threadpool(run.decode, uploads)
        return await _segment(request, run, params, worker, metrics, deadline, settings)
    finally:
        worker.give_back_decode_ticket(ticket)


def _timed_out(settings: Settings) -> TimedOut:
    return TimedOut(
        f"The segmentation did not finish within {settings.request_timeout_s:.0f} s; "
        "submit large studies to /jobs instead.",
        retry_after_s=30,
    )


async def _segment(request: Request, run: SegmentUpload, params: SegmentParams, worker: InferenceWorker,
                   metrics: Metrics, deadline: float, settings: Settings) -> Response:
    """Run the decoded upload on the worker and build the answer."""
    task = run.task()
    future = worker.submit(task)
    waiting = asyncio.wrap_future(future)
    while not waiting.done():
        # Nobody will collect an answer past the deadline or after the client left: the worker
        # stops the task at its next window batch and serves the requests behind it.
        await asyncio.wait({waiting}, timeout=min(1.0, max(deadline - time.monotonic(), 0.0)))
        if waiting.done():
            break
        if time.monotonic() >= deadline:
            task.cancelled.set()
            future.cancel()
            raise _timed_out(settings)
        if await request.is_disconnected():
            task.cancelled.set()
            future.cancel()
            return Response(status_code=499)
    result = waiting.result()

    run.finish(result)
    started = time.perf_counter()
    body = None
    if params.output != "json":
        body, media_type, filename = await run_in_threadpool(run.encode, params.output)
    summary = run.summary(time.perf_counter() - started)
    metrics.observe_stages(summary.timings_s)
    if body is None:
        return JSONResponse(summary.model_dump(mode="json"))
    headers = summary_headers(summary) | {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type=media_type, headers=headers)
