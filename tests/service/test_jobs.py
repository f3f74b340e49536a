"""The job store's run times and the estimate GET /jobs/{id} gives from them (eta_s)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from service.api.jobs import estimated_seconds_left
from service.jobs import JobStore


def test_recent_run_seconds_are_those_of_done_jobs_newest_first(tmp_path: Path, monkeypatch) -> None:
    store = JobStore(tmp_path)
    now = [1000.0]
    monkeypatch.setattr("service.jobs.time.time", lambda: now[0])
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
