"""What a network learns: the liver alone, or the liver and the organs it is mistaken for.

A network told only "liver or not" has never been told what a heart is, and in the portal and
delayed phases the heart's blood sits inside the liver's own HU range: on real scans the bundled
model painted the heart, and tissue by the stomach, as liver. The "organs" scheme names the
neighbours as classes of their own (as TotalSegmentator's multi-organ model does), from the
phantoms' tissue maps or a real case's TotalSegmentator label map, through the organ groups of
`train.organ_leaks`, so the same names hold for both. The service reads the liver channel only.

Targets (`soft_targets`): the liver keeps its fraction per voxel (antialiased contracts), and the
rest of the voxel belongs to the organ the organ map names there (background where it names none).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch
from torch import Tensor

CLASS_SCHEMES = ("liver", "organs")
# Class name -> the organ groups (train.organ_leaks.GROUPS) it holds. The phantoms paint the
# stomach with the bowel's tissue codes, so the two are one class.
ORGAN_CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "heart": ("heart",),
    "spleen": ("spleen",),
    "stomach_bowel": ("stomach", "bowel"),
    "kidneys": ("kidneys",),
    "vessels": ("vessels",),
    "gallbladder": ("gallbladder",),
    "pancreas": ("pancreas",),
}


def class_names(scheme: str) -> tuple[str, ...]:
    """The output channels of `scheme`, in order: background, liver, then the neighbours."""
    if scheme == "liver":
        return ("background", "liver")
    if scheme == "organs":
        return ("background", "liver", *ORGAN_CLASS_GROUPS)
    raise ValueError(f"unknown class scheme {scheme!r}: use one of {', '.join(CLASS_SCHEMES)}")


def channel_def(scheme: str) -> dict[str, str]:
    """The card's channel_def of `scheme`."""
    return {str(i): name for i, name in enumerate(class_names(scheme))}


def dice_class_weights(scheme: str) -> list[float] | None:
    """Weights of the foreground classes in the Dice term: under "organs" the liver, which the
    service returns, weighs as much as all its neighbours together (they are there to tell the
    network what is not liver, and a CPU budget of a few thousand steps must not be spent on
    them at the liver's cost); None (a plain mean) for "liver"."""
    names = class_names(scheme)[1:]
    if len(names) == 1:
        return None
    return [float(len(names) - 1) if name == "liver" else 1.0 for name in names]


def organ_classes(organs: np.ndarray, groups: Mapping[str, Collection[int]]) -> np.ndarray:
    """An organ label map -> uint8 class indices of the "organs" scheme (0 where no class: the
    liver too, whose share comes from its own fraction).

    groups: the label map's group table (`PHANTOM_GROUPS` or `TOTALSEGMENTATOR_GROUPS`).
    """
    names = class_names("organs")
    top = int(organs.max()) if organs.size else 0
    lookup = np.zeros(max(top, max((max(v, default=0) for v in groups.values()), default=0)) + 1, np.uint8)
    for class_name, group_names in ORGAN_CLASS_GROUPS.items():
        for group in group_names:
            for code in groups.get(group, ()):
                lookup[code] = names.index(class_name)
    return lookup[organs]


def soft_targets(liver: Tensor, organs: Tensor, n_classes: int) -> Tensor:
    """(N, C, D, H, W) float per-class targets from liver fractions (or 0/1) and organ classes.

    liver: (N, D, H, W) float in [0, 1]; organs: (N, D, H, W) integer classes of `organ_classes`.
    Channel 1 is the liver's fraction; the rest of each voxel goes to its organ (0: background).
    """
    rest = 1.0 - liver.float()
    target = torch.nn.functional.one_hot(organs.long(), n_classes).movedim(-1, 1).float() * rest[:, None]
    target[:, 1] += liver.float()
    return target


def add_classes(state: dict[str, Tensor], head_prefix: str, n_classes: int, offset: float = -6.0) -> dict[str, Tensor]:
    """A two-class state_dict with its 1x1x1 heads grown to `n_classes` outputs.

    Every new channel starts as a copy of the background's, `offset` lower in its bias: the
    network starts out predicting the liver as it did (the new classes take a few per cent of the
    background's share) and learns the neighbours from there.

    head_prefix: the heads' parameter prefix ("heads." for unet3d_ds); keys "PREFIX<i>.weight/bias".
    """
    grown = dict(state)
    for key, value in state.items():
        if not key.startswith(head_prefix) or key.rsplit(".", 1)[-1] not in ("weight", "bias"):
            continue
        if value.shape[0] != 2:
            raise ValueError(f"{key} has {value.shape[0]} outputs; only a two-class network's heads grow")
        extra = value[:1].repeat(n_classes - 2, *([1] * (value.ndim - 1)))
        if key.endswith(".bias"):
            extra = extra + offset
        grown[key] = torch.cat([value, extra], dim=0)
    return grown
