"""The JSON the service sends: response models, so the OpenAPI schema says what clients get."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code and a sentence for a person."""

    error: str = Field(examples=["invalid_volume"])
    detail: str = Field(examples=["The image has 2 dimensions; a CT volume needs 3."])


class BoundingBox(BaseModel):
    """The liver's box: voxel indices (x, y, z) on the input grid and its extent in LPS mm."""

    start_xyz: list[int]
    size_xyz: list[int]
    min_lps_mm: list[float]
    max_lps_mm: list[float]


class ConfidenceSummary(BaseModel):
    """How sure the model is of the liver it found (from the deep-supervision heads)."""

    mean_in_liver: float = Field(ge=0, le=1)
    fraction_below_threshold: float = Field(ge=0, le=1)
    threshold: float
    review_recommended: bool
    how: str


class Finding(BaseModel):
    """One reason about the mask: a stable code and a sentence for a person."""

    code: str = Field(examples=["mask_in_thorax"])
    sentence: str


class InputGeometry(BaseModel):
    """The input's grid, which the mask reproduces exactly."""

    source: str
    size_xyz: list[int]
    spacing_xyz_mm: list[float]
    origin_lps_mm: list[float]
    direction: list[float]
    warnings: list[str] = []


class Summary(BaseModel):
    """What `output=json` returns, and what a finished job reports."""

    model: str
    model_sha256: str
    intended_use: str
    device: str
    worker: str | None = Field(None, description="host:pid of the process that ran it (an API process, or a queue worker).")
    liver_volume_ml: float
    liver_mean_hu: float | None
    bbox: BoundingBox | None
    confidence: ConfidenceSummary
    review_recommended: bool = Field(
        description="Look at this mask: the heads disagree on too much of it (confidence) or it is anatomically implausible.",
    )
    review_reasons: list[Finding] = Field(description="Why review is recommended, one finding each (empty when it is not).")
    notes: list[Finding] = Field(description="What a reader should know that does not call for review (a liver cut by the field of view).")
    input: InputGeometry
    windows_total: int
    windows_skipped: int
    oom_fallback: bool
    options: dict[str, float | int | bool | str | None]
    timings_s: dict[str, float]


JobState = Literal["queued", "running", "done", "failed"]


class Job(BaseModel):
    """An asynchronous segmentation and where it stands."""

    id: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_position: int | None = Field(None, description="Jobs ahead of this one (queued only).")
    eta_s: float | None = Field(None, description="Rough seconds until it finishes.")
    summary: Summary | None = None
    error: ErrorBody | None = None
    links: dict[str, str] = {}
