"""`liverseg-pacs run` against a real Orthanc (DICOMweb plugin) and a real liverseg service."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from client.jobs_client import JobsClient, ServiceRefused
from client.pacs.bridge import Bridge, Outcome, PacsRefused
from client.pacs.cli import main
from client.retry import GaveUp, RetryPolicy
from tests.client.pacs.conftest import Orthanc, phantom_series, seg_on_grid, service_mask
from tests.conftest import dice

pytestmark = pytest.mark.slow


def bridge(orthanc: Orthanc, service_url: str, retry: RetryPolicy | None = None) -> Bridge:
    retry = retry or RetryPolicy(attempts=3, first_delay_s=0.2)
    return Bridge(orthanc.dicomweb(), JobsClient(service_url, retry=retry, poll_s=0.2), retry=retry)


def stow(orthanc: Orthanc, files) -> None:
    response = orthanc.dicomweb().store_instances([pydicom.dcmread(f) for f in files])
    # Orthanc answers an empty FailedSOPSequence when all is well.
    assert not response.get("FailedSOPSequence") and len(response.ReferencedSOPSequence) == len(files), response


def segs_in(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """Every SEG instance in the study, retrieved whole (WADO-RS)."""
    client = orthanc.dicomweb()
    found = client.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    return [
        client.retrieve_instance(study_uid, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        for item in found
    ]


def test_run_stores_one_seg_matching_the_service_mask_and_a_second_run_nothing(orthanc, service, tmp_path) -> None:
    series = phantom_series(tmp_path, seed=11)
    stow(orthanc, series.files)

    report = bridge(orthanc, service.url).run(study=series.study_uid)
    assert (report.count("segmented"), report.count("skipped"), report.count("failed")) == (1, 0, 0), report.text()

    (seg,) = segs_in(orthanc, series.study_uid)
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.SeriesInstanceUID == report.outcomes[0].seg_series_uid
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series.series_uid
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence) == sorted(series.sop_uids())

    mask = service_mask(service, series.files)
    expected = sitk.GetArrayFromImage(mask)
    assert 0.05 < expected.mean() < 0.95, "the tiny model's mask must be partial for the Dice to mean something"
    assert dice(seg_on_grid(seg, series.files, mask), expected) >= 0.99

    # Again, through the command line: the series already has our SEG, so nothing is stored.
    report_file = tmp_path / "report.json"
    status = main([
        "run", "--dicomweb", orthanc.dicomweb_url, "--service", service.url, "--study", series.study_uid,
        "--json", str(report_file), "--retries", "2",
    ])
    second = json.loads(report_file.read_text())
    assert status == 0
    assert (second["found"], second["segmented"], second["skipped"]) == (1, 0, 1), second
    assert seg.SeriesInstanceUID in second["series"][0]["reason"]
    # --watch finds it by today's study date (a QIDO date range) and skips it too; every CT
    # series the other tests put in this Orthanc has its SEG by the time they end.
    watched = bridge(orthanc, service.url).watch(since=dt.date.today(), interval_s=0.1, max_cycles=2)
    assert series.series_uid in {o.series_uid for o in watched.outcomes}, watched.text()
    assert {o.status for o in watched.outcomes} == {"skipped"}, watched.text()
    assert [s.SOPInstanceUID for s in segs_in(orthanc, series.study_uid)] == [seg.SOPInstanceUID]


def test_a_service_outage_during_the_run_is_retried_and_the_run_completes(orthanc, service, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="client.retry")
    series = phantom_series(tmp_path, seed=12)
    stow(orthanc, series.files)
    service.stop()  # the service is down when the bridge, having found and fetched the series, calls it
    # Enough patience for a restart on a busy 2-core machine: 0.5 + 1 + 2 + 4 * 9 s.
    patient = bridge(orthanc, service.url, RetryPolicy(attempts=13, first_delay_s=0.5, max_delay_s=4.0))

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(patient.run, study=series.study_uid)
            deadline = time.monotonic() + 60
            while not any("to the service" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline and not running.done(), "the bridge never met the outage"
                time.sleep(0.1)
            service.start()
            report = running.result(timeout=240)
    finally:
        if service.process.poll() is not None:  # the other PACS tests share this service
            service.start()

    assert report.count("segmented") == 1, report.text()
    retries = [r.getMessage() for r in caplog.records if r.name == "client.retry"]
    assert any("uploading" in m and "retry 1/" in m for m in retries), retries
    (seg,) = segs_in(orthanc, series.study_uid)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid


@pytest.mark.realdata
def test_real_sample_through_output_dicom_seg(service, real_sample) -> None:
    import io

    import highdicom as hd

    files = sorted((real_sample / "dicom").glob("*.dcm"))
    with service.client() as client:
        response = client.post(
            "/segment", params={"output": "dicom-seg"},
            files=[("files", (f.name, f.read_bytes(), "application/dicom")) for f in files],
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    # Its UIDs are empty: the SEG references minted ones, and the answer says so.
    assert "Study Instance UID empty, minted" in response.headers["x-liverseg-warnings"]
    seg = hd.seg.segread(io.BytesIO(response.content))
    meta_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for f in files}
    assert {uid for _, _, uid in seg.get_source_image_uids()} == meta_uids
    assert np.isin(seg.pixel_array, (0, 1)).all()


@pytest.mark.parametrize(
    ("error", "reason", "permanent"),
    [
        (ServiceRefused("invalid_volume", "gantry tilt"), "the service refused it: invalid_volume: gantry tilt", True),
        (PacsRefused("the PACS refused the SEG"), "the PACS refused the SEG", True),
        (GaveUp("WADO-RS retrieval failed 5 times"), "WADO-RS retrieval failed 5 times", False),
        (KeyError("SeriesInstanceUID"), "KeyError: 'SeriesInstanceUID'", True),
    ],
)
def test_a_failure_on_one_series_becomes_its_outcome(error, reason, permanent) -> None:
    outcome = Outcome("1.2", "1.2.3", "CT abdomen", "failed")
    with outcome.recording():
        outcome.instances = 7
        time.sleep(0.01)
        raise error
    assert (outcome.status, outcome.reason, outcome.permanent) == ("failed", reason, permanent)
    assert outcome.instances == 7 and outcome.seconds >= 0.01


def test_a_series_that_succeeds_keeps_its_status() -> None:
    outcome = Outcome("1.2", "1.2.3", "CT abdomen", "failed")
    with outcome.recording():
        outcome.status = "segmented"
    assert (outcome.status, outcome.reason, outcome.permanent) == ("segmented", "", True)
