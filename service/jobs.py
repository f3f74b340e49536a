"""Asynchronous jobs that survive a restart: a SQLite table plus a folder of files per job."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.schemas import JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress REAL NOT NULL DEFAULT 0,
    params TEXT NOT NULL,
    summary TEXT,
    error TEXT,
    detail TEXT
)
"""


@dataclass(frozen=True)
class JobRecord:
    """A row of the jobs table."""

    id: str
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    params: dict
    summary: dict | None
    error: str | None
    detail: str | None


class JobStore:
    """Jobs and their files under `data_dir`; safe to use from several threads."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(data_dir) / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def folder(self, job_id: str) -> Path:
        """Where a job's input and result files live."""
        return self.root / job_id

    def create(self, params: dict, inputs: list[tuple[str, Path]]) -> JobRecord:
        """Accept a job: move its uploaded files under its folder and queue it."""
        job_id = uuid.uuid4().hex
        input_dir = self.folder(job_id) / "input"
        input_dir.mkdir(parents=True)
        for index, (name, path) in enumerate(inputs):
            # Keep the suffix (format hint) but never the client's path.
            safe = "".join(c for c in Path(name).name if c.isalnum() or c in "._-")[-100:] or "upload"
            shutil.move(str(path), input_dir / f"{index:05d}_{safe}")
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, state, created_at, params) VALUES (?, 'queued', ?, ?)",
                (job_id, time.time(), json.dumps(params)),
            )
        return self.get(job_id)

    def inputs(self, job_id: str) -> list[tuple[str, Path]]:
        """The job's uploaded files as (original name, path), in upload order."""
        files = sorted((self.folder(job_id) / "input").iterdir())
        return [(f.name.split("_", 1)[1], f) for f in files]

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it (None when nothing waits)."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, progress = 0 WHERE id = ("
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1) RETURNING *",
                (time.time(),),
            ).fetchone()
        return None if row is None else _record(row)

    def claim(self, job_id: str) -> JobRecord | None:
        """Mark this job running for a queue worker, again if a worker died on it; None once deleted or finished."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, progress = 0 "
                "WHERE id = ? AND state IN ('queued', 'running') RETURNING *",
                (time.time(), job_id),
            ).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[str]:
        """Ids of the jobs queued or running, oldest first (what a queue must still hold)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        return [row[0] for row in rows]

    def set_progress(self, job_id: str, progress: float) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (min(max(progress, 0.0), 1.0), job_id))

    def finish(self, job_id: str, summary: dict) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'done', progress = 1, finished_at = ?, summary = ? WHERE id = ?",
                (time.time(), json.dumps(summary), job_id),
            )

    def fail(self, job_id: str, error: str, detail: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, detail = ? WHERE id = ?",
                (time.time(), error, detail, job_id),
            )

    def requeue_interrupted(self) -> int:
        """After a restart: jobs that were running when the process died run again."""
        with self._lock:
            return self._db.execute("UPDATE jobs SET state = 'queued', progress = 0 WHERE state = 'running'").rowcount

    def position(self, job_id: str) -> int | None:
        """How many queued jobs are ahead of this one; None unless it is queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.state = 'queued' AND q.created_at < j.created_at) "
                "FROM jobs j WHERE j.id = ? AND j.state = 'queued'",
                (job_id,),
            ).fetchone()
        return None if row is None else int(row[0])

    def recent_run_seconds(self, limit: int = 10) -> list[float]:
        """How long the last `limit` finished jobs ran, newest first (any worker, any process)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT finished_at - started_at FROM jobs WHERE state = 'done' AND started_at IS NOT NULL "
                "ORDER BY finished_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [float(row[0]) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in ("queued", "running", "done", "failed")} | dict(rows)

    def delete(self, job_id: str) -> bool:
        """Forget a job and its files; True if it existed."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return bool(deleted)

    def expire(self, ttl_s: float) -> list[str]:
        """Delete finished jobs older than `ttl_s`; returns their ids."""
        cutoff = time.time() - ttl_s
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND finished_at < ?", (cutoff,)
            )]
        for job_id in ids:
            self.delete(job_id)
        return ids


def _record(row: tuple) -> JobRecord:
    job_id, state, created, started, finished, progress, params, summary, error, detail = row
    return JobRecord(
        job_id, state, created, started, finished, progress,
        json.loads(params), None if summary is None else json.loads(summary), error, detail,
    )
