"""Feeds queued jobs to the worker one at a time and writes their results next to them."""

from __future__ import annotations

import logging
import threading
import time

from service.errors import Busy, LiversegError, UnsupportedOutput
from service.io.decode import Upload, decode_upload
from service.io.encode import image_to_nifti_bytes, mask_to_nifti_bytes, preview_png
from service.io.seg import make_seg
from service.jobs import JobRecord, JobStore
from service.options import SegmentParams, resolve_options
from service.results import build_summary
from service.settings import Settings
from service.worker import InferenceWorker, SegmentTask

log = logging.getLogger(__name__)

MASK, CONFIDENCE, PREVIEW, SUMMARY, SEG = "mask.nii.gz", "confidence.nii.gz", "preview.png", "summary.json", "seg.dcm"
NO_SEG = "No DICOM SEG was made"  # starts the warning that says why, for GET /jobs/{id}/seg


class JobRunner:
    """One thread that takes the oldest queued job, runs it on the worker, stores what it made."""

    def __init__(self, store: JobStore, worker: InferenceWorker, settings: Settings):
        self.store, self.worker, self.settings = store, worker, settings
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="liverseg-jobs")

    def start(self) -> None:
        requeued, lost = self.store.requeue_interrupted(self.settings.queue_max_tries)
        if requeued:
            log.info("re-queued %d job(s) interrupted by the last shutdown", requeued)
        if lost:
            log.warning(
                "failed %d job(s) as worker_lost: the service stopped during each of their last %d starts",
                lost, self.settings.queue_max_tries,
            )
        self._thread.start()

    def wake(self) -> None:
        """Tell the runner a job was queued."""
        self._wake.set()

    async def submit(self, job_id: str) -> None:
        """A job was queued in the store: wake the thread (with a queue URL, QueueDispatcher.submit instead)."""
        self.wake()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running job; queued ones stay queued for the next start."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        last_expiry = 0.0
        while not self._stopping:
            if time.monotonic() - last_expiry > 60:
                self.store.expire(self.settings.job_ttl_s)
                last_expiry = time.monotonic()
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.run(job)

    def run(self, job: JobRecord) -> None:
        """Decode, segment and encode one job; any failure is recorded on the job, never raised."""
        try:
            self._run(job)
        except LiversegError as error:
            self.store.fail(job.id, error.code, error.detail)
        except Exception:
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, "internal_error", "The segmentation failed unexpectedly; the service log has details.")

    def _run(self, job: JobRecord) -> None:
        params = SegmentParams(**job.params)
        started = time.perf_counter()
        volume = decode_upload([Upload(name, path) for name, path in self.store.inputs(job.id)], self.settings)
        decode_s = time.perf_counter() - started
        self.store.set_progress(job.id, 0.05)

        last = [0.0]

        def progress(fraction: float) -> None:
            if time.monotonic() - last[0] > 0.5 or fraction >= 1:
                last[0] = time.monotonic()
                self.store.set_progress(job.id, 0.05 + 0.85 * fraction)

        model_name = params.model or self.settings.model
        options = resolve_options(self.worker.check_model(model_name), params, self.settings)
        task = SegmentTask(volume.image, model_name, options, progress)
        while True:
            try:
                future = self.worker.submit(task)
                break
            except Busy:
                time.sleep(0.2)  # the synchronous route filled the queue; our turn comes
        result = future.result()

        if self.store.get(job.id) is None:
            return  # deleted while it ran: drop the results
        started = time.perf_counter()
        folder = self.store.folder(job.id)
        segmentation = result.segmentation
        (folder / MASK).write_bytes(mask_to_nifti_bytes(segmentation.mask))
        if segmentation.confidence is not None:
            (folder / CONFIDENCE).write_bytes(image_to_nifti_bytes(segmentation.confidence))
        (folder / PREVIEW).write_bytes(preview_png(volume.image, segmentation.mask, segmentation.confidence))
        if volume.source == "dicom":
            try:
                (folder / SEG).write_bytes(make_seg(volume, segmentation.mask, result.model.card))
            except UnsupportedOutput as error:  # the mask stands; the SEG's absence is explained
                volume.warnings.append(f"{NO_SEG}: {error.detail}")
        summary = build_summary(volume, result, {"decode": decode_s, "encode": time.perf_counter() - started})
        (folder / SUMMARY).write_text(summary.model_dump_json(indent=2))
        self.store.finish(job.id, summary.model_dump())
