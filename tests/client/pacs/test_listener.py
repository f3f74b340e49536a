"""`liverseg-pacs listen`: pynetdicom plays the PACS that routes a CT series in and takes the SEG back."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SegmentationStorage,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from tests.client.pacs.conftest import phantom_series, seg_on_grid, service_mask
from tests.conftest import REPO, dice
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.slow

SUCCESS = 0x0000


class Destination:
    """A C-STORE SCP that keeps what it receives; it accepts no JPEG 2000, as some PACS do not."""

    def __init__(self, ae_title: str = "DEST"):
        self.ae_title, self.port = ae_title, free_port()
        self.received: list[pydicom.Dataset] = []
        self.arrived = threading.Event()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(SegmentationStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(pydicom.dcmread(io.BytesIO(event.encoded_dataset())))
        self.arrived.set()
        return SUCCESS

    def close(self) -> None:
        self._server.shutdown()


def listening(port: int, ae_title: str, timeout: float = 60) -> bool:
    """Whether a C-ECHO to ae_title@127.0.0.1:port succeeds within `timeout` seconds."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            return status.Status == SUCCESS
        time.sleep(0.3)
    return False


def c_store(port: int, ae_title: str, files: list[Path]) -> list[int]:
    """Send the files as a PACS would route them; the status of each C-STORE."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established, "the listener refused the association"
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def test_listen_segments_a_routed_series_and_sends_the_seg_back(service, tmp_path) -> None:
    series = phantom_series(tmp_path, seed=13)
    destination = Destination()
    port = free_port()
    log = (tmp_path / "listen.log").open("wb")
    listener = subprocess.Popen(
        [
            sys.executable, "-m", "client.pacs", "listen", "--host", "127.0.0.1", "--port", str(port),
            "--service", service.url, "--destination", f"127.0.0.1:{destination.port}:{destination.ae_title}",
            "--settle", "1", "--backoff", "0.2", "--retries", "3", "--allow", "PACS",
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log,
    )
    try:
        assert listening(port, "LIVERSEG"), f"the listener never answered a C-ECHO:\n{(tmp_path / 'listen.log').read_text()}"
        assert c_store(port, "LIVERSEG", series.files) == [SUCCESS] * len(series.files)
        assert destination.arrived.wait(120), f"no SEG came back:\n{(tmp_path / 'listen.log').read_text()}"
        time.sleep(0.5)  # a second SEG for the same series would arrive now
    finally:
        listener.send_signal(signal.SIGTERM)  # stops as Ctrl-C does, printing its report
        report, _ = listener.communicate(timeout=60)
        destination.close()

    assert listener.returncode == 0
    assert "1 CT series found: 1 segmented, 0 skipped, 0 failed" in report.decode(), report.decode()
    (seg,) = destination.received
    assert seg.SOPClassUID == SegmentationStorage
    # The destination takes no JPEG 2000: the listener sent the bit-packed, uncompressed SEG.
    assert seg.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert seg.StudyInstanceUID == series.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    mask = service_mask(service, series.files)
    expected = sitk.GetArrayFromImage(mask)
    assert 0.05 < expected.mean() < 0.95
    assert dice(seg_on_grid(seg, series.files, mask), expected) >= 0.99


def echo_as(calling: str, port: int, called: str = "LIVERSEG") -> bool:
    """Whether an association from `calling` is accepted and answers a C-ECHO."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status == SUCCESS


def test_listen_is_closed_by_default_loopback_and_the_destinations_ae_title_only(tmp_path) -> None:
    from client.pacs.cli import build_parser
    from client.pacs.listener import Destination as SegDestination
    from client.pacs.listener import Listener

    args = build_parser().parse_args(["listen", "--port", "1", "--service", "http://s", "--destination", "h:1:ORTHANC"])
    assert (args.host, args.allow, args.allow_any) == ("127.0.0.1", [], False)
    port = free_port()
    listener = Listener(
        ae_title="LIVERSEG", port=port, service=None, destination=SegDestination.parse("127.0.0.1:1:ORTHANC"),
        allowed_calling=["ORTHANC"], spool=tmp_path / "spool",
    )
    listener.start()
    try:
        assert listener._server.server_address[0] == "127.0.0.1"
        assert echo_as("ORTHANC", port)
        assert not echo_as("STRANGER", port)  # a calling AE title nobody listed is refused
    finally:
        listener.stop()


def test_the_cli_opens_listen_only_when_told(monkeypatch) -> None:
    import client.pacs.cli as cli

    made: dict = {}

    class Recording:
        def __init__(self, **kwargs):
            made.update(kwargs)

        def serve_forever(self):
            return None

        outcomes: list = []

    monkeypatch.setattr("client.pacs.listener.Listener", Recording)
    base = ["listen", "--port", "1", "--service", "http://s", "--destination", "h:1:ORTHANC"]
    cli.main(base)
    assert (made["host"], made["allowed_calling"]) == ("127.0.0.1", ["ORTHANC"])
    cli.main([*base, "--host", "0.0.0.0", "--allow", "CT01", "--allow", "CT02"])
    assert (made["host"], made["allowed_calling"]) == ("0.0.0.0", ["CT01", "CT02"])
    cli.main([*base, "--allow-any"])
    assert made["allowed_calling"] is None
