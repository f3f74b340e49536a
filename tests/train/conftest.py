"""Shared by the tests of train/: a tiny input contract and a tiny training configuration."""

from __future__ import annotations

from pathlib import Path

from model_zoo.card import InputContract
from train.augment import AugmentConfig
from train.config import TrainConfig

CONTRACT = InputContract(spacing_xyz_mm=(6.0, 6.0, 6.0), hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32))
TINY = {"features": [4, 8, 16]}


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(
        arch="unet3d_ds", arch_kwargs=TINY, tag="test", synthetic=8, phantom_spacing_mm=3.0, n_val=2,
        spacing_xyz_mm=(6.0, 6.0, 6.0), patch_size_dhw=(32, 32, 32), epochs=12, iters_per_epoch=25,
        batch_size=2, lr=1e-2, augment=AugmentConfig.off(), seed=0, device="cpu",
        out_dir=str(tmp_path / "zoo"), work_dir=str(tmp_path / "runs"), command="pytest",
    )
    settings.update(overrides)
    return TrainConfig(**settings)
