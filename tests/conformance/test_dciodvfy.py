"""dciodvfy (David Clunie's dicom3tools) checks our SEG and RTSTRUCT against the IODs of the standard.

"No error of ours": dciodvfy reports every Error line of the object; ours copy nothing from the
source series that it could blame but the patient and study attributes, so any Error is ours.
Warnings (attributes a DICOMDIR would want, which an anonymised sample lacks) are not errors.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest

from service.io.rtstruct import make_rtstruct
from service.io.seg import make_seg
from tests.conformance.conftest import phantom_case, real_case
from tests.conftest import ORIENTATIONS
from tests.service.test_seg import CARD

WRITERS = {"seg": (make_seg, "Segmentation"), "rtstruct": (make_rtstruct, "RTStructureSet")}


def verify(dciodvfy: str, data: bytes, folder: Path) -> tuple[str, list[str]]:
    """(the IOD dciodvfy recognised, its Error lines) for a DICOM file's bytes."""
    path = folder / "object.dcm"
    path.write_bytes(data)
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    iods = [line for line in lines if line and not line.startswith(("Error", "Warning"))]
    return (iods[0] if iods else ""), errors


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "oblique"])
def test_phantom_series_objects_have_no_error(dciodvfy, tmp_path, kind, orientation) -> None:
    _, volume, mask = phantom_case(tmp_path, seed=3, direction=ORIENTATIONS[orientation])
    write, iod = WRITERS[kind]
    assert verify(dciodvfy, write(volume, mask, CARD), tmp_path) == (iod, [])


@pytest.mark.realdata
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_real_sample_objects_have_no_error(dciodvfy, real_sample, tmp_path, kind) -> None:
    # The sample's own images have Errors (file meta UIDs that differ from the dataset's); ours none.
    _, volume, mask = real_case(real_sample, tmp_path)
    write, iod = WRITERS[kind]
    assert verify(dciodvfy, write(volume, mask, CARD), tmp_path) == (iod, [])


def test_dciodvfy_does_report_an_error_we_put_in(dciodvfy, tmp_path) -> None:
    # The harness can fail: an RTSTRUCT without its Structure Set Label (type 1) is an Error.
    _, volume, mask = phantom_case(tmp_path, seed=3)
    ds = pydicom.dcmread(io.BytesIO(make_rtstruct(volume, mask, CARD)))
    del ds.StructureSetLabel
    broken = io.BytesIO()
    ds.save_as(broken)
    iod, errors = verify(dciodvfy, broken.getvalue(), tmp_path)
    assert iod == "RTStructureSet"
    assert any("StructureSetLabel" in e for e in errors), errors
