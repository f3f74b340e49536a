"""All settings, from `LIVERSEG_*` environment variables, read once here and passed down."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Nothing else in the project reads the environment."""

    model_config = SettingsConfigDict(env_prefix="LIVERSEG_", frozen=True)

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model: str = Field("unet3d_ds.phantom_4mm", description="Default model (registry name).")
    model_dir: Path | None = Field(None, description="Checkpoint folder; default: the bundled model_zoo/checkpoints.")
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:N'.")
    backend: Literal["auto", "openvino", "torch"] = Field(
        "auto", description="What runs the network on the CPU: 'auto' and 'openvino' use OpenVINO, falling back to "
        "PyTorch (with a logged reason) where it is missing or fails; 'torch' is PyTorch. CUDA always runs PyTorch.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys; empty means no authentication."
    )
    data_dir: Path = Field(Path("var"), description="Jobs database and result files.")
    job_ttl_s: int = Field(24 * 3600, ge=60, description="Job files are deleted this long after they finish.")
    queue_size: int = Field(8, ge=1, description="Requests waiting for the worker before 503.")
    decoded_uploads: int = Field(
        2, ge=1,
        description="Uploads decoded into memory at once, the one running included; other requests wait for a slot "
        "as files on disk, so memory stays that of this many volumes whatever the clients. 2 keeps the worker busy: "
        "the next upload decodes while one runs.",
    )
    request_timeout_s: float = Field(900.0, gt=0)
    queue_url: str | None = Field(None, description="redis://... to scale out over worker processes.")
    queue_lease_s: float = Field(
        30.0, gt=0, description="A queue worker renews its hold on a running job every third of this; a dead worker's job moves on after it."
    )
    queue_max_tries: int = Field(
        3, ge=1,
        description="Starts of one job before it fails as worker_lost (its queue worker, or the service in "
        "in-process mode, died each time).",
    )
    max_queued_jobs: int = Field(32, ge=1, description="Jobs waiting to run before POST /jobs answers 503.")
    max_queued_bytes: int = Field(
        16 * 1024**3, ge=1, description="Upload bytes the waiting jobs may hold on disk before POST /jobs answers 503."
    )

    # Inference
    # Unset inference settings leave the decision to the model card (service.options says how).
    window_batch_size: int | None = Field(None, ge=1, description="Windows per forward pass; unset: the model card's.")
    overlap: float | None = Field(
        None, ge=0.0, lt=1.0, description="Sliding-window overlap when a request gives none; unset: the model card's."
    )
    skip_air_hu: float | None = Field(
        None, description="Windows whose every voxel is below this HU are skipped; unset: the model card's."
    )
    confidence_review_threshold: float = Field(
        0.45, ge=0, le=1,
        description="Flag review above this low-confidence fraction (0.45: chosen on held-out phantoms, README).",
    )
    low_confidence: float = Field(0.5, ge=0, le=1, description="A voxel below this confidence counts as low.")

    # Limits, checked before memory is allocated
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_voxels: int = Field(512 * 512 * 2000, ge=1)
    max_slices: int = Field(3000, ge=1)
    max_zip_members: int = Field(5000, ge=1)
    max_decompressed_bytes: int = Field(4 * 1024**3, ge=1)
    max_model_grid_voxels: int = Field(
        32 * 1024**2, ge=1,
        description="Voxels of the model's grid over the scan, checked before resampling (~50 bytes each at "
        "peak): a 2 m whole-body CT at 4 mm is 7.8 million.",
    )
    max_windows: int = Field(
        10_000, ge=1,
        description="Sliding windows x mirror passes one request may cost, checked before any runs: a "
        "512x512x1000 CT at 0.8 mm, overlap 0.5, with tta is 1,280; the bundled model takes ~0.25 s a pass "
        "on 2 CPU cores.",
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object a line (time, level, logger, message, exception), uvicorn's lines too."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
