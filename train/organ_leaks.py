"""Where a predicted liver leaks: its false-positive volume by the neighbouring organ it falls in.

A Dice hides a heart in the mask. Every voxel that the prediction calls liver and the reference
does not is counted in the organ that an organ label map puts there: TotalSegmentator's 117-class
map on real scans (`TOTALSEGMENTATOR_GROUPS`), the generator's tissue map on phantoms
(`PHANTOM_GROUPS`). Both tables use the same group names (`GROUPS`), so a real scan and a phantom
report alike; voxels with no organ label (label 0) are "unlabelled".

A label that no group holds is an error, not a silent "other": a table that has fallen behind
its label map (a new phantom tissue, another TotalSegmentator version) must fail loudly.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from fnmatch import fnmatchcase

import numpy as np

from train.phantoms import (
    AORTA,
    ASCITES,
    CARTILAGE,
    CORTEX,
    CSF,
    DISC,
    FAT,
    FOAM,
    GALLBLADDER,
    GAS,
    GUT_FLUID,
    GUT_WALL,
    HEART_CODES,
    IVC,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    KIDNEY_PELVIS,
    LIVER_CODES,
    LUNG,
    LUNG_VESSEL,
    MARROW,
    MESENTERIC_VESSEL,
    MUSCLE,
    ORAL_CONTRAST,
    PANCREAS,
    PORTAL_VEIN,
    RENAL_SINUS,
    SKIN,
    SPLEEN,
    STOOL,
    TABLE,
    URINARY_BLADDER,
    VISC_FAT,
    YELLOW_MARROW,
)

# "liver" holds the label map's own liver: false positives there mean that the reference and the
# label map disagree at the liver's border, not a leak into a neighbour. "body_wall" is muscle,
# fat and skin.
GROUPS: tuple[str, ...] = (
    "liver",
    "heart",
    "spleen",
    "stomach",
    "kidneys",
    "bowel",
    "vessels",
    "pancreas",
    "gallbladder",
    "lungs",
    "bone",
    "body_wall",
    "other",
)
UNLABELLED = "unlabelled"

# TotalSegmentator v2's 117 classes; the label value is the position + 1 (1 = spleen, 5 = liver).
TOTALSEGMENTATOR_CLASSES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate",
    "kidney_cyst_left", "kidney_cyst_right", "sacrum", "vertebrae_S1", "vertebrae_L5",
    "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1", "vertebrae_T12",
    "vertebrae_T11", "vertebrae_T10", "vertebrae_T9", "vertebrae_T8", "vertebrae_T7",
    "vertebrae_T6", "vertebrae_T5", "vertebrae_T4", "vertebrae_T3", "vertebrae_T2",
    "vertebrae_T1", "vertebrae_C7", "vertebrae_C6", "vertebrae_C5", "vertebrae_C4",
    "vertebrae_C3", "vertebrae_C2", "vertebrae_C1", "heart", "aorta", "pulmonary_vein",
    "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left",
    "common_carotid_artery_right", "common_carotid_artery_left", "brachiocephalic_vein_left",
    "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left",
    "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "humerus_left",
    "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
    "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord", "gluteus_maximus_left",
    "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right",
    "iliopsoas_left", "iliopsoas_right", "brain", "skull",
    *(f"rib_{side}_{n}" for side in ("left", "right") for n in range(1, 13)),
    "sternum", "costal_cartilages",
)  # fmt: skip

# Each TotalSegmentator class name, as a shell pattern, in exactly one group.
_TOTALSEGMENTATOR_PATTERNS: dict[str, tuple[str, ...]] = {
    "liver": ("liver",),
    "heart": ("heart", "atrial_appendage_left"),
    "spleen": ("spleen",),
    "stomach": ("stomach",),
    "kidneys": ("kidney_*",),  # the kidneys and their cysts
    "bowel": ("esophagus", "small_bowel", "duodenum", "colon"),
    "vessels": (
        "aorta", "inferior_vena_cava", "superior_vena_cava", "portal_vein_and_splenic_vein",
        "pulmonary_vein", "brachiocephalic_*", "subclavian_artery_*", "common_carotid_artery_*",
        "iliac_artery_*", "iliac_vena_*",
    ),  # fmt: skip
    "pancreas": ("pancreas",),
    "gallbladder": ("gallbladder",),
    "lungs": ("lung_*", "trachea"),
    "bone": (
        "vertebrae_*", "sacrum", "rib_*", "sternum", "costal_cartilages", "hip_*", "femur_*",
        "humerus_*", "scapula_*", "clavicula_*", "skull",
    ),  # fmt: skip
    "body_wall": ("gluteus_*", "autochthon_*", "iliopsoas_*"),
    "other": (
        "adrenal_gland_*", "thyroid_gland", "urinary_bladder", "prostate", "spinal_cord", "brain",
    ),  # fmt: skip
}


def groups_from_names(
    classes: tuple[str, ...], patterns: Mapping[str, tuple[str, ...]]
) -> dict[str, tuple[int, ...]]:
    """Group name -> label values (position in `classes` + 1) of the class names its patterns match.

    Raises ValueError naming every class that matches no group or more than one.
    """
    groups: dict[str, list[int]] = {group: [] for group in patterns}
    problems = []
    for label, name in enumerate(classes, start=1):
        hits = [g for g, pats in patterns.items() if any(fnmatchcase(name, p) for p in pats)]
        if len(hits) != 1:
            problems.append(f"{name} ({label}) is in {hits or 'no group'}")
        for group in hits:
            groups[group].append(label)
    if problems:
        raise ValueError("every class must be in exactly one group: " + "; ".join(problems))
    return {group: tuple(labels) for group, labels in groups.items()}


TOTALSEGMENTATOR_GROUPS: dict[str, tuple[int, ...]] = groups_from_names(
    TOTALSEGMENTATOR_CLASSES, _TOTALSEGMENTATOR_PATTERNS
)

# The generator's tissue codes (train.phantoms). AIR is code 0, so it counts as "unlabelled".
# tests/train/test_organ_leaks.py fails when train.phantoms exports a code that no group holds.
PHANTOM_GROUPS: dict[str, tuple[int, ...]] = {
    "liver": LIVER_CODES,  # parenchyma, its vessels and lesions: the liver label
    "heart": HEART_CODES,  # the classic one-code heart, and anatomy 2's chambers, myocardium, fat and pericardium
    "spleen": (SPLEEN,),
    "stomach": (),  # the generator paints the stomach with the bowel's codes (GUT_WALL, GUT_FLUID, GAS)
    "kidneys": (KIDNEY_CORTEX, KIDNEY_MEDULLA, KIDNEY_PELVIS, RENAL_SINUS),
    "bowel": (GUT_WALL, GUT_FLUID, GAS, STOOL, ORAL_CONTRAST),
    "vessels": (AORTA, IVC, PORTAL_VEIN, MESENTERIC_VESSEL),
    "pancreas": (PANCREAS,),
    "gallbladder": (GALLBLADDER,),
    "lungs": (LUNG, LUNG_VESSEL),
    "bone": (CORTEX, MARROW, YELLOW_MARROW, CARTILAGE, DISC),
    "body_wall": (SKIN, FAT, MUSCLE, VISC_FAT),  # MUSCLE is the diaphragm too
    "other": (CSF, TABLE, FOAM, ASCITES, URINARY_BLADDER),  # TotalSegmentator's bladder is "other" too
}


def false_positive_ml_by_organ(
    prediction: np.ndarray,
    reference: np.ndarray,
    organs: np.ndarray,
    groups: Mapping[str, Collection[int]],
    voxel_ml: float,
) -> dict[str, float]:
    """mL of the prediction outside the reference, by the group of organs it falls in.

    Args:
        prediction, reference: (D, H, W) bool (or 0/1) liver masks on one grid.
        organs: (D, H, W) integer label map on the same grid; 0 means no organ.
        groups: group name -> the label values it holds (e.g. TOTALSEGMENTATOR_GROUPS); no label
            in two groups, and none is 0.
        voxel_ml: the volume of one voxel in mL (the spacing's product in mm^3 / 1000).

    Returns:
        {group: mL} for every group of `groups`, 0.0 where there is none, and "unlabelled" for
        false positives on label 0; the values add up to the whole false-positive volume.

    Raises:
        ValueError: shapes differ, `organs` is not integer, a label is 0, negative or in two
            groups, or a false positive lies on a label that no group holds.
    """
    if not prediction.shape == reference.shape == organs.shape:
        raise ValueError(
            f"prediction {prediction.shape}, reference {reference.shape} and organs "
            f"{organs.shape} must be on one grid"
        )
    if not np.issubdtype(organs.dtype, np.integer):
        raise ValueError(f"organs must be an integer label map, got {organs.dtype}")
    group_of: dict[int, str] = {}
    for group, labels in groups.items():
        for label in labels:
            if label <= 0 or label in group_of:
                raise ValueError(f"label {label} of {group!r} is 0, negative or in two groups")
            group_of[int(label)] = group
    if UNLABELLED in groups:
        raise ValueError(f"{UNLABELLED!r} is reserved for label 0")

    false_positive = prediction.astype(bool) & ~reference.astype(bool)
    found = organs[false_positive]
    if found.size and found.min() < 0:
        raise ValueError("organs holds negative labels")
    counts = np.bincount(found.astype(np.int64, copy=False))
    result = dict.fromkeys(groups, 0.0) | {UNLABELLED: 0.0}
    stray = []
    for label in np.flatnonzero(counts).tolist():
        name = UNLABELLED if label == 0 else group_of.get(label)
        if name is None:
            stray.append(label)
        else:
            result[name] += float(counts[label]) * voxel_ml
    if stray:
        raise ValueError(f"false positives on labels {stray}, which no group holds: the groups table is stale")
    return result
