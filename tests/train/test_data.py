"""train.data: data sources and their layouts, preparation (in worker processes, cached), patch sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.train.conftest import CONTRACT
from train.data import (
    PatchSampler,
    find_cases,
    phantom_sources,
    prepare_case,
    prepare_cases,
    split_cases,
)
from train.phantoms import make_phantom


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


def test_a_sick_fraction_draws_that_share_of_anatomy_2_phantoms_cirrhotic_with_hcc() -> None:
    from dataclasses import replace

    from train.config import TrainConfig
    from train.data import SICK_LIVER, load_case_with_organs
    from train.trainer import select_cases

    sources = phantom_sources(10, 10_000, spacing_mm=6.0, anatomy=2, sick_fraction=0.3)
    sick = [s for s in sources if s.phantom_disease]
    assert [s.phantom_seed for s in sick] == [10_003, 10_006, 10_009]  # spread through the seeds
    assert all(s.phantom_disease == SICK_LIVER and s.name.endswith("-cirrhosis-hcc") for s in sick)
    assert not any(s.phantom_disease for s in phantom_sources(4, 10_000, anatomy=2))
    # Seed 10009 is drawn with a healthy-sized liver and metastases: given SICK_LIVER, its liver
    # is smaller and holds HCC.
    healthy = replace(sick[2], name="phantom-10009", phantom_disease=())
    assert make_phantom(10_009, anatomy=2, spacing_xyz_mm=(6.0,) * 3).params["disease"]["tumours"] == "metastases"
    _, liver, _ = load_case_with_organs(sick[2])
    _, liver0, _ = load_case_with_organs(healthy)
    volume = lambda image: float(sitk.GetArrayViewFromImage(image).sum())  # noqa: E731
    assert volume(liver) < 0.9 * volume(liver0)
    with pytest.raises(ValueError, match="needs anatomy 2"):
        phantom_sources(4, 0, anatomy=1, sick_fraction=0.5)
    # A run: only anatomy 2's training phantoms, not its validation nor anatomy 1's; the card says so.
    train, val, text = select_cases(TrainConfig(synthetic=4, n_val=2, phantom_anatomy=(1, 2), sick_fraction=0.5))
    assert [s.phantom_seed for s in train if s.phantom_disease] == [10_001, 10_003]
    assert not any(s.phantom_disease for s in val)
    assert "anatomy 2, 50% of them with a cirrhotic liver carrying HCC" in text
    with pytest.raises(ValueError, match="needs anatomy 2"):
        select_cases(TrainConfig(synthetic=4, sick_fraction=0.5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        phantom_sources(4, 10_000, anatomy=2, sick_fraction=1.5)


def test_an_ascites_fraction_puts_that_share_of_the_sick_livers_inside_heavy_ascites() -> None:
    from train.config import TrainConfig
    from train.data import HEAVY_ASCITES_MM, SICK_LIVER, sick_liver_in_ascites
    from train.phantoms import ASCITES
    from train.trainer import select_cases

    sources = phantom_sources(20, 10_000, spacing_mm=6.0, anatomy=2, sick_fraction=0.5, ascites_fraction=0.5)
    sick = [s for s in sources if s.phantom_disease]
    heavy = [s for s in sick if dict(s.phantom_disease).get("ascites")]
    assert len(sick) == 10 and [sick.index(s) for s in heavy] == [1, 3, 5, 7, 9]  # spread through the sick
    assert all(s.phantom_disease[:2] == SICK_LIVER for s in sick)
    rims = [dict(s.phantom_disease)["ascites_mm"] for s in heavy]
    assert all(HEAVY_ASCITES_MM[0] <= r <= HEAVY_ASCITES_MM[1] for r in rims) and len(set(rims)) == 5
    assert all(s.name.endswith(f"-cirrhosis-hcc-ascites{r:.0f}mm") for s, r in zip(heavy, rims, strict=True))
    # The given rim is the fluid painted: a 40 mm rim holds over twice the fluid of a 10 mm one.
    def fluid_ml(rim: float) -> float:
        p = make_phantom(10_003, anatomy=2, spacing_xyz_mm=(6.0,) * 3, disease=dict(sick_liver_in_ascites(rim)))
        return float((sitk.GetArrayViewFromImage(p.tissues) == ASCITES).sum()) * 0.216
    thin, thick = fluid_ml(10.0), fluid_ml(40.0)
    assert thick > 2 * thin > 0
    _, _, text = select_cases(TrainConfig(synthetic=4, n_val=1, phantom_anatomy=2, sick_fraction=0.5,
                                          ascites_fraction=1.0))
    assert "(100% of those inside heavy ascites, a 20-40 mm rim), seeds 10000-10003), drawn on" in text
    assert text.count("(") == text.count(")")
    with pytest.raises(ValueError, match="needs --sick-fraction"):
        select_cases(TrainConfig(synthetic=4, phantom_anatomy=2, ascites_fraction=0.5))
    with pytest.raises(ValueError, match=r"ascites_fraction must be in \[0, 1\]"):
        phantom_sources(4, 10_000, anatomy=2, sick_fraction=0.5, ascites_fraction=-0.1)


def test_a_native_fraction_scans_that_share_of_the_phantoms_without_contrast() -> None:
    from dataclasses import replace

    from train.config import TrainConfig
    from train.data import load_case_with_organs
    from train.trainer import select_cases

    sources = phantom_sources(10, 0, spacing_mm=6.0, anatomy=1, native_fraction=0.3)
    native = [s for s in sources if s.phantom_phase]
    assert [s.phantom_seed for s in native] == [3, 6, 9]  # spread through the seeds
    assert all(s.phantom_phase == "native" and s.name.endswith("-native") for s in native)
    assert not any(s.phantom_phase for s in phantom_sources(4, 0))
    # Seed 3 is drawn in the portal phase: scanned native, its liver loses its enhancement.
    assert make_phantom(3, spacing_xyz_mm=(6.0,) * 3).params["scan"]["phase"] == "portal"
    ct, liver, _ = load_case_with_organs(native[0])
    enhanced, liver0, _ = load_case_with_organs(replace(native[0], name="phantom-3", phantom_phase=None))
    def median(image: sitk.Image, mask: sitk.Image) -> float:
        return float(np.median(sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]))
    assert median(ct, liver) < 65 and median(ct, liver) + 30 < median(enhanced, liver0)  # 36 and 80 HU
    # A run: the training phantoms of each anatomy, not the validation ones; the card says so.
    train, val, text = select_cases(TrainConfig(synthetic=4, n_val=2, phantom_anatomy=(1, 2), native_fraction=0.5))
    assert [s.phantom_seed for s in train if s.phantom_phase] == [1, 3, 10_001, 10_003]
    assert not any(s.phantom_phase for s in val)
    assert text.count("50% of them scanned without contrast (native phase)") == 2
    with pytest.raises(ValueError, match=r"native_fraction must be in \[0, 1\]"):
        phantom_sources(4, 0, native_fraction=2.0)


def test_anatomy_3_phantoms_take_their_own_seeds_and_may_be_sick() -> None:
    from train.config import TrainConfig
    from train.trainer import select_cases

    train, val, text = select_cases(TrainConfig(synthetic=2, n_val=1, phantom_anatomy=(1, 3), sick_fraction=0.5))
    assert [(s.phantom_seed, s.phantom_anatomy) for s in train] == [(0, 1), (1, 1), (20_000, 3), (20_001, 3)]
    assert [(s.phantom_seed, s.phantom_anatomy) for s in val] == [(100_000, 1), (120_000, 3)]
    assert [s.phantom_seed for s in train if s.phantom_disease] == [20_001]
    assert "anatomy 3, 50% of them with a cirrhotic liver carrying HCC" in text
    with pytest.raises(ValueError, match="needs anatomy 2 or 3"):
        select_cases(TrainConfig(synthetic=2, phantom_anatomy=1, sick_fraction=0.5))
