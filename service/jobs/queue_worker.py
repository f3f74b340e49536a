"""`python -m service.jobs.queue_worker`: a GPU worker taking jobs from Redis (arq); run one per GPU.

Each process owns an InferenceWorker on its device and runs a job exactly as the in-process
dispatcher does (`JobRunner.run`: decode, segment, encode; a failure is recorded on the job),
writing the results into the shared data dir, where any API replica serves them.

Losing no job. arq keeps a job on the queue until it has finished and marks the one running
with an "in progress" key that expires. We keep that key alive while the job runs (renewed
every third of LIVERSEG_QUEUE_LEASE_S), so when a worker dies (SIGKILL, out of memory, a
crashed driver, a lost host) its job's key lapses within the lease and another worker takes
the job, arq counting the try. A job whose worker died LIVERSEG_QUEUE_MAX_TRIES times is failed
with `worker_lost` and a sentence saying so, instead of taking down worker after worker.

Several GPUs visible to one worker (compose's `count: all`; `--scale worker=N` cannot give each
replica its own device): with LIVERSEG_DEVICE=auto each worker takes the first GPU that no live
worker holds, through a Redis key per GPU UUID (unique across hosts), renewed like the job lease.

Nothing here imports FastAPI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from typing import Any

import torch
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from redis.exceptions import RedisError

from client.log_setup import configure_logging
from model_zoo.device import resolve_device
from service.jobs.redis_queue import FUNCTION, QUEUE_NAME, dumps, loads, redis_settings
from service.jobs.runner import JobRunner
from service.jobs.store import JobsDatabaseError, JobStore, lost_detail
from service.settings import Settings, get_settings
from service.worker import InferenceWorker

log = logging.getLogger(__name__)

GPU_KEY_PREFIX = "liverseg:gpu:"


def worker_name() -> str:
    """host:pid, as the summary's `worker` field records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def claim_gpu(redis: ArqRedis, uuids: list[str], owner: str, ttl_s: float) -> int | None:
    """Index of the first GPU (by UUID) that no other live worker holds, now held by `owner`; None if all are."""
    for index, uuid in enumerate(uuids):
        if await redis.set(GPU_KEY_PREFIX + uuid, owner, nx=True, px=int(ttl_s * 1000)):
            return index
    return None


async def _renew(redis: ArqRedis, key: str, ttl_s: float) -> None:
    """Keep `key` alive while this task runs (cancel it to let go)."""
    while True:
        try:
            await redis.pexpire(key, int(ttl_s * 1000))
        except (RedisError, OSError) as error:  # a blip must not end the renewals; the next one may pass
            log.warning("could not renew %s: %s", key, error)
        await asyncio.sleep(ttl_s / 3)


async def _choose_device(ctx: dict[str, Any], settings: Settings) -> str:
    device = resolve_device(settings.device)
    if settings.device != "auto" or torch.cuda.device_count() < 2:
        return device
    uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    index = await claim_gpu(ctx["redis"], uuids, ctx["name"], settings.queue_lease_s)
    if index is None:
        log.warning("every visible GPU is held by another worker; sharing cuda:0 (run as many workers as GPUs)")
        return "cuda:0"
    ctx["gpu_lease"] = asyncio.create_task(_renew(ctx["redis"], GPU_KEY_PREFIX + uuids[index], settings.queue_lease_s))
    return f"cuda:{index}"


async def startup(ctx: dict[str, Any]) -> None:
    """Pick the device, load and warm the default model, open the shared jobs table."""
    settings: Settings = ctx["settings"]
    device = await _choose_device(ctx, settings)
    worker = InferenceWorker(device=device, queue_size=settings.queue_size, model_dir=settings.model_dir,
                             backend=settings.backend, decoded_uploads=settings.decoded_uploads)
    await asyncio.to_thread(worker.start, [settings.model])
    ctx["runner"] = JobRunner(JobStore(settings.data_dir), worker, settings)
    log.info("queue worker %s ready on %s with %s", ctx["name"], worker.device, settings.model)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Finish what the inference worker accepted, close the jobs table, let the GPU go."""
    if lease := ctx.get("gpu_lease"):
        lease.cancel()
    if runner := ctx.get("runner"):
        await asyncio.to_thread(runner.worker.stop)
        runner.store.close()


async def segment_job(ctx: dict[str, Any], job_id: str) -> str:
    """Run one queued job (arq calls this); returns the job's final state, for arq's log."""
    settings: Settings = ctx["settings"]
    runner: JobRunner = ctx["runner"]
    tries = ctx["job_try"]
    record = runner.store.get(job_id)
    if record is None or record.state in ("done", "failed"):
        # Deleted by its client, or finished by a worker that died before telling arq: nothing to do,
        # and a finished job's record must not be overwritten by the worker_lost below.
        return "skipped"
    if tries > settings.queue_max_tries:
        # arq is allowed one try more than we are, so that the job is failed here, on the record.
        runner.store.fail(job_id, "worker_lost", lost_detail(tries - 1, "its worker", "The queue workers' logs"))
        return "failed"
    job = runner.store.claim(job_id)
    if job is None:
        return "skipped"  # deleted or finished since the check above
    if tries > 1:
        log.warning("job %s: try %d on %s (its last worker died)", job_id, tries, ctx["name"])
    lease = asyncio.create_task(_renew(ctx["redis"], in_progress_key_prefix + job_id, settings.queue_lease_s))
    try:
        await asyncio.to_thread(runner.run, job)  # blocking: decode, the GPU, encode; never raises
    finally:
        lease.cancel()
    record = runner.store.get(job_id)
    return "deleted" if record is None else record.state


def make_worker(settings: Settings) -> Worker:
    """The arq worker for these settings: one job at a time (one device), JSON on the wire."""
    return Worker(
        functions=[func(segment_job, name=FUNCTION, max_tries=settings.queue_max_tries + 1)],
        queue_name=QUEUE_NAME,
        redis_settings=redis_settings(settings.queue_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings, "name": worker_name()},
        max_jobs=1,
        # No run-time limit: the pipeline cannot be interrupted; a dead worker is caught by the lease.
        job_timeout=None,
        # SIGTERM (docker stop): take no new job, finish the running one, then exit.
        job_completion_wait=int(settings.request_timeout_s),
        job_serializer=dumps,
        job_deserializer=loads,
        poll_delay=0.25,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.jobs.queue_worker",
        description="Take segmentation jobs from the Redis queue at LIVERSEG_QUEUE_URL; run one per GPU.",
    )
    parser.parse_args(argv)
    settings = get_settings()
    if not settings.queue_url:
        parser.error("LIVERSEG_QUEUE_URL is not set (e.g. redis://redis:6379/0): there is no queue to take jobs from")
    configure_logging(settings.log_level, log_format=settings.log_format)
    try:  # a damaged jobs database: one line and exit 1, not a traceback from arq's startup
        JobStore(settings.data_dir).close()
    except JobsDatabaseError as error:
        sys.exit(f"liverseg-worker: {error}")
    with contextlib.suppress(KeyboardInterrupt):
        make_worker(settings).run()


if __name__ == "__main__":
    main()
