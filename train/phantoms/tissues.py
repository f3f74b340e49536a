"""Tissue codes of the phantoms' label map, their HU ranges per contrast phase, and the HU draws."""

from __future__ import annotations

PHASES: tuple[str, ...] = ("native", "arterial", "portal", "delayed")
PHASE_PROBABILITIES: tuple[float, ...] = (0.2, 0.15, 0.5, 0.15)

# Tissue codes of the internal label map (uint8). Lesions take LESION_BASE + i.
AIR, SKIN, FAT, MUSCLE, VISC_FAT, CORTEX, MARROW, CARTILAGE, DISC, CSF = range(10)
LUNG, LUNG_VESSEL, HEART, AORTA, IVC, PORTAL_VEIN, LIVER, PORTAL_BRANCH, HEPATIC_VEIN = range(
    10, 19
)
GALLBLADDER, SPLEEN, KIDNEY_CORTEX, KIDNEY_MEDULLA, KIDNEY_PELVIS, RENAL_SINUS = range(19, 25)
GUT_WALL, GUT_FLUID, GAS, STOOL, ORAL_CONTRAST, PANCREAS, TABLE, FOAM, YELLOW_MARROW = range(25, 34)
MESENTERIC_VESSEL = 34
# Anatomy 2's own elements. The heart: its four blood pools, the muscle, the fat on it, its sac.
HEART_LV, HEART_RV, HEART_LA, HEART_RA, MYOCARDIUM, EPICARDIAL_FAT, PERICARDIUM = range(48, 55)
# Free fluid in the peritoneal cavity; in the liver: necrotic tumour centres, lipiodol after
# TACE, dilated intrahepatic bile ducts.
ASCITES, NECROSIS, LIPIODOL, BILE_DUCT = range(55, 59)
# Anatomy 3's: the urine in the urinary bladder (its wall is MUSCLE).
URINARY_BLADDER = 59
# Lesion i is LESION_BASE + i; anatomy 1 numbers its (at most 8) lesions from 40, as it always did.
CLASSIC_LESION_BASE, CLASSIC_MAX_LESIONS = 40, 8
LESION_BASE = 100
MAX_LESIONS = 24
HEART_CODES: tuple[int, ...] = (
    HEART, HEART_LV, HEART_RV, HEART_LA, HEART_RA, MYOCARDIUM, EPICARDIAL_FAT, PERICARDIUM
)  # fmt: skip
# Everything the liver label holds: parenchyma, its vessels and ducts, lesions and what is in them.
LIVER_CODES: tuple[int, ...] = (
    (LIVER, PORTAL_BRANCH, HEPATIC_VEIN, BILE_DUCT, NECROSIS, LIPIODOL)
    + tuple(CLASSIC_LESION_BASE + i for i in range(CLASSIC_MAX_LESIONS))
    + tuple(LESION_BASE + i for i in range(MAX_LESIONS))
)

# HU ranges (lo, hi) drawn uniformly per phantom: one pair for every phase, or one pair per phase
# in PHASES order. Sources: typical attenuation tables for CT (liver 40-65 HU unenhanced, 80-130
# portal venous; aorta 200-450 arterial), widened for domain randomisation, and checked against
# the real sample (liver ~95, spleen ~72, aorta ~150, muscle ~30, fat ~-85, vertebral marrow ~150).
HURange = tuple[float, float]
HU_RANGES: dict[str, HURange | tuple[HURange, HURange, HURange, HURange]] = {
    "air": (-1010.0, -990.0),
    "skin": (0.0, 60.0),
    "fat": (-130.0, -70.0),
    "visc_fat": (-120.0, -60.0),
    "muscle": (20.0, 65.0),
    "cortex": (600.0, 1600.0),
    "marrow": (110.0, 320.0),
    "yellow_marrow": (-100.0, 0.0),
    "cartilage": (80.0, 220.0),
    "disc": (60.0, 110.0),
    "csf": (0.0, 30.0),
    "lung": (-920.0, -780.0),
    "lung_vessel": (-150.0, 150.0),
    "heart": ((30.0, 55.0), (150.0, 350.0), (100.0, 200.0), (80.0, 140.0)),
    "aorta": ((30.0, 55.0), (200.0, 450.0), (120.0, 220.0), (90.0, 150.0)),
    "ivc": ((30.0, 55.0), (60.0, 130.0), (100.0, 180.0), (90.0, 140.0)),
    "portal_vein": ((25.0, 45.0), (80.0, 180.0), (130.0, 220.0), (90.0, 140.0)),
    "liver": ((40.0, 65.0), (60.0, 90.0), (80.0, 130.0), (70.0, 105.0)),
    "hepatic_vein": ((25.0, 45.0), (25.0, 60.0), (130.0, 220.0), (90.0, 140.0)),
    "gallbladder": (-5.0, 30.0),
    "spleen": ((35.0, 55.0), (70.0, 150.0), (65.0, 140.0), (60.0, 110.0)),
    "kidney_cortex": ((25.0, 40.0), (140.0, 250.0), (130.0, 220.0), (100.0, 180.0)),
    "kidney_medulla": ((25.0, 40.0), (50.0, 100.0), (110.0, 200.0), (100.0, 180.0)),
    "kidney_pelvis": ((0.0, 20.0), (0.0, 20.0), (0.0, 30.0), (200.0, 900.0)),
    "gut_wall": ((30.0, 50.0), (60.0, 120.0), (60.0, 110.0), (50.0, 90.0)),
    "gut_fluid": (-5.0, 30.0),
    "gas": (-1000.0, -850.0),
    "stool": (-150.0, 60.0),
    "oral_contrast": (150.0, 500.0),
    "pancreas": ((30.0, 50.0), (90.0, 150.0), (80.0, 120.0), (60.0, 100.0)),
    "table": (150.0, 600.0),
    "foam": (-980.0, -850.0),
}
# Anatomy 1 draws the HU of these tissues, in this order, from its generator: keep it so.
CLASSIC_TISSUES: tuple[str, ...] = tuple(HU_RANGES)
# Anatomy 2's tissues (ANATOMY2_TISSUES; their draws come from a generator of their own). Blood
# pools: unenhanced 30-55; arterial, the left heart as bright as the aorta and the right heart
# lower and mixed (unenhanced blood from the IVC still comes in); portal and delayed 120-200 and
# 90-150, inside the liver's own range, which is why a network must learn what a heart is. The
# myocardium enhances a little less than its blood.
_BLOOD = (30.0, 55.0), (250.0, 450.0), (120.0, 200.0), (90.0, 150.0)
HU_RANGES |= {
    "lv_blood": _BLOOD,
    "la_blood": _BLOOD,
    "rv_blood": ((30.0, 55.0), (100.0, 300.0), (120.0, 200.0), (90.0, 150.0)),
    "ra_blood": ((30.0, 55.0), (60.0, 250.0), (120.0, 200.0), (90.0, 150.0)),
    "myocardium": ((35.0, 55.0), (90.0, 160.0), (80.0, 120.0), (65.0, 90.0)),
    "epicardial_fat": (-120.0, -60.0),
    "pericardium": (15.0, 45.0),
    "ascites": (0.0, 20.0),
    "necrosis": (10.0, 30.0),
    "lipiodol": (300.0, 3000.0),
    "bile_duct": (0.0, 25.0),
}
ANATOMY2_TISSUES: tuple[str, ...] = tuple(n for n in HU_RANGES if n not in CLASSIC_TISSUES)
# Anatomy 3's tissues, drawn from its pelvis generator (parameters.draw_bladder). Urine is water in every phase these
# phantoms draw: excreted contrast reaches the bladder only minutes after the delayed phase.
HU_RANGES |= {"urine": (-5.0, 20.0)}
ANATOMY3_TISSUES: tuple[str, ...] = ("urine",)
# How far a fatty (steatotic) liver sits below its phase's range.
FATTY_LIVER_SHIFT_HU: HURange = (-60.0, -20.0)

TISSUE_OF_CODE: dict[int, str] = {
    AIR: "air", SKIN: "skin", FAT: "fat", MUSCLE: "muscle", VISC_FAT: "visc_fat",
    CORTEX: "cortex", MARROW: "marrow", CARTILAGE: "cartilage", DISC: "disc", CSF: "csf",
    LUNG: "lung", LUNG_VESSEL: "lung_vessel", HEART: "heart", AORTA: "aorta", IVC: "ivc",
    PORTAL_VEIN: "portal_vein", LIVER: "liver", PORTAL_BRANCH: "portal_vein",
    HEPATIC_VEIN: "hepatic_vein", GALLBLADDER: "gallbladder", SPLEEN: "spleen",
    KIDNEY_CORTEX: "kidney_cortex", KIDNEY_MEDULLA: "kidney_medulla",
    KIDNEY_PELVIS: "kidney_pelvis", RENAL_SINUS: "visc_fat", GUT_WALL: "gut_wall",
    GUT_FLUID: "gut_fluid", GAS: "gas", STOOL: "stool", ORAL_CONTRAST: "oral_contrast",
    PANCREAS: "pancreas", TABLE: "table", FOAM: "foam", YELLOW_MARROW: "yellow_marrow",
    MESENTERIC_VESSEL: "portal_vein", HEART_LV: "lv_blood", HEART_RV: "rv_blood",
    HEART_LA: "la_blood", HEART_RA: "ra_blood", MYOCARDIUM: "myocardium",
    EPICARDIAL_FAT: "epicardial_fat", PERICARDIUM: "pericardium", ASCITES: "ascites",
    NECROSIS: "necrosis", LIPIODOL: "lipiodol", BILE_DUCT: "bile_duct", URINARY_BLADDER: "urine",
}  # fmt: skip
# Texture (smooth low-frequency variation, e.g. uneven enhancement) amplitude, HU per unit of the
# draw; only the organs where it shows under the noise get one.
TEXTURE_HU: dict[str, float] = {"liver": 8.0, "spleen": 10.0}


def hu_range(name: str, phase: str) -> HURange:
    """The (lo, hi) HU range of tissue `name` in `phase`."""
    r = HU_RANGES[name]
    return r[PHASES.index(phase)] if isinstance(r[0], tuple) else r  # type: ignore[return-value]


def hu_values(
    phase: str, uniforms: dict[str, float], organs: dict, lesions: list, offset: float
) -> dict[str, float]:
    """HU of every tissue drawn (`uniforms`: name -> quantile) for this phantom and phase."""
    hu = {}
    for name in uniforms:
        lo, hi = hu_range(name, phase)
        hu[name] = lo + uniforms[name] * (hi - lo)
    if organs["fatty_liver"]:
        lo, hi = FATTY_LIVER_SHIFT_HU
        hu["liver"] += lo + organs["fatty_shift_u"] * (hi - lo)
    for i, les in enumerate(lesions):
        if les["kind"] == "cyst":
            hu[f"lesion_{i}"] = les["cyst_hu"]
        else:  # against the liver; a list holds one value per phase (an HCC's wash-in and out)
            delta = les["delta_hu"]
            delta = delta[PHASES.index(phase)] if isinstance(delta, list) else delta
            hu[f"lesion_{i}"] = max(hu["liver"] + delta, -5.0)
    for name in hu:
        if name not in ("air", "foam", "table"):
            hu[name] += offset
    return {k: float(v) for k, v in hu.items()}
