"""How one segmentation runs: what a client may ask for, and the one place that decides the rest.

Every inference option is resolved here, once, by `resolve_options`, with one precedence:

    the request  >  the operator's setting (LIVERSEG_*)  >  the model card  (> the card schema's default)

| option | request | setting | card (`inference`) |
| --- | --- | --- | --- |
| overlap | `overlap` | `LIVERSEG_OVERLAP` | `overlap` |
| window batch | | `LIVERSEG_WINDOW_BATCH_SIZE` | `window_batch_size` |
| air windows skipped below | | `LIVERSEG_SKIP_AIR_HU` | `skip_air_hu` |
| UNet++ depth | `depth` | | `unetpp_depth` |
| mirroring (TTA) | `tta` | | `tta` (off unless the card says), `mirror_axes` says over which axes |
| ROI inference (only the windows that can hold liver) | `roi=false` turns it off | | |
| blending | | | `mode`, `sigma_scale` |
| low-confidence line, review fraction | | `LIVERSEG_LOW_CONFIDENCE`, `LIVERSEG_CONFIDENCE_REVIEW_THRESHOLD` | |
| cost limits | | `LIVERSEG_MAX_MODEL_GRID_VOXELS`, `LIVERSEG_MAX_WINDOWS` | |

The route, the job runner, `train.evaluate`, the trainer's validation and the benchmarks all call
it, so they run a checkpoint the same way; the summary reports the values it chose.
Nothing here imports torch: the web layer resolves options before anything heavy runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from model_zoo.card import InferenceDefaults, ModelCard
from service.errors import InvalidOption
from service.settings import Settings

OutputKind = Literal["nifti", "json", "dicom-seg", "rtstruct", "confidence", "probability"]
_CARD_DEFAULTS = InferenceDefaults()  # what a card that says nothing about inference gets


class SegmentParams(BaseModel):
    """Query parameters of /segment and /jobs."""

    model_config = {"extra": "forbid"}

    model: str | None = Field(None, max_length=200, description="Registry name; default from settings.")
    output: OutputKind = Field(
        "nifti",
        description="nifti: the uint8 mask as .nii.gz on the input's grid; json: the summary; "
        "dicom-seg: a DICOM SEG (DICOM input only); rtstruct: a DICOM RT Structure Set (DICOM input "
        "only); confidence: the confidence map as .nii.gz; probability: the calibrated liver "
        "probability as .nii.gz (uint8, scl_slope 1/255; thresholded at 0.5 it is the mask).",
    )
    confidence: bool = Field(False, description="Also make the full-resolution confidence map (jobs).")
    tta: bool | None = Field(
        None, description="Mirror test-time augmentation (slower, slightly better); default: the "
        "model card's (off, except for models measured with it).",
    )
    overlap: float | None = Field(None, ge=0.0, le=0.9, description="Window overlap; default from the settings, else the card.")
    depth: int | None = Field(None, ge=1, le=4, description="UNet++ only: prune to depth L for speed.")
    roi: bool = Field(
        True, description="Run the network only where the liver can be (same mask, Dice >= 0.999); "
        "false runs every window, for comparison.",
    )


@dataclass(frozen=True)
class InferenceOptions:
    """How to run one segmentation, every value decided (see `resolve_options`).

    The defaults are those of a card with default inference settings, for callers that build
    options by hand (tests); the service and training never do.
    """

    tta: bool = False
    mirror_axes: tuple[int, ...] = ()  # (0=D, 1=H, 2=W) mirrored when tta; the card's
    overlap: float = _CARD_DEFAULTS.overlap
    mode: str = _CARD_DEFAULTS.mode
    sigma_scale: float = _CARD_DEFAULTS.sigma_scale
    depth: int | None = None
    roi: bool = True  # only the windows that can hold liver (service.sliding_window.RegionOfInterest)
    batch_size: int = _CARD_DEFAULTS.window_batch_size
    skip_air_hu: float | None = _CARD_DEFAULTS.skip_air_hu
    window_device: str = "cpu"
    output_device: str | None = None  # None: aggregate on the window device
    confidence_map: bool = False
    low_confidence: float = Settings.model_fields["low_confidence"].default
    review_fraction: float = Settings.model_fields["confidence_review_threshold"].default
    # What one request may cost, checked by the pipeline before it resamples and before any window runs.
    max_model_grid_voxels: int = Settings.model_fields["max_model_grid_voxels"].default
    max_windows: int = Settings.model_fields["max_windows"].default

    def reported(self) -> dict[str, float | int | bool | str | None]:
        """The values the summary reports as `options`: what ran, not what was asked."""
        return {
            "tta": self.tta, "overlap": self.overlap, "depth": self.depth, "roi": self.roi,
            "batch_size": self.batch_size,
            "skip_air_hu": self.skip_air_hu, "mode": self.mode, "sigma_scale": self.sigma_scale,
        }


# No operator: every setting at its default (the inference ones unset), whatever the environment says.
_NO_SETTINGS = Settings.model_construct()


def _first(*values: object) -> object:
    """The first value that is not None (the precedence: request, setting, card)."""
    return next((v for v in values if v is not None), None)


def resolve_options(
    card: ModelCard, request: SegmentParams | None = None, settings: Settings | None = None,
) -> InferenceOptions:
    """The options one segmentation with this card runs with: request > setting > card.

    `settings` None (training, evaluation) leaves the operator's layer out, so results do not
    depend on the environment. Raises InvalidOption for a request this model cannot take.
    """
    request = request or SegmentParams()
    card_says = card.inference
    operator = settings or _NO_SETTINGS
    tta = bool(_first(request.tta, card_says.tta))
    options = InferenceOptions(
        tta=tta,
        mirror_axes=tuple(card_says.mirror_axes) if tta else (),
        overlap=_first(request.overlap, operator.overlap, card_says.overlap),
        mode=card_says.mode,
        sigma_scale=card_says.sigma_scale,
        depth=_first(request.depth, card_says.unetpp_depth),
        roi=request.roi,
        batch_size=_first(operator.window_batch_size, card_says.window_batch_size),
        skip_air_hu=_first(operator.skip_air_hu, card_says.skip_air_hu),
        confidence_map=request.confidence or request.output == "confidence",
        low_confidence=operator.low_confidence,
        review_fraction=operator.confidence_review_threshold,
        max_model_grid_voxels=operator.max_model_grid_voxels,
        max_windows=operator.max_windows,
    )
    check_options(card, options)
    return options


def check_options(card: ModelCard, options: InferenceOptions) -> None:
    """InvalidOption for options this model cannot take: checked when a request or job is accepted,
    so that a job does not fail after its 202, and again when it runs."""
    if options.depth is None:
        return
    if card.arch != "unetpp3d":
        raise InvalidOption(f"depth applies to UNet++ models only; {card.name} is a {card.arch}: leave depth out.")
    features = card.arch_kwargs.get("features")
    if features is not None and options.depth > len(features) - 1:
        raise InvalidOption(
            f"{card.name} has depth {len(features) - 1}; depth={options.depth} asks for more: use 1..{len(features) - 1}."
        )
