"""Scale-out over Redis with arq: API replicas put job ids on the queue, queue workers take them.

Only the job id travels through Redis. The job itself (its uploaded files, its row in the jobs
table, its results) lives in the shared data dir, so whichever worker runs it and whichever API
replica is asked about it see the same job. `service.jobs.queue_worker` is the other half.

With LIVERSEG_QUEUE_URL unset none of this is imported: `InProcessDispatcher` runs the jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from service.errors import QueueUnreachable
from service.jobs.store import JobStore
from service.settings import Settings

log = logging.getLogger(__name__)

QUEUE_NAME = "liverseg:jobs"
FUNCTION = "segment_job"
# arq drops a job not started within this long after it was queued (its default is a day);
# a long backlog must not lose jobs, so keep them as long as a finished job's files.
MIN_QUEUED_LIFETIME = timedelta(days=7)


def redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for a redis://host:port/db (or rediss://, unix://) URL."""
    return RedisSettings.from_dsn(url)


def dumps(value: object) -> bytes:
    """JSON, not arq's default pickle: a worker must never unpickle what it reads from Redis."""
    return json.dumps(value, default=str).encode()


def loads(data: bytes) -> object:
    """The inverse of `dumps`."""
    return json.loads(data)


async def connect(settings: Settings) -> ArqRedis:
    """A connection pool to the queue named by settings.queue_url."""
    if not settings.queue_url:
        raise ValueError("LIVERSEG_QUEUE_URL is not set: there is no queue to connect to.")
    return await create_pool(
        redis_settings(settings.queue_url), job_serializer=dumps, job_deserializer=loads, default_queue_name=QUEUE_NAME
    )


class RedisDispatcher:
    """The API side of scale-out (a `Dispatcher`): accepted jobs go onto Redis for the queue workers."""

    def __init__(self, store: JobStore, settings: Settings, pool: ArqRedis):
        self.store, self.settings, self.pool = store, settings, pool
        self._last_expiry = 0.0

    @classmethod
    async def connect(cls, store: JobStore, settings: Settings) -> RedisDispatcher:
        """Connect to settings.queue_url (arq retries a few times, then raises) and requeue what Redis lost."""
        dispatcher = cls(store, settings, await connect(settings))
        await dispatcher.requeue_unfinished()
        return dispatcher

    async def _enqueue(self, job_id: str) -> bool:
        """Put one job on the queue; False when it is there already (queued, running, or just finished)."""
        lifetime = max(MIN_QUEUED_LIFETIME, timedelta(seconds=self.settings.job_ttl_s))
        # The job id doubles as arq's id, so a job is never on the queue twice.
        return await self.pool.enqueue_job(FUNCTION, job_id, _job_id=job_id, _expires=lifetime) is not None

    async def requeue_unfinished(self) -> int:
        """Queue again every job the store holds unfinished that Redis does not know; how many.

        Covers a Redis restarted without its data, and an API process that died between accepting a
        job and queueing it. Jobs Redis holds (waiting, or running on a live worker) are left alone.
        """
        requeued = 0
        for job_id in await asyncio.to_thread(self.store.unfinished):
            requeued += await self._enqueue(job_id)
        if requeued:
            log.warning("queued %d unfinished job(s) again that %s did not hold", requeued, self.settings.queue_url)
        return requeued

    async def submit(self, job_id: str) -> None:
        """Put a job the store just accepted on the queue; Busy (503) and no job when Redis is unreachable."""
        try:
            await self._enqueue(job_id)
        except (RedisError, OSError) as error:
            log.error("could not queue job %s on %s: %s", job_id, self.settings.queue_url, error)
            await asyncio.to_thread(self.store.delete, job_id)
            raise QueueUnreachable("The job queue is unreachable; try again shortly.", retry_after_s=10) from None
        if time.monotonic() - self._last_expiry > 60:  # the JobRunner's thread does this when there is no queue
            self._last_expiry = time.monotonic()
            await asyncio.to_thread(self.store.expire, self.settings.job_ttl_s)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.pool.aclose()
