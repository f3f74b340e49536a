"""train.state: a run killed mid-epoch resumes to the very weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model_zoo.registry import load_model
from tests.train.conftest import tiny_config
from train.augment import AugmentConfig
from train.trainer import Trainer


def test_resume_continues_from_the_saved_epoch(tmp_path):
    fast = dict(synthetic=2, n_val=1, phantom_spacing_mm=6.0, epochs=3, iters_per_epoch=2,
                final_evaluation=False, augment=AugmentConfig())
    straight = Trainer(tiny_config(tmp_path / "a", **fast)).fit()

    # the same run, killed during its third epoch (the poly LR and the auxiliary decay depend on
    # the planned epochs, so stopping a 2-epoch run would not be the same run)
    interrupted = Trainer(tiny_config(tmp_path / "b", **fast))
    train_epoch = interrupted.train_epoch

    def killed_in_third_epoch(epoch, sampler):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(epoch, sampler)

    interrupted.train_epoch = killed_in_third_epoch
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    state = json.loads((tmp_path / "b" / "runs" / "unet3d_ds.test" / "state.json").read_text())
    assert state["epoch"] == 2
    assert any(k.startswith("optimizer.") for k in load_file(tmp_path / "b" / "runs" / "unet3d_ds.test" / "state.safetensors"))
    resumed = Trainer(tiny_config(tmp_path / "b", **fast)).fit(resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    # the same stream of patches, augmentation and optimiser state: the same weights
    a = load_model("unet3d_ds.test", tmp_path / "a" / "zoo").network.state_dict()
    b = load_model("unet3d_ds.test", tmp_path / "b" / "zoo").network.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert [r.train_loss for r in resumed.history] == pytest.approx([r.train_loss for r in straight.history], abs=1e-6)

    with pytest.raises(ValueError, match="arch_kwargs"):
        Trainer(tiny_config(tmp_path / "b", **fast, arch_kwargs={"features": [4, 8]})).fit(resume=True)
    with pytest.raises(ValueError, match="antialias=True"):  # other preprocessing, other data
        Trainer(tiny_config(tmp_path / "b", **fast, antialias=False)).fit(resume=True)
