"""Running one queued job: the segmentation use case, its files written beside its input, and the
outcome (done with its summary, or failed with the error's code and sentence) in the job store.
The in-process dispatcher and the Redis queue worker both run jobs through `JobRunner.run`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from service.errors import LiversegError, QueueFull
from service.io.decode import Upload
from service.jobs.store import JobRecord, JobStore
from service.options import SegmentParams
from service.segmentation import JOB_FILES, SegmentUpload
from service.settings import Settings
from service.worker import InferenceWorker

log = logging.getLogger(__name__)
T = TypeVar("T")


class JobRunner:
    """Runs jobs of one store on one inference worker."""

    def __init__(self, store: JobStore, worker: InferenceWorker, settings: Settings):
        self.store, self.worker, self.settings = store, worker, settings

    def run(self, job: JobRecord) -> None:
        """Decode, segment and encode one job; any failure is recorded on the job, never raised.

        Logs one line per outcome: the id, the input's bytes, the seconds, and the error code
        (never the client's sentence, which may quote its file's header).
        """
        started = time.perf_counter()
        outcome = "done"
        try:
            self._run(job)
        except LiversegError as error:
            outcome = f"failed ({error.code})"
            self.store.fail(job.id, error.code, error.detail)
        except Exception:
            outcome = "failed (internal_error)"
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, "internal_error", "The segmentation failed unexpectedly; the service log has details.")
        log.info("job %s %s: %d input bytes in %.1f s", job.id, outcome, job.input_bytes, time.perf_counter() - started)

    def _run(self, job: JobRecord) -> None:
        run = SegmentUpload(SegmentParams(**job.params), self.settings, self.worker)
        # A decoded job holds a slot as a synchronous request does (Settings.decoded_uploads);
        # while the synchronous route fills the line, its turn comes.
        ticket = _when_not_full(self.worker.decode_ticket)
        try:
            ticket.wait(None)
            self._run_decoded(job, run)
        finally:
            self.worker.give_back_decode_ticket(ticket)

    def _run_decoded(self, job: JobRecord, run: SegmentUpload) -> None:
        run.decode([Upload(name, path) for name, path in self.store.inputs(job.id)])
        self.store.set_progress(job.id, 0.05)

        last = [0.0]

        def progress(fraction: float) -> None:
            if time.monotonic() - last[0] > 0.5 or fraction >= 1:
                last[0] = time.monotonic()
                self.store.set_progress(job.id, 0.05 + 0.85 * fraction)

        task = run.task(progress)
        future = _when_not_full(lambda: self.worker.submit(task))
        run.finish(future.result())

        if self.store.get(job.id) is None:
            return  # deleted while it ran: drop the results
        started = time.perf_counter()
        folder = self.store.folder(job.id)
        for link, data in run.job_files().items():
            (folder / JOB_FILES[link]).write_bytes(data)
        summary = run.summary(time.perf_counter() - started)
        (folder / JOB_FILES["summary"]).write_text(summary.model_dump_json(indent=2))
        self.store.finish(job.id, summary.model_dump(), run.no_seg_reason)


def _when_not_full(take: Callable[[], T]) -> T:
    """take(), tried again every 0.2 s while it raises QueueFull: the synchronous route filled the
    queue (or the line for a decode slot); a job's turn comes."""
    while True:
        try:
            return take()
        except QueueFull:
            time.sleep(0.2)
