"""train.augment: image and label moved together, liver fractions warped smoothly, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train.conftest import CONTRACT
from train.augment import AugmentConfig, Augmenter
from train.data import PatchSampler, phantom_sources, prepare_case


def test_antialiased_cases_give_liver_fractions_that_augmentation_warps_smoothly():
    contract = CONTRACT.model_copy(update={"antialias": True})
    case = prepare_case(phantom_sources(1, 3, spacing_mm=3.0)[0], contract, np.random.default_rng(0))
    assert case.label.dtype == np.float32 and 0.0 <= case.label.min() and case.label.max() <= 1.0
    partial = (case.label > 0.05) & (case.label < 0.95)
    assert partial.sum() > 0.2 * (case.label > 0.5).sum()  # at 6 mm much of the liver is edge
    sampler = PatchSampler([case], (32, 32, 32), batch_size=3, contract=contract)
    image, label = sampler.sample(torch.Generator().manual_seed(0))
    assert label.dtype == torch.float32 and float(label[2].max()) > 0.5

    spin = AugmentConfig(p_flip=0, p_rotate=1.0, p_scale=0, p_elastic=0, p_intensity=0, p_noise=0,
                         p_gamma=0, p_blur=0)
    _, warped = Augmenter(spin).spatial(image, label, torch.Generator().manual_seed(1))
    assert warped.dtype == torch.float32 and 0.0 <= float(warped.min()) and float(warped.max()) <= 1.0
    # trilinear, not nearest: new in-between values, and the liver volume is about the same
    assert len(torch.unique(warped)) > len(torch.unique(label))
    assert float(warped[2].sum()) == pytest.approx(float(label[2].sum()), rel=0.1)


def test_augmentation_moves_image_and_label_together():
    generator = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 1, 24, 32, 28, dtype=torch.long)
    label[:, :, 6:18, 8:22, 5:20] = 1
    image = label.float()
    strong = AugmentConfig(p_flip=0.5, p_rotate=1.0, p_scale=1.0, p_elastic=1.0, p_intensity=0,
                           p_noise=0, p_gamma=0, p_blur=0)
    out_image, out_label = Augmenter(strong).spatial(image, label, generator)
    assert out_label.dtype == torch.long and set(out_label.unique().tolist()) <= {0, 1}
    moved = out_image > 0.5
    overlap = 2 * (moved & (out_label == 1)).sum() / (moved.sum() + (out_label == 1).sum())
    assert overlap > 0.95  # same transform on both
    assert not torch.equal(out_label, label)  # and it did transform

    flips = AugmentConfig(p_flip=1.0, flip_axes=(2,), p_rotate=0, p_scale=0, p_elastic=0)
    flipped_image, flipped_label = Augmenter(flips).spatial(image, label, generator)
    assert torch.equal(flipped_label, label.flip(4)) and torch.equal(flipped_image, image.flip(4))

    noisy = torch.rand(2, 1, 16, 16, 16)
    everything = AugmentConfig(p_intensity=1, p_noise=1, p_gamma=1, p_blur=1)
    first = Augmenter(everything)(noisy, label[:, :, :16, :16, :16], torch.Generator().manual_seed(7))
    again = Augmenter(everything)(noisy, label[:, :, :16, :16, :16], torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])  # seeded
    assert not torch.equal(first[0], noisy)
    off = Augmenter(AugmentConfig.off())(noisy, label[:, :, :16, :16, :16], generator)
    assert torch.equal(off[0], noisy)
