"""Scale-out for real: redis-server on loopback, an API process, queue worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import ORIENTATIONS, REPO, nifti_bytes, read_nifti, sphere_ct
from tests.deploy.conftest import FINE
from tests.service.test_api import assert_same_grid


def submit(client: httpx.Client, data: bytes) -> str:
    response = client.post("/jobs", files={"file": ("ct.nii.gz", data)})
    assert response.status_code == 202, response.text
    return response.headers["location"]


def wait_until(client: httpx.Client, url: str, done: callable, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if done(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"{url} did not get there in {timeout} s: {job}")


def finished(job: dict) -> bool:
    return job["state"] in ("done", "failed")


def segmenting(job: dict) -> bool:
    """Decoded and inside the sliding window (the runner reports 0.05 after decoding)."""
    return job["state"] == "running" and job["progress"] >= 0.05


def test_the_queue_worker_does_not_import_fastapi() -> None:
    code = "import sys, service.jobs.queue_worker; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_gpus_are_claimed_one_worker_each(redis_url: str) -> None:
    from service.jobs.queue_worker import claim_gpu
    from service.jobs.redis_queue import redis_settings

    async def scenario() -> list[int | None]:
        from arq import create_pool

        redis = await create_pool(redis_settings(redis_url))
        try:
            uuids = ["GPU-aaaa", "GPU-bbbb"]
            got = [await claim_gpu(redis, uuids, f"host:{pid}", ttl_s=0.3) for pid in (1, 2, 3)]
            await asyncio.sleep(0.5)  # the holders died: their claims lapse with the lease
            got.append(await claim_gpu(redis, uuids, "host:4", ttl_s=0.3))
            return got
        finally:
            await redis.aclose()

    assert asyncio.run(scenario()) == [0, 1, None, 0]


def test_an_unreachable_queue_answers_503_and_keeps_no_job(tmp_path, settings) -> None:
    from service.jobs.redis_queue import RedisDispatcher
    from service.jobs.store import JobStore

    store = JobStore(tmp_path / "var")
    upload = tmp_path / "ct.nii.gz"
    upload.write_bytes(b"not read")
    record = store.create({}, [("ct.nii.gz", upload)])

    class DeadPool:
        async def enqueue_job(self, *args, **kwargs):
            raise ConnectionRefusedError(111, "Connection refused")

    from service.errors import Busy

    with pytest.raises(Busy, match="queue is unreachable") as caught:
        asyncio.run(RedisDispatcher(store, settings, DeadPool()).submit(record.id))
    assert caught.value.retry_after_s == 10
    assert store.get(record.id) is None and not store.folder(record.id).exists()


def test_jobs_redis_lost_are_queued_again_when_an_api_connects(tmp_path, settings, redis_url) -> None:
    from service.jobs.redis_queue import QUEUE_NAME, RedisDispatcher
    from service.jobs.store import JobStore

    store = JobStore(tmp_path / "var")
    ids = []
    for name in ("queued", "running", "done"):
        upload = tmp_path / f"{name}.nii.gz"
        upload.write_bytes(b"not read")
        ids.append(store.create({}, [("ct.nii.gz", upload)]).id)
    store.claim(ids[1])  # a worker was running it when Redis lost everything
    store.finish(ids[2], {})
    settings = settings.model_copy(update={"queue_url": redis_url})

    async def scenario() -> tuple[list[bytes], int]:
        # Redis has no job (restarted without its data, or the API died before queueing them).
        first = await RedisDispatcher.connect(store, settings)
        queued = await first.pool.zrange(QUEUE_NAME, 0, -1)
        # A second API replica starting finds them queued: nothing is queued twice.
        second = await RedisDispatcher.connect(store, settings)
        again = await second.requeue_unfinished()
        await first.aclose()
        await second.aclose()
        return queued, again

    queued, again = asyncio.run(scenario())
    assert sorted(job_id.decode() for job_id in queued) == sorted(ids[:2])
    assert again == 0


@pytest.mark.slow
def test_twenty_jobs_spread_over_two_workers(server_factory, worker_factory, redis_url) -> None:
    workers = [worker_factory().start() for _ in range(2)]
    server = server_factory(queue_url=redis_url).start()
    for worker in workers:
        worker.wait_ready()
    ct, _ = sphere_ct(ORIENTATIONS["RAS"], size_xyz=(40, 36, 20))
    data = nifti_bytes(ct)
    with server.client() as client:
        urls = [submit(client, data) for _ in range(20)]
        jobs = [wait_until(client, url, finished) for url in urls]
        assert [job["state"] for job in jobs] == ["done"] * 20, [job["error"] for job in jobs]
        # Any API replica serves what any worker wrote: the mask is on the input's grid.
        assert_same_grid(read_nifti(client.get(jobs[-1]["links"]["mask"]).content), ct)
    ran_on = Counter(job["summary"]["worker"] for job in jobs)
    assert set(ran_on) == {worker.name for worker in workers}, ran_on


@pytest.mark.slow
def test_a_worker_killed_mid_job_loses_no_job(server_factory, worker_factory, redis_url, fine_checkpoint_dir) -> None:
    # Workers on the 1 mm model, where this CT is a few hundred windows: a job lasts seconds.
    slow_model = {"queue_lease_s": 1.5, "model": FINE, "model_dir": fine_checkpoint_dir}
    big, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(112, 112, 96), spacing_xyz=(1.0, 1.0, 1.0))
    slow = nifti_bytes(big)
    first = worker_factory(**slow_model).start()
    server = server_factory(queue_url=redis_url).start()
    first.wait_ready()
    with server.client() as client:
        # 1. Killed mid-job: the job is run again, by the next worker, to the end.
        url = submit(client, slow)
        wait_until(client, url, segmenting)
        first.kill()  # SIGKILL: no chance to hand anything back
        assert client.get(url).json()["state"] == "running", "the job finished before the kill: make it slower"
        second = worker_factory(**slow_model).start().wait_ready()
        job = wait_until(client, url, finished)
        assert job["state"] == "done", job["error"]
        assert job["summary"]["worker"] == second.name != first.name
        assert job["summary"]["model"] == FINE
        assert_same_grid(read_nifti(client.get(job["links"]["mask"]).content), big)
        assert "try 2" in second.log.read_text()

        # 2. Its worker killed every time: failed on the record, with the reason, never dropped.
        url = submit(client, slow)
        wait_until(client, url, segmenting)
        second.kill()
        assert client.get(url).json()["state"] == "running", "the job finished before the kill: make it slower"
        third = worker_factory(queue_max_tries=1, **slow_model).start().wait_ready()
        job = wait_until(client, url, finished)
        assert job["state"] == "failed"
        assert job["error"]["error"] == "worker_lost"
        assert "started 1 time(s) and each time its worker stopped" in job["error"]["detail"]
        # The worker that failed it is still taking work.
        ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(40, 36, 20))
        after = wait_until(client, submit(client, nifti_bytes(ct)), finished)
        assert after["state"] == "done" and after["summary"]["worker"] == third.name
