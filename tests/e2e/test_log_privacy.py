"""No patient data in a real server's log: a series whose patient fields, file names and UIDs are
marked goes through output=dicom-seg and /jobs at log level debug, and no mark reaches the log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest

from tests.conftest import wait_for_job
from train.phantoms import make_phantom, write_dicom_series

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom, on our marks

NAME, PATIENT_ID, BIRTH_DATE, FILE_MARK = "Zzmarker^Patient", "ZZID-4711", "19010203", "zzfile"
# Values pydicom warns about while the service reads the headers, each marked too.
MARKS = ("Zzmarker", PATIENT_ID, BIRTH_DATE, FILE_MARK, "ZZACC", "Zzdoctor", "Zzclinic")
UID_LIKE = re.compile(r"(?<![\w.])\d+(?:\.\d+){4,}")
STANDARD_UID = "1.2.840.10008."  # transfer syntaxes and SOP classes: the standard's, nobody's


def marked_series(folder: Path, seed: int, *, birth_date: str) -> tuple[list[Path], set[str]]:
    """A small CT series with marked patient fields and file names; its files and every UID in them."""
    phantom = make_phantom(seed, spacing_xyz_mm=(8.0, 8.0, 8.0), z_range=(-40, 0))
    paths = write_dicom_series(
        phantom.ct, folder, patient_id=PATIENT_ID, patient_name=NAME, file_prefix=f"{FILE_MARK}_{seed}_"
    )
    uids: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = birth_date
        # Over-long values make pydicom warn as the service reads each header.
        ds.PatientName = NAME + "x" * 70
        ds.AccessionNumber = "ZZACC-" + "9" * 20
        ds.ReferringPhysicianName = "Zzdoctor^" + "y" * 70
        ds.InstitutionName = "Zzclinic " + "z" * 70
        ds.save_as(path)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID), str(ds.SOPInstanceUID)}
    return paths, uids


def test_no_patient_data_reaches_the_server_log(server_factory, tmp_path) -> None:
    # Series 1 makes a SEG (highdicom logs each module it copies, with the source's UID); series 2's
    # birth date is no date, so highdicom refuses its SEG and says why, quoting the value.
    good, good_uids = marked_series(tmp_path / "good", 1, birth_date=BIRTH_DATE)
    bad, bad_uids = marked_series(tmp_path / "bad", 2, birth_date=BIRTH_DATE + "zz")
    server = server_factory(log_level="debug").start()
    with server.client() as client:
        for files, status in ((good, 200), (bad, 422)):
            answer = client.post(
                "/segment", params={"output": "dicom-seg"}, files=[("files", (f.name, f.read_bytes())) for f in files]
            )
            assert answer.status_code == status, answer.text
        jobs = [client.post("/jobs", files=[("files", (f.name, f.read_bytes())) for f in files]) for files in (good, bad)]
        assert [job.status_code for job in jobs] == [202, 202]
        done = [wait_for_job(client, job.headers["location"], timeout=120) for job in jobs]
    assert [job["state"] for job in done] == ["done", "done"]
    assert "seg" in done[0]["links"] and "seg" not in done[1]["links"]  # the refusal happened
    server.stop()

    log = server.log.read_text()
    # Nothing of the patient's: no mark, no UID of the series, no UID at all but the standard's.
    assert [mark for mark in MARKS if mark.lower() in log.lower()] == []
    assert [uid for uid in good_uids | bad_uids if uid in log] == []
    assert [uid for uid in UID_LIKE.findall(log) if not uid.startswith(STANDARD_UID)] == []
    # ... while the log still holds what happened: the request lines, in the app's own format,
    # the refusal, the library's warnings.
    line = r"^\S+ \S+ INFO uvicorn\.access: 127\.0\.0\.1:\d+ - "
    assert re.search(line + r'"POST /segment\?output=dicom-seg HTTP/1\.1" 200$', log, re.M), log[-3000:]
    assert re.search(line + r'"POST /segment\?output=dicom-seg HTTP/1\.1" 422$', log, re.M), log[-3000:]
    assert len(re.findall(line + r'"POST /jobs HTTP/1\.1" 202$', log, re.M)) == 2
    assert "DICOM SEG refused by highdicom: ValueError about PatientBirthDate" in log
    assert "WARNING pydicom: The PN component length" in log


def test_json_log_lines_on_a_real_server_one_object_a_line_without_patient_data(server_factory, tmp_path) -> None:
    files, uids = marked_series(tmp_path / "series", 1, birth_date=BIRTH_DATE)
    server = server_factory(log_level="info", log_format="json").start()
    with server.client() as client:
        job = client.post("/jobs", files=[("files", (f.name, f.read_bytes())) for f in files])
        assert job.status_code == 202, job.text
        assert wait_for_job(client, job.headers["location"], timeout=120)["state"] == "done"
    server.stop()

    text = server.log.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line an object: no other format
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    messages = {(r["logger"], r["message"]) for r in records}
    job_id = job.json()["id"]
    # uvicorn's own lines (its startup and the request) and the app's, in the one format.
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert any(logger == "uvicorn.access" and re.fullmatch(r'127\.0\.0\.1:\d+ - "POST /jobs HTTP/1\.1" 202', message)
               for logger, message in messages), text[-3000:]
    outcome = [m for logger, m in messages if logger == "service.jobs.runner" and m.startswith(f"job {job_id} ")]
    assert len(outcome) == 1 and re.fullmatch(rf"job {job_id} done: \d+ input bytes in \d+\.\d s", outcome[0]), outcome
    assert [mark for mark in MARKS if mark.lower() in text.lower()] == []
    assert [uid for uid in uids if uid in text] == []
