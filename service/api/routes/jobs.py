"""Asynchronous jobs: POST /jobs answers 202 at once; poll GET /jobs/{id}; fetch the files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from service.api.deps import DispatcherDep, JobsDep, SettingsDep, WorkerDep, require_api_key
from service.api.responses import ERRORS
from service.api.uploads import FileField, FilesField, collect, spool
from service.errors import NotFound, NotReady, UnsupportedOutput
from service.jobs.store import JobRecord, JobStore, is_job_id, not_found
from service.jobs.viewer_ct import job_ct_nifti
from service.options import SegmentParams, resolve_options
from service.schemas import ErrorBody, Job
from service.segmentation import JOB_FILES
from service.summary import warnings_header
from service.worker import InferenceWorker

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])


def job_id_in_path(
    job_id: Annotated[str, PathParam(description="The id POST /jobs gave (32 hex digits).")],
) -> str:
    """Every /jobs/{id} route's id, refused (404) unless it has the store's own form, before it
    names a row or a folder: `..` once named the whole data dir."""
    if not is_job_id(job_id):
        raise not_found(job_id)
    return job_id


JobId = Annotated[str, Depends(job_id_in_path)]


def estimated_seconds_left(
    record: JobRecord, position: int | None, recent_run_s: list[float], running: int
) -> float | None:
    """Rough seconds until a job finishes: the mean recent run time, times the rounds of queued jobs
    ahead of it over the `running` workers (at least one), the round in progress and its own run.
    None for a finished job, or before any run to learn from."""
    if record.state not in ("queued", "running") or not recent_run_s:
        return None
    mean = sum(recent_run_s) / len(recent_run_s)
    if record.state == "running":
        return max(0.0, (1 - record.progress) * mean)
    return mean * ((position or 0) // max(running, 1) + (1 if running else 0) + 1)


def _job(record: JobRecord, store: JobStore, worker: InferenceWorker) -> Job:
    position = store.position(record.id) if record.state == "queued" else None
    eta = None
    if record.state in ("queued", "running"):  # a finished job costs no queries for an estimate
        # This process's worker knows its own runs; in queue mode it runs none, and the store,
        # which every queue worker writes, does.
        recent = worker.recent_seconds or store.recent_run_seconds()
        running = store.counts()["running"] if record.state == "queued" else 0
        eta = estimated_seconds_left(record, position, recent, running)
    base = f"/jobs/{record.id}"
    links = {"self": base}
    if record.state == "done":
        links |= {"mask": f"{base}/mask", "preview": f"{base}/preview.png", "summary": f"{base}/summary", "ct": f"{base}/ct"}
        if (store.folder(record.id) / JOB_FILES["confidence"]).exists():
            links["confidence"] = f"{base}/confidence"
        if (store.folder(record.id) / JOB_FILES["seg"]).exists():
            links["seg"] = f"{base}/seg"
        for link in ("rtstruct", "probability"):
            if (store.folder(record.id) / JOB_FILES[link]).exists():
                links[link] = f"{base}/{link}"
    return Job(
        id=record.id, state=record.state, progress=record.progress, created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at, queue_position=position, eta_s=eta,
        summary=record.summary, links=links,
        error=None if record.error is None else ErrorBody(error=record.error, detail=record.detail or ""),
    )


def _record(store: JobStore, job_id: str) -> JobRecord:
    record = store.get(job_id)
    if record is None:
        raise not_found(job_id)
    return record


def _finished(store: JobStore, job_id: str, what: str) -> JobRecord:
    """The job's record when it is done; NotReady (409) while it is queued or running, or failed."""
    record = _record(store, job_id)
    if record.state == "failed":
        raise NotReady(f"The job failed ({record.error}): {record.detail}")
    if record.state != "done":
        raise NotReady(f"The job is {record.state} ({record.progress:.0%}); its {what} is not ready yet.")
    return record


def _finished_file(store: JobStore, job_id: str, link: str, what: str) -> Path:
    _finished(store, job_id, what)
    path = store.folder(job_id) / JOB_FILES[link]
    if not path.exists():
        raise NotFound(f"This job has no {what}" + (" (ask for it with confidence=true)." if link == "confidence" else "."))
    return path


@router.post("", status_code=202, response_model=Job, responses=ERRORS)
async def create_job(
    params: Annotated[SegmentParams, Query()],
    settings: SettingsDep,
    store: JobsDep,
    dispatcher: DispatcherDep,
    worker: WorkerDep,
    response: Response,
    file: FileField = None,
    files: FilesField = None,
) -> Job:
    """Accept a CT for segmentation in the background; answers 202 with the job's Location."""
    parts = collect(file, files)
    if params.output not in ("nifti", "json"):
        raise UnsupportedOutput("A job makes every output; fetch them from its links (leave 'output' out).")
    # Resolved now, so that options the model cannot take are refused here, not failed after the 202.
    resolve_options(worker.check_model(params.model or settings.model), params, settings)
    limits = {"max_jobs": settings.max_queued_jobs, "max_bytes": settings.max_queued_bytes}
    await run_in_threadpool(store.check_room, **limits)  # before spooling: a full queue costs no disk
    with tempfile.TemporaryDirectory(prefix="upload-", dir=settings.data_dir) as folder:
        uploads = await run_in_threadpool(spool, parts, Path(folder))
        record = await run_in_threadpool(
            store.create, params.model_dump(), [(u.filename, u.path) for u in uploads], **limits
        )
    await dispatcher.submit(record.id)
    response.headers["Location"] = f"/jobs/{record.id}"
    return _job(record, store, worker)


@router.get("/{job_id}", response_model=Job, responses={404: {"model": ErrorBody}})
def get_job(job_id: JobId, store: JobsDep, worker: WorkerDep) -> Job:
    """Where a job stands: state, progress 0-1, queue position, and its summary once done."""
    return _job(_record(store, job_id), store, worker)


@router.get("/{job_id}/mask", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def get_mask(job_id: JobId, store: JobsDep) -> FileResponse:
    """The liver mask, .nii.gz uint8 on the input's exact grid."""
    return FileResponse(_finished_file(store, job_id, "mask", "mask"), media_type="application/gzip", filename="liver_mask.nii.gz")


@router.get("/{job_id}/confidence", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def get_confidence(job_id: JobId, store: JobsDep) -> FileResponse:
    """The confidence map, .nii.gz float32 in [0, 1] on the input's grid (jobs made with confidence=true)."""
    return FileResponse(
        _finished_file(store, job_id, "confidence", "confidence map"), media_type="application/gzip",
        filename="liver_confidence.nii.gz",
    )


@router.get(
    "/{job_id}/seg", response_class=FileResponse,
    responses={status: {"model": ErrorBody} for status in (404, 409, 422)},
)
def get_seg(job_id: JobId, store: JobsDep) -> FileResponse:
    """The liver as a DICOM SEG referencing the uploaded series; 422 when the input was not DICOM."""
    record = _record(store, job_id)
    if record.state == "done" and not (store.folder(job_id) / JOB_FILES["seg"]).exists():
        # The input's fault, as for output=dicom-seg on /segment: 422, with the reason the job keeps.
        reason = record.no_seg_reason or "No DICOM SEG was made for this job."
        raise UnsupportedOutput(f"{reason} Fetch the mask (/mask) instead.")
    path = _finished_file(store, job_id, "seg", "DICOM SEG")
    warnings = ((record.summary or {}).get("input") or {}).get("warnings") or []
    return FileResponse(path, media_type="application/dicom", filename="liver_seg.dcm", headers=warnings_header(warnings))


@router.get(
    "/{job_id}/rtstruct", response_class=FileResponse,
    responses={status: {"model": ErrorBody} for status in (404, 409, 422)},
)
def get_rtstruct(job_id: JobId, store: JobsDep) -> FileResponse:
    """The liver as a DICOM RT Structure Set referencing the uploaded series; 422 when the input was not DICOM."""
    record = _record(store, job_id)
    if record.state == "done" and not (store.folder(job_id) / JOB_FILES["rtstruct"]).exists():
        reason = (
            f"An RT Structure Set, like a DICOM SEG, references its source series: {record.no_seg_reason}"
            if record.no_seg_reason else "No RT Structure Set was made for this job (the summary's warnings say why)."
        )
        raise UnsupportedOutput(f"{reason} Fetch the mask (/mask) instead.")
    path = _finished_file(store, job_id, "rtstruct", "RT Structure Set")
    warnings = ((record.summary or {}).get("input") or {}).get("warnings") or []
    return FileResponse(path, media_type="application/dicom", filename="liver_rtstruct.dcm", headers=warnings_header(warnings))


@router.get("/{job_id}/probability", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def get_probability(job_id: JobId, store: JobsDep) -> FileResponse:
    """The calibrated liver probability, .nii.gz uint8 with scl_slope 1/255 on the input's grid;
    thresholded at 0.5 it is the mask."""
    return FileResponse(
        _finished_file(store, job_id, "probability", "probability map"), media_type="application/gzip",
        filename="liver_probability.nii.gz",
    )


@router.get("/{job_id}/preview.png", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def get_preview(job_id: JobId, store: JobsDep) -> FileResponse:
    """Axial and coronal slices with the mask (and confidence) drawn over the CT."""
    return FileResponse(_finished_file(store, job_id, "preview", "preview"), media_type="image/png")


@router.get("/{job_id}/summary", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
def get_summary(job_id: JobId, store: JobsDep) -> FileResponse:
    """The JSON summary (as in GET /jobs/{id}), as a file to keep beside the mask."""
    return FileResponse(
        _finished_file(store, job_id, "summary", "summary"), media_type="application/json", filename="liver_summary.json",
    )


@router.get("/{job_id}/ct", response_class=FileResponse, responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})
async def get_ct(job_id: JobId, store: JobsDep, settings: SettingsDep) -> FileResponse:
    """The CT the mask was made on, .nii.gz in HU on the input's grid, for the viewer at / (made
    from the stored input on the first request, so it takes a decode's time once)."""
    _finished(store, job_id, "CT")
    path = await run_in_threadpool(job_ct_nifti, store, job_id, settings)
    return FileResponse(path, media_type="application/gzip", filename="ct.nii.gz")


@router.delete("/{job_id}", status_code=204, response_class=Response, responses={404: {"model": ErrorBody}})
def delete_job(job_id: JobId, store: JobsDep) -> Response:
    """Forget a job and delete its files (a running job finishes, then its results are dropped)."""
    if not store.delete(job_id):
        raise not_found(job_id)
    return Response(status_code=204)


@router.get("", response_model=dict[str, int])
def count_jobs(store: JobsDep) -> JSONResponse:
    """Number of jobs in each state."""
    return JSONResponse(store.counts())
