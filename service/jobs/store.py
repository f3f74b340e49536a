"""Asynchronous jobs that survive a restart: a SQLite table plus a folder of files per job.

The store makes every job id (`uuid4().hex`) and accepts no other: an id from a URL is checked
against that form before it names a row or a folder, and a folder is only ever deleted when it
resolves to a child of the jobs folder (`DELETE /jobs/..` once deleted the whole data dir).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.errors import NotFound, QueueFull, format_bytes
from service.schemas import JobState

JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: the only ids this store makes
DATABASE = "jobs.sqlite3"

# The table as this version writes it. Columns are only ever added, so an older database is
# migrated by adding what it lacks; `PRAGMA user_version` records the version that did.
SCHEMA_VERSION = 2
_COLUMNS = {
    "id": "TEXT PRIMARY KEY",
    "state": "TEXT NOT NULL",
    "created_at": "REAL NOT NULL",
    "started_at": "REAL",
    "finished_at": "REAL",
    "progress": "REAL NOT NULL DEFAULT 0",
    "params": "TEXT NOT NULL",
    "summary": "TEXT",
    "error": "TEXT",
    "detail": "TEXT",
    # version 2: the bytes a queued job holds on disk (backpressure) and its starts (attempt limit)
    "input_bytes": "INTEGER NOT NULL DEFAULT 0",
    "tries": "INTEGER NOT NULL DEFAULT 0",
    "no_seg_reason": "TEXT",  # why a finished job has no DICOM SEG (None: it has one, or it is not done)
}
_FIELDS = ", ".join(_COLUMNS)


def stored_name(name: str) -> str:
    """A client's file name as the store keeps it beside the upload: ASCII letters, digits and
    "._-" only, at most 100 characters (a folder name is 255 bytes; UTF-8 letters take up to 4)."""
    safe = "".join(c for c in Path(name.replace("\\", "/")).name if c.isascii() and (c.isalnum() or c in "._-"))
    return safe[-100:] or "upload"


class JobsDatabaseError(RuntimeError):
    """The jobs database cannot be used as it is (damaged, emptied, or from a newer version);
    the message is one sentence that says what to do."""


# How long opening the store waits for another process holding the database's lock.
OPEN_WAIT_S = 10.0


def _is_busy(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite refused because another connection holds the lock (not a damaged file)."""
    return getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_job_id(text: str) -> bool:
    """Whether `text` has the form of an id this store makes."""
    return JOB_ID.fullmatch(text) is not None


def not_found(job_id: str) -> NotFound:
    """The error for an id with no job behind it (quoted safely: it came from a URL)."""
    shown = job_id if is_job_id(job_id) else job_id[:40].encode("unicode_escape").decode("ascii")
    return NotFound(f"No job {shown!r}: it never existed, was deleted, or expired (job ids are 32 hex digits).")


def lost_detail(tries: int, runner: str, logs: str) -> str:
    """Why a job whose `runner` stopped every time it ran the job is not run again."""
    return (
        f"The job was started {tries} time(s) and each time {runner} stopped (killed, out of memory, or "
        f"crashed) before it finished; it is not tried again. {logs} say why."
    )


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
    input_bytes: int = 0
    tries: int = 0  # starts, this one included
    no_seg_reason: str | None = None


class JobStore:
    """Jobs and their files under `data_dir`; safe to use from several threads."""

    def __init__(self, data_dir: Path):
        """Open (or create) the store under `data_dir`, migrating an older table.

        Raises:
            JobsDatabaseError: the database is damaged, empty (0 bytes), or newer than this code.
        """
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        path = Path(data_dir) / DATABASE
        # A 0-byte file beside job folders is a database that lost its contents (SQLite would start
        # it empty). Without job folders it is one that another process is creating this moment
        # (SQLite makes the file, then writes its header): a replica starting beside the API.
        if path.exists() and path.stat().st_size == 0 and any(is_job_id(f.name) for f in self.root.iterdir()):
            raise JobsDatabaseError(
                f"The jobs database {path} is empty (0 bytes) beside the jobs it held: it was truncated. Restore it from a backup, or "
                f"delete it to start with no jobs (the job files under {self.root} are kept)."
            )
        self._db = sqlite3.connect(path, timeout=OPEN_WAIT_S, check_same_thread=False, isolation_level=None)
        try:
            self._use_wal()
            self._migrate(path)
        except sqlite3.DatabaseError as error:
            self._db.close()
            if _is_busy(error):
                raise JobsDatabaseError(
                    f"The jobs database {path} stayed locked by another process for {OPEN_WAIT_S:g} s: "
                    f"another liverseg may be stuck holding it. Stop it, or point this one at another data directory."
                ) from None
            raise JobsDatabaseError(
                f"The jobs database {path} is damaged ({error}). Move it aside to start with no jobs "
                f"(the job files under {self.root} are kept), or restore it from a backup."
            ) from None

    def _use_wal(self) -> None:
        # Turning a file to WAL needs it to itself, and SQLite answers "locked" at once instead of
        # waiting when another process opens it that moment (the API and its workers starting
        # together): try again until OPEN_WAIT_S, as the connection's own timeout does elsewhere.
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _migrate(self, path: Path) -> None:
        # One transaction holding the write lock: processes starting together (the API and its
        # queue workers) migrate one after the other, the later ones finding nothing to add.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobsDatabaseError(
                    f"The jobs database {path} was written by a newer liverseg (schema {version}; this one "
                    f"knows {SCHEMA_VERSION}): run that version, or move the database aside."
                )
            columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({columns})")
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _COLUMNS.items():
                if name not in present:  # an older version's table: add what it lacks
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind.replace('PRIMARY KEY', '')}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def folder(self, job_id: str) -> Path:
        """Where a job's input and result files live; NotFound for anything not a job id."""
        if not is_job_id(job_id):
            raise not_found(job_id)
        return self.root / job_id

    def queued(self) -> tuple[int, int]:
        """(jobs queued, bytes their inputs hold on disk)."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(input_bytes), 0) FROM jobs WHERE state = 'queued'"
            ).fetchone()
        return int(count), int(size)

    def check_room(self, max_jobs: int | None, max_bytes: int | None, incoming_bytes: int = 0) -> None:
        """Busy (503) when one more queued job, of `incoming_bytes`, would pass either bound."""
        count, size = self.queued()
        self._refuse_when_full(count, size, max_jobs, max_bytes, incoming_bytes)

    def _refuse_when_full(
        self, count: int, size: int, max_jobs: int | None, max_bytes: int | None, incoming: int
    ) -> None:
        if max_jobs is not None and count >= max_jobs:
            why = f"{count} jobs are queued, the most this service holds (LIVERSEG_MAX_QUEUED_JOBS)"
        elif max_bytes is not None and size + incoming > max_bytes:
            why = (
                f"the queued jobs hold {format_bytes(size)} of uploads and this one {format_bytes(incoming)}, "
                f"beyond the {format_bytes(max_bytes)} this service holds (LIVERSEG_MAX_QUEUED_BYTES)"
            )
        else:
            return
        recent = self.recent_run_seconds()
        # A place frees when the next job finishes: about one run from now.
        retry = max(1, round(sum(recent) / len(recent))) if recent else 30
        raise QueueFull(f"The job queue is full: {why}. Try again in about {retry} s.", retry_after_s=retry)

    def create(
        self, params: dict, inputs: list[tuple[str, Path]],
        *, max_jobs: int | None = None, max_bytes: int | None = None,
    ) -> JobRecord:
        """Accept a job: move its uploaded files under its folder and queue it.

        Raises:
            Busy: the queue holds `max_jobs` jobs, or `max_bytes` of their inputs, already.
        """
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        incoming = sum(path.stat().st_size for _, path in inputs)
        # The check and the insert as one step, so that racing uploads cannot overfill the queue;
        # the moves inside are renames on one file system.
        with self._create_lock:
            self._refuse_when_full(*self.queued(), max_jobs, max_bytes, incoming)
            try:
                input_dir = folder / "input"
                input_dir.mkdir(parents=True)
                for index, (name, path) in enumerate(inputs):
                    shutil.move(str(path), input_dir / f"{index:05d}_{stored_name(name)}")
                with self._lock:
                    self._db.execute(
                        "INSERT INTO jobs (id, state, created_at, params, input_bytes) VALUES (?, 'queued', ?, ?, ?)",
                        (job_id, time.time(), json.dumps(params), incoming),
                    )
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # no folder without its row
                raise
        return self.get(job_id)

    def inputs(self, job_id: str) -> list[tuple[str, Path]]:
        """The job's uploaded files as (original name, path), in upload order."""
        files = sorted((self.folder(job_id) / "input").iterdir())
        return [(f.name.split("_", 1)[1], f) for f in files]

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_FIELDS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return it (None when nothing waits)."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, progress = 0, tries = tries + 1 WHERE id = ("
                f"SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1) RETURNING {_FIELDS}",
                (time.time(),),
            ).fetchone()
        return None if row is None else _record(row)

    def claim(self, job_id: str) -> JobRecord | None:
        """Mark this job running for a queue worker, again if a worker died on it; None once deleted or finished."""
        with self._lock:
            row = self._db.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, progress = 0, tries = tries + 1 "
                f"WHERE id = ? AND state IN ('queued', 'running') RETURNING {_FIELDS}",
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

    def finish(self, job_id: str, summary: dict, no_seg_reason: str | None = None) -> None:
        """Record a job done with its summary, and why it has no DICOM SEG when it has none."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'done', progress = 1, finished_at = ?, summary = ?, no_seg_reason = ? WHERE id = ?",
                (time.time(), json.dumps(summary), no_seg_reason, job_id),
            )

    def fail(self, job_id: str, error: str, detail: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, detail = ? WHERE id = ?",
                (time.time(), error, detail, job_id),
            )

    def requeue_interrupted(self, max_tries: int) -> tuple[int, int]:
        """After a restart: jobs that were running when the process died run again, unless they
        were started `max_tries` times already (a job that kills the process would otherwise kill
        it at every start). Returns (re-queued, failed)."""
        with self._lock:
            lost = self._db.execute(
                "SELECT id, tries FROM jobs WHERE state = 'running' AND tries >= ?", (max_tries,)
            ).fetchall()
        for job_id, tries in lost:
            self.fail(job_id, "worker_lost", lost_detail(tries, "the service", "The service's logs"))
        with self._lock:
            requeued = self._db.execute(
                "UPDATE jobs SET state = 'queued', progress = 0 WHERE state = 'running'"
            ).rowcount
        return requeued, len(lost)

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
        """Forget a job and its files; True if it existed. NotFound for anything not a job id."""
        folder = self.folder(job_id)
        with self._lock:
            deleted = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        self._remove(folder)
        return bool(deleted)

    def _remove(self, folder: Path) -> None:
        """Delete a job's folder, and never anything that does not resolve to a child of the jobs folder."""
        if folder.resolve().parent != self.root.resolve():
            raise ValueError(f"refusing to delete {folder}: not a job folder of {self.root}")
        shutil.rmtree(folder, ignore_errors=True)

    def expire(self, ttl_s: float) -> list[str]:
        """Delete finished jobs older than `ttl_s`, and job folders that have no row (a crash
        between the two); returns the ids of the jobs."""
        cutoff = time.time() - ttl_s
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND finished_at < ?", (cutoff,)
            )]
        for job_id in ids:
            self.delete(job_id)
        for folder in self.root.iterdir():
            if is_job_id(folder.name) and folder.stat().st_mtime < cutoff and self.get(folder.name) is None:
                self._remove(folder)
        return ids


def _record(row: tuple) -> JobRecord:
    job_id, state, created, started, finished, progress, params, summary, error, detail, size, tries, no_seg = row
    return JobRecord(
        job_id, state, created, started, finished, progress,
        json.loads(params), None if summary is None else json.loads(summary), error, detail, size, tries, no_seg,
    )
