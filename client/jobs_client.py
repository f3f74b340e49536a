"""The liverseg service's jobs API seen from a client: a CT in, its results out, over HTTP only.

The one client of the jobs API, for the `liverseg` CLI and the PACS tools alike: POST /jobs,
GET /jobs/{id} until done, GET its files, DELETE. So a long study never meets a request timeout
and a service restart in the middle only delays it (jobs survive restarts). Every call goes
through a `RetryPolicy`; a 4xx is the service's considered answer about this upload and becomes
a `ServiceRefused` with its code and sentence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from client.retry import RetryPolicy

log = logging.getLogger(__name__)


class ServiceRefused(Exception):
    """The service answered that it cannot segment this series (a 4xx, or the job failed)."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass
class SegResult:
    """What the service made of one series: the SEG file, its JSON summary and its warnings."""

    seg: bytes
    summary: dict
    warnings: list[str] = field(default_factory=list)
    job_id: str = ""


def job_warnings(job: dict) -> list[str]:
    """The warnings the service gave about a job's input (an empty list when there are none)."""
    return list(((job.get("summary") or {}).get("input") or {}).get("warnings") or [])


class JobsClient:
    """A client of one liverseg service's jobs API.

    Args:
        url: the service's base URL (http://host:8000).
        api_key: sent as X-API-Key when the service requires one.
        model: a registry name, or None for the service's default.
        retry: the policy for every HTTP call.
        poll_s: seconds between job status polls.
        job_timeout_s: give up on a job that has not finished after this long.
        transport: an httpx transport (tests inject failures through it).
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        retry: RetryPolicy | None = None,
        poll_s: float = 1.0,
        job_timeout_s: float = 3600.0,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.model, self.retry, self.poll_s, self.job_timeout_s = model, retry or RetryPolicy(), poll_s, job_timeout_s
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout_s, read=max(timeout_s, 300.0)),  # uploads of large series
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def segment_series(self, files: list[Path]) -> SegResult:
        """Segment the DICOM files of one series; returns its SEG (bytes of a DICOM file).

        Raises:
            ServiceRefused: the service refused the series or the job failed (not retried).
            GaveUp: the service stayed unreachable or kept failing through every retry.
        """
        job_id = self.submit(files, field="files")
        try:
            job = self.wait(job_id)
            seg = self.fetch(job.get("links", {}).get("seg", f"/jobs/{job_id}/seg"), f"the SEG of job {job_id}")
            return SegResult(seg, job.get("summary") or {}, job_warnings(job), job_id)
        finally:
            self.forget(job_id)

    def submit(
        self, files: list[Path], *, field: Literal["file", "files"], params: dict[str, str] | None = None,
    ) -> str:
        """Upload one CT (field "file": a volume file or a zip; "files": the DICOM files of a
        series) as a job; returns its id."""
        params = ({"model": self.model} if self.model else {}) | (params or {})
        media = "application/dicom" if field == "files" else "application/octet-stream"

        def post() -> httpx.Response:
            with ExitStack() as stack:  # reopened on every attempt: a retried upload starts over
                parts = [(field, (p.name, stack.enter_context(p.open("rb")), media)) for p in files]
                return self._checked(self._http.post("/jobs", params=params, files=parts))

        what = f"uploading {len(files)} DICOM file(s)" if field == "files" else "uploading the CT"
        response = self.retry.call(post, f"{what} to the service")
        job_id = response.json()["id"]
        log.info("service job %s accepted (%d files)", job_id, len(files))
        return job_id

    def wait(self, job_id: str, on_poll: Callable[[dict], None] | None = None) -> dict:
        """Poll the job until it is done (its state, summary and links); `on_poll` sees every
        answer. Raises ServiceRefused when it failed or outlasted `job_timeout_s`."""
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            job = self.retry.call(lambda: self._checked(self._http.get(f"/jobs/{job_id}")), f"polling job {job_id}").json()
            if on_poll is not None:
                on_poll(job)
            if job["state"] == "done":
                return job
            if job["state"] == "failed":
                error = job.get("error") or {}
                raise ServiceRefused(error.get("error", "failed"), error.get("detail", "the job failed"))
            if time.monotonic() > deadline:
                raise ServiceRefused("timeout", f"job {job_id} did not finish within {self.job_timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def fetch(self, url: str, what: str) -> bytes:
        """The body of one of a job's files (its links), retried like every call."""
        return self.retry.call(lambda: self._checked(self._http.get(url)), f"fetching {what}").content

    def forget(self, job_id: str) -> None:
        """Delete the job's files on the service; a failure here only leaves them to expire."""
        try:
            self._http.delete(f"/jobs/{job_id}")
        except httpx.HTTPError as error:
            log.debug("could not delete job %s: %s", job_id, error)

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        """The response if 2xx; a transient status raises HTTPStatusError (retried), a 4xx ServiceRefused."""
        if response.is_success:
            return response
        if response.status_code in (429,) or response.status_code >= 500:
            response.raise_for_status()
        try:
            body = response.json()
            code, detail = str(body.get("error", response.status_code)), str(body.get("detail", ""))
        except ValueError:
            code, detail = f"http_{response.status_code}", response.text[:300]
        raise ServiceRefused(code, detail)
