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
LESION_BASE = 40
MAX_LESIONS = 8
LIVER_CODES: tuple[int, ...] = (LIVER, PORTAL_BRANCH, HEPATIC_VEIN) + tuple(
    LESION_BASE + i for i in range(MAX_LESIONS)
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
    MESENTERIC_VESSEL: "portal_vein",
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
    """HU of every tissue for this phantom: the drawn quantile of its range for the phase."""
    hu = {}
    for name in HU_RANGES:
        lo, hi = hu_range(name, phase)
        hu[name] = lo + uniforms[name] * (hi - lo)
    if organs["fatty_liver"]:
        lo, hi = FATTY_LIVER_SHIFT_HU
        hu["liver"] += lo + organs["fatty_shift_u"] * (hi - lo)
    for i, les in enumerate(lesions):
        if les["kind"] == "cyst":
            hu[f"lesion_{i}"] = les["cyst_hu"]
        else:
            hu[f"lesion_{i}"] = max(hu["liver"] + les["delta_hu"], -5.0)
    for name in hu:
        if name not in ("air", "foam", "table"):
            hu[name] += offset
    return {k: float(v) for k, v in hu.items()}
