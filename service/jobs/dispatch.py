"""How an accepted job reaches a runner: the `Dispatcher` the API holds, and its in-process kind.

With LIVERSEG_QUEUE_URL unset, `InProcessDispatcher` runs jobs on a thread of the API process;
with it set, `service.jobs.redis_queue.RedisDispatcher` puts them on Redis for queue workers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Protocol

from service.jobs.runner import JobRunner
from service.jobs.store import JobStore
from service.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """What the API does with a job the store has just accepted, and at shutdown."""

    async def submit(self, job_id: str) -> None:
        """Hand the job on; Busy (503) when it cannot be."""

    async def aclose(self) -> None:
        """Stop taking jobs (a running one finishes; queued ones stay queued)."""


class InProcessDispatcher:
    """One thread that takes the oldest queued job and runs it; also expires finished jobs."""

    def __init__(self, store: JobStore, runner: JobRunner, settings: Settings):
        self.store, self.runner, self.settings = store, runner, settings
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="liverseg-jobs")

    def start(self) -> InProcessDispatcher:
        """Re-queue what the last shutdown interrupted (failing jobs that stopped it every time), then run."""
        requeued, lost = self.store.requeue_interrupted(self.settings.queue_max_tries)
        if requeued:
            log.info("re-queued %d job(s) interrupted by the last shutdown", requeued)
        if lost:
            log.warning(
                "failed %d job(s) as worker_lost: the service stopped during each of their last %d starts",
                lost, self.settings.queue_max_tries,
            )
        self._thread.start()
        return self

    async def submit(self, job_id: str) -> None:
        """The job is queued in the store: wake the thread."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the running job; queued ones stay queued for the next start."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

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
            self.runner.run(job)
