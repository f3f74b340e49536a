"""DICOMweb bridge: find CT series in a PACS, have the service segment them, store the SEGs back.

For each CT series that QIDO-RS finds (in one study, in studies since a date, or all of them):
1. skip it if the study already holds a SEG of ours that references it (Manufacturer
   "liverseg" and our series description, checked on the SEG's own metadata, whose
   ReferencedSeriesSequence names the source series): running twice stores nothing new;
2. retrieve it with WADO-RS in whatever transfer syntax the PACS holds (the service reads
   JPEG, JPEG-LS and JPEG 2000), spooled to a temporary folder, never held whole in memory;
3. segment it through the service's jobs API (`JobsClient`, HTTP only);
4. STOW-RS the SEG into the same study.
Every DICOMweb and service call is retried with backoff on 5xx, connection errors and timeouts;
a series that still fails is reported with the reason and the run goes on to the next one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pydicom
from dicomweb_client.api import DICOMwebClient

from client.jobs_client import JobsClient, ServiceRefused
from client.retry import GaveUp, RetryPolicy, describe
from client.seg_identity import MANUFACTURER, SERIES_DESCRIPTION

log = logging.getLogger(__name__)

Status = Literal["segmented", "skipped", "failed"]
PIXEL_DATA_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # (float, double) pixel data too
# QIDO attribute keys (DICOM JSON model: tags in hex).
STUDY_UID, SERIES_UID, MODALITY, SERIES_DESCRIPTION_TAG = "0020000D", "0020000E", "00080060", "0008103E"
INSTANCES, STUDY_DATE = "00201209", "00080020"
_UNSEEN = object()
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class PacsRefused(Exception):
    """The PACS (or a DICOM destination) refused something or answered nonsense; not retried."""


@dataclass(frozen=True)
class SeriesRef:
    """A CT series as QIDO-RS listed it."""

    study_uid: str
    series_uid: str
    description: str = ""
    instances: int | None = None
    study_date: str = ""


@dataclass
class Outcome:
    """What happened to one series; `reason` says why for skipped and failed ones."""

    study_uid: str
    series_uid: str
    description: str
    status: Status
    reason: str = ""
    seg_series_uid: str = ""
    instances: int = 0
    liver_volume_ml: float | None = None
    seconds: float = 0.0
    permanent: bool = True  # False: a transient failure that a later --watch cycle retries

    @contextlib.contextmanager
    def recording(self) -> Iterator[Outcome]:
        """Time the work on one series and turn any failure into this outcome's reason.

        The status stays "failed" unless the body set another; one series must not end a run or
        stop a listener, so every exception is caught (unexpected ones logged with a traceback).
        """
        started = time.perf_counter()
        try:
            yield self
        except ServiceRefused as error:
            self.reason = f"the service refused it: {error}"
        except PacsRefused as error:
            self.reason = str(error)
        except GaveUp as error:
            self.reason, self.permanent = str(error), False
        except Exception as error:
            log.exception("series %s failed", self.series_uid)
            self.reason = describe(error)
        finally:
            self.seconds = time.perf_counter() - started


@dataclass
class Report:
    """The outcomes of a run, for the end-of-run summary (text) and --json."""

    outcomes: list[Outcome]

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    def ok(self) -> bool:
        return self.count("failed") == 0

    def text(self) -> str:
        """Counts, then one line per series."""
        lines = [
            f"{len(self.outcomes)} CT series found: {self.count('segmented')} segmented, "
            f"{self.count('skipped')} skipped, {self.count('failed')} failed"
        ]
        for o in self.outcomes:
            what = f'series {o.series_uid} "{o.description}" (study {o.study_uid})'
            if o.status == "segmented":
                volume = "" if o.liver_volume_ml is None else f", liver {o.liver_volume_ml:.1f} mL"
                detail = f"SEG series {o.seg_series_uid} stored ({o.instances} images{volume}, {o.seconds:.1f} s)"
                if o.reason:
                    detail += f"; {o.reason}"
            else:
                detail = o.reason
            lines.append(f"  {o.status:<9} {what}: {detail}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "found": len(self.outcomes),
            "segmented": self.count("segmented"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "series": [asdict(o) for o in self.outcomes],
        }


class Bridge:
    """Moves CT series from a DICOMweb PACS through the service and their SEGs back.

    Args:
        dicomweb: a dicomweb-client client of the PACS (its own retries are switched off: the
            bridge's policy covers connection errors and timeouts too).
        service: the liverseg jobs API client.
        retry: the policy for DICOMweb calls (the service client has its own).
        workdir: where series are spooled (default: the system's temporary folder).
    """

    def __init__(self, dicomweb: DICOMwebClient, service: JobsClient, *, retry: RetryPolicy | None = None, workdir: Path | None = None):
        self.dicomweb, self.service, self.retry, self.workdir = dicomweb, service, retry or RetryPolicy(), workdir
        dicomweb.set_http_retry_params(retry=False)

    # -- finding ------------------------------------------------------------------------------

    def find_series(self, *, study: str | None = None, since: dt.date | None = None) -> list[SeriesRef]:
        """The CT series of `study`, of studies dated `since` or later, or of the whole PACS (QIDO-RS)."""
        filters: dict[str, str] = {"Modality": "CT"}
        if since is not None:
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        fields = [SERIES_DESCRIPTION_TAG, INSTANCES, STUDY_DATE, STUDY_UID]
        found = self.retry.call(
            lambda: self.dicomweb.search_for_series(
                study_instance_uid=study, search_filters=filters, fields=fields, get_remaining=True
            ),
            "QIDO-RS search for CT series",
        )
        refs = []
        for item in found:
            if (_value(item, MODALITY) or "CT") != "CT":
                continue  # a PACS that ignores the Modality filter
            refs.append(SeriesRef(
                study_uid=_value(item, STUDY_UID) or study or "",
                series_uid=_value(item, SERIES_UID) or "",
                description=_value(item, SERIES_DESCRIPTION_TAG) or "",
                instances=_int(_value(item, INSTANCES)),
                study_date=_value(item, STUDY_DATE) or "",
            ))
        return [r for r in refs if r.study_uid and r.series_uid]

    def our_seg_for(self, study_uid: str, series_uid: str) -> str | None:
        """The series UID of a SEG of ours in the study that references `series_uid`, if any."""
        segs = self.retry.call(
            lambda: self.dicomweb.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"}),
            "QIDO-RS search for SEG series",
        )
        for item in segs:
            seg_series = _value(item, SERIES_UID)
            if not seg_series:
                continue
            metadata = self.retry.call(
                lambda s=seg_series: self.dicomweb.retrieve_series_metadata(study_uid, s),
                "WADO-RS SEG metadata",
            )
            for instance in metadata:
                ds = _dataset(instance)
                ours = ds.get("Manufacturer") == MANUFACTURER or ds.get("SeriesDescription") == SERIES_DESCRIPTION
                referenced = {str(ref.get("SeriesInstanceUID", "")) for ref in ds.get("ReferencedSeriesSequence", [])}
                if ours and series_uid in referenced:
                    return seg_series
        return None

    # -- running ------------------------------------------------------------------------------

    def run(self, *, study: str | None = None, since: dt.date | None = None) -> Report:
        """Process every CT series found once; returns the report (never raises for one series)."""
        refs = self.find_series(study=study, since=since)  # an unreachable PACS raises GaveUp
        log.info("%d CT series found", len(refs))
        return Report([self.process(ref) for ref in refs])

    def watch(
        self, *, study: str | None = None, since: dt.date | None = None, interval_s: float = 60.0,
        stop: threading.Event | None = None, max_cycles: int | None = None,
    ) -> Report:
        """Poll the PACS every `interval_s` and process new CT series until `stop` is set.

        A series is processed once its instance count is the same on two polls in a row (it is
        no longer arriving). Segmented, skipped and permanently failed series are not retried;
        transient failures are, on the next poll. Without `study` or `since`, only studies dated
        today or later are watched (a whole PACS is too much to poll); a given study is watched
        whatever its date.
        """
        stop = stop or threading.Event()
        if study is None and since is None:
            since = dt.date.today()
        counts: dict[str, object] = {}
        settled: dict[str, Outcome] = {}
        cycle = 0
        while not stop.is_set():
            cycle += 1
            try:
                refs = self.find_series(study=study, since=since)
            except Exception as error:  # the PACS is down: try again next cycle
                log.error("could not search the PACS: %s", describe(error))
                refs = []
            for ref in refs:
                done = settled.get(ref.series_uid)
                if done is not None and done.permanent:
                    continue
                previous, counts[ref.series_uid] = counts.get(ref.series_uid, _UNSEEN), ref.instances
                if previous != ref.instances:
                    continue  # new, or still arriving: process it once its count holds still
                settled[ref.series_uid] = outcome = self.process(ref)
                log.info("%s %s: %s", outcome.status, ref.series_uid, outcome.reason or "stored")
            if max_cycles is not None and cycle >= max_cycles:
                break
            stop.wait(interval_s)
        return Report(list(settled.values()))

    def process(self, ref: SeriesRef) -> Outcome:
        """Skip, or retrieve, segment and store the SEG of one series; every failure is an Outcome."""
        outcome = Outcome(ref.study_uid, ref.series_uid, ref.description, "failed", instances=ref.instances or 0)
        with outcome.recording():
            existing = self.our_seg_for(ref.study_uid, ref.series_uid)
            if existing:
                outcome.status, outcome.reason = "skipped", f"already has a liverseg SEG (series {existing})"
                return outcome
            with tempfile.TemporaryDirectory(prefix="liverseg-pacs-", dir=self.workdir) as folder:
                files = self.retry.call(lambda: self._retrieve(ref, Path(folder)), f"WADO-RS retrieval of series {ref.series_uid}")
                outcome.instances = len(files)
                result = self.service.segment_series(files)
            seg = pydicom.dcmread(io.BytesIO(result.seg))
            self._check_seg(seg, ref)
            self._store(seg, ref)
            outcome.status, outcome.seg_series_uid = "segmented", str(seg.SeriesInstanceUID)
            outcome.liver_volume_ml = result.summary.get("liver_volume_ml")
            outcome.reason = "; ".join(result.warnings)
        return outcome

    def _retrieve(self, ref: SeriesRef, folder: Path) -> list[Path]:
        """WADO-RS the series into `folder` (emptied first: a retried retrieval starts over)."""
        for old in folder.iterdir():
            old.unlink()
        files = []
        for index, ds in enumerate(self.dicomweb.iter_series(ref.study_uid, ref.series_uid, media_types=ANY_TRANSFER_SYNTAX)):
            path = folder / f"{index:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        if not files:
            raise PacsRefused("WADO-RS returned no instance for the series")
        return files

    @staticmethod
    def _check_seg(seg: pydicom.Dataset, ref: SeriesRef) -> None:
        """The SEG must belong in the source's study and reference the source series."""
        if str(seg.get("StudyInstanceUID", "")) != ref.study_uid:
            raise PacsRefused(f"the SEG belongs to study {seg.get('StudyInstanceUID')}, not {ref.study_uid}: not stored")
        referenced = {str(r.get("SeriesInstanceUID", "")) for r in seg.get("ReferencedSeriesSequence", [])}
        if ref.series_uid not in referenced:
            raise PacsRefused("the SEG does not reference the source series: not stored")

    def _store(self, seg: pydicom.Dataset, ref: SeriesRef) -> None:
        """STOW-RS the SEG into the source's study; a failure the PACS reports is an error."""
        response = self.retry.call(
            lambda: self.dicomweb.store_instances([seg], study_instance_uid=ref.study_uid),
            f"STOW-RS of the SEG for series {ref.series_uid}",
        )
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = ", ".join(f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed)
            raise PacsRefused(f"the PACS refused the SEG in its STOW-RS answer (failure reason {reasons})")


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):  # a person name
        value = value.get("Alphabetic")
    return None if value is None else str(value)


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _dataset(instance: dict) -> pydicom.Dataset:
    """A DICOM JSON instance as a pydicom Dataset, without its bulk pixel data."""
    return pydicom.Dataset.from_json({k: v for k, v in instance.items() if k not in PIXEL_DATA_TAGS})
