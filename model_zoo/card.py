"""The checkpoint card: everything inference needs and everything a reviewer asks, as plain JSON.

In the spirit of timm's `PretrainedCfg` and MONAI's bundle `metadata.json`: a frozen pydantic
model written beside the weights (`NAME.json` + `NAME.safetensors`). It holds the architecture and
its JSON-only kwargs, the weights' SHA-256, the input contract (`InputContract`, applied by
`model_zoo.preprocessing`), the classes, inference defaults, how it was trained and how well it did.
Validators refuse nonsense so that a bad card fails when it is read, not in the middle of a request.
`ModelCard.model_validate_json(card.model_dump_json())` gives back an equal card.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

# A checkpoint name is "arch.tag"; it is also a file name, so keep it to safe characters.
_NAME = re.compile(r"^(?P<arch>[a-z][a-z0-9_]*)\.(?P<tag>[A-Za-z0-9][A-Za-z0-9_-]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AXIS_PAIRS = ("LR", "PA", "SI")

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Frozen(BaseModel):
    # extra="forbid": a misspelt key in a hand-edited card is an error, not silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputContract(_Frozen):
    """What the network expects: the grid, the axes and the intensity scale (applied by preprocessing)."""

    modality: Literal["CT"] = "CT"
    spacing_xyz_mm: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    orientation: str = Field(
        "LPS",
        description="3-letter code as SimpleITK's DICOMOrient takes it: the direction each of the "
        "x, y, z index axes increases towards (LPS = identity direction, RAS = diag(-1, -1, 1)).",
    )
    hu_window: tuple[FiniteFloat, FiniteFloat]
    normalisation: Literal["window01", "zscore"] = "window01"
    mean: FiniteFloat | None = Field(None, description="zscore only: HU mean after clipping")
    std: PositiveFloat | None = Field(None, description="zscore only: HU std after clipping")
    patch_size_dhw: tuple[PositiveInt, PositiveInt, PositiveInt]
    crop_to_body: bool = False
    antialias: bool = Field(
        False,
        description="Average whole blocks of input voxels (area, as a partial-volume fraction) before "
        "resampling to a coarser model grid; training labels become liver fractions the same way.",
    )
    body_threshold_hu: FiniteFloat = -500.0
    body_margin_mm: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, code: str) -> str:
        code = code.upper()
        pairs = sorted(pair for letter in code for pair in _AXIS_PAIRS if letter in pair)
        if len(code) != 3 or pairs != sorted(_AXIS_PAIRS):
            raise ValueError(
                f"orientation {code!r} must be 3 letters, one of each of L/R, P/A, S/I (e.g. 'LPS', 'RAS')"
            )
        return code

    @model_validator(mode="after")
    def _window_and_stats(self) -> InputContract:
        lo, hi = self.hu_window
        if not lo < hi:
            raise ValueError(f"hu_window must be (lo, hi) with lo < hi, got {self.hu_window}")
        if self.normalisation == "zscore" and (self.mean is None or self.std is None):
            raise ValueError("normalisation 'zscore' needs mean and std (HU, after clipping)")
        if self.normalisation == "window01" and (self.mean is not None or self.std is not None):
            raise ValueError(
                "mean/std are only used by normalisation 'zscore'; drop them for 'window01'"
            )
        return self


class InferenceDefaults(_Frozen):
    """How the service runs this checkpoint unless a request says otherwise."""

    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.5
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: PositiveFloat = 0.125
    mirror_axes: tuple[Literal[0, 1, 2], ...] = Field(
        (), description="spatial axes (0=D, 1=H, 2=W) over which test-time mirroring is allowed"
    )
    tta: bool = Field(
        False, description="mirror over `mirror_axes` unless the request says tta=false (nnU-Net "
        "mirrors by default); on for a model whose figures were measured with it",
    )
    skip_air_hu: FiniteFloat | None = Field(
        None,
        description="skip windows whose every voxel is at or below this HU (None: never). The "
        "test runs on the clipped network input, so a value below the HU window acts as the "
        "window's floor (see preprocessing.hu_to_input_units).",
    )
    window_batch_size: PositiveInt = 4
    unetpp_depth: Annotated[int, Field(ge=1, le=4)] | None = None

    @field_validator("mirror_axes")
    @classmethod
    def _distinct_axes(cls, axes: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(axes)) != len(axes):
            raise ValueError(f"mirror_axes repeats an axis: {axes}")
        return axes

    @model_validator(mode="after")
    def _tta_has_axes(self) -> InferenceDefaults:
        if self.tta and not self.mirror_axes:
            raise ValueError("tta is on by default but mirror_axes names no axis to mirror")
        return self


class Training(_Frozen):
    """How the weights were made, so a reviewer can reproduce them."""

    data: str = Field(description="what it was trained and validated on, in a sentence or two")
    epochs: Annotated[int, Field(ge=0)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    command: str
    code_revision: str
    seed: int | None = None
    device: str | None = None
    distillation: str | None = Field(None, description="the teacher and the term, when one taught the weights")


class Calibration(_Frozen):
    """How the liver probability a client gets (output=probability) was calibrated.

    The served probability is sigmoid(logit(p) / temperature), p the blended softmax's liver
    channel: temperature scaling (Guo et al., ICML 2017) of the liver's log-odds, its logit
    margin over the other classes. 1.0 sends p as the network gives it. Fitted on held-out phantoms
    by `python -m train.calibrate`, which records the expected calibration errors beside it.
    """

    temperature: PositiveFloat = 1.0
    ece_before: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="expected calibration error at temperature 1, on the cases named in `data`"
    )
    ece_after: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="expected calibration error at `temperature`, on the same cases"
    )
    data: str = Field("", description="what it was fitted and measured on, and how ECE was counted")
    command: str = ""


class ModelCard(_Frozen):
    """A checkpoint's card (`NAME.json`); `weights_file`/`weights_sha256` are filled in on save."""

    name: str = Field(description='"arch.tag", e.g. "unet3d_ds.phantom_3mm"; also the file stem')
    version: str = "1"
    arch: str
    arch_kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    weights_file: str | None = None
    weights_sha256: str | None = None
    input: InputContract
    channel_def: dict[str, str] = Field(default_factory=lambda: {"0": "background", "1": "liver"})
    inference: InferenceDefaults = Field(default_factory=InferenceDefaults)
    training: Training | None = None
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    confidence: str = ""
    calibration: Calibration = Field(default_factory=Calibration)
    intended_use: str = ""
    license: str = ""
    framework_versions: dict[str, str] = Field(default_factory=dict)

    @field_validator("arch_kwargs", mode="before")
    @classmethod
    def _tuples_to_lists(cls, kwargs: object) -> object:
        # Tuples are JSON arrays too; store them as the lists they read back as, so cards round-trip.
        def plain(value: object) -> object:
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain(kwargs)

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        match = _NAME.match(self.name)
        if match is None or match["arch"] != self.arch:
            raise ValueError(
                f"name {self.name!r} must be '{self.arch}.TAG' (arch, a dot, then a tag of letters, "
                "digits, '_' or '-')"
            )
        if self.weights_file is not None and self.weights_file != f"{self.name}.safetensors":
            raise ValueError(
                f"weights_file must be {self.name + '.safetensors'!r} (beside the card), "
                f"got {self.weights_file!r}"
            )
        if self.weights_sha256 is not None and not _SHA256.match(self.weights_sha256):
            raise ValueError("weights_sha256 must be 64 lower-case hex digits")
        n_channels = len(self.channel_def)
        if n_channels == 0 or set(self.channel_def) != {str(i) for i in range(n_channels)}:
            raise ValueError(
                f"channel_def keys must be '0'..'{max(n_channels - 1, 0)}' (one per output channel), "
                f"got {sorted(self.channel_def)}"
            )
        out = self.arch_kwargs.get("out_channels")
        if out is not None and out != n_channels:
            raise ValueError(
                f"arch_kwargs out_channels={out} but channel_def names {n_channels} channels"
            )
        if list(self.channel_def.values()).count("liver") != 1:
            raise ValueError(f"channel_def must name exactly one 'liver' channel, got {self.channel_def}")
        return self

    @property
    def liver_channel(self) -> int:
        """The output channel the service reads: the one channel_def names "liver" (a multi-class
        network also names the neighbours it learnt, which the service does not return)."""
        return next(int(k) for k, v in self.channel_def.items() if v == "liver")

    @property
    def tag(self) -> str:
        """The part of the name after the architecture ("phantom_3mm" in "unet3d_ds.phantom_3mm")."""
        return self.name.split(".", 1)[1]


def current_framework_versions() -> dict[str, str]:
    """Versions of what made (or runs) a checkpoint, for the card's `framework_versions`."""
    import platform

    import numpy
    import pydantic
    import safetensors
    import SimpleITK
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "safetensors": safetensors.__version__,
        "pydantic": pydantic.VERSION,
    }
