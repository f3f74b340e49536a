"""End to end against a real uvicorn: the real DICOM sample, orientations, restarts, a full queue."""

from __future__ import annotations

import io
import signal
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import ORIENTATIONS, nifti_bytes, read_nifti, sphere_ct, wait_for_job
from tests.service.test_api import assert_same_grid

pytestmark = pytest.mark.slow


@pytest.fixture
def server(server_factory):
    return server_factory().start()


def real_series(real_sample) -> tuple[sitk.Image, list]:
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(real_sample / "dicom"))
    reader.SetFileNames(files)
    return reader.Execute(), files


def test_real_dicom_sample_zipped_and_as_files(server, real_sample) -> None:
    expected, files = real_series(real_sample)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for f in files:
            archive.write(f, f"series/{f.rsplit('/', 1)[-1]}")
    with server.client() as client:
        zipped = client.post("/segment", files={"file": ("series.zip", buffer.getvalue())})
        assert zipped.status_code == 200, zipped.text
        assert_same_grid(read_nifti(zipped.content), expected)
        parts = [("files", (f.rsplit("/", 1)[-1], open(f, "rb").read())) for f in files]
        separate = client.post("/segment", files=parts)
        assert separate.status_code == 200, separate.text
        assert separate.content and read_nifti(separate.content).GetSize() == (512, 512, 20)
        assert np.array_equal(
            sitk.GetArrayFromImage(read_nifti(separate.content)), sitk.GetArrayFromImage(read_nifti(zipped.content))
        )


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_each_orientation_comes_back_in_its_own_geometry(server, orientation) -> None:
    ct, _ = sphere_ct(ORIENTATIONS[orientation], size_xyz=(40, 36, 20))
    with server.client() as client:
        response = client.post("/segment", files={"file": ("ct.nii.gz", nifti_bytes(ct))})
    assert response.status_code == 200, response.text
    assert_same_grid(read_nifti(response.content), ct)


def test_jobs_survive_a_killed_server(server_factory) -> None:
    server = server_factory().start()
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(120, 120, 60), spacing_xyz=(1.0, 1.0, 1.0))
    data = nifti_bytes(ct)
    with server.client() as client:
        urls = [client.post("/jobs", files={"file": ("ct.nii.gz", data)}).headers["location"] for _ in range(3)]
    server.stop(signal.SIGKILL)  # no chance to finish anything
    restarted = server.start()
    with restarted.client() as client:
        jobs = [wait_for_job(client, url, timeout=180) for url in urls]
        assert [j["state"] for j in jobs] == ["done"] * 3
        assert_same_grid(read_nifti(client.get(jobs[0]["links"]["mask"]).content), ct)


def test_a_full_queue_answers_503_with_retry_after(server_factory) -> None:
    server = server_factory(queue_size=1).start()
    # Fine spacing for a coarse model: many windows, so requests overlap.
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(160, 160, 120), spacing_xyz=(1.0, 1.0, 1.0))
    data = nifti_bytes(ct)
    with server.client() as client, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", data)}), range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert 503 in statuses and 200 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.json()["error"] == "busy" and int(busy.headers["retry-after"]) >= 1
        assert client.get("/healthz").status_code == 200


def test_work_abandoned_by_a_timed_out_request_stops_and_the_next_request_is_served(server_factory) -> None:
    server = server_factory(request_timeout_s=2, log_level="info").start()
    # Thousands of windows (fine spacing, overlap 0.9): minutes of work for the tiny network.
    heavy, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(320, 320, 240), spacing_xyz=(1.0, 1.0, 1.0))
    light, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(24, 24, 12))
    with server.client() as client:
        timed_out = client.post("/segment", params={"output": "json", "overlap": 0.9}, files={"file": ("ct.nii.gz", nifti_bytes(heavy))})
        assert timed_out.status_code == 503 and timed_out.json()["error"] == "busy", timed_out.text
        after = client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", nifti_bytes(light))})
    assert after.status_code == 200, after.text
    # It waited for one window batch of the abandoned task at most, not for the whole of it.
    assert after.json()["timings_s"]["queued"] < 5.0, after.json()["timings_s"]
    assert "cancelled a segmentation nobody would collect" in server.log.read_text()


def test_work_whose_client_left_stops_and_the_next_request_is_served(server_factory) -> None:
    import httpx

    server = server_factory(log_level="info").start()  # the default 900 s timeout: only the client leaves
    heavy, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(320, 320, 240), spacing_xyz=(1.0, 1.0, 1.0))
    light, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(24, 24, 12))
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60.0, read=4.0)) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/segment", params={"output": "json", "overlap": 0.9}, files={"file": ("ct.nii.gz", nifti_bytes(heavy))})
    with server.client() as client:
        after = client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", nifti_bytes(light))})
    assert after.status_code == 200, after.text
    assert after.json()["timings_s"]["queued"] < 6.0, after.json()["timings_s"]
    assert "cancelled a segmentation nobody would collect" in server.log.read_text()
