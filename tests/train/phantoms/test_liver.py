"""Tests for train/phantoms/liver.py: anatomy 2's diseased livers (cirrhosis, hepatomegaly,
tumours with washout, necrosis and lipiodol, dilated bile ducts, ascites)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from tests.train.phantoms.conftest import HEALTHY, IDENTITY, NOISELESS, arrays
from train.phantoms import (
    ASCITES,
    BILE_DUCT,
    HU_RANGES,
    LESION_BASE,
    LIPIODOL,
    LIVER,
    LIVER_CODES,
    MAX_LESIONS,
    NECROSIS,
    PHASES,
    make_phantom,
)

ABDOMEN = {"spacing_xyz_mm": (3.0, 3.0, 3.0), "z_range": (-330.0, 40.0), "direction": IDENTITY}
# Everything at once; seed 11's first HCC is large and necrotic.
SICK = {"cirrhosis": True, "ascites": True, "tumours": "hcc", "lipiodol": True}
SICK |= {"biliary_dilatation": True}


@pytest.fixture(scope="module")
def sick_by_phase() -> dict[str, tuple]:
    return {
        ph: arrays(make_phantom(11, phase=ph, disease=SICK, **NOISELESS, **ABDOMEN))
        for ph in PHASES
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask)


def test_every_disease_element_is_present_and_labelled(sick_by_phase) -> None:
    _, liver, tissues = sick_by_phase["portal"]
    voxel_ml = 27.0 / 1000.0
    for code in (NECROSIS, LIPIODOL, BILE_DUCT, ASCITES, LESION_BASE):
        assert (tissues == code).sum() * voxel_ml > 1.0, f"code {code} missing"
    np.testing.assert_array_equal(liver > 0, np.isin(tissues, LIVER_CODES))
    for code in (NECROSIS, LIPIODOL, BILE_DUCT, LESION_BASE):
        assert liver[tissues == code].all()
    assert not liver[tissues == ASCITES].any()


@pytest.mark.parametrize(
    ("code", "name"), [(ASCITES, "ascites"), (NECROSIS, "necrosis"), (BILE_DUCT, "bile_duct")]
)
@pytest.mark.parametrize("phase", PHASES)
def test_fluid_necrosis_and_ducts_hold_their_hu(
    sick_by_phase, code: int, name: str, phase: str
) -> None:
    ct, _, tissues = sick_by_phase[phase]
    lo, hi = HU_RANGES[name]
    assert lo - 15 <= float(np.median(ct[tissues == code])) <= hi + 15


@pytest.mark.parametrize("phase", PHASES)
def test_hcc_is_bright_in_the_arterial_phase_and_washes_out_later(
    sick_by_phase, phase: str
) -> None:
    ct, _, tissues = sick_by_phase[phase]
    tumour = float(np.median(ct[tissues == LESION_BASE]))
    parenchyma = float(np.median(ct[tissues == LIVER]))
    if phase == "arterial":
        assert tumour > parenchyma + 20
    else:  # darker than the liver unenhanced, and washed out in the portal and delayed phases
        assert tumour < parenchyma - 3


def test_necrosis_sits_inside_its_tumour(sick_by_phase) -> None:
    _, _, tissues = sick_by_phase["portal"]
    necrosis = tissues == NECROSIS
    around = ndi.binary_dilation(necrosis, iterations=2) & ~necrosis
    codes, counts = np.unique(tissues[around], return_counts=True)
    inside_tumour = counts[np.isin(codes, [LESION_BASE, LIPIODOL])].sum()
    assert inside_tumour > 0.8 * counts.sum()


@pytest.mark.parametrize("seed", [0, 3, 5, 11])
def test_lipiodol_is_dense_and_in_a_tumour(seed: int) -> None:
    """With the scanner's noise and blur on: the deposit's inside is over 300 HU."""
    hcc = HEALTHY | {"tumours": "hcc"}
    p = make_phantom(seed, disease=hcc | {"lipiodol": True}, **ABDOMEN)
    ct, liver, tissues = arrays(p)
    lipiodol = tissues == LIPIODOL
    assert lipiodol.sum() > 20
    assert 300.0 - 5 <= p.params["hu"]["lipiodol"] <= 3000.0 + 5
    inner = ndi.binary_erosion(lipiodol)
    assert float(np.median(ct[inner if inner.sum() > 20 else lipiodol])) > 300.0
    assert liver[lipiodol].all()
    # The same tumours untreated: every deposit lies in one of them.
    _, _, untreated = arrays(make_phantom(seed, disease=hcc | {"lipiodol": False}, **ABDOMEN))
    tumour = (untreated >= LESION_BASE) & (untreated < LESION_BASE + MAX_LESIONS)
    assert (tumour | (untreated == NECROSIS))[lipiodol].all()


def test_ascites_surrounds_a_cirrhotic_liver(sick_by_phase) -> None:
    ct, liver, tissues = sick_by_phase["portal"]
    ascites = tissues == ASCITES
    surface = _surface(liver > 0)
    assert (surface & ndi.binary_dilation(ascites)).sum() > 0.2 * surface.sum()
    # and in the flanks and the pelvis, well below the liver
    lowest_liver = int(np.flatnonzero((liver > 0).any(axis=(1, 2)))[0])
    assert ascites[: max(lowest_liver - 10, 1)].sum() * 27.0 / 1000.0 > 50.0


def _bumpiness(mask: np.ndarray) -> float:
    """How far a mask's surface strays from its own smoothed copy, per surface voxel."""
    smooth = ndi.gaussian_filter(mask.astype(np.float32), 2.0) > 0.5
    return float((mask ^ smooth).sum() / _surface(mask).sum())


@pytest.mark.parametrize("seed", [0, 1, 4])
def test_a_cirrhotic_liver_is_small_and_nodular_and_hepatomegaly_large(seed: int) -> None:
    kw = {"spacing_xyz_mm": (2.0, 2.0, 2.0), "z_range": (-120.0, -60.0), "direction": IDENTITY}
    volume = {}
    bumps = {}
    for name, extra in (
        ("healthy", {}),
        ("cirrhosis", {"cirrhosis": True}),
        ("large", {"hepatomegaly": True}),
    ):
        p = make_phantom(seed, disease=HEALTHY | extra, **kw)
        liver = sitk.GetArrayFromImage(p.liver) > 0
        volume[name], bumps[name] = liver.sum(), _bumpiness(liver)
    assert volume["cirrhosis"] < 0.9 * volume["healthy"] < 0.9 * volume["large"]
    assert bumps["cirrhosis"] > 1.1 * bumps["healthy"]


def test_many_tumours_are_many_and_all_liver() -> None:
    p = make_phantom(
        4, phase="portal", disease=HEALTHY | {"tumours": "metastases"}, **NOISELESS, **ABDOMEN
    )
    ct, liver, tissues = arrays(p)
    assert len(p.params["lesions"]) >= 6
    present = [LESION_BASE + i for i in range(MAX_LESIONS) if (tissues == LESION_BASE + i).any()]
    assert len(present) >= 6
    assert liver[np.isin(tissues, present)].all()
    parenchyma = float(np.median(ct[tissues == LIVER]))
    assert all(float(np.median(ct[tissues == c])) < parenchyma - 10 for c in present)


def test_dilated_bile_ducts_branch_through_both_lobes(sick_by_phase) -> None:
    _, _, tissues = sick_by_phase["portal"]
    ducts = tissues == BILE_DUCT
    xs = np.flatnonzero(ducts.any(axis=(0, 1))) * 3.0
    assert xs.max() - xs.min() > 80.0  # from the right lobe across the hilum into the left
    assert ducts.sum() * 27.0 / 1000.0 > 2.0


@pytest.mark.parametrize(
    ("disease", "message"),
    [
        ({"cirrhosis": True, "hepatomegaly": True}, "not both"),
        ({"lipiodol": True, "tumours": "metastases"}, "needs tumours='hcc'"),
        ({"tumours": "cancer"}, "tumours must be one of"),
        ({"fibrosis": True}, "unknown disease keys"),
    ],
)
def test_impossible_disease_is_refused(disease: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom(0, spacing_xyz_mm=(8.0, 8.0, 8.0), disease=disease)


def test_anatomy_1_has_no_disease_to_give() -> None:
    with pytest.raises(ValueError, match="anatomy 2"):
        make_phantom(0, spacing_xyz_mm=(8.0, 8.0, 8.0), anatomy=1, disease={"cirrhosis": True})


def _without_tip(monkeypatch, seed: int, **kwargs):
    """The phantom of `seed` drawn twice, with its inferior tip and without it."""
    import train.phantoms.make as make

    with_tip = make_phantom(seed, anatomy=2, **kwargs)
    drawn = make.draw_liver_tip
    monkeypatch.setattr(make, "draw_liver_tip", lambda rng: drawn(rng) | {"present": False})
    return with_tip, make_phantom(seed, anatomy=2, **kwargs)


@pytest.mark.parametrize("seed", [200003, 200007])
def test_the_right_lobe_tip_is_a_thin_sheet_of_liver_on_the_lateral_wall(
    monkeypatch, seed: int
) -> None:
    grid = {"spacing_xyz_mm": (2.0, 2.0, 2.0), "z_range": (-280.0, 40.0), "direction": IDENTITY}
    with_tip, without = _without_tip(monkeypatch, seed, phase="native", **NOISELESS, **grid)
    assert with_tip.params["organs"]["liver_tip"]["present"]
    ct, liver, tissues = arrays(with_tip)
    _, liver0, tissues0 = arrays(without)
    tip = (liver > 0) & (liver0 == 0)
    voxel_ml = 8.0 / 1000.0
    assert 5.0 < tip.sum() * voxel_ml < 150.0
    # Liver tissue, joined to the rest of the liver, and it hangs below the lobe.
    assert np.isin(tissues[tip], LIVER_CODES).all()
    labels, _ = ndi.label(liver > 0)
    assert set(np.unique(labels[tip])) <= set(np.unique(labels[liver0 > 0]))
    zs_tip, zs_lobe = np.nonzero(tip.any((1, 2)))[0], np.nonzero((liver0 > 0).any((1, 2)))[0]
    assert zs_tip.min() < zs_lobe.min() - 5  # z up on this grid: 10 mm below the lobe at least
    # On the patient's right (-x in LPS), against the muscle of the wall: in every slice below
    # the lobe the tip's lateral edge lies within 8 mm of muscle, no thicker than 2 x 18 mm.
    below = np.nonzero(tip.any((1, 2)))[0]
    below = below[below < zs_lobe.min()]
    assert len(below) >= 5
    from train.phantoms import MUSCLE

    x_mid = ct.shape[2] // 2
    for z in below:
        rows = np.nonzero(tip[z].any(1))[0]
        for y in rows:
            xs = np.nonzero(tip[z, y])[0]
            assert xs.max() < x_mid
            run = np.split(xs, np.nonzero(np.diff(xs) > 1)[0] + 1)[0]  # the lateral sheet
            assert len(run) <= 18
        lateral = np.zeros_like(tip[z])
        for y in rows:
            lateral[y, np.nonzero(tip[z, y])[0].min()] = True
        touching = ndi.binary_dilation(lateral, iterations=4) & (tissues[z] == MUSCLE)
        assert touching.any(), z
    # Native phase: liver HU, where a network must tell it from the wall's muscle by shape.
    lo, hi = HU_RANGES["liver"][0]
    assert lo - 65 <= np.median(ct[tip & (tissues == LIVER)]) <= hi + 30
