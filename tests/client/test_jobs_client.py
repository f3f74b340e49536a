"""The PACS tools' service client and retry policy, against a scripted service (no network)."""

from __future__ import annotations

import httpx
import pytest

from client.jobs_client import JobsClient, ServiceRefused
from client.retry import GaveUp, RetryPolicy, classify

FAST = RetryPolicy(attempts=4, first_delay_s=0.01, max_delay_s=0.05)
JOB = {"id": "j1", "state": "done", "links": {"seg": "/jobs/j1/seg"}, "summary": {"liver_volume_ml": 12.5, "input": {"warnings": ["minted"]}}}


class Script:
    """A fake service: each (method, path) answers from its list in turn, the last one forever."""

    def __init__(self, answers: dict[tuple[str, str], list]):
        self.answers, self.calls = answers, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        self.calls.append(key)
        queue = self.answers[key]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, retry: RetryPolicy = FAST) -> JobsClient:
    return JobsClient("http://liverseg.test", retry=retry, poll_s=0.01, transport=httpx.MockTransport(script))


def test_503s_and_dropped_connections_are_retried_until_the_seg_comes(tmp_path) -> None:
    dicom = tmp_path / "a.dcm"
    dicom.write_bytes(b"DICM")
    script = Script({
        ("POST", "/jobs"): [
            httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "busy", "detail": "full"}),
            httpx.Response(503, json={"error": "busy", "detail": "full"}),
            httpx.Response(202, json={"id": "j1", "state": "queued"}),
        ],
        ("GET", "/jobs/j1"): [httpx.ConnectError("refused"), httpx.Response(200, json={**JOB, "state": "running"}), httpx.Response(200, json=JOB)],
        ("GET", "/jobs/j1/seg"): [httpx.ReadTimeout("slow"), httpx.Response(200, content=b"SEG")],
        ("DELETE", "/jobs/j1"): [httpx.Response(204)],
    })
    with client(script) as service:
        result = service.segment_series([dicom])
    assert (result.seg, result.job_id, result.warnings) == (b"SEG", "j1", ["minted"])
    assert script.calls.count(("POST", "/jobs")) == 3
    assert script.calls.count(("GET", "/jobs/j1/seg")) == 2
    assert script.calls[-1] == ("DELETE", "/jobs/j1")  # the job's files are not left behind


def test_a_4xx_is_the_answer_not_retried(tmp_path) -> None:
    dicom = tmp_path / "a.dcm"
    dicom.write_bytes(b"DICM")
    script = Script({("POST", "/jobs"): [httpx.Response(415, json={"error": "unsupported_format", "detail": "not DICOM"})]})
    with client(script) as service, pytest.raises(ServiceRefused) as refused:
        service.segment_series([dicom])
    assert (refused.value.code, refused.value.detail) == ("unsupported_format", "not DICOM")
    assert script.calls == [("POST", "/jobs")]


def test_a_failed_job_is_refused_with_its_reason(tmp_path) -> None:
    dicom = tmp_path / "a.dcm"
    dicom.write_bytes(b"DICM")
    failed = {"id": "j1", "state": "failed", "error": {"error": "invalid_volume", "detail": "gantry tilt"}}
    script = Script({
        ("POST", "/jobs"): [httpx.Response(202, json={"id": "j1", "state": "queued"})],
        ("GET", "/jobs/j1"): [httpx.Response(200, json=failed)],
        ("DELETE", "/jobs/j1"): [httpx.Response(204)],
    })
    with client(script) as service, pytest.raises(ServiceRefused, match="invalid_volume: gantry tilt"):
        service.segment_series([dicom])


def test_an_outage_longer_than_the_policy_gives_up_saying_what_failed(tmp_path) -> None:
    dicom = tmp_path / "a.dcm"
    dicom.write_bytes(b"DICM")
    script = Script({("POST", "/jobs"): [httpx.Response(502)]})
    with client(script) as service, pytest.raises(GaveUp, match=r"uploading 1 DICOM file\(s\) to the service failed 4 time\(s\); last error: HTTP 502"):
        service.segment_series([dicom])
    assert len(script.calls) == FAST.attempts


@pytest.mark.parametrize(
    ("status", "transient"), [(500, True), (502, True), (503, True), (504, True), (429, True), (400, False), (404, False), (409, False), (422, False)]
)
def test_which_statuses_are_retried(status, transient) -> None:
    response = httpx.Response(status, headers={"Retry-After": "7"}, request=httpx.Request("GET", "http://x/"))
    error = httpx.HTTPStatusError("status", request=response.request, response=response)
    assert classify(error) == (transient, 7.0)
