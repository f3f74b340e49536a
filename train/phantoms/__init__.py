"""Seedable procedural abdominal CT phantoms with a liver label, and a DICOM series writer.

No labelled liver CT can be downloaded where this project is built, so the bundled model learns
the liver from these phantoms alone and is judged on a real CT. The generator therefore follows
SynthSeg's recipe (domain randomisation): every tissue's HU is drawn per phantom within a plausible
range for the drawn contrast phase, shapes are deformed by smooth random fields, and the scanner
(noise, blur, slice thickness, spacing, field of view), the patient (size, fat, roll, arms) and the
image axes (direction cosines) vary. The anatomy is drawn in a body frame (mm, LPS axes: u to the
patient's left, v posterior, w superior, w = 0 at the top of the right hemidiaphragm, i.e. the liver
dome) and rasterised on the requested grid by voxel-centre tests, organ by organ inside each
organ's bounding box, painting only into free space (visceral fat) so that neighbours press on the
liver as they do in a body.

What is drawn per seed (ranges in train.phantoms.parameters and HU_RANGES):
- scan: coverage (full abdomen, chest to pelvis, liver only, or a 20-120 mm slab through the
  liver), in-plane field of view 330-500 mm over 512 pixels, slice spacing 0.8-5 mm with slice
  thickness 1-1.5 times it, noise 5-35 HU (log-uniform, correlated by the blur), blur 0.3-1 mm,
  calibration offset +-5 HU, cupping up to 8 HU, a padded reconstruction circle (35%), table
  position, contrast phase (native 20%, arterial 15%, portal 50%, delayed 15%), axis flips (30%).
- patient: half-width 125-200 mm, depth 0.62-0.85 of it, superellipse outline with random
  harmonics, subcutaneous fat 3-60 mm, muscle wall, roll +-12 degrees, arms at the sides (35%),
  diaphragm domes, ribs (pitch, slope, size), vertebrae, iliac wings.
- organs: liver (size, lobes, tilt, random deformation, Riedel lobe, fatty liver 10%, portal and
  hepatic vein trees, 0-6 lesions: hypodense, cysts, hyperdense), spleen (splenomegaly 15%),
  kidneys with cortex and medulla, stomach (air-fluid level, empty 30%), gallbladder (85%),
  pancreas, aorta, IVC, portal and splenic veins, colon with stool and gas, small bowel loops,
  mesenteric vessels, heart, lungs with vessels, oral contrast (20%).

The package, one job a module: tissues (codes, HU ranges, HU draws), fields (smooth random
fields), canvas (the label map and the shapes painted on it), parameters (the draws), anatomy (the
landmarks and the paint order), body, heart, abdomen and liver (the painters), scanner
(intensities, noise, blur, grid and axes), make (make_phantom) and dicom (the series writer).

Public API:
    make_phantom(seed, *, spacing_xyz_mm=None, size_xyz=None, phase=None, z_range=None,
                 direction=None, ...) -> Phantom(ct, liver, params, tissues)
    write_dicom_series(ct, folder, *, patient_id="PHANTOM", study_uid=None, series_uid=None, ...)
        -> list[Path]
"""

from __future__ import annotations

from train.phantoms.dicom import write_dicom_series
from train.phantoms.make import ANATOMIES, Phantom, make_phantom
from train.phantoms.tissues import (
    AIR,
    AORTA,
    CARTILAGE,
    CORTEX,
    CSF,
    DISC,
    FAT,
    FATTY_LIVER_SHIFT_HU,
    FOAM,
    GALLBLADDER,
    GAS,
    GUT_FLUID,
    GUT_WALL,
    HEART,
    HEPATIC_VEIN,
    HU_RANGES,
    IVC,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    KIDNEY_PELVIS,
    LESION_BASE,
    LIVER,
    LIVER_CODES,
    LUNG,
    LUNG_VESSEL,
    MARROW,
    MAX_LESIONS,
    MESENTERIC_VESSEL,
    MUSCLE,
    ORAL_CONTRAST,
    PANCREAS,
    PHASE_PROBABILITIES,
    PHASES,
    PORTAL_BRANCH,
    PORTAL_VEIN,
    RENAL_SINUS,
    SKIN,
    SPLEEN,
    STOOL,
    TABLE,
    VISC_FAT,
    YELLOW_MARROW,
)

__all__ = [
    "ANATOMIES",
    "Phantom",
    "make_phantom",
    "write_dicom_series",
    "AIR",
    "SKIN",
    "FAT",
    "MUSCLE",
    "VISC_FAT",
    "CORTEX",
    "MARROW",
    "CARTILAGE",
    "DISC",
    "CSF",
    "LUNG",
    "LUNG_VESSEL",
    "HEART",
    "AORTA",
    "IVC",
    "PORTAL_VEIN",
    "LIVER",
    "PORTAL_BRANCH",
    "HEPATIC_VEIN",
    "GALLBLADDER",
    "SPLEEN",
    "KIDNEY_CORTEX",
    "KIDNEY_MEDULLA",
    "KIDNEY_PELVIS",
    "RENAL_SINUS",
    "GUT_WALL",
    "GUT_FLUID",
    "GAS",
    "STOOL",
    "ORAL_CONTRAST",
    "PANCREAS",
    "TABLE",
    "FOAM",
    "YELLOW_MARROW",
    "MESENTERIC_VESSEL",
    "LESION_BASE",
    "MAX_LESIONS",
    "LIVER_CODES",
    "HU_RANGES",
    "FATTY_LIVER_SHIFT_HU",
    "PHASES",
    "PHASE_PROBABILITIES",
]
