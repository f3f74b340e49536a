"""Hostile and oversized requests on /jobs against a real uvicorn: ids that name other paths,
more files than Starlette's default, parts held in memory, and a damaged jobs database."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ORIENTATIONS, REPO, nifti_bytes, sphere_ct, wait_for_job
from tests.e2e.conftest import process_env, tiny_service_env

pytestmark = pytest.mark.slow

# What the probe sent (`curl --path-as-is`), encoded forms uvicorn decodes to the same, and ids
# of the wrong form or length.
BAD_IDS = [".", "..", "%2e%2e", "%2E%2E", ".%2e", "A" * 32, "0" * 31, "x" * 5000]
ROUTES = [("GET", ""), ("GET", "/mask"), ("GET", "/confidence"), ("GET", "/seg"), ("GET", "/preview.png"), ("DELETE", "")]


def raw(server, method: str, path: str) -> tuple[int, dict]:
    """One request with the path exactly as given (httpx would resolve the dots first)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_ids_that_are_not_job_ids_get_404_on_every_route_and_delete_nothing(server_factory, tmp_path) -> None:
    server = server_factory().start()
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(24, 24, 12))
    with server.client() as client:
        accepted = client.post("/jobs", files={"file": ("ct.nii.gz", nifti_bytes(ct))})
        job_url = accepted.headers["location"]
        assert wait_for_job(client, job_url, timeout=60)["state"] == "done"
        for job_id in BAD_IDS:
            for method, tail in ROUTES:
                status, body = raw(server, method, f"/jobs/{job_id}{tail}")
                assert (status, body.get("error")) == (404, "not_found"), (method, job_id, tail, body)
        data = tmp_path / "var"
        assert (data / "jobs.sqlite3").exists() and (data / "jobs" / job_url.rsplit("/", 1)[1] / "mask.nii.gz").exists()
        assert client.get(job_url).json()["state"] == "done"
        assert client.get(f"{job_url}/mask").status_code == 200


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_a_series_of_1500_files_is_parsed_with_bounded_memory(server_factory) -> None:
    server = server_factory().start()
    part = bytes(100_000)  # each part larger than the 64 kB kept in memory; none of them DICOM
    with server.client() as client:
        before = _peak_rss_kb(server.process.pid)
        answer = client.post("/segment", files=[("files", (f"{i:04d}.dcm", part)) for i in range(1500)])
        after = _peak_rss_kb(server.process.pid)
    # The decoder's answer, not the multipart parser's 400 at 1,000 files.
    assert answer.status_code == 415 and "1500 files" in answer.json()["detail"], answer.text
    # 150 MB went through; with Starlette's 1 MiB per part in memory the peak grew by all of it.
    assert (after - before) / 1024 < 75, f"peak RSS grew by {(after - before) / 1024:.0f} MB"


def test_more_files_than_an_upload_may_hold_is_413(server_factory) -> None:
    server = server_factory(max_zip_members=1100).start()
    with server.client() as client:  # past Starlette's default of 1000 and past our limit
        answer = client.post("/segment", files=[("files", (f"{i}.dcm", b"x")) for i in range(1200)])
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "too_large" and "LIVERSEG_MAX_ZIP_MEMBERS" in answer.json()["detail"]


@pytest.mark.parametrize(("content", "says"), [(b"", "is empty (0 bytes)"), (b"garbage" * 500, "is damaged")])
def test_a_damaged_jobs_database_exits_at_once_with_one_line(
    tiny_checkpoint_dir, tmp_path, content: bytes, says: str
) -> None:
    data = tmp_path / "var"
    (data / "jobs" / ("e" * 32)).mkdir(parents=True)  # a job the database no longer knows
    (data / "jobs.sqlite3").write_bytes(content)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "1"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=process_env(tiny_service_env(tiny_checkpoint_dir, data, "info")),
    )
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("liverseg: The jobs database") and says in lines[0], lines
    assert (data / "jobs.sqlite3").read_bytes() == content


def test_a_body_over_the_upload_limit_is_413_declared_or_streamed(server_factory) -> None:
    server = server_factory(max_upload_bytes=100_000).start()
    boundary = "liverseg-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ct.nii.gz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + bytes(300_000) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def chunks():  # no Content-Length: the limit is found while the bytes arrive
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    with server.client() as client:
        declared = client.post("/segment", content=body, headers=headers)
        streamed = client.post("/segment", content=chunks(), headers=headers)
        assert client.get("/healthz").status_code == 200
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json() == {
            "error": "too_large",
            "detail": "The upload is larger than the limit of 97.7 kB (100000 bytes, LIVERSEG_MAX_UPLOAD_BYTES).",
        }


def test_a_busy_port_is_said_in_one_line_before_the_model_loads(tiny_checkpoint_dir, tmp_path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "service", "--port", str(port)], cwd=REPO, capture_output=True, text=True,
            timeout=120, env=process_env(tiny_service_env(tiny_checkpoint_dir, tmp_path / "var", "info")),
        )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"liverseg: port {port} on 127.0.0.1 is already in use (another liverseg?). Choose another with "
        "LIVERSEG_PORT=8001 (or --port 8001); LIVERSEG_HOST sets the interface."
    ]


MULTIPART_HEADER_TOO_LONG = {
    "error": "bad_request",
    "detail": "A part of the multipart body has a header line longer than 4,224 bytes (a file name that long?): "
    "send the files under names of at most 4,000 bytes.",
}
HTTP_HEADERS_REFUSED = {
    "error": "bad_request",
    "detail": "The request could not be read as HTTP/1.1: its request line or headers are malformed, or longer than "
    "the 16 kB this service reads (a file name or a header that long?). Send file names in the multipart body, "
    "of at most 4,000 bytes each.",
}


def test_oversized_names_and_headers_get_a_400_json_body_not_a_reset(server_factory) -> None:
    server = server_factory().start()
    ct = bytes(2_000_000)  # still being sent when the server has refused the request
    with server.client() as client:
        long_name = client.post("/segment", files={"file": ("a" * 200_000 + ".nii.gz", ct)})
        long_part_header = client.post(
            "/segment", files={"file": ("ct.nii.gz", ct, "application/octet-stream", {"X-Note": "n" * 1_000_000})}
        )
        # h11 refuses these before the app sees them; uvicorn's own answer was plain text (200 kB)
        # or a connection reset (1 MB).
        long_request_headers = [
            client.post("/segment", files={"file": ("ct.nii.gz", ct)}, headers={"X-File-Name": "a" * size})
            for size in (200_000, 1_000_000)
        ]
        assert client.get("/healthz").status_code == 200
    for answer in (long_name, long_part_header):
        assert (answer.status_code, answer.json()) == (400, MULTIPART_HEADER_TOO_LONG)
    for answer in long_request_headers:
        assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
        assert answer.json() == HTTP_HEADERS_REFUSED
