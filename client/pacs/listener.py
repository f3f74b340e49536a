"""A DICOM C-STORE receiver: a PACS routes CT series to us; each one's SEG goes back by C-STORE.

Incoming instances are spooled to disk per series (study and series UID) as they arrive; a series
is complete once no instance of it has arrived for `settle_s` seconds (DICOM has no "end of
series" message; storescp-based routers use the same rule). A complete CT series is segmented
through the service's jobs API (HTTP only) and the SEG is C-STOREd to the destination, in JPEG
2000 where the destination accepts it, else bit-packed in explicit VR little endian. Other
modalities (a scout, a SEG routed back to us) are acknowledged and dropped. Every instance is
answered Success as soon as it is on disk, so a sending PACS never waits on the segmentation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import SegmentationStorage, Verification

from client.jobs_client import JobsClient
from client.pacs.bridge import Outcome, PacsRefused
from client.retry import RetryPolicy, TransientError

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
STORE_WARNINGS = {0xB000, 0xB006, 0xB007}  # coercion, elements discarded: stored all the same


@dataclass(frozen=True)
class Destination:
    """A DICOM node to C-STORE SEGs to, from "HOST:PORT:AET"."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2] or not parts[1].isdigit():
            raise ValueError(f"destination {text!r} is not HOST:PORT:AET (e.g. pacs.local:104:ORTHANC)")
        host, port, aet = parts
        return cls(host, int(port), aet)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class _Incoming:
    """The instances of one series received so far."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    last_seen: float = 0.0


class Listener:
    """A C-STORE SCP that segments each complete CT series and sends its SEG on.

    Args:
        ae_title: our AE title (associations addressed to another title are refused).
        port, host: where to listen.
        service: the liverseg jobs API client.
        destination: where SEGs are C-STOREd.
        settle_s: a series is complete after this many seconds without a new instance.
        spool: where instances wait (default: a new temporary folder, removed on stop).
        retry: the policy for C-STORE associations (the service client has its own).
        allowed_calling: the calling AE titles that may send to us; None: any (open it on purpose).
    """

    def __init__(
        self, *, ae_title: str, port: int, service: JobsClient, destination: Destination,
        allowed_calling: list[str] | None, host: str = "127.0.0.1",
        settle_s: float = 10.0, spool: Path | None = None, retry: RetryPolicy | None = None,
    ):
        self.ae_title, self.host, self.port = ae_title, host, port
        self.service, self.destination, self.settle_s = service, destination, settle_s
        self.retry = retry or RetryPolicy()
        self._own_spool = spool is None
        self.spool = Path(tempfile.mkdtemp(prefix="liverseg-listen-")) if spool is None else Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.outcomes: list[Outcome] = []
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="liverseg-pacs-dispatch", daemon=True)
        self._ae = AE(ae_title=ae_title)
        self._ae.require_called_aet = True
        if allowed_calling is not None:
            self._ae.require_calling_aet = list(allowed_calling)
        for context in AllStoragePresentationContexts:  # accept whatever a PACS routes; keep only CT
            self._ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._ae.add_supported_context(Verification)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen in the background and start dispatching complete series."""
        self._server = self._ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self._dispatcher.start()
        log.info("listening as %s on %s:%d; SEGs go to %s", self.ae_title, self.host, self.port, self.destination)

    def stop(self) -> None:
        """Stop listening; series still settling are dropped (the PACS can route them again)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._dispatcher.is_alive():
            self._dispatcher.join(timeout=600)
        if self._own_spool:
            shutil.rmtree(self.spool, ignore_errors=True)

    def serve_forever(self) -> None:
        """start(), then wait until interrupted (Ctrl-C or SIGTERM raising KeyboardInterrupt)."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.stop()

    # -- receiving ----------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int:
        """Spool one instance; Success as soon as it is on disk."""
        try:
            ds = event.dataset
            key = (str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or ""))
            data = event.encoded_dataset()
        except Exception:  # a dataset pydicom cannot parse
            log.warning("an incoming instance could not be decoded", exc_info=True)
            return CANNOT_UNDERSTAND
        with self._lock:
            series = self._incoming.get(key)
            if series is None:
                folder = self.spool / hashlib.sha1("|".join(key).encode()).hexdigest()[:16]
                folder = folder.with_name(f"{folder.name}-{time.monotonic_ns()}")
                folder.mkdir(parents=True)
                series = _Incoming(*key, str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""), folder)
                self._incoming[key] = series
            path = series.folder / f"{len(series.files):05d}.dcm"
            series.files.append(path)
            series.last_seen = time.monotonic()
        try:
            path.write_bytes(data)
        except OSError:
            log.exception("could not spool an instance")
            return OUT_OF_RESOURCES
        return SUCCESS

    def _dispatch_loop(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                ready = [key for key, s in self._incoming.items() if now - s.last_seen >= self.settle_s]
                complete = [self._incoming.pop(key) for key in ready]
            for series in complete:
                outcome = self.process(series)
                with self._lock:
                    self.outcomes.append(outcome)
                log.info("%s series %s: %s", outcome.status, series.series_uid, outcome.reason or f"SEG sent to {self.destination}")

    # -- segmenting and sending ---------------------------------------------------------------

    def process(self, series: _Incoming) -> Outcome:
        """Segment one complete series and C-STORE its SEG; every failure becomes an Outcome."""
        outcome = Outcome(series.study_uid, series.series_uid, series.description, "failed", instances=len(series.files))
        try:
            with outcome.recording():
                if series.modality != "CT":
                    outcome.status, outcome.reason = "skipped", f"modality {series.modality or 'unknown'}, not CT"
                    return outcome
                result = self.service.segment_series(series.files)
                seg = pydicom.dcmread(io.BytesIO(result.seg))
                self.send(result.seg)
                outcome.status, outcome.seg_series_uid = "segmented", str(seg.SeriesInstanceUID)
                outcome.liver_volume_ml = result.summary.get("liver_volume_ml")
                outcome.reason = "; ".join(result.warnings)
        finally:
            shutil.rmtree(series.folder, ignore_errors=True)
        return outcome

    def send(self, seg: bytes) -> None:
        """C-STORE a SEG file to the destination, retried while the association fails."""
        self.retry.call(lambda: self._send_once(seg), f"C-STORE of the SEG to {self.destination}")

    def _send_once(self, seg: bytes) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(SegmentationStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
        if not assoc.is_established:
            raise TransientError(f"no association with {self.destination} (refused, aborted or unreachable)")
        try:
            accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == SegmentationStorage}
            if not accepted:
                raise PacsRefused(f"{self.destination} accepts no Segmentation Storage")
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(seg)))
            if "Status" not in status:
                raise TransientError(f"{self.destination} did not answer the C-STORE (association aborted?)")
            code = int(status.Status)
            if code != SUCCESS and code not in STORE_WARNINGS:
                if code & 0xFF00 == OUT_OF_RESOURCES:
                    raise TransientError(f"{self.destination} is out of resources (0x{code:04X})")
                raise PacsRefused(f"{self.destination} refused the SEG (C-STORE status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()
