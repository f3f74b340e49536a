"""Seedable procedural CT phantoms (lower chest to pelvis) with a liver label, and a DICOM writer.

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

What is drawn per seed (ranges in train.phantoms.parameters and HU_RANGES). Anatomy 1, the
classic generator (make_phantom(..., anatomy=1), reproducible to the pixel):
- scan: coverage (abdomen from 20-80 mm above the dome to the pelvis 35%, chest to pelvis 10%,
  liver only 25%, a 20-120 mm slab through the liver 30%), in-plane field of view 330-500 mm over
  512 pixels, slice spacing 0.8-5 mm with slice thickness 1-1.5 times it, noise 5-35 HU
  (log-uniform, correlated by the blur), blur 0.3-1 mm, calibration offset +-5 HU, cupping up to
  8 HU, a padded reconstruction circle (35%), table position, contrast phase (native 20%,
  arterial 15%, portal 50%, delayed 15%), axis flips (30%).
- patient: half-width 125-200 mm, depth 0.62-0.85 of it, superellipse outline with random
  harmonics, subcutaneous fat 3-60 mm, muscle wall, roll +-12 degrees, arms at the sides (35%),
  diaphragm domes, ribs (pitch, slope, size), vertebrae, iliac wings.
- organs: liver (size, lobes, tilt, random deformation, Riedel lobe 25%, fatty liver 10%: 20-60
  HU darker, portal and hepatic vein trees, lesions in 50%: 1-6 hypodense, cysts, hyperdense),
  spleen (splenomegaly 15%), kidneys with cortex and medulla, stomach (air-fluid level, empty
  30%), gallbladder (85%), pancreas, aorta, IVC, portal and splenic veins, colon with stool and
  gas, small bowel loops, mesenteric vessels, the heart as one ellipsoid (HEART), lungs with
  vessels, oral contrast (20%).

Anatomy 2, the default, draws all of that (a seed's classic draws are the same) and adds what real
scans hold, each element with its own tissue code (HU per phase: native/arterial/portal/delayed):
- scan: chest to pelvis 35% (abdomen 30%, liver 15%, slab 20%), an abdomen scan starting 20-120
  mm above the dome, so the heart's lower part is often in view.
- the heart (heart.py), resting on the diaphragm's central tendon over the left lobe and the dome,
  long axis to the left, front and down: left and right ventricles and atria as blood pools
  (native 30-55; arterial left heart 250-450, right ventricle 100-300, right atrium 60-250;
  portal 120-200 and delayed 90-150, inside the liver's own range), myocardium (35-55/90-160/
  80-120/65-90: below its blood when enhanced), epicardial fat 1.5-7 mm (-120 to -60),
  pericardium 1.5-3 mm (15-45). The liver touches the diaphragm (anatomy 1 left a gap of fat)
  and its left lobe reaches up under the heart.
- the right lobe's thin inferior tip (60%, parameters.draw_liver_tip): a sheet of liver 12-36 mm
  thick along the lateral abdominal wall, from the lobe's middle to 30-70 mm below it, between
  the wall and the colon (a real native-phase scan's largest miss).
- liver disease (parameters.py: CIRRHOSIS_P, ASCITES_P, TUMOUR_BURDEN_P, ...), per phantom, each
  flag replaceable through make_phantom(disease={...}):
  cirrhosis 15% (0.82-0.95 the size, the right lobe 0.8-0.95 more, caudate lobe 1.3-1.7 larger, a
  nodular surface: a fine random field on the implicit surface) or hepatomegaly 10% (1.1-1.25 the
  size); ascites (ASCITES, 0-20 HU) in 60% of cirrhotic livers and 5% of others: a 4-30 mm rim
  (or make_phantom's given ascites_mm) along the peritoneal wall (around the liver and in the
  flanks), a pool in the pelvis and fluid in the fat next to the liver; a tumour burden, with
  cirrhosis / without: none 30/45%, benign 10/25% (anatomy 1's kinds), HCC 50/12% (1-4, the
  first 20-70 mm in radius, the others 6-30: liver +30-90 HU in the arterial phase, washed out
  10-40 HU below it in the portal and delayed
  phases, 5-20 below unenhanced; necrotic centres (NECROSIS, 10-30 HU) in 60% of those over 20 mm;
  large ones bulge out of the contour), metastases 10/18% (6-24, hypodense, 4-25 mm in radius,
  necrotic in 30% of those over 15 mm); lipiodol after TACE in 35% of HCC livers (LIPIODOL,
  300-3000 HU, patches in the first and about half of the other tumours, with radial bright and
  dark streaks in the slices through the deposit: the scanner's draw); biliary dilatation 8%
  (BILE_DUCT, 0-25 HU, a branching tree from the hilum).
  Fatty liver stays anatomy 1's draw. Tumours, necrosis, lipiodol, ducts and vessels are liver
  (LIVER_CODES); the heart (HEART_CODES) and ascites are not.

Anatomies 1 and 2 are frozen (the bundled model's card trains on them; tests pin their pixels).
Anatomy 3 is anatomy 2 with muscle between the liver and bone, as real scans have it: both real
samples keep their liver 5.7-6.7 mm from bone over the nearest tenth of its surface near bone,
and none of it within 3 mm, where anatomy 2 puts a fifth of it within 3 mm.
- the ribs' inner surface 2-7 mm outside the cavity (parameters.draw_rib_gap; 1 mm before), and
  the wall's muscle thickened over a rib that then reaches past it.
- the diaphragm's crura: muscle around the vertebral body and in the gutter beside it out to the
  back muscles, down to 220 mm below the dome, which the liver no longer fills.
- the true pelvis (pelvis.py): the urinary bladder (URINARY_BLADDER, urine at -5-20 HU in every
  phase, in a 2-5 mm muscular wall, empty to full, about 20-600 mL) on the pelvic floor 130-170
  mm under the iliac crest just behind the pubis; the hip bone's ring around the inlet (pubis,
  ischia and acetabula, 7-12 mm), lined by 10-20 mm of muscle; the femoral heads; muscle filling
  the cavity outside the ring (parameters.draw_bladder, draw_true_pelvis). Abdomen scans end
  230-470 mm below the dome (230-330 before), so about a third show the bladder (43 of the
  training seeds 20000-20119, 5-439 mL). The bundled model took the second real scan's 324 mL of
  urine for liver; of these phantoms' bladders it paints at most 17 mL (at 13 or 45 HU, up to 625
  mL), though it paints the pelvic muscle around one (454 mL of seed 200005) as a region of its own.

The package, one job a module: tissues (codes, HU ranges, HU draws), fields (smooth random
fields), canvas (the label map and the shapes painted on it), parameters (the draws), anatomy (the
landmarks and the paint order), body, heart, abdomen, liver and pelvis (the painters), scanner
(intensities, noise, blur, grid and axes), make (make_phantom) and dicom (the series writer).

Public API:
    make_phantom(seed, *, spacing_xyz_mm=None, size_xyz=None, phase=None, z_range=None,
                 direction=None, ..., anatomy=2, disease=None) -> Phantom(ct, liver, params,
                 tissues)
    write_dicom_series(ct, folder, *, patient_id="PHANTOM", study_uid=None, series_uid=None, ...)
        -> list[Path]
"""

from __future__ import annotations

from train.phantoms.dicom import write_dicom_series
from train.phantoms.make import ANATOMIES, Phantom, make_phantom
from train.phantoms.parameters import DISEASE_FLAGS, TUMOUR_BURDENS
from train.phantoms.tissues import (
    AIR,
    AORTA,
    ASCITES,
    BILE_DUCT,
    CARTILAGE,
    CORTEX,
    CSF,
    DISC,
    EPICARDIAL_FAT,
    FAT,
    FATTY_LIVER_SHIFT_HU,
    FOAM,
    GALLBLADDER,
    GAS,
    GUT_FLUID,
    GUT_WALL,
    HEART,
    HEART_CODES,
    HEART_LA,
    HEART_LV,
    HEART_RA,
    HEART_RV,
    HEPATIC_VEIN,
    HU_RANGES,
    IVC,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    KIDNEY_PELVIS,
    LESION_BASE,
    LIPIODOL,
    LIVER,
    LIVER_CODES,
    LUNG,
    LUNG_VESSEL,
    MARROW,
    MAX_LESIONS,
    MESENTERIC_VESSEL,
    MUSCLE,
    MYOCARDIUM,
    NECROSIS,
    ORAL_CONTRAST,
    PANCREAS,
    PERICARDIUM,
    PHASE_PROBABILITIES,
    PHASES,
    PORTAL_BRANCH,
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

__all__ = [
    "ANATOMIES",
    "DISEASE_FLAGS",
    "TUMOUR_BURDENS",
    "Phantom",
    "make_phantom",
    "write_dicom_series",
    "AIR",
    "AORTA",
    "ASCITES",
    "BILE_DUCT",
    "CARTILAGE",
    "CORTEX",
    "CSF",
    "DISC",
    "EPICARDIAL_FAT",
    "FAT",
    "FATTY_LIVER_SHIFT_HU",
    "FOAM",
    "GALLBLADDER",
    "GAS",
    "GUT_FLUID",
    "GUT_WALL",
    "HEART",
    "HEART_CODES",
    "HEART_LA",
    "HEART_LV",
    "HEART_RA",
    "HEART_RV",
    "HEPATIC_VEIN",
    "HU_RANGES",
    "IVC",
    "KIDNEY_CORTEX",
    "KIDNEY_MEDULLA",
    "KIDNEY_PELVIS",
    "LESION_BASE",
    "LIPIODOL",
    "LIVER",
    "LIVER_CODES",
    "LUNG",
    "LUNG_VESSEL",
    "MARROW",
    "MAX_LESIONS",
    "MESENTERIC_VESSEL",
    "MUSCLE",
    "MYOCARDIUM",
    "NECROSIS",
    "ORAL_CONTRAST",
    "PANCREAS",
    "PERICARDIUM",
    "PHASES",
    "PHASE_PROBABILITIES",
    "PORTAL_BRANCH",
    "PORTAL_VEIN",
    "RENAL_SINUS",
    "SKIN",
    "SPLEEN",
    "STOOL",
    "TABLE",
    "URINARY_BLADDER",
    "VISC_FAT",
    "YELLOW_MARROW",
]
