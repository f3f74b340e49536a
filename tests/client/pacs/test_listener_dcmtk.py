"""`liverseg-pacs listen` with DCMTK on both sides: `storescu` routes the series in, `storescp` takes
the SEG back. The listener is built on pynetdicom, and so is test_listener.py's PACS: a PACS client
that is not pynetdicom finds what two copies of one library would agree on wrongly.

DCMTK is the Debian package `dcmtk` (.ci/run installs it); without it these tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import SegmentationStorage

from tests.client.pacs.conftest import missing, phantom_series, seg_on_grid, service_mask
from tests.conftest import REPO, dice
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.slow


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool (skips, or fails under CI, where DCMTK is missing)."""
    path = shutil.which(tool)
    if path is None:
        missing(f"DCMTK's {tool} is not installed (Debian package `dcmtk`)")
    return path


def echo(calling: str, port: int, called: str = "LIVERSEG") -> subprocess.CompletedProcess:
    """DCMTK's C-ECHO from `calling` to called@127.0.0.1:port."""
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def wait_for_echo(port: int, called: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while echo("DCMTK", port, called).returncode != 0:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(f"{called} never answered a C-ECHO:\n{log.read_text()}")
        time.sleep(0.3)


def start_listener(service_url: str, port: int, destination: str, log: Path) -> subprocess.Popen:
    """`liverseg-pacs listen` on loopback, open to the calling AE title DCMTK only, answering C-ECHO."""
    listener = subprocess.Popen(
        [
            sys.executable, "-m", "client.pacs", "listen", "--host", "127.0.0.1", "--port", str(port),
            "--service", service_url, "--destination", destination,
            "--settle", "1", "--backoff", "0.2", "--retries", "3", "--allow", "DCMTK",
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log.open("wb"),
    )
    wait_for_echo(port, "LIVERSEG", listener, log)
    return listener


def test_storescu_routes_a_series_in_and_storescp_takes_the_seg_back(service, tmp_path) -> None:
    storescu, storescp = dcmtk("storescu"), dcmtk("storescp")
    series = phantom_series(tmp_path, seed=17)
    received = tmp_path / "received"
    received.mkdir()
    destination_port, port = free_port(), free_port()
    # storescp: any storage class in the uncompressed syntaxes, one file per instance (named by
    # its SOP class and instance UID) in `received`.
    destination = subprocess.Popen(
        [storescp, "--aetitle", "DEST", "--output-directory", str(received), "+xe", str(destination_port)],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "storescp.log").open("wb"),
    )
    wait_for_echo(destination_port, "DEST", destination, tmp_path / "storescp.log")
    listener = start_listener(service.url, port, f"127.0.0.1:{destination_port}:DEST", tmp_path / "listen.log")
    try:
        sent = subprocess.run(
            [storescu, "--aetitle", "DCMTK", "--call", "LIVERSEG", "--propose-little", "--required",
             "127.0.0.1", str(port), *map(str, series.files)],
            capture_output=True, text=True, timeout=120,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 120
        while not any(f.is_file() for f in received.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # storescp writes the file as it arrives; let it finish
    finally:
        listener.send_signal(signal.SIGTERM)
        report, _ = listener.communicate(timeout=60)
        destination.terminate()
        destination.wait(timeout=30)

    assert listener.returncode == 0
    assert "1 CT series found: 1 segmented, 0 skipped, 0 failed" in report.decode(), report.decode()
    files = [f for f in received.rglob("*") if f.is_file()]
    assert len(files) == 1, f"storescp kept {files}:\n{(tmp_path / 'storescp.log').read_text()}"
    seg = pydicom.dcmread(files[0])
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    mask = service_mask(service, series.files)
    expected = sitk.GetArrayFromImage(mask)
    assert 0.05 < expected.mean() < 0.95
    assert dice(seg_on_grid(seg, series.files, mask), expected) >= 0.99


def test_a_calling_title_not_allowed_is_refused(service, tmp_path) -> None:
    port = free_port()
    listener = start_listener(service.url, port, "127.0.0.1:1:DEST", tmp_path / "listen.log")
    try:
        refused = echo("STRANGER", port)
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.communicate(timeout=60)
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower(), refused.stdout + refused.stderr
