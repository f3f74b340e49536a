"""One segmentation from uploaded files to its answers: the use case `POST /segment` and the job
runner both run, step by step, so that each decision about a request is made here once.

    SegmentUpload(params, settings, worker)  model and options resolved (404/422 before any upload is read)
      .decode(uploads)                        the volume (415/413/422), a SEG asked of a non-DICOM input refused
      .task(progress) -> worker.submit(...)   what the inference worker runs
      .finish(result)                         the worker's answer
      .encode(kind) / .job_files()            the answer's body / every file a job keeps
      .summary(encode_s)                      the JSON summary

Why a job has no DICOM SEG is `no_seg_reason`, a field the job store keeps, not a warning to parse.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.errors import UnsupportedOutput
from service.io.decode import Upload, decode_upload
from service.io.encode import image_to_nifti_bytes, mask_to_nifti_bytes
from service.io.preview import Caption, preview_png
from service.io.probability import probability_to_nifti_bytes
from service.io.rtstruct import make_rtstruct
from service.io.seg import make_seg
from service.options import InferenceOptions, SegmentParams, resolve_options
from service.schemas import Summary
from service.settings import Settings
from service.summary import build_summary, review_reasons
from service.volume import Volume
from service.worker import InferenceWorker, SegmentTask, WorkerResult

# The files a finished job keeps beside its input, by link name ("ct": made when the viewer asks).
JOB_FILES = {
    "mask": "mask.nii.gz", "confidence": "confidence.nii.gz", "preview": "preview.png",
    "seg": "seg.dcm", "summary": "summary.json", "ct": "ct.nii.gz",
    "rtstruct": "rtstruct.dcm", "probability": "probability.nii.gz",
}


class SegmentUpload:
    """One upload's way through the service; see the module docstring for the order of the steps."""

    def __init__(self, params: SegmentParams, settings: Settings, worker: InferenceWorker):
        self.params, self.settings = params, settings
        self.model_name = params.model or settings.model
        self.options: InferenceOptions = resolve_options(worker.check_model(self.model_name), params, settings)
        self.volume: Volume | None = None
        self.result: WorkerResult | None = None
        self.decode_s = 0.0
        self.no_seg_reason: str | None = None

    def decode(self, uploads: list[Upload]) -> Volume:
        """Decode the uploaded files (the domain errors of `decode_upload`); a SEG or RTSTRUCT asked
        for a volume that is not DICOM is refused here, before the network runs."""
        started = time.perf_counter()
        self.volume = decode_upload(uploads, self.settings)
        self.decode_s = time.perf_counter() - started
        if self.params.output == "dicom-seg" and (why := self.seg_impossible()):
            raise UnsupportedOutput(f"{why} Ask for output=nifti instead.")
        if self.params.output == "rtstruct" and (why := self.seg_impossible()):
            raise UnsupportedOutput(
                f"An RT Structure Set, like a DICOM SEG, references its source series: {why} "
                "Ask for output=nifti instead."
            )
        return self.volume

    def seg_impossible(self, whose: str = "this input") -> str | None:
        """Why no DICOM SEG can reference this input at all, or None (a DICOM series with positions)."""
        if self.volume.source != "dicom":
            return f"DICOM SEG output needs a DICOM input to reference; {whose} was {self.volume.source}."
        if not self.volume.positions_known:
            return (
                f"DICOM SEG output places the mask by each slice's Image Position (Patient), which the "
                f"images of {whose} lack (the volume was placed at origin 0 by assumption)."
            )
        return None

    def task(self, progress: Callable[[float], None] | None = None) -> SegmentTask:
        """What the inference worker runs for this upload."""
        return SegmentTask(self.volume.image, self.model_name, self.options, progress)

    def finish(self, result: WorkerResult) -> None:
        self.result = result

    def encode(self, kind: str) -> tuple[bytes, str, str]:
        """The body of a synchronous answer: (bytes, media type, file name) for output `kind`."""
        segmentation = self.result.segmentation
        if kind == "nifti":
            return mask_to_nifti_bytes(segmentation.mask), "application/gzip", "liver_mask.nii.gz"
        if kind == "confidence":
            return image_to_nifti_bytes(segmentation.confidence), "application/gzip", "liver_confidence.nii.gz"
        if kind == "dicom-seg":
            return self._seg(), "application/dicom", "liver_seg.dcm"
        if kind == "rtstruct":
            return self._rtstruct(), "application/dicom", "liver_rtstruct.dcm"
        if kind == "probability":
            return self._probability(), "application/gzip", "liver_probability.nii.gz"
        raise ValueError(f"no file for output {kind!r}")

    def job_files(self) -> dict[str, bytes]:
        """Every file a finished job keeps, by link name (no summary: that comes last). A SEG or
        RTSTRUCT that cannot be made leaves the mask standing and says why in the warnings (and, for
        an input no DICOM object can reference, in `no_seg_reason`)."""
        segmentation = self.result.segmentation
        files = {
            "mask": mask_to_nifti_bytes(segmentation.mask),
            "preview": preview_png(self.volume.image, segmentation.mask, segmentation.confidence, caption=Caption(
                segmentation.liver_volume_ml, segmentation.liver_mean_hu,
                tuple(reason.code for reason in review_reasons(segmentation)),
            )),
        }
        files["probability"] = self._probability()
        if segmentation.confidence is not None:
            files["confidence"] = image_to_nifti_bytes(segmentation.confidence)
        self.no_seg_reason = self.seg_impossible("this job's input")
        if self.no_seg_reason is None:
            try:
                files["seg"] = self._seg()
            except UnsupportedOutput as error:
                self.no_seg_reason = error.detail
                self.volume.warnings.append(f"No DICOM SEG was made: {error.detail}")
            try:
                files["rtstruct"] = self._rtstruct()
            except UnsupportedOutput as error:
                self.volume.warnings.append(f"No RT Structure Set was made: {error.detail}")
        return files

    def _seg(self) -> bytes:
        return make_seg(self.volume, self.result.segmentation.mask, self.result.model.card)

    def _rtstruct(self) -> bytes:
        return make_rtstruct(self.volume, self.result.segmentation.mask, self.result.model.card)

    def _probability(self) -> bytes:
        segmentation = self.result.segmentation
        temperature = self.result.model.card.calibration.temperature
        return probability_to_nifti_bytes(segmentation.mask, segmentation.liver_probability, temperature)

    def summary(self, encode_s: float) -> Summary:
        """The JSON summary, with the time of every stage."""
        return build_summary(self.volume, self.result, {"decode": self.decode_s, "encode": encode_s})
