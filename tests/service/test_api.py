"""The HTTP API in-process (TestClient inside `with`, so the lifespan runs)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs.store import JobsDatabaseError
from service.settings import Settings
from tests.conftest import ORIENTATIONS, TINY, nifti_bytes, read_nifti, sphere_ct, wait_for_job


@pytest.fixture(scope="module")
def ct_bytes() -> tuple[sitk.Image, bytes]:
    ct, _ = sphere_ct(ORIENTATIONS["oblique"], size_xyz=(40, 36, 20))
    return ct, nifti_bytes(ct)


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


def assert_same_grid(mask: sitk.Image, ct: sitk.Image) -> None:
    assert mask.GetSize() == ct.GetSize()
    assert np.allclose(mask.GetSpacing(), ct.GetSpacing(), atol=1e-5)
    assert np.allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert np.allclose(mask.GetDirection(), ct.GetDirection(), atol=1e-5)


def test_segment_returns_a_nifti_mask_on_the_input_grid(client, ct_bytes) -> None:
    ct, data = ct_bytes
    response = client.post("/segment", files={"file": ("ct.nii.gz", data)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["x-liverseg-model"] == TINY
    assert float(response.headers["x-liverseg-liver-volume-ml"]) >= 0
    mask = read_nifti(response.content)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert_same_grid(mask, ct)
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


def test_segment_json_summary(client, ct_bytes) -> None:
    ct, data = ct_bytes
    response = client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", data)})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["model"] == TINY and len(summary["model_sha256"]) == 64
    assert summary["input"]["size_xyz"] == list(ct.GetSize())
    # the device and what runs the network there: OpenVINO by default on the CPU
    assert summary["device"].startswith("cpu (openvino "), summary["device"]
    assert {"decode", "preprocess", "inference", "postprocess", "restore", "encode", "queued"} <= set(summary["timings_s"])
    assert 0 <= summary["confidence"]["mean_in_liver"] <= 1
    assert isinstance(summary["confidence"]["review_recommended"], bool)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"params": {"model": "unet3d_ds.tinyy"}}, 404, "unknown_model"),
        ({"params": {"overlap": 2}}, 422, "invalid_request"),
        ({"params": {"output": "png"}}, 422, "invalid_request"),
        ({"params": {"depth": 2}}, 422, "invalid_option"),
        ({"params": {"output": "dicom-seg"}}, 422, "unsupported_output"),
        ({"files_override": {}}, 415, "unsupported_format"),
    ],
)
def test_bad_requests_get_a_json_error(client, ct_bytes, request_kwargs, status, code) -> None:
    files = request_kwargs.pop("files_override", {"file": ("ct.nii.gz", ct_bytes[1])})
    response = client.post("/segment", files=files or None, data={} if not files else None, **request_kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and len(body["detail"]) > 10


def test_unknown_model_suggests_the_nearest(client, ct_bytes) -> None:
    response = client.post("/segment", params={"model": "unet3d_ds.tinyy"}, files={"file": ("ct.nii.gz", ct_bytes[1])})
    assert f"Did you mean '{TINY}'" in response.json()["detail"]


def test_models_and_health(client) -> None:
    cards = client.get("/models").json()
    assert [c["name"] for c in cards] == [TINY]
    assert client.get(f"/models/{TINY}").json()["input"]["patch_size_dhw"] == [32, 32, 32]
    assert client.get("/models/nope.x").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == TINY
    client.get("/models")
    metrics = client.get("/metrics").text
    assert 'liverseg_requests_total{route="/models",status="200"}' in metrics
    assert "liverseg_queue_depth" in metrics and 'liverseg_jobs{state="queued"}' in metrics


def test_not_ready_when_the_default_model_is_missing(tiny_checkpoint_dir, tmp_path) -> None:
    settings = Settings(model="unet3d_ds.absent", model_dir=tiny_checkpoint_dir, data_dir=tmp_path, device="cpu")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["error"] == "not_ready"


def test_api_keys(tiny_checkpoint_dir, tmp_path, ct_bytes) -> None:
    settings = Settings(model=TINY, model_dir=tiny_checkpoint_dir, data_dir=tmp_path, device="cpu", api_keys=["s3cret"])
    with TestClient(create_app(settings)) as client:
        refused = client.post("/segment", files={"file": ("ct.nii.gz", ct_bytes[1])})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert client.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes need no key


def test_upload_over_the_limit_is_refused_before_decoding(tiny_checkpoint_dir, tmp_path, ct_bytes) -> None:
    settings = Settings(model=TINY, model_dir=tiny_checkpoint_dir, data_dir=tmp_path, device="cpu", max_upload_bytes=1000)
    with TestClient(create_app(settings)) as client:
        response = client.post("/segment", files={"file": ("ct.nii.gz", ct_bytes[1])})
        assert response.status_code == 413
        assert response.json()["error"] == "too_large" and "LIVERSEG_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_job_lifecycle(client, ct_bytes) -> None:
    ct, data = ct_bytes
    accepted = client.post("/jobs", params={"confidence": True}, files={"file": ("ct.nii.gz", data)})
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["location"]
    assert url == f"/jobs/{accepted.json()['id']}"
    job = wait_for_job(client, url, timeout=60)
    assert job["state"] == "done" and job["progress"] == 1
    assert job["summary"]["input"]["size_xyz"] == list(ct.GetSize())
    assert_same_grid(read_nifti(client.get(job["links"]["mask"]).content), ct)
    confidence = read_nifti(client.get(job["links"]["confidence"]).content)
    assert_same_grid(confidence, ct)
    preview = client.get(job["links"]["preview"])
    assert preview.status_code == 200 and preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.delete(url).status_code == 204
    gone = client.get(url)
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"


def test_a_failed_job_says_why(client) -> None:
    accepted = client.post("/jobs", files={"file": ("ct.nii.gz", b"this is not a CT")})
    job = wait_for_job(client, accepted.headers["location"], timeout=60)
    assert job["state"] == "failed" and job["error"]["error"] in ("unsupported_format", "invalid_volume")
    mask = client.get(f"{accepted.headers['location']}/mask")
    assert mask.status_code == 409 and "failed" in mask.json()["detail"]


def test_post_jobs_answers_503_with_retry_after_once_the_queue_is_full(settings, ct_bytes) -> None:
    _, data = ct_bytes
    bounded = settings.model_copy(update={"max_queued_jobs": 3})
    with TestClient(create_app(bounded)) as client:
        client.app.state.dispatcher.stop()  # nothing runs: every job accepted stays queued
        answers = [client.post("/jobs", files={"file": ("ct.nii.gz", data)}) for _ in range(5)]
        assert [a.status_code for a in answers] == [202, 202, 202, 503, 503]
        busy = answers[-1]
        assert busy.json()["error"] == "busy" and "LIVERSEG_MAX_QUEUED_JOBS" in busy.json()["detail"]
        assert int(busy.headers["retry-after"]) >= 1
        ready = client.get("/readyz").json()
        assert (ready["queue_depth"], ready["jobs_queued"], ready["requests_waiting"]) == (3, 3, 0)
        # Refused uploads leave nothing on disk: three job folders and no spooled upload.
        assert len(list((bounded.data_dir / "jobs").iterdir())) == 3
        assert not list(bounded.data_dir.glob("upload-*"))


def test_post_jobs_bounds_the_bytes_queued_jobs_hold(settings, ct_bytes) -> None:
    _, data = ct_bytes
    bounded = settings.model_copy(update={"max_queued_bytes": len(data) * 3 // 2})
    with TestClient(create_app(bounded)) as client:
        client.app.state.dispatcher.stop()
        answers = [client.post("/jobs", files={"file": ("ct.nii.gz", data)}) for _ in range(2)]
        assert [a.status_code for a in answers] == [202, 503]
        assert "LIVERSEG_MAX_QUEUED_BYTES" in answers[1].json()["detail"]


def test_depth_for_a_unet_is_refused_before_anything_is_accepted(client, ct_bytes) -> None:
    _, data = ct_bytes
    job = client.post("/jobs", params={"depth": 2}, files={"file": ("ct.nii.gz", data)})
    assert job.status_code == 422, job.text
    assert job.json()["error"] == "invalid_option" and "UNet++ models only" in job.json()["detail"]
    assert client.get("/jobs").json() == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    # Before the upload is even decoded: a file that is no CT gets the option's answer.
    now = client.post("/segment", params={"depth": 2}, files={"file": ("ct.nii.gz", b"not a CT")})
    assert now.status_code == 422 and now.json()["error"] == "invalid_option"


def test_a_job_whose_file_name_is_long_unicode_runs(client, ct_bytes) -> None:
    _, data = ct_bytes
    # 70 letters of 4 bytes each in UTF-8: a folder entry longer than 255 bytes gave a 500.
    accepted = client.post("/jobs", files={"file": ("\U0001d400" * 70 + ".nii.gz", data)})
    assert accepted.status_code == 202, accepted.text
    assert wait_for_job(client, accepted.headers["location"], timeout=60)["state"] == "done"


def test_a_damaged_jobs_database_stops_startup_and_leaves_no_thread(settings) -> None:
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "jobs.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(JobsDatabaseError, match="is damaged"), TestClient(create_app(settings)):
        pass
    # The worker's thread (not a daemon) once started before the store failed, and the process hung.
    assert not [t for t in threading.enumerate() if t.name.startswith("liverseg-")]


def test_every_schema_reference_points_into_the_components(client) -> None:
    """ReDoc showed no page when one route's schema kept pydantic's "#/$defs/..." references."""
    import json
    import re

    schema = client.get("/openapi.json").json()
    references = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema)))
    assert references and all(ref.startswith("#/components/schemas/") for ref in references), references
    assert {ref.rsplit("/", 1)[1] for ref in references} <= set(schema["components"]["schemas"])


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_nothing_from_another_host(client, page) -> None:
    import re

    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html.text)
    urls = [a or b for a, b in assets]
    assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], urls  # a CDN left the page blank offline
    for url in urls:
        assert client.get(url).status_code == 200, url  # the script, the stylesheet, the schema
    # ReDoc's bundle still asks cdn.redoc.ly for a logo: the policy has the browser refuse any
    # other host (the headless-Chromium test in tests/browser sees no such request go out).
    policy = html.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    assert "content-security-policy" not in client.get("/healthz").headers  # the pages, not the API


def test_concurrent_requests_decode_no_more_uploads_than_the_slots(settings, ct_bytes, monkeypatch) -> None:
    """Memory stays that of `decoded_uploads` volumes whatever the clients: the others wait as files."""
    from concurrent.futures import ThreadPoolExecutor

    from service.segmentation import SegmentUpload
    from service.worker import InferenceWorker

    held, most, lock = [0], [0], threading.Lock()
    decode, give_back = SegmentUpload.decode, InferenceWorker.give_back_decode_ticket

    def counted_decode(self, uploads):
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        threading.Event().wait(0.3)  # a slow decode: without the slots all four overlap here
        return decode(self, uploads)

    def counted_give_back(self, ticket):
        with lock:
            held[0] -= 1
        give_back(self, ticket)

    monkeypatch.setattr(SegmentUpload, "decode", counted_decode)
    monkeypatch.setattr(InferenceWorker, "give_back_decode_ticket", counted_give_back)
    _, data = ct_bytes
    with TestClient(create_app(settings.model_copy(update={"decoded_uploads": 1}))) as client, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", data)}), range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert most[0] == 1 and held[0] == 0
