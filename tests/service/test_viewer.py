"""The viewer page's routes in-process: `/` and its files are local and public, nothing else in the
static folder is served, and the job files the page loads (the CT on the mask's grid, the summary)
come back right and behind the API key. The page in a real browser: tests/browser."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from service.api.routes.viewer import ASSETS, STATIC_DIR
from service.app import create_app
from service.settings import Settings
from tests.conftest import ORIENTATIONS, nifti_bytes, read_nifti, sphere_ct, wait_for_job


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


def page_references(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_the_page_and_every_file_it_names_are_served_from_here(client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = page_references(response.text)
    assert "/viewer/viewer.js" in references and "/viewer/viewer.css" in references
    for reference in references:
        if reference.startswith("data:"):
            continue
        assert reference.startswith("/"), f"{reference}: not on this host"
        assert client.get(reference).status_code == 200, reference
    script = client.get("/viewer/viewer.js")
    assert script.headers["content-type"].startswith("text/javascript")
    imports = re.findall(r'^import .* from "([^"]+)";', script.text, flags=re.M)
    assert imports == ["./niivue.min.js"]
    assert client.get("/viewer/niivue.min.js").headers["content-type"].startswith("text/javascript")


def test_the_niivue_bundle_comes_with_the_licence_of_each_package_in_it(client) -> None:
    licences = client.get("/viewer/niivue.LICENSES.txt")
    assert licences.status_code == 200
    assert "@niivue/niivue 0.69.0 (BSD-2-Clause)" in licences.text
    assert "Copyright (c) 2021, Niivue" in licences.text
    assert len(re.findall(r"^\S+ \d+\.\d+\.\d+ \(", licences.text, flags=re.M)) >= 5  # Niivue and what it bundles
    assert set(ASSETS) <= {path.name for path in STATIC_DIR.iterdir()}


@pytest.mark.parametrize("name", ["index.html", "..%2Fapp.py", "nope.js"])
def test_nothing_else_is_served_from_the_viewer_folder(client, name) -> None:
    response = client.get(f"/viewer/{name}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_jobs_ct_and_summary_come_back_on_the_masks_grid(client) -> None:
    ct, _ = sphere_ct(ORIENTATIONS["oblique"], size_xyz=(40, 36, 20))
    job = client.post("/jobs", files={"file": ("ct.nii.gz", nifti_bytes(ct))}).json()
    job = wait_for_job(client, f"/jobs/{job['id']}", timeout=120)
    assert job["state"] == "done", job
    assert job["links"]["ct"] == f"/jobs/{job['id']}/ct" and job["links"]["summary"] == f"/jobs/{job['id']}/summary"
    for _ in range(2):  # made on the first request, kept for the second
        response = client.get(job["links"]["ct"])
        assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
        back = read_nifti(response.content)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))
        mask = read_nifti(client.get(job["links"]["mask"]).content)
        assert back.GetSize() == mask.GetSize()
        np.testing.assert_allclose(back.GetOrigin(), mask.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetSpacing(), mask.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(back.GetDirection(), mask.GetDirection(), atol=1e-6)
    summary = client.get(job["links"]["summary"])
    assert summary.status_code == 200 and summary.headers["content-type"] == "application/json"
    assert json.loads(summary.content) == job["summary"]


def test_a_queued_jobs_ct_is_not_ready(client, settings) -> None:
    store = client.app.state.jobs
    upload = settings.data_dir / "ct.nii.gz"
    upload.write_bytes(nifti_bytes(sphere_ct(ORIENTATIONS["LPS"], size_xyz=(20, 20, 10))[0]))
    record = store.create({}, [("ct.nii.gz", upload)])  # never dispatched: stays queued
    response = client.get(f"/jobs/{record.id}/ct")
    assert response.status_code == 409, response.text


def test_the_page_is_public_and_the_jobs_files_need_the_key(settings) -> None:
    keyed = settings.model_copy(update={"api_keys": ["s3cret"]})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/").status_code == 200
        for name in ASSETS:
            assert client.get(f"/viewer/{name}").status_code == 200
        unknown = "0" * 32
        assert client.get(f"/jobs/{unknown}/ct").status_code == 401
        assert client.get(f"/jobs/{unknown}/summary").status_code == 401
        assert client.get(f"/jobs/{unknown}/ct", headers={"X-API-Key": "s3cret"}).status_code == 404
