"""Tests for train/organ_leaks.py: false-positive mL by organ against hand counts, and the group tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import train.phantoms
from train.organ_leaks import (
    GROUPS,
    PHANTOM_GROUPS,
    TOTALSEGMENTATOR_CLASSES,
    TOTALSEGMENTATOR_GROUPS,
    UNLABELLED,
    false_positive_ml_by_organ,
    groups_from_names,
)
from train.phantoms import AIR, HEART_CODES, make_phantom

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TS_EXAMPLE = DATA / "ts-example-ct"
HEART_TS, SPLEEN_TS, LIVER_TS = 51, 1, 5
# Integer constants of train.phantoms that are not tissue codes.
NOT_TISSUE_CODES = {"LESION_BASE", "MAX_LESIONS"}


def _blocks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (20, 20, 20) scene: a liver reference block, a heart block above it, a spleen block beside."""
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[2:10, 2:10, 2:10] = LIVER_TS
    organs[10:14, 2:10, 2:10] = HEART_TS
    organs[2:10, 10:13, 2:10] = SPLEEN_TS
    reference = organs == LIVER_TS
    return organs, reference, reference.copy()


def test_false_positives_are_counted_in_the_organ_they_fall_in():
    organs, reference, prediction = _blocks()
    prediction[10:12, 4:6, 4:6] = True  # 2 x 2 x 2 = 8 voxels of heart
    prediction[4:6, 10:11, 2:10] = True  # 2 x 1 x 8 = 16 voxels of spleen
    prediction[15:17, 15:17, 15:17] = True  # 8 voxels of no organ
    prediction[2:4, 2:4, 2:4] = False  # a miss inside the reference is no false positive
    voxel_ml = 2.0 * 2.0 * 2.5 / 1000.0

    leaks = false_positive_ml_by_organ(prediction, reference, organs, TOTALSEGMENTATOR_GROUPS, voxel_ml)

    assert set(leaks) == {*GROUPS, UNLABELLED}
    assert leaks["heart"] == pytest.approx(8 * voxel_ml)
    assert leaks["spleen"] == pytest.approx(16 * voxel_ml)
    assert leaks[UNLABELLED] == pytest.approx(8 * voxel_ml)
    others = {k: v for k, v in leaks.items() if k not in ("heart", "spleen", UNLABELLED)}
    assert others == dict.fromkeys(others, 0.0)


def test_a_prediction_equal_to_its_reference_leaks_nowhere():
    organs, reference, prediction = _blocks()
    leaks = false_positive_ml_by_organ(prediction, reference, organs, TOTALSEGMENTATOR_GROUPS, 1.0)
    assert leaks == dict.fromkeys([*GROUPS, UNLABELLED], 0.0)


def test_a_false_positive_on_a_label_no_group_holds_is_an_error():
    organs, reference, prediction = _blocks()
    organs[15, 15, 15] = 200  # TotalSegmentator has 117 classes
    prediction[15, 15, 15] = True
    with pytest.raises(ValueError, match=r"labels \[200\].*stale"):
        false_positive_ml_by_organ(prediction, reference, organs, TOTALSEGMENTATOR_GROUPS, 1.0)


@pytest.mark.parametrize(
    "groups", [{"a": (1, 2), "b": (2,)}, {"a": (0,)}, {UNLABELLED: (3,)}], ids=["twice", "zero", "reserved"]
)
def test_bad_group_tables_are_refused(groups):
    organs, reference, prediction = _blocks()
    with pytest.raises(ValueError):
        false_positive_ml_by_organ(prediction, reference, organs, groups, 1.0)


def test_arrays_on_different_grids_are_refused():
    organs, reference, prediction = _blocks()
    with pytest.raises(ValueError, match="one grid"):
        false_positive_ml_by_organ(prediction[1:], reference, organs, TOTALSEGMENTATOR_GROUPS, 1.0)


def test_every_totalsegmentator_class_is_in_exactly_one_group():
    assert len(TOTALSEGMENTATOR_CLASSES) == 117
    labels = sorted(label for group in TOTALSEGMENTATOR_GROUPS.values() for label in group)
    assert labels == list(range(1, 118))
    assert set(TOTALSEGMENTATOR_GROUPS) == set(GROUPS)
    assert TOTALSEGMENTATOR_GROUPS["liver"] == (LIVER_TS,)
    assert TOTALSEGMENTATOR_GROUPS["heart"] == (HEART_TS, 61)  # heart, atrial_appendage_left
    assert {52, 62, 63, 64, 65, 66, 67, 68} <= set(TOTALSEGMENTATOR_GROUPS["vessels"])
    assert set(TOTALSEGMENTATOR_GROUPS["bowel"]) == {15, 18, 19, 20}


def test_the_class_names_match_totalsegmentators_own_list():
    tsv = TS_EXAMPLE / "totalsegmentator_classes.tsv"
    if not tsv.is_file():
        pytest.skip(f"TotalSegmentator's class list not found at {tsv} (it lives in ../shared/data)")
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if line.strip()]
    assert [(int(n), name.strip()) for n, name in rows] == list(enumerate(TOTALSEGMENTATOR_CLASSES, 1))


@pytest.mark.parametrize(
    "names, message", [(("liver", "brain"), r"brain \(2\) is in no group"), (("liver_x",), r"in \['a', 'b'\]")]
)
def test_groups_from_names_refuses_a_class_in_no_group_or_in_two(names, message):
    with pytest.raises(ValueError, match=message):
        groups_from_names(names, {"a": ("liver*",), "b": ("*_x",)})


def test_every_tissue_code_train_phantoms_exports_is_in_exactly_one_phantom_group():
    exported = {
        name: value
        for name, value in vars(train.phantoms).items()
        if name.isupper() and type(value) is int and name not in NOT_TISSUE_CODES
    }
    grouped = [code for group in PHANTOM_GROUPS.values() for code in group]
    assert len(grouped) == len(set(grouped)), "a tissue code is in two PHANTOM_GROUPS groups"
    missing = {name: code for name, code in exported.items() if code not in grouped and code != AIR}
    assert not missing, f"train.phantoms exports tissue codes that no PHANTOM_GROUPS group holds: {missing}"
    assert set(PHANTOM_GROUPS) == set(GROUPS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_phantoms_heart_added_to_its_liver_is_counted_as_heart(seed):
    phantom = make_phantom(seed, spacing_xyz_mm=(6.0, 6.0, 6.0), z_range=(-150.0, 150.0))
    tissues = sitk.GetArrayFromImage(phantom.tissues)
    reference = sitk.GetArrayFromImage(phantom.liver).astype(bool)
    painted = {int(c) for c in np.unique(tissues)} - {AIR}
    assert painted <= {c for group in PHANTOM_GROUPS.values() for c in group}
    np.testing.assert_array_equal(reference, np.isin(tissues, PHANTOM_GROUPS["liver"]))
    heart = np.isin(tissues, HEART_CODES)
    voxel_ml = 6.0**3 / 1000.0

    leaks = false_positive_ml_by_organ(reference | heart, reference, tissues, PHANTOM_GROUPS, voxel_ml)

    assert heart.sum() > 100  # the range reaches 150 mm above the dome: the whole heart is in view
    assert leaks["heart"] == pytest.approx(int(heart.sum()) * voxel_ml)
    assert sum(leaks.values()) == pytest.approx(leaks["heart"])


# Voxels of TotalSegmentator's labels in the ring that a 2-voxel dilation (scipy's default
# 6-connected structure) adds around each sample's liver, counted once with np.unique.
RING_COUNTS = {
    "ct-dicom-sample": {0: 27993, 6: 1273, 8: 503, 63: 1581, 64: 1749, 111: 31, 112: 90, 113: 40},
    "ts-example-ct": {
        0: 10492, 2: 234, 4: 316, 6: 331, 8: 93, 14: 460, 19: 48, 20: 416, 63: 258, 64: 254,
        110: 4, 111: 31, 112: 36, 113: 91, 114: 30, 117: 143,
    },
}  # fmt: skip
# The same counts, by hand, in groups: 2 kidney_right, 4 gallbladder, 6 stomach, 8 adrenal gland
# (other), 14 lung, 19 duodenum and 20 colon (bowel), 63 IVC and 64 portal vein (vessels), 110-114
# ribs and 117 costal cartilages (bone).
RING_GROUPS = {
    "ct-dicom-sample": {UNLABELLED: 27993, "stomach": 1273, "other": 503, "vessels": 1581 + 1749, "bone": 31 + 90 + 40},
    "ts-example-ct": {
        UNLABELLED: 10492, "kidneys": 234, "gallbladder": 316, "stomach": 331, "other": 93,
        "lungs": 460, "bowel": 48 + 416, "vessels": 258 + 254, "bone": 4 + 31 + 36 + 91 + 30 + 143,
    },
}  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("sample", sorted(RING_GROUPS))
def test_the_real_references_leak_nowhere_and_their_dilation_leaks_into_the_counted_neighbours(sample):
    path = DATA / sample / "labels_totalsegmentator.nii.gz"
    if not path.is_file():
        pytest.skip(f"real label map not found at {path} (it lives in ../shared/data beside the repo)")
    image = sitk.ReadImage(str(path))
    organs = sitk.GetArrayFromImage(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    reference = organs == LIVER_TS

    own = false_positive_ml_by_organ(reference, reference, organs, TOTALSEGMENTATOR_GROUPS, voxel_ml)
    assert own == dict.fromkeys([*GROUPS, UNLABELLED], 0.0)

    dilated = ndimage.binary_dilation(reference, iterations=2)
    labels, counts = np.unique(organs[dilated & ~reference], return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist(), strict=True)) == RING_COUNTS[sample]
    leaks = false_positive_ml_by_organ(dilated, reference, organs, TOTALSEGMENTATOR_GROUPS, voxel_ml)
    expected = dict.fromkeys([*GROUPS, UNLABELLED], 0.0) | {
        group: n * voxel_ml for group, n in RING_GROUPS[sample].items()
    }
    assert leaks == pytest.approx(expected)
