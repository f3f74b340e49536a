"""The liver probability map (output=probability): calibrated, on the input grid, as gzip NIfTI.

Stored as uint8 with the NIfTI header's scl_slope = 1/255 and scl_inter = 0, so that every reader
that applies the slope (nibabel, ITK and SimpleITK, 3D Slicer, FSL) reads floats in [0, 1] in steps
of 1/255; the header's description says it too. NIfTI-1 has no float16, and uint8 is a quarter
of float32's size, with a step (0.004) finer than any calibration error worth telling apart.

Calibration: the value served is sigmoid(logit(p) / T), p the network's blended liver probability
and T the card's `calibration.temperature` (model_zoo.card.Calibration, fitted by
`python -m train.calibrate`). Dividing the liver's log-odds, its logit margin over the other
classes, rather than every logit before the softmax keeps 0.5 where it was: the mask, drawn at
0.5, does not depend on T, and neither does a multi-class network's (a softmax over 9 classes at
another temperature would move its liver/not-liver line).

The map agrees with the mask voxel for voxel: the mask is the probability above 0.5 with only
its largest component kept and its holes filled, so voxels those steps changed are moved just
across the line (128/255 inside the mask, 127/255 outside). Thresholded at 0.5, the map is the mask.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.io.encode import MAP_COMPRESSION_LEVEL

# The pipeline's Segmentation.liver_probability: (start_xyz, (D, H, W) float32 box of the input grid).
ProbabilityBox = tuple[list[int], np.ndarray]

LEVELS = 255  # stored value v means probability v / 255
INSIDE_MIN = LEVELS // 2 + 1  # 128/255 = 0.502: the lowest stored value above 0.5
# Off 0 and 1 so that logit stays finite; below half a storage step, so no stored value moves.
_EPS = 1e-6
# NIfTI-1 header (348 bytes): sizeof_hdr, scl_slope and scl_inter, descrip (80 bytes).
_SIZEOF_HDR, _SCL_SLOPE, _DESCRIP, _DESCRIP_BYTES = 0, 112, 148, 80


def calibrated(probability: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T) of probabilities in [0, 1] (any shape), as float32; T = 1 returns p."""
    p = np.asarray(probability, dtype=np.float32)
    if temperature == 1.0:
        return p
    p = np.clip(p, _EPS, 1.0 - _EPS)
    logit = np.log(p) - np.log1p(-p)
    return (1.0 / (1.0 + np.exp(-logit / np.float32(temperature)))).astype(np.float32)


def probability_levels(mask: sitk.Image, probability: ProbabilityBox | None, temperature: float) -> np.ndarray:
    """The calibrated map as stored: uint8 (D, H, W) on the mask's grid, value / 255 = probability,
    above 127 exactly where the mask is 1. `probability` is the pipeline's box (None: all zero)."""
    inside_mask = sitk.GetArrayViewFromImage(mask).astype(bool)
    levels = np.zeros(inside_mask.shape, dtype=np.uint8)
    if probability is not None:
        start, box = probability
        z, y, x = (slice(start[i], start[i] + box.shape[2 - i]) for i in (2, 1, 0))
        levels[z, y, x] = np.rint(calibrated(box, temperature) * LEVELS).astype(np.uint8)
    np.maximum(levels, INSIDE_MIN, out=levels, where=inside_mask)
    np.minimum(levels, INSIDE_MIN - 1, out=levels, where=~inside_mask)
    return levels


def probability_to_nifti_bytes(mask: sitk.Image, probability: ProbabilityBox | None, temperature: float) -> bytes:
    """The calibrated liver probability as .nii.gz bytes: uint8, scl_slope 1/255, the mask's geometry."""
    image = sitk.GetImageFromArray(probability_levels(mask, probability, temperature))
    image.CopyInformation(mask)
    # SimpleITK writes slope 1; the header is patched before compression (one gzip pass).
    with tempfile.TemporaryDirectory(prefix="liverseg-probability-") as folder:
        path = Path(folder) / "probability.nii"
        sitk.WriteImage(image, str(path), useCompression=False)
        data = bytearray(path.read_bytes())
    if struct.unpack_from("<i", data, _SIZEOF_HDR)[0] != 348:
        raise RuntimeError("SimpleITK did not write a NIfTI-1 header")  # the offsets below are NIfTI-1's
    struct.pack_into("<ff", data, _SCL_SLOPE, 1.0 / LEVELS, 0.0)
    description = f"liver probability = stored/{LEVELS} (scl_slope); temperature {temperature:.4g}"
    data[_DESCRIP : _DESCRIP + _DESCRIP_BYTES] = description.encode("ascii")[:_DESCRIP_BYTES].ljust(_DESCRIP_BYTES, b"\0")
    return gzip.compress(bytes(data), compresslevel=MAP_COMPRESSION_LEVEL)
