"""What a training run depends on: `TrainConfig`, and the seeds its validation phantoms come from."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from model_zoo.card import InputContract
from train.augment import AugmentConfig
from train.classes import class_names

# Validation phantoms are drawn far from the training seeds so the two never overlap.
VALIDATION_PHANTOM_SEED = 100_000
# Phantoms of anatomy a start at seed ANATOMY_SEED_STEP * (a - 1) (and validation's at
# VALIDATION_PHANTOM_SEED + that): a run drawing both anatomies sees different bodies in each.
ANATOMY_SEED_STEP = 10_000


@dataclass
class TrainConfig:
    """Everything a run depends on. Sizes (D, H, W) in voxels, spacing (x, y, z) in mm, HU."""

    arch: str = "unet3d_ds"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    tag: str = "custom"
    # data: synthetic phantoms (count) or a path in a format
    synthetic: int = 0
    phantom_spacing_mm: float | None = None  # None: phantoms on their own scanner grid
    # train.phantoms.make_phantom's anatomy (1: the bundled model's data), or several: `synthetic`
    # phantoms of each (anatomy a from seed ANATOMY_SEED_STEP * (a - 1), so the bodies differ)
    phantom_anatomy: int | tuple[int, ...] = 1
    # This fraction of the anatomy-2 and -3 training phantoms drawn with a cirrhotic liver carrying HCC
    # (train.data.SICK_LIVER; the other flags drawn): the diseased livers real scans show and the
    # drawn rates (cirrhosis 15 %, HCC in half of those) give a few of. Validation stays as drawn.
    sick_fraction: float = 0.0
    # This fraction of those sick livers inside heavy ascites (train.data.HEAVY_ASCITES_MM): the
    # drawn rims are mostly thin, and the liver inside a thick one was lost entirely.
    ascites_fraction: float = 0.0
    # This fraction of the training phantoms (each anatomy) scanned without contrast: the liver
    # then sits at muscle's HU, and held-out native phantoms score well under the enhanced ones.
    native_fraction: float = 0.0
    data: str | None = None
    data_format: str = "msd"
    n_val: int = 2
    classes: str = "liver"  # train.classes: "liver" (two classes) or "organs" (the liver's neighbours too)
    # input contract
    spacing_xyz_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size_dhw: tuple[int, int, int] = (64, 64, 64)
    hu_window: tuple[float, float] = (-200.0, 300.0)
    orientation: str = "LPS"
    crop_to_body: bool = False
    antialias: bool = True  # block-average the CT onto the grid; labels become liver fractions
    # optimisation
    epochs: int = 50
    iters_per_epoch: int = 50
    batch_size: int = 2
    optimizer: str = "adamw"  # "adamw" or "sgd" (nnU-Net: momentum 0.99, Nesterov)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    poly_exponent: float = 0.9  # lr_t = lr (1 - t/T)^0.9 per epoch, both optimisers; 0: constant
    grad_clip: float = 12.0  # nnU-Net's gradient-norm clip
    deep_supervision: bool = True
    ds_weights: str | list[float] = "dsn"
    ds_decay: str = "none"
    oversample_foreground: float = 0.33
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_every: int = 1
    # run
    seed: int = 0
    # processes preparing the cases; they are spawned, so a script that calls Trainer needs the
    # usual `if __name__ == "__main__":` guard (or data_workers=1)
    data_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    out_dir: str = "runs/models"  # as the CLI's default (WORK_DIR/models): never the bundled zoo unless asked
    work_dir: str = "runs"
    command: str = ""
    final_evaluation: bool = True
    tta: bool = False  # the card's inference.tta: served mirrored unless a request says no
    init_from: str | None = None  # start from this checkpoint's weights (a name in out_dir)
    # knowledge distillation (train.distill): a teacher checkpoint, found as init_from's is
    distill_from: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 2.0

    @property
    def anatomies(self) -> tuple[int, ...]:
        """The phantom anatomies drawn, in order."""
        a = self.phantom_anatomy
        return (a,) if isinstance(a, int) else tuple(a)

    @property
    def network_kwargs(self) -> dict[str, Any]:
        """The network's constructor arguments: `arch_kwargs`, with the class scheme's channels."""
        if self.classes == "liver":
            return dict(self.arch_kwargs)
        return {**self.arch_kwargs, "out_channels": len(class_names(self.classes))}

    @property
    def name(self) -> str:
        """The checkpoint name "arch.tag"."""
        return f"{self.arch}.{self.tag}"

    def contract(self) -> InputContract:
        """The input contract the exported card declares."""
        return InputContract(
            spacing_xyz_mm=self.spacing_xyz_mm,
            orientation=self.orientation,
            hu_window=self.hu_window,
            normalisation="window01",
            patch_size_dhw=self.patch_size_dhw,
            crop_to_body=self.crop_to_body,
            antialias=self.antialias,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))
