"""The job store: run times and the estimate GET /jobs/{id} gives from them (eta_s); ids,
deletion, the queue's bounds, attempts, and the database's migration and damage."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from service.api.routes.jobs import estimated_seconds_left
from service.errors import Busy, NotFound
from service.jobs.store import SCHEMA_VERSION, JobsDatabaseError, JobStore, stored_name


def test_recent_run_seconds_are_those_of_done_jobs_newest_first(tmp_path: Path, monkeypatch) -> None:
    store = JobStore(tmp_path)
    now = [1000.0]
    monkeypatch.setattr("service.jobs.store.time.time", lambda: now[0])
    first, failed, second, running = (store.create({}, []).id for _ in range(4))

    def run(job_id: str, seconds: float, fail: bool = False) -> None:
        store.claim(job_id)
        now[0] += seconds
        store.fail(job_id, "invalid_volume", "2D") if fail else store.finish(job_id, {})

    run(first, 4.0)
    run(failed, 7.0, fail=True)  # a failure is not a run time
    run(second, 1.5)
    store.claim(running)  # still running: no run time yet
    assert store.recent_run_seconds() == [1.5, 4.0]
    assert store.recent_run_seconds(limit=1) == [1.5]


def test_eta_from_recent_runs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    queued = store.create({}, [])
    recent = [10.0, 20.0]  # a run takes 15 s
    # Third in line behind two workers busy: one round ahead, the round in progress, its own run.
    assert estimated_seconds_left(queued, 2, recent, running=2) == pytest.approx(45.0)
    # First in line with nothing running: its own run.
    assert estimated_seconds_left(queued, 0, recent, running=0) == pytest.approx(15.0)
    running = replace(queued, state="running", progress=0.6)
    assert estimated_seconds_left(running, None, recent, running=1) == pytest.approx(6.0)
    assert estimated_seconds_left(queued, 0, [], running=1) is None
    assert estimated_seconds_left(replace(queued, state="done"), None, recent, running=0) is None


# ---------------------------------------------------------------------------------------------
# Ids, deletion, bounds, attempts and the database itself


@pytest.mark.parametrize("job_id", [".", "..", "../jobs", "", "A" * 32, "0" * 31, "0" * 33, "x" * 10_000])
def test_an_id_the_store_did_not_make_names_no_folder_and_deletes_nothing(tmp_path: Path, job_id: str) -> None:
    store = JobStore(tmp_path)
    kept = store.create({}, [])
    with pytest.raises(NotFound, match="32 hex digits"):
        store.delete(job_id)
    with pytest.raises(NotFound):
        store.folder(job_id)
    assert (tmp_path / "jobs.sqlite3").exists() and store.folder(kept.id).is_dir()
    assert store.get(kept.id).state == "queued"


def test_delete_never_removes_a_folder_outside_the_jobs_folder(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    job_id = "0" * 32
    (tmp_path / "jobs" / job_id).symlink_to(outside)  # a job folder that resolves elsewhere
    with pytest.raises(ValueError, match="not a job folder"):
        store.delete(job_id)
    assert outside.is_dir()


def test_queued_jobs_and_their_bytes_are_bounded(tmp_path: Path) -> None:
    store = JobStore(tmp_path)

    def upload(size: int) -> list[tuple[str, Path]]:
        path = tmp_path / f"upload-{size}-{len(list(tmp_path.iterdir()))}"
        path.write_bytes(b"x" * size)
        return [("ct.nii.gz", path)]

    store.create({}, upload(600), max_jobs=2, max_bytes=1000)
    with pytest.raises(Busy, match="hold 600 bytes of uploads and this one 500 bytes") as full:
        store.create({}, upload(500), max_jobs=2, max_bytes=1000)
    assert full.value.retry_after_s == 30  # no run to learn from yet
    store.create({}, upload(400), max_jobs=2, max_bytes=1000)
    with pytest.raises(Busy, match="2 jobs are queued"):
        store.create({}, upload(1), max_jobs=2, max_bytes=1000)
    assert store.queued() == (2, 1000)
    assert len(list((tmp_path / "jobs").iterdir())) == 2  # refused uploads leave no folder
    store.claim_next()  # a running job no longer counts
    store.create({}, upload(1), max_jobs=2, max_bytes=1000)


def test_a_failed_create_leaves_no_folder_and_orphans_expire(tmp_path: Path, monkeypatch) -> None:
    store = JobStore(tmp_path)
    path = tmp_path / "upload"
    path.write_bytes(b"x")

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("service.jobs.store.shutil.move", full_disk)
        with pytest.raises(OSError):
            store.create({}, [("ct.nii.gz", path)])
    assert list((tmp_path / "jobs").iterdir()) == []
    orphan = tmp_path / "jobs" / ("f" * 32)  # as a crash between folder and row leaves it
    orphan.mkdir()
    kept = store.create({}, [])
    os.utime(orphan, (0, 0))
    os.utime(store.folder(kept.id), (0, 0))  # old, but it has its row
    store.expire(ttl_s=60)
    assert not orphan.exists() and store.folder(kept.id).is_dir()


def test_a_long_unicode_file_name_is_stored_in_a_short_ascii_one(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    path = tmp_path / "upload"
    path.write_bytes(b"x")
    name = "Leber-Übersicht-" + "\U0001d400" * 70 + ".nii.gz"  # 70 letters of 4 bytes: > 255 bytes
    record = store.create({}, [(name, path)])
    [(stored, stored_path)] = store.inputs(record.id)
    assert stored_path.read_bytes() == b"x"
    assert stored == "Leber-bersicht-.nii.gz" and stored_name("../../x\\evil.dcm") == "evil.dcm"


def test_a_job_that_stops_the_service_at_every_start_fails_after_the_tries(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create({}, [])
    for start in (1, 2, 3):
        assert store.claim_next().tries == start  # the service runs it ... and dies
        store.close()
        store = JobStore(tmp_path)  # the restart
        requeued, failed = store.requeue_interrupted(max_tries=3)
        assert (requeued, failed) == ((1, 0) if start < 3 else (0, 1))
    record = store.get(job.id)
    assert record.state == "failed" and record.error == "worker_lost"
    assert record.detail.startswith("The job was started 3 time(s) and each time the service stopped")


OLD_SCHEMA = """CREATE TABLE jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, progress REAL NOT NULL DEFAULT 0, params TEXT NOT NULL, summary TEXT,
    error TEXT, detail TEXT
)"""  # the table as every version before the schema was versioned wrote it


def test_a_database_of_the_unversioned_schema_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute(OLD_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, state, created_at, finished_at, params, summary) VALUES (?, 'done', 1, 2, '{}', ?)",
            ("a" * 32, json.dumps({"liver_volume_ml": 1500.0})),
        )
        db.execute("INSERT INTO jobs (id, state, created_at, params) VALUES (?, 'queued', 3, '{}')", ("b" * 32,))
    store = JobStore(tmp_path)
    assert store.get("a" * 32).summary == {"liver_volume_ml": 1500.0}
    assert store.claim_next().id == "b" * 32
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "is empty (0 bytes)"), (b"this is not a database" * 100, "is damaged (file is not a database)")],
)
def test_a_damaged_or_emptied_database_is_refused_with_what_to_do(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "jobs" / ("e" * 32)).mkdir(parents=True)  # a job the database no longer knows
    (tmp_path / "jobs.sqlite3").write_bytes(content)
    with pytest.raises(JobsDatabaseError, match=re.escape(says)) as refused:
        JobStore(tmp_path)
    assert "the job files under" in str(refused.value)
    assert (tmp_path / "jobs.sqlite3").read_bytes() == content  # nothing was changed


def test_a_database_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JobsDatabaseError, match="written by a newer liverseg"):
        JobStore(tmp_path)


def test_the_runner_logs_one_line_per_job_outcome(tmp_path: Path, caplog) -> None:
    import logging

    from service.errors import UnknownModel
    from service.jobs.runner import JobRunner
    from service.settings import Settings

    store = JobStore(tmp_path)
    upload = tmp_path / "upload"
    upload.write_bytes(b"this is not a CT" * 4)
    job = store.create({}, [("notes.txt", upload)])
    class NoModels:  # the job fails as a client's mistake would, before anything heavy runs
        def check_model(self, name: str):
            raise UnknownModel(f"No model {name!r} here, not a CT either")

    runner = JobRunner(store, worker=NoModels(), settings=Settings(data_dir=tmp_path))
    with caplog.at_level(logging.INFO, logger="service.jobs.runner"):
        runner.run(store.claim_next())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "service.jobs.runner"]
    assert line.startswith(f"job {job.id} failed (unknown_model): 64 input bytes in ")
    assert "not a CT" not in line  # the code, never the sentence
    assert store.get(job.id).error == "unknown_model"


def test_an_empty_file_with_no_jobs_beside_it_is_a_database_being_created(tmp_path: Path) -> None:
    # Another process (the API beside a queue worker) has created the file and not yet its header.
    (tmp_path / "jobs.sqlite3").write_bytes(b"")
    store = JobStore(tmp_path)
    assert store.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 0}


def test_processes_opening_an_old_database_together_all_migrate_it(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # The API and its queue workers start at once: each adds the missing columns, or finds them added.
    # SQLite refuses the switch to WAL at once (no waiting) in about 1 of 30 such starts: 60 rounds
    # caught it every time before the store retried it.
    for round_ in range(60):
        folder = tmp_path / str(round_)
        folder.mkdir()
        with sqlite3.connect(folder / "jobs.sqlite3") as db:
            db.execute(OLD_SCHEMA)
        with ThreadPoolExecutor(8) as pool:
            stores = list(pool.map(JobStore, [folder] * 8))
        assert all(store.counts()["queued"] == 0 for store in stores)
        for store in stores:
            store.close()
        with sqlite3.connect(folder / "jobs.sqlite3") as db:
            assert {row[1] for row in db.execute("PRAGMA table_info(jobs)")} >= {"tries", "input_bytes", "no_seg_reason"}


def test_a_database_another_process_keeps_locked_is_not_called_damaged(tmp_path: Path, monkeypatch) -> None:
    from service.jobs import store as store_module

    monkeypatch.setattr(store_module, "OPEN_WAIT_S", 0.3)
    JobStore(tmp_path).close()
    holder = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a stuck process holding the write lock
    try:
        with pytest.raises(JobsDatabaseError) as refused:
            JobStore(tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "stayed locked by another process for 0.3 s" in str(refused.value)
    assert "damaged" not in str(refused.value)
    JobStore(tmp_path).close()  # and once it is let go, it opens
