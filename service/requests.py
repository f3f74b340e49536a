"""What a client may ask for, as query parameters, and how it becomes InferenceOptions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.pipeline import InferenceOptions
from service.settings import Settings

OutputKind = Literal["nifti", "json", "dicom-seg", "confidence"]


class SegmentParams(BaseModel):
    """Query parameters of /segment and /jobs."""

    model_config = {"extra": "forbid"}

    model: str | None = Field(None, max_length=200, description="Registry name; default from settings.")
    output: OutputKind = Field(
        "nifti",
        description="nifti: the uint8 mask as .nii.gz on the input's grid; json: the summary; "
        "dicom-seg: a DICOM SEG (DICOM input only); confidence: the confidence map as .nii.gz.",
    )
    confidence: bool = Field(False, description="Also make the full-resolution confidence map (jobs).")
    tta: bool = Field(False, description="Mirror test-time augmentation (slower, slightly better).")
    overlap: float | None = Field(None, ge=0.0, le=0.9, description="Window overlap; default from the card.")
    depth: int | None = Field(None, ge=1, le=4, description="UNet++ only: prune to depth L for speed.")


def inference_options(params: SegmentParams, settings: Settings) -> InferenceOptions:
    """The engine's options for these parameters under these settings."""
    return InferenceOptions(
        tta=params.tta,
        overlap=settings.overlap if params.overlap is None else params.overlap,
        depth=params.depth,
        batch_size=settings.window_batch_size,
        skip_air_hu=settings.skip_air_hu,
        confidence_map=params.confidence or params.output == "confidence",
        low_confidence=settings.low_confidence,
        review_fraction=settings.confidence_review_threshold,
    )
