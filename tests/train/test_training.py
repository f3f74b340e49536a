"""Training: data sources, patch sampling, augmentation, a real (tiny) training run, export, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from model_zoo.card import InputContract, ModelCard
from model_zoo.registry import get_card, load_model
from train.__main__ import build_parser
from train.__main__ import main as train_main
from train.augment import AugmentConfig, Augmenter
from train.data import (
    PatchSampler,
    find_cases,
    phantom_sources,
    prepare_case,
    prepare_cases,
    split_cases,
)
from train.loop import CONFIDENCE_METHOD, PHANTOM_LICENSE, TrainConfig, Trainer
from train.phantoms import make_phantom

CONTRACT = InputContract(spacing_xyz_mm=(6.0, 6.0, 6.0), hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32))
TINY = {"features": [4, 8, 16]}


def _write_case(image_path: Path, label_path: Path, seed: int) -> sitk.Image:
    """A phantom at 6 mm as NIfTI; the label written with 2 (tumour) inside 1 (liver) as MSD/LiTS."""
    phantom = make_phantom(seed, spacing_xyz_mm=(6.0, 6.0, 6.0))
    label = sitk.GetArrayFromImage(phantom.liver).astype(np.uint8)
    label[label > 0] = 1
    zs = np.flatnonzero(label.any((1, 2)))
    label[zs[len(zs) // 2]][label[zs[len(zs) // 2]] > 0] = 2  # one slice of "tumour"
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(phantom.liver)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(phantom.ct, str(image_path))
    sitk.WriteImage(label_image, str(label_path))
    return phantom.liver


def test_msd_lits_and_datalist_layouts(tmp_path):
    msd = tmp_path / "Task03_Liver"
    livers = [_write_case(msd / "imagesTr" / f"liver_{i}.nii.gz", msd / "labelsTr" / f"liver_{i}.nii.gz", i)
              for i in range(2)]
    (msd / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"macOS resource fork")  # ignored
    cases = find_cases(msd, "msd")
    assert [c.name for c in cases] == ["liver_0", "liver_1"]

    lits = tmp_path / "lits"
    _write_case(lits / "batch1" / "volume-7.nii", lits / "batch1" / "segmentation-7.nii", 0)
    assert [c.name for c in find_cases(lits, "lits")] == ["lits-7"]

    datalist = msd / "dataset.json"
    datalist.write_text(json.dumps({
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
        "validation": [{"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"}],
    }))
    listed = find_cases(datalist, "datalist")
    train, val = split_cases(listed, n_val=5, seed=0)  # the datalist's own split wins
    assert [c.name for c in train] == ["liver_0"] and [c.name for c in val] == ["liver_1"]

    prepared = prepare_case(cases[0], CONTRACT, np.random.default_rng(0))
    assert prepared.image.dtype == np.float32 and prepared.label.dtype == np.uint8
    assert prepared.image.shape == prepared.label.shape
    assert 0.0 <= prepared.image.min() and prepared.image.max() <= 1.0
    # liver = label >= 1: the "tumour" slice counts, and the count matches the phantom's liver
    assert set(np.unique(prepared.label)) == {0, 1}
    assert prepared.label.sum() == sitk.GetArrayViewFromImage(livers[0]).astype(bool).sum()

    with pytest.raises(FileNotFoundError, match="needs imagesTr/ and labelsTr/"):
        find_cases(lits, "msd")
    with pytest.raises(ValueError, match="unknown data format 'nnunet'"):
        find_cases(msd, "nnunet")
    with pytest.raises(ValueError, match="leaves no training case"):
        split_cases(cases, n_val=2, seed=0)


def test_patch_sampler_oversamples_foreground_and_pads_air():
    case = prepare_case(phantom_sources(1, 3, spacing_mm=6.0)[0], CONTRACT, np.random.default_rng(0))
    big = (48, 96, 96)  # larger than the volume along z: padded with air (0 in window01 units)
    assert case.image.shape[0] < big[0]
    sampler = PatchSampler([case], big, batch_size=3, contract=CONTRACT)
    assert [sampler._forced_foreground(i) for i in range(3)] == [False, False, True]
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        image, label = sampler.sample(generator)
        assert image.shape == (3, 1, *big) and image.dtype == torch.float32
        assert label.shape == (3, 1, *big) and label.dtype == torch.int64
        assert label[2].sum() > 0  # the last third is centred on liver
        assert float(image.min()) == 0.0  # air padding, as prepare fills outside the CT


def test_cases_prepared_in_worker_processes_equal_those_prepared_here():
    sources = phantom_sources(3, 3, spacing_mm=8.0)
    here = prepare_cases(sources, CONTRACT, seed=5, workers=1)
    spawned = prepare_cases(sources, CONTRACT, seed=5, workers=2)
    assert [c.name for c in spawned] == ["phantom-3", "phantom-4", "phantom-5"]
    for a, b in zip(here, spawned, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.foreground, b.foreground)
    assert not np.array_equal(here[0].image, here[1].image)  # three different phantoms


def test_prepared_cases_are_cached_and_read_back_for_the_same_contract_only(tmp_path, monkeypatch):
    import train.data

    sources = phantom_sources(2, 3, spacing_mm=8.0)
    first = prepare_cases(sources, CONTRACT, seed=5, cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [f.name.split(".")[0] for f in files] == ["phantom-3", "phantom-4"]

    def no_preparing(*args, **kwargs):
        raise AssertionError("a cached case was prepared again")

    monkeypatch.setattr(train.data, "prepare_case", no_preparing)
    again = prepare_cases(sources, CONTRACT, seed=5, cache_dir=tmp_path)
    for a, b in zip(first, again, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.foreground, b.foreground)
    with pytest.raises(AssertionError, match="prepared again"):  # another grid is another case
        prepare_cases(sources, CONTRACT.model_copy(update={"spacing_xyz_mm": (8.0, 8.0, 8.0)}),
                      seed=5, cache_dir=tmp_path)


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


def test_cli_parses_the_documented_options():
    args = build_parser().parse_args([
        "--arch", "dsn3d", "--arch-kwargs", '{"features": [8, 16, 32]}', "--synthetic", "4",
        "--spacing", "3", "--patch", "64,96,96", "--ds-weights", "0.6,0.3,0.1", "--ds-decay", "linear",
        "--no-deep-supervision", "--resume",
    ])
    assert args.arch_kwargs == {"features": [8, 16, 32]}
    assert args.spacing_xyz_mm == (3.0, 3.0, 3.0) and args.patch_size_dhw == (64, 96, 96)
    assert args.ds_weights == [0.6, 0.3, 0.1] and args.ds_decay == "linear"
    assert args.deep_supervision is False and args.resume is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--synthetic", "2", "--data", "x"])  # one source only
    assert args.antialias is True and args.init_from is None  # the defaults
    args = build_parser().parse_args(["--synthetic", "2", "--no-antialias", "--init-from", "unet3d_ds.a"])
    assert args.antialias is False and args.init_from == "unet3d_ds.a"


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(
        arch="unet3d_ds", arch_kwargs=TINY, tag="test", synthetic=8, phantom_spacing_mm=3.0, n_val=2,
        spacing_xyz_mm=(6.0, 6.0, 6.0), patch_size_dhw=(32, 32, 32), epochs=12, iters_per_epoch=25,
        batch_size=2, lr=1e-2, augment=AugmentConfig.off(), seed=0, device="cpu",
        out_dir=str(tmp_path / "zoo"), work_dir=str(tmp_path / "runs"), command="pytest",
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.slow
def test_tiny_training_run_learns_the_liver_and_exports_a_loadable_checkpoint(tmp_path):
    # 300 iterations of a [4, 8, 16] U-Net on 32^3 patches at 6 mm, 8 phantoms, antialiased grid
    # (the default). With seeds 0 and 1 the validation Dice (model grid) went from 0.12 untrained
    # and 0.49 / 0.54 after the first epoch to 0.76 / 0.79, and 0.80 on the input grid: 0.7 leaves
    # margin.
    trainer = Trainer(_config(tmp_path))
    trainer.load_data()
    untrained = trainer.validate()
    result = trainer.fit()
    dices = [r.val_dice for r in result.history]
    assert untrained < 0.3
    assert dices[-1] >= 0.7, dices
    assert result.card.metrics["val_dice"] >= 0.7  # the service's path, input grid

    # the export round-trips and loads through the registry (strictly, checksum checked)
    zoo = tmp_path / "zoo"
    card = get_card("unet3d_ds.test", zoo)
    assert card == result.card
    assert ModelCard.model_validate_json(card.model_dump_json()) == card
    assert card.training.epochs == 12 and card.training.command == "pytest"
    assert card.training.code_revision and card.training.seconds > 0
    assert "8 synthetic phantoms" in card.training.data
    assert card.input.spacing_xyz_mm == (6.0, 6.0, 6.0) and card.input.patch_size_dhw == (32, 32, 32)
    loaded = load_model("unet3d_ds.test", zoo)
    for key, value in trainer.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value.cpu())
    assert sorted(p.name for p in zoo.iterdir()) == ["unet3d_ds.test.json", "unet3d_ds.test.safetensors"]

    # logs: one CSV row per epoch, curves drawn
    run = tmp_path / "runs" / "unet3d_ds.test"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["val_dice"]) == pytest.approx(dices[-1], abs=1e-4)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "prepared").glob("phantom-*.npz"))) == 8 + 2  # training and validation


def test_resume_continues_from_the_saved_epoch(tmp_path):
    fast = dict(synthetic=2, n_val=1, phantom_spacing_mm=6.0, epochs=3, iters_per_epoch=2,
                final_evaluation=False, augment=AugmentConfig())
    straight = Trainer(_config(tmp_path / "a", **fast)).fit()

    # the same run, killed during its third epoch (the poly LR and the auxiliary decay depend on
    # the planned epochs, so stopping a 2-epoch run would not be the same run)
    interrupted = Trainer(_config(tmp_path / "b", **fast))
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
    resumed = Trainer(_config(tmp_path / "b", **fast)).fit(resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2, 3]
    # the same stream of patches, augmentation and optimiser state: the same weights
    a = load_model("unet3d_ds.test", tmp_path / "a" / "zoo").network.state_dict()
    b = load_model("unet3d_ds.test", tmp_path / "b" / "zoo").network.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert [r.train_loss for r in resumed.history] == pytest.approx([r.train_loss for r in straight.history], abs=1e-6)

    with pytest.raises(ValueError, match="arch_kwargs"):
        Trainer(_config(tmp_path / "b", **fast, arch_kwargs={"features": [4, 8]})).fit(resume=True)
    with pytest.raises(ValueError, match="antialias=True"):  # other preprocessing, other data
        Trainer(_config(tmp_path / "b", **fast, antialias=False)).fit(resume=True)


def test_init_from_starts_from_a_checkpoints_weights(tmp_path):
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1,
                final_evaluation=False)
    Trainer(_config(tmp_path, **fast, tag="first", seed=1)).fit()
    first = load_model("unet3d_ds.first", tmp_path / "zoo").network.state_dict()
    fresh = Trainer(_config(tmp_path, **fast, tag="second", seed=2)).network.state_dict()
    tuned = Trainer(_config(tmp_path, **fast, tag="second", seed=2, init_from="unet3d_ds.first"))
    state = tuned.network.state_dict()
    assert all(torch.equal(state[k], first[k]) for k in first)
    assert not all(torch.equal(fresh[k], first[k]) for k in first)  # not the seed's own weights
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*keeps the depth"):
        Trainer(_config(tmp_path, **fast, tag="third", arch_kwargs={"features": [4, 8]},
                        init_from="unet3d_ds.first"))
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*whole multiple"):
        Trainer(_config(tmp_path, **fast, tag="third", arch_kwargs={"features": [6, 8, 16]},
                        init_from="unet3d_ds.first"))
    with pytest.raises(ValueError, match="init-from unet3d_ds.first: it is a unet3d_ds.*features may differ"):
        Trainer(_config(tmp_path, **fast, tag="third", arch_kwargs={**TINY, "block": "residual"},
                        init_from="unet3d_ds.first"))


def test_init_from_a_narrower_checkpoint_starts_from_what_it_computes(tmp_path):
    fast = dict(synthetic=1, n_val=1, phantom_spacing_mm=6.0, epochs=1, iters_per_epoch=1,
                final_evaluation=False)
    Trainer(_config(tmp_path, **fast, tag="narrow", seed=1)).fit()
    narrow = load_model("unet3d_ds.narrow", tmp_path / "zoo").network
    wide = Trainer(_config(tmp_path, **fast, tag="wide", arch_kwargs={"features": [8, 16, 32]},
                           init_from="unet3d_ds.narrow")).network.eval()
    x = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        expected, got = narrow(x, deep_supervision=True), wide(x, deep_supervision=True)
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))


def test_cli_trains_and_exports(tmp_path, capsys):
    code = train_main([
        "--arch", "dsn3d", "--arch-kwargs", '{"features": [4, 8, 8]}', "--tag", "cli", "--synthetic", "1",
        "--phantom-spacing", "6", "--val", "1", "--spacing", "6", "--patch", "16", "--epochs", "1",
        "--iters-per-epoch", "1", "--device", "cpu", "--no-final-eval",
        "--out", str(tmp_path / "zoo"), "--work-dir", str(tmp_path / "runs"),
    ])
    assert code == 0
    card = get_card("dsn3d.cli", tmp_path / "zoo")
    assert card.training.command.startswith("python -m train --arch dsn3d")
    assert card.arch_kwargs == {"features": [4, 8, 8]}
    assert card.license == PHANTOM_LICENSE and card.intended_use.startswith("Trained on synthetic phantoms only")
    assert card.confidence == CONFIDENCE_METHOD
    assert "exported dsn3d.cli" in capsys.readouterr().out
