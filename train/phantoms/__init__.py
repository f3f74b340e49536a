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

What is drawn per seed (ranges in the _draw_* functions and HU_RANGES):
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

Public API:
    make_phantom(seed, *, spacing_xyz_mm=None, size_xyz=None, phase=None, z_range=None,
                 direction=None, ...) -> Phantom(ct, liver, params, tissues)
    write_dicom_series(ct, folder, *, patient_id="PHANTOM", study_uid=None, series_uid=None, ...)
        -> list[Path]
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

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
_R = tuple[float, float]
HU_RANGES: dict[str, _R | tuple[_R, _R, _R, _R]] = {
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
FATTY_LIVER_SHIFT_HU: _R = (-60.0, -20.0)

_TISSUE_OF_CODE: dict[int, str] = {
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
_TEXTURE_HU: dict[str, float] = {"liver": 8.0, "spleen": 10.0}

_SCAN_KINDS = ("abdomen", "chest_abdomen", "liver", "slab")
_SCAN_KIND_PROBABILITIES = (0.35, 0.1, 0.25, 0.3)
_SLICE_SPACINGS_MM = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
_FLIPS = tuple((sx, sy, sz) for sx in (1, -1) for sy in (1, -1) for sz in (1, -1))


@dataclass(frozen=True)
class Phantom:
    """A synthetic CT (HU, int16) and its liver label (uint8 0/1) on the same grid.

    `tissues` holds the generator's own label map (codes such as LUNG, SPLEEN, LIVER_CODES) for
    tests and hard-negative analysis. `params` holds every value that was drawn (or given), JSON-friendly; the body frame's anchor
    is `params["geometry"]["dome_xyz_mm"]` (LPS point at the top of the liver dome).
    """

    ct: sitk.Image
    liver: sitk.Image
    params: dict[str, Any] = field(default_factory=dict)
    tissues: sitk.Image | None = None  # uint8 tissue codes (AIR, LUNG, LIVER, ...) on the same grid


# ----------------------------------------------------------------------------------------------
# Smooth random fields, separable cubic B-splines (resolution independent: the control values are
# drawn per phantom in mm, then evaluated on whatever grid with three matrix products).


def _bspline_taps(
    coords: np.ndarray, lo: float, step: float, n_ctrl: int
) -> tuple[np.ndarray, np.ndarray]:
    """First control index (n,) and the 4 weights (n, 4) of a uniform cubic B-spline at coords.

    Knots sit at lo + (k - 1) * step; coordinates are clamped to the spline's valid span.
    """
    t = np.clip((np.asarray(coords, np.float64) - lo) / step + 1.0, 1.0, n_ctrl - 2.0 - 1e-6)
    i = np.floor(t).astype(np.int64)
    f = (t - i).astype(np.float32)[:, None]
    w = np.concatenate(
        [
            (1 - f) ** 3 / 6,
            (3 * f**3 - 6 * f**2 + 4) / 6,
            (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
            f**3 / 6,
        ],
        axis=1,
    )
    return i - 1, w


def _expand(t: np.ndarray, axis: int, first: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Interpolate along one axis of t: sum over taps k of w[:, k] * t[first + k] (gathered).

    Gathers instead of a matrix product: OpenBLAS threads spin badly on a busy 2-core machine.
    """
    if axis == 0:  # the last, full-size step: slice by slice, without gathered copies
        out = np.empty((len(first),) + t.shape[1:], np.float32)
        for j, (i, wj) in enumerate(zip(first.tolist(), w.tolist(), strict=True)):
            np.multiply(t[i], wj[0], out=out[j])
            for k in range(1, len(wj)):
                out[j] += wj[k] * t[i + k]
        return out
    shape = [1] * t.ndim
    shape[axis] = -1
    out = None
    for k in range(w.shape[1]):
        term = np.take(t, first + k, axis=axis) * w[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


class _Field:
    """A smooth random scalar field of about unit standard deviation over a box in the body frame.

    It is evaluated at the un-rolled translated coordinates (x - cx, y - cy, z - z_dome), which
    keeps the evaluation separable; a random field needs no alignment with the roll.
    """

    def __init__(
        self, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], step: float
    ):
        self.lo = np.asarray(lo, float) - step
        self.step = float(step)
        self.n = [int(math.ceil((h - lo_) / step)) + 4 for lo_, h in zip(self.lo, hi, strict=True)]
        # 0.33 is the standard deviation of a cubic B-spline of unit-variance coefficients in 3D.
        self.coef = (rng.standard_normal(self.n[::-1]) / 0.33).astype(np.float32)  # (cz, cy, cx)

    def __call__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Values (len(zs), len(ys), len(xs)) float32 at the given 1D body-frame coordinates."""
        taps = [
            _bspline_taps(c, self.lo[a], self.step, self.n[a]) for a, c in enumerate((xs, ys, zs))
        ]
        # Keep only the control points these coordinates touch, then expand x, y, z in turn.
        lo = [int(i.min()) for i, _ in taps]
        hi = [int(i.max()) + 4 for i, _ in taps]
        t = self.coef[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        for axis, (first, w) in zip((2, 1, 0), taps, strict=True):
            t = _expand(t, axis, first - lo[2 - axis], w)
        return np.ascontiguousarray(t, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# The canvas: a label map on an identity-direction grid, with body-frame coordinates.


@dataclass
class _Box:
    sl: tuple[slice, slice, slice]  # (z, y, x) slices into the canvas
    u: np.ndarray  # (ny, nx) body-frame u of the box's voxels, mm
    v: np.ndarray  # (ny, nx)
    w: np.ndarray  # (nz, 1, 1)
    xr: np.ndarray  # (nx,) translated (un-rolled) x, for fields
    yr: np.ndarray  # (ny,)


class _Canvas:
    """Tissue codes (D, H, W) uint8 plus the body frame: u, v (2D, rolled) and w (1D)."""

    def __init__(self, origin, spacing, size, centre_xy, dome_z, roll_rad):
        self.origin = np.asarray(origin, float)
        self.spacing = np.asarray(spacing, float)
        self.size = tuple(int(s) for s in size)
        nx, ny, nz = self.size
        self.xr = (self.origin[0] + self.spacing[0] * np.arange(nx) - centre_xy[0]).astype(
            np.float32
        )
        self.yr = (self.origin[1] + self.spacing[1] * np.arange(ny) - centre_xy[1]).astype(
            np.float32
        )
        self.w = (self.origin[2] + self.spacing[2] * np.arange(nz) - dome_z).astype(np.float32)
        self.cos, self.sin = math.cos(roll_rad), math.sin(roll_rad)
        self.u = self.cos * self.xr[None, :] + self.sin * self.yr[:, None]
        self.v = -self.sin * self.xr[None, :] + self.cos * self.yr[:, None]
        self.tissue = np.zeros((nz, ny, nx), np.uint8)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> _Box | None:
        """The canvas part covering the body-frame box [lo, hi] (u, v, w in mm), or None."""
        corners = [(a, b) for a in (lo[0], hi[0]) for b in (lo[1], hi[1])]
        xs = [self.cos * a - self.sin * b for a, b in corners]
        ys = [self.sin * a + self.cos * b for a, b in corners]
        ranges = []
        for coords, a, b in (
            (self.xr, min(xs), max(xs)),
            (self.yr, min(ys), max(ys)),
            (self.w, lo[2], hi[2]),
        ):
            i0 = int(np.searchsorted(coords, a, "left"))
            i1 = int(np.searchsorted(coords, b, "right"))
            if i1 <= i0:
                return None
            ranges.append(slice(i0, i1))
        sx, sy, sz = ranges
        return _Box(
            sl=(sz, sy, sx),
            u=self.u[sy, sx],
            v=self.v[sy, sx],
            w=self.w[sz][:, None, None],
            xr=self.xr[sx],
            yr=self.yr[sy],
        )

    def smooth_eval(
        self, box: _Box, fn: Callable[[_Box], np.ndarray], step_mm: float
    ) -> np.ndarray:
        """fn (a smooth function of a box's coordinates, (nz, ny, nx)) on `box`, evaluated on a
        grid of about `step_mm` and interpolated linearly where the canvas is much finer: a
        smooth implicit shape costs a few passes at full resolution instead of dozens."""
        axes = (box.xr, box.yr, box.w[:, 0, 0])
        fine_steps = [float(self.spacing[a]) for a in range(3)]
        if all(fs * 1.5 >= step_mm or len(x) < 4 for fs, x in zip(fine_steps, axes, strict=True)):
            return fn(box)
        coarse, taps = [], []
        for x in axes:
            n = max(2, int(math.ceil((float(x[-1]) - float(x[0])) / step_mm)) + 1)
            xc = np.linspace(float(x[0]), float(x[-1]), n, dtype=np.float32)
            pos = np.clip(
                (x.astype(np.float64) - xc[0]) / max(float(xc[1] - xc[0]), 1e-6), 0.0, n - 1.0
            )
            i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
            f = (pos - i0).astype(np.float32)[:, None]
            coarse.append(xc)
            taps.append((i0, np.concatenate([1 - f, f], axis=1)))
        xc, yc, wc = coarse
        cbox = _Box(
            sl=box.sl,
            u=self.cos * xc[None, :] + self.sin * yc[:, None],
            v=-self.sin * xc[None, :] + self.cos * yc[:, None],
            w=wc[:, None, None],
            xr=xc,
            yr=yc,
        )
        t = fn(cbox)
        for axis, (i0, w) in zip((2, 1, 0), taps, strict=True):
            t = _expand(t, axis, i0, w)
        return t

    def paint(
        self, box: _Box, mask: np.ndarray, code: int, into: Sequence[int] | None = None
    ) -> None:
        """Set `code` where `mask` (box-shaped, broadcastable) holds and, if given, the tissue is in `into`."""
        sub = self.tissue[box.sl]
        mask = np.broadcast_to(mask, sub.shape)
        if into is not None:
            allowed = np.zeros(256, bool)
            allowed[list(into)] = True
            mask = mask & allowed[sub]
        np.copyto(sub, np.uint8(code), where=mask)


def _rotation(yaw_deg: float, tilt_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix in (u, v, w): yaw about w, then tilt about v, then pitch about u."""
    a, b, c = (math.radians(x) for x in (yaw_deg, tilt_deg, pitch_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


def _local(box: _Box, centre: Sequence[float], rot: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Box coordinates in an organ's local frame: R^T (p - centre), each (nz, ny, nx) or 2D/1D parts."""
    du = box.u - centre[0]
    dv = box.v - centre[1]
    dw = box.w - centre[2]
    if rot is None:
        return du[None], dv[None], dw
    return tuple(rot[0, i] * du[None] + rot[1, i] * dv[None] + rot[2, i] * dw for i in range(3))


def _ellipsoid_q(box: _Box, centre, radii, rot=None) -> np.ndarray:
    """Normalised squared radius ((q/r)^2 summed) of an ellipsoid, < 1 inside; (nz, ny, nx)."""
    q = _local(box, centre, rot)
    return (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2


def _ellipsoid_box(centre, radii, pad: float = 0.0) -> tuple[list[float], list[float]]:
    """A body-frame box surely holding a (rotated) ellipsoid: centre +- max radius."""
    r = max(radii) + pad
    return [c - r for c in centre], [c + r for c in centre]


def _tube(
    canvas: _Canvas,
    p0,
    p1,
    r0: float,
    r1: float,
    code: int,
    into,
    wall: tuple[float, int] | None = None,
) -> None:
    """Paint a tapered capsule from p0 (radius r0) to p1 (r1), optionally with a wall (mm, code)."""
    pad = max(r0, r1) + (wall[0] if wall else 0.0) + 1.0
    lo = [min(a, b) - pad for a, b in zip(p0, p1, strict=True)]
    hi = [max(a, b) + pad for a, b in zip(p0, p1, strict=True)]
    box = canvas.box(lo, hi)
    if box is None:
        return
    d = np.subtract(p1, p0)
    dd = float(d @ d) or 1e-6
    du, dv, dw = box.u - p0[0], box.v - p0[1], box.w - p0[2]
    t = np.clip((d[0] * du[None] + d[1] * dv[None] + d[2] * dw) / dd, 0.0, 1.0)
    dist2 = (du[None] - t * d[0]) ** 2 + (dv[None] - t * d[1]) ** 2 + (dw - t * d[2]) ** 2
    radius = r0 + t * (r1 - r0)
    if wall:
        canvas.paint(box, dist2 < (radius + wall[0]) ** 2, wall[1], into)
        into = tuple(into or ()) + (wall[1],)
    canvas.paint(box, dist2 < radius**2, code, into)


# ----------------------------------------------------------------------------------------------
# Drawing the parameters. Each topic has its own generator (spawned from the seed), so overriding
# one value never changes another draw, and the values drawn are the same whatever the grid.


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _hu_range(name: str, phase: str) -> _R:
    r = HU_RANGES[name]
    return r[PHASES.index(phase)] if isinstance(r[0], tuple) else r  # type: ignore[return-value]


def _draw_body(rng: np.random.Generator) -> dict[str, Any]:
    adiposity = _u(rng, 0.0, 1.0)
    a = _u(rng, 125, 175) + 25 * adiposity
    b_ant = a * _u(rng, 0.62, 0.85)  # abdomens are 1.2 to 1.6 times wider than deep
    return {
        "half_width_mm": a,
        "half_depth_ant_mm": b_ant,
        "half_depth_post_mm": b_ant * _u(rng, 0.8, 1.0),
        "exponent": _u(rng, 2.0, 2.8),
        "exponent_post": _u(rng, 2.4, 3.5),
        "shape_harmonics": [[_u(rng, -0.04, 0.04), _u(rng, 0, 2 * math.pi)] for _ in range(4)],
        "adiposity": adiposity,
        "fat_ant_mm": _u(rng, 4, 15) + 45 * adiposity * _u(rng, 0.5, 1.0),
        "fat_lat_mm": _u(rng, 4, 12) + 40 * adiposity * _u(rng, 0.5, 1.0),
        "fat_post_mm": _u(rng, 3, 10) + 25 * adiposity * _u(rng, 0.5, 1.0),
        "muscle_mm": _u(rng, 6, 14),
        "muscle_post_mm": _u(rng, 14, 26),
        "skin_mm": _u(rng, 1.5, 3.0),
        "z_profile": [
            [_u(rng, -0.05, 0.05), _u(rng, 150, 400), _u(rng, 0, 2 * math.pi)] for _ in range(2)
        ],
        "roll_deg": float(np.clip(rng.normal(0, 4), -12, 12)),
        "arms": bool(rng.random() < 0.35),
        "arm_radius_mm": _u(rng, 35, 55),
        "arm_gap_mm": _u(rng, 3, 40),
        "arm_v_mm": _u(rng, -30, 30),
        "table": bool(rng.random() < 0.7),
        "table_gap_mm": _u(rng, 0, 25),
        "table_curvature_mm": _u(rng, 500, 1500),
        "prone": bool(rng.random() < 0.03),
        "dome_left_drop_mm": _u(rng, 5, 25),
        "dome_drop_lat_mm": _u(rng, 25, 55),
        "dome_drop_post_mm": _u(rng, 50, 110),
        "dome_drop_ant_mm": _u(rng, 20, 50),
        "dome_power": _u(rng, 2.5, 4.0),
        "tendon_drop_mm": _u(rng, 10, 30),
        "diaphragm_mm": _u(rng, 3, 6),
        "spine_depth_mm": _u(rng, 45, 70),
        "vertebra_radii_mm": [_u(rng, 18, 25), _u(rng, 13, 18)],
        "vertebra_pitch_mm": _u(rng, 27, 35),
        "vertebra_phase": _u(rng, 0, 1),
        "rib_pitch_mm": _u(rng, 22, 30),
        "rib_slope_mm_per_rad": _u(rng, 35, 60),
        "rib_size_mm": [_u(rng, 7, 11), _u(rng, 8, 13)],
        "xiphoid_mm": _u(rng, -60, -25),
        "iliac_top_mm": _u(rng, -300, -240),
    }


def _draw_organs(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "liver_scale": _u(rng, 0.85, 1.05) * (_u(rng, 1.1, 1.25) if rng.random() < 0.1 else 1.0),
        "liver_shift_mm": [_u(rng, -10, 10), _u(rng, -10, 10), _u(rng, -10, 10)],
        "liver_right_radii": [_u(rng, 0.58, 0.75), _u(rng, 0.8, 0.95), _u(rng, 80, 105)],
        "liver_right_tilt_deg": _u(rng, 5, 30),
        "liver_left_radii": [_u(rng, 0.45, 0.7), _u(rng, 0.3, 0.5), _u(rng, 35, 55)],
        "liver_left_centre": [_u(rng, 0.0, 0.2), _u(rng, -0.6, -0.35), _u(rng, -60, -35)],
        "liver_riedel": bool(rng.random() < 0.25),
        "liver_deform": _u(rng, 0.06, 0.2),
        "liver_deform_step_mm": _u(rng, 35, 70),
        "fatty_liver": bool(rng.random() < 0.1),
        "fatty_shift_u": _u(rng, 0, 1),
        "gallbladder": bool(rng.random() < 0.85),
        "gallbladder_radii_mm": [_u(rng, 12, 22), _u(rng, 12, 22), _u(rng, 30, 50)],
        "gallbladder_centre": [_u(rng, -0.35, -0.1), _u(rng, -0.6, -0.3), _u(rng, -130, -95)],
        "spleen_scale": _u(rng, 0.8, 1.2) * (_u(rng, 1.2, 1.6) if rng.random() < 0.15 else 1.0),
        "spleen_w_mm": _u(rng, -85, -50),
        "kidney_w_mm": _u(rng, -160, -120),
        "kidney_left_higher_mm": _u(rng, 0, 25),
        "kidney_radii_mm": [_u(rng, 20, 28), _u(rng, 18, 26), _u(rng, 45, 60)],
        "kidney_offset_mm": _u(rng, 40, 60),
        "stomach_empty": bool(rng.random() < 0.3),
        "stomach_radii_mm": [_u(rng, 30, 50), _u(rng, 22, 40), _u(rng, 40, 65)],
        "stomach_w_mm": _u(rng, -85, -50),
        "stomach_air": _u(rng, 0.0, 0.4),
        "oral_contrast": bool(rng.random() < 0.2),
        "colon_radius_mm": _u(rng, 15, 28),
        "colon_gas": _u(rng, -0.5, 1.0),
        "bowel_density": _u(rng, 0.3, 0.9),
        "aorta_radius_mm": _u(rng, 9, 15),
        "ivc_radii_mm": [_u(rng, 10, 16), _u(rng, 7, 12)],
        "heart_radii_mm": [_u(rng, 55, 75), _u(rng, 45, 60), _u(rng, 50, 65)],
        "pancreas_radius_mm": _u(rng, 8, 14),
    }


def _draw_lesions(rng: np.random.Generator) -> tuple[int, list[dict[str, Any]]]:
    """(how many lesions this phantom has, MAX_LESIONS drawn lesions): n_lesions picks a prefix."""
    n = 0 if rng.random() < 0.5 else int(rng.integers(1, 7))
    out = []
    for _ in range(MAX_LESIONS):  # always draw the maximum so an explicit count shifts nothing
        kind = str(rng.choice(["hypo", "hypo", "cyst", "hyper"]))
        out.append(
            {
                "kind": kind,
                "position": [_u(rng, -1, 1), _u(rng, -1, 1), _u(rng, -1, 1)],
                "radius_mm": float(np.exp(rng.uniform(math.log(4), math.log(35)))),
                "elongation": [_u(rng, 0.7, 1.3), _u(rng, 0.7, 1.3)],
                "delta_hu": _u(rng, -70, -15) if kind == "hypo" else _u(rng, 15, 60),
                "cyst_hu": _u(rng, 0, 20),
            }
        )
    return n, out


def _draw_scan(rng: np.random.Generator) -> dict[str, Any]:
    kind = str(rng.choice(_SCAN_KINDS, p=_SCAN_KIND_PROBABILITIES))
    top_abdomen, bottom_abdomen = _u(rng, 20, 80), _u(rng, -330, -230)
    top_chest = _u(rng, 120, 220)
    top_liver, bottom_liver = _u(rng, 10, 50), _u(rng, -230, -170)
    slab_len, slab_centre = _u(rng, 20, 120), _u(rng, -160, -10)
    z_range = {
        "abdomen": (bottom_abdomen, top_abdomen),
        "chest_abdomen": (bottom_abdomen, top_chest),
        "liver": (bottom_liver, top_liver),
        "slab": (slab_centre - slab_len / 2, slab_centre + slab_len / 2),
    }[kind]
    fov = _u(rng, 330, 500)
    slice_spacing = float(rng.choice(_SLICE_SPACINGS_MM))
    flip = _FLIPS[int(rng.integers(1, len(_FLIPS)))] if rng.random() < 0.3 else (1, 1, 1)
    return {
        "kind": kind,
        "z_range_mm": [float(z_range[0]), float(z_range[1])],
        "fov_mm": fov,
        "inplane_size": 512,
        "slice_spacing_mm": slice_spacing,
        "slice_thickness_factor": float(rng.choice([1.0, 1.0, 1.25, 1.5])),
        "z_phase": _u(rng, 0, 1),
        "fov_centre_xy_mm": [_u(rng, -20, 20), _u(rng, -250, 50)],
        "body_offset_xy_mm": [_u(rng, -25, 25), _u(rng, -40, 40)],
        "dome_z_mm": _u(rng, -800, 200),
        "direction_flip": [int(f) for f in flip],
        "noise_sd_hu": float(np.exp(rng.uniform(math.log(5), math.log(35)))),
        "blur_sigma_mm": _u(rng, 0.3, 1.0),
        "hu_offset": _u(rng, -5, 5),
        "cupping_hu": _u(rng, 0, 8),
        "fov_circle": bool(rng.random() < 0.35),
        "fov_fill_hu": float(rng.choice([-1024.0, -1024.0, -2048.0, -3024.0])),
        "phase": str(rng.choice(PHASES, p=PHASE_PROBABILITIES)),
    }


# ----------------------------------------------------------------------------------------------
# Anatomy, painted in order of priority (what is painted first wins where organs compete).


class _Anatomy:
    """Holds the drawn parameters and the derived body-frame landmarks, and paints them."""

    def __init__(
        self, body: dict, organs: dict, lesions: list, rngs: dict[str, np.random.Generator]
    ):
        self.b, self.o, self.lesions, self.rngs = body, organs, lesions, rngs
        self.a = body["half_width_mm"]
        self.ba, self.bp = body["half_depth_ant_mm"], body["half_depth_post_mm"]
        mus, mus_p = body["muscle_mm"], body["muscle_post_mm"]
        # Cavity (inner surface of the muscle wall) half-axes.
        self.A = self.a - body["fat_lat_mm"] - mus
        self.BA = self.ba - body["fat_ant_mm"] - mus
        self.BP = self.bp - body["fat_post_mm"] - mus_p
        self.v_spine = self.bp - body["fat_post_mm"] - body["spine_depth_mm"]
        self.vr = body["vertebra_radii_mm"]
        # Smooth random fields, drawn once (grid independent).
        r = rngs["fields"]
        self.f_liver = _Field(r, (-250, -250, -260), (250, 250, 60), organs["liver_deform_step_mm"])
        self.f_organ = _Field(r, (-300, -300, -450), (300, 300, 300), 40.0)
        self.f_bowel1 = _Field(r, (-300, -300, -450), (300, 300, 0), 22.0)
        self.f_bowel2 = _Field(r, (-300, -300, -450), (300, 300, 0), 18.0)
        self.f_texture = _Field(r, (-300, -300, -450), (300, 300, 300), 25.0)
        self.f_fine = _Field(r, (-300, -300, -450), (300, 300, 300), 9.0)
        self.texture_boxes: list[tuple[_Box, tuple[int, ...], str]] = []

    # -- body cross-section ---------------------------------------------------------------------
    def _rho(
        self, u: np.ndarray, v: np.ndarray, harm: np.ndarray, insets: Sequence[float]
    ) -> np.ndarray:
        """Normalised superellipse radius (< 1 inside), 2D, of the body outline shrunk by insets
        (lateral, anterior, posterior, mm) and modulated by the angular harmonics `harm`."""
        b = self.b
        inset_lat, inset_ant, inset_post = insets
        au = np.abs(u) / np.float32(self.a - inset_lat)
        out = np.empty_like(u)
        for sel, depth, p in (
            (v <= 0, self.ba - inset_ant, b["exponent"]),
            (v > 0, self.bp - inset_post, b["exponent_post"]),
        ):
            p = np.float32(p)
            out[sel] = (au[sel] ** p + (np.abs(v[sel]) / np.float32(depth)) ** p) ** (1 / p)
        return out / harm

    def prepare(self, c: _Canvas) -> None:
        """Body-outline and diaphragm maps over the whole canvas plane, computed once and sliced."""
        b = self.b
        skin = b["skin_mm"]
        insets = {
            "body": (0.0, 0.0, 0.0),
            "skin": (skin, skin, skin),
            "fat": (b["fat_lat_mm"], b["fat_ant_mm"], b["fat_post_mm"]),
            "cavity": (
                b["fat_lat_mm"] + b["muscle_mm"],
                b["fat_ant_mm"] + b["muscle_mm"],
                b["fat_post_mm"] + b["muscle_post_mm"],
            ),
        }
        theta = np.arctan2(c.v, c.u)
        harm = np.ones_like(c.u)
        for k, (amp, ph) in enumerate(b["shape_harmonics"]):
            harm += np.float32(amp) * np.cos((k + 2) * theta + np.float32(ph))
        self.maps = {name: self._rho(c.u, c.v, harm, ins) for name, ins in insets.items()}
        self.maps["diaphragm"] = self.diaphragm(c.u, c.v)
        inside = self.maps["cavity"] < 1.2
        self.zd_min = float(self.maps["diaphragm"][inside].min()) - 5.0 if inside.any() else 0.0

    def at(self, box: _Box, name: str) -> np.ndarray:
        """A prepared 2D map (body, skin, fat, cavity outlines as normalised radius; diaphragm w) on a box."""
        return self.maps[name][box.sl[1], box.sl[2]]

    def z_scale(self, w: np.ndarray) -> np.ndarray:
        """Per-slice scale of the body outline (thorax to pelvis variation), (nz, 1, 1)."""
        s = np.ones_like(w)
        for amp, period, ph in self.b["z_profile"]:
            s = s + amp * np.cos(2 * math.pi * w / period + ph)
        return s.astype(np.float32)

    def diaphragm(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Height w (mm) of the diaphragm over (u, v): right dome (top at w = 0), left dome, tendon.

        Each dome is flat on top and drops steeply towards the chest wall (height = -drop * d^p,
        d = 1 at the wall), which leaves the lungs a thin posterior and lateral rim at the liver's
        upper levels, as in a real CT; the central tendon under the heart is a lower plateau.
        """
        b = self.b
        cu = 0.45 * self.A
        post = v > 0
        rv = np.where(post, self.BP, self.BA)
        drop_v = np.where(post, b["dome_drop_post_mm"], b["dome_drop_ant_mm"])
        domes = []
        for side, top in ((-1, 0.0), (1, -b["dome_left_drop_mm"])):
            du2 = ((u - side * cu) / (0.55 * self.A)) ** 2
            dv2 = (v / rv) ** 2
            d2 = du2 + dv2
            drop = (du2 * b["dome_drop_lat_mm"] + dv2 * drop_v) / np.maximum(d2, 1e-6)
            domes.append(top - drop * d2 ** (b["dome_power"] / 2))
        cd2 = ((u - 0.05 * self.A) / (0.3 * self.A)) ** 2 + (
            (v + 0.15 * self.BA) / (0.6 * self.BA)
        ) ** 2
        tendon = -b["tendon_drop_mm"] - 60.0 * cd2**2
        return np.maximum(np.maximum(domes[0], domes[1]), tendon)

    def paint_body(self, c: _Canvas) -> None:
        b = self.b
        box = c.box((-1e4, -1e4, -1e4), (1e4, 1e4, 1e4))
        s = self.z_scale(box.w)
        # Nested outlines: the number of outlines a voxel is inside of names its layer.
        depth = np.zeros(c.tissue.shape, np.uint8)
        for name in ("body", "skin", "fat", "cavity"):
            depth += self.at(box, name)[None] < s
        c.tissue[...] = np.array([AIR, SKIN, FAT, MUSCLE, VISC_FAT], np.uint8)[depth]
        if b["arms"]:
            for side in (-1, 1):
                cu = side * (self.a * float(s.max()) + b["arm_gap_mm"] + b["arm_radius_mm"])
                cv = b["arm_v_mm"]
                r = b["arm_radius_mm"]
                box2 = c.box((cu - r, cv - r, -1e4), (cu + r, cv + r, 1e4))
                if box2 is None:
                    continue
                d2 = ((box2.u - cu) ** 2 + ((box2.v - cv) / 0.85) ** 2)[None]
                c.paint(box2, d2 < r**2, SKIN)
                c.paint(box2, d2 < (r - 2) ** 2, FAT)
                c.paint(box2, d2 < (r - 8) ** 2, MUSCLE)
                bu, bv = cu + side * 0.1 * r, cv + 0.2 * r
                e2 = ((box2.u - bu) ** 2 + (box2.v - bv) ** 2)[None]
                c.paint(box2, e2 < (0.28 * r) ** 2, CORTEX)
                c.paint(box2, e2 < (0.17 * r) ** 2, YELLOW_MARROW)
        if b["table"]:
            side = -1 if b["prone"] else 1
            v0 = side * (self.bp * float(s.max()) + b["table_gap_mm"])
            box3 = c.box(
                (-260, min(v0, v0 + side * 80) - 5, -1e4), (260, max(v0, v0 + side * 80) + 5, 1e4)
            )
            if box3 is not None:
                curve = side * (box3.u**2) / (2 * b["table_curvature_mm"])
                depth = side * (box3.v - v0 - curve)  # mm below the table top
                inside = (np.abs(box3.u) < 240)[None]
                c.paint(box3, inside & (depth > 0) & (depth < 50), FOAM, (AIR,))
                c.paint(
                    box3,
                    inside & (((depth > 0) & (depth < 3)) | ((depth > 47) & (depth < 50))),
                    TABLE,
                )

    def paint_thorax(self, c: _Canvas) -> None:
        """Diaphragm sheet, lungs above it, mediastinal fat and heart."""
        box = c.box((-self.a, -self.ba, self.zd_min), (self.a, self.bp, 1e4))
        if box is None:
            return
        zd = self.at(box, "diaphragm")[None]
        rel = box.w - zd  # mm above the diaphragm
        above = rel > 0
        sub = c.tissue[box.sl]
        free = (self.at(box, "cavity")[None] < self.z_scale(box.w)) & above & (sub == VISC_FAT)
        sub[free] = np.where(rel[free] > self.b["diaphragm_mm"], LUNG, MUSCLE).astype(np.uint8)
        # Mediastinum: a central band from the spine to the sternum, widening anteriorly.
        half = 22 + 20 * np.clip(-box.v / max(self.BA, 1.0), 0, 1)
        med = (np.abs(box.u - 10) < half)[None] & above
        c.paint(box, med, VISC_FAT, (LUNG,))
        o = self.o
        centre = (0.15 * self.A, -0.25 * self.BA, o["heart_radii_mm"][2] * 0.9)
        hb = c.box(*_ellipsoid_box(centre, o["heart_radii_mm"]))
        if hb is not None:
            zd2 = self.at(hb, "diaphragm")[None]
            q = _ellipsoid_q(hb, centre, o["heart_radii_mm"], _rotation(-30.0, 0.0, 10.0))
            up = hb.w > zd2 + self.b["diaphragm_mm"]
            c.paint(hb, (q < 1.25) & up, VISC_FAT, (LUNG,))
            c.paint(hb, (q < 1.0) & up, HEART, (LUNG, VISC_FAT))
        # Pulmonary vessels: thin ridges of a fine random field.
        f = c.smooth_eval(box, lambda b: self.f_fine(b.xr, b.yr, b.w[:, 0, 0]), 2.5)
        c.paint(box, np.abs(f) < 0.06, LUNG_VESSEL, (LUNG,))

    def paint_spine(self, c: _Canvas) -> None:
        b = self.b
        vc = self.v_spine
        ru, rv = self.vr
        canal_v = vc + rv + 9
        box = c.box((-90, vc - rv - 10, -1e4), (90, self.bp, 1e4))
        if box is None:
            return
        grow = np.clip(1.0 - 0.0012 * box.w, 0.8, 1.4)  # vertebrae get larger downwards
        phase = (box.w / b["vertebra_pitch_mm"] + b["vertebra_phase"]) % 1.0
        disc = phase < 0.22
        arch = (phase > 0.3) & (phase < 0.85)
        u, v = box.u[None], box.v[None]
        # Paraspinal muscles behind the spine (erector spinae), psoas beside it low down.
        for side in (-1, 1):
            q = ((u - side * 30) / 26) ** 2 + ((v - canal_v - 16) / 22) ** 2
            c.paint(box, q < 1, MUSCLE, (VISC_FAT, FAT, LUNG))
            pr = np.clip((-box.w - 110) / 6, 0, 25)
            q = (u - side * (ru * grow + pr * 0.9)) ** 2 + (v - vc) ** 2
            c.paint(box, (q < pr**2) & (pr > 2), MUSCLE, (VISC_FAT,))
        qb = (u / (ru * grow)) ** 2 + ((v - vc) / (rv * grow)) ** 2
        c.paint(box, (qb < 1) & disc, DISC)
        c.paint(box, (qb < 1) & ~disc, CORTEX)
        shell = 1.0 - max(2.0, 0.6 * float(c.spacing[:2].min())) / (rv * 1.0)
        c.paint(box, (qb < shell**2) & ~disc, MARROW)
        d_canal = np.sqrt(u**2 + (v - canal_v) ** 2)
        ring = (d_canal < 14) & arch
        spinous = (np.abs(u) < 4) & (v > canal_v) & (v < canal_v + 38) & arch
        transverse = (np.abs(u) < 32) & (np.abs(v - canal_v + 2) < 4) & arch & (phase < 0.6)
        c.paint(box, ring | spinous | transverse, CORTEX)
        c.paint(box, (d_canal < 8.5) & (np.abs(u) < 12) & (v - canal_v < 9), CSF)

    def paint_ribs(self, c: _Canvas) -> None:
        b = self.b
        box = c.box((-400, -400, -190), (400, 400, 1e4))
        if box is None:
            return
        # Only in-plane positions near the cavity wall can hold ribs: keep those pixels.
        rho = self.at(box, "cavity")
        r = np.hypot(box.u, box.v)
        s = self.z_scale(box.w)[:, 0, 0]
        ring = (rho > 0.8 * float(s.min())) & (rho < 1.3 * float(s.max()))
        iy, ix = np.nonzero(ring)
        rho_p, r_p = rho[iy, ix], r[iy, ix]
        alpha = np.arccos(np.clip(box.v[iy, ix] / np.maximum(r_p, 1e-3), -1, 1))  # 0 = posterior
        t, h = b["rib_size_mm"]
        dr = r_p[None] * (1.0 - s[:, None] / rho_p[None]) - t / 2 - 1.0  # mm outside the cavity
        w = box.w[:, 0, :]  # (nz, 1)
        phi = (w + b["rib_slope_mm_per_rad"] * alpha[None]) / b["rib_pitch_mm"]
        k = np.round(phi)
        dw = (phi - k) * b["rib_pitch_mm"]
        rib_top = 10.0  # rib centre lines at w = pitch * k - slope * alpha; ribs exist up to k = 10
        low = -150.0 + (b["xiphoid_mm"] + 150.0) * (alpha / math.pi) ** 2  # costal margin
        w_centre = k * b["rib_pitch_mm"] - b["rib_slope_mm_per_rad"] * alpha[None]
        exists = (k <= rib_top) & (w_centre > low[None]) & (alpha[None] > 0.35)
        q = (dw / (h / 2)) ** 2 + (dr / (t / 2)) ** 2
        cart = alpha[None] > 2.3
        cortex_t = max(1.5, 0.6 * float(c.spacing[:2].min()))
        inner = (np.abs(dw) < h / 2 - cortex_t) & (np.abs(dr) < t / 2 - cortex_t)
        sub = c.tissue[box.sl]
        codes = np.where(cart, CARTILAGE, np.where(inner, MARROW, CORTEX)).astype(np.uint8)
        hit = exists & (q < 1)
        # Sternum: anterior midline plate above the xiphoid.
        stern = (
            (np.abs(box.u[iy, ix]) < 16)[None]
            & (alpha[None] > 2.9)
            & (w > b["xiphoid_mm"])
            & (np.abs(dr) < 6)
        )
        codes = np.where(stern, np.where(np.abs(dr) < 4, MARROW, CORTEX), codes).astype(np.uint8)
        hit = hit | stern
        flat = sub[:, iy, ix]
        allowed = np.isin(flat, (MUSCLE, FAT, VISC_FAT, LUNG))
        flat = np.where(hit & allowed, codes, flat)
        sub[:, iy, ix] = flat

    def paint_pelvis(self, c: _Canvas) -> None:
        top = self.b["iliac_top_mm"]
        box = c.box((-400, -400, -1e4), (400, 400, top))
        if box is None:
            return
        rho = self.at(box, "cavity")[None] / self.z_scale(box.w)
        ang = np.abs(np.arctan2(box.u, box.v))[None]  # 0 = posterior
        depth = np.clip((top - box.w) / 60.0, 0, 1)
        wing = (ang > 0.45) & (ang < 1.9 - 0.4 * depth)
        band = (rho > 0.86 - 0.1 * depth) & (rho < 0.93 - 0.1 * depth)
        c.paint(
            box, wing & (rho > 0.7 - 0.1 * depth) & (rho < 0.86 - 0.1 * depth), MUSCLE, (VISC_FAT,)
        )
        c.paint(box, wing & band, MARROW, (VISC_FAT, MUSCLE))
        edge = wing & (
            (np.abs(rho - 0.86 + 0.1 * depth) < 0.012) | (np.abs(rho - 0.93 + 0.1 * depth) < 0.012)
        )
        c.paint(box, edge, CORTEX, (MARROW, VISC_FAT, MUSCLE))

    # -- vessels and retroperitoneum --------------------------------------------------------------
    def paint_great_vessels(self, c: _Canvas) -> None:
        o = self.o
        vc, rv = self.v_spine, self.vr[1]
        r = o["aorta_radius_mm"]
        pts = [
            (22.0, vc - 4, 200.0),
            (20.0, vc - rv * 0.6 - r, 0.0),
            (12.0, vc - rv - r - 2, -120.0),
            (8.0, vc - rv - r - 2, -260.0),
        ]
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            _tube(c, p0, p1, r, r * 0.95, AORTA, (VISC_FAT, LUNG, MUSCLE))
        for side in (-1, 1):  # iliac arteries
            _tube(c, pts[-1], (side * 60.0, vc - rv, -400.0), r * 0.7, r * 0.6, AORTA, (VISC_FAT,))
        ra, rb = o["ivc_radii_mm"]
        ivc = [(-25.0, vc - rv - 10, -280.0), (-25.0, vc - rv - 14, -150.0), (-28.0, vc - rv - 22, -60.0),
               (-22.0, vc - rv - 20, -5.0), (-10.0, vc - rv - 30, 20.0)]  # fmt: skip
        for p0, p1 in zip(ivc[:-1], ivc[1:], strict=True):
            _tube(c, p0, p1, (ra + rb) / 2, (ra + rb) / 2, IVC, (VISC_FAT, MUSCLE, LUNG))
        # Extrahepatic portal vein: from the confluence behind the pancreas to the porta hepatis.
        self.hilum = (-0.22 * self.A, -0.05 * self.BA, -85.0)
        conf = (0.02 * self.A, vc - rv - 2 * r - 12, -115.0)
        _tube(c, conf, self.hilum, 7.0, 7.0, PORTAL_VEIN, (VISC_FAT,))
        _tube(
            c, conf, (0.5 * self.A, vc - rv, -90.0), 4.5, 4.0, PORTAL_VEIN, (VISC_FAT,)
        )  # splenic vein

    def _clip_below(self, box: _Box) -> np.ndarray:
        """Inside the cavity and under the diaphragm sheet, (nz, ny, nx) bool."""
        zd = self.at(box, "diaphragm")[None]
        cav = self.at(box, "cavity")[None] < self.z_scale(box.w) * 0.985
        return cav & (box.w < zd)

    def paint_kidneys(self, c: _Canvas) -> None:
        o = self.o
        radii = o["kidney_radii_mm"]
        for side in (-1, 1):
            w = o["kidney_w_mm"] + (o["kidney_left_higher_mm"] if side > 0 else 0.0)
            centre = (side * (self.vr[0] + o["kidney_offset_mm"]), self.v_spine + 5.0, w)
            rot = _rotation(side * -30.0, side * 15.0, -10.0)
            box = c.box(*_ellipsoid_box(centre, radii, 2))
            if box is None:
                continue
            q = _local(box, centre, rot)
            qn = (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2
            inner = (
                (q[0] / (radii[0] - 7)) ** 2
                + (q[1] / (radii[1] - 7)) ** 2
                + (q[2] / (radii[2] - 7)) ** 2
            )
            hilum = (-side * q[0] > 0.35 * radii[0]) & (np.abs(q[2]) < 0.45 * radii[2])
            free = (VISC_FAT, MUSCLE)
            c.paint(box, (qn < 1.35) & ~hilum, VISC_FAT, (VISC_FAT,))  # perirenal fat
            c.paint(box, (qn < 1) & ~hilum, KIDNEY_CORTEX, free)
            c.paint(box, (inner < 1) & ~hilum, KIDNEY_MEDULLA, (KIDNEY_CORTEX,))
            sinus = (qn < 1) & hilum
            c.paint(box, sinus, RENAL_SINUS, free)
            pelvis = (q[0] ** 2 + (q[1] / 0.6) ** 2 + (q[2] / 2.0) ** 2) < (0.45 * radii[0]) ** 2
            c.paint(
                box,
                pelvis & (qn < 1.2),
                KIDNEY_PELVIS,
                free + (RENAL_SINUS, KIDNEY_MEDULLA, KIDNEY_CORTEX),
            )

    def paint_spleen(self, c: _Canvas) -> None:
        o = self.o
        s = o["spleen_scale"]
        radii = (22 * s, 55 * s, 55 * s)
        centre = (0.62 * self.A, 0.45 * self.BP, o["spleen_w_mm"])
        box = c.box(*_ellipsoid_box(centre, radii, 30))
        if box is None:
            return
        rot = _rotation(-50.0, -10.0)
        q = _ellipsoid_q(box, centre, radii, rot)
        hilum = _ellipsoid_q(
            box, (centre[0] - 30 * s, centre[1] - 20 * s, centre[2]), (25 * s, 30 * s, 40 * s), rot
        )
        d = self.f_organ(box.xr, box.yr, box.w[:, 0, 0]) * 0.15
        c.paint(box, (q + d < 1) & (hilum > 1) & self._clip_below(box), SPLEEN, (VISC_FAT,))
        self.texture_boxes.append((box, (SPLEEN,), "spleen"))

    def paint_pancreas(self, c: _Canvas) -> None:
        vc, rv = self.v_spine, self.vr[1]
        r = self.o["pancreas_radius_mm"]
        pts = [
            (0.45 * self.A, vc - 5, -85.0),
            (0.05 * self.A, vc - rv - 45, -100.0),
            (-0.22 * self.A, vc - rv - 30, -118.0),
        ]
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            _tube(c, p0, p1, r * 0.8, r * 1.2, PANCREAS, (VISC_FAT,))

    def paint_stomach(self, c: _Canvas) -> None:
        o = self.o
        radii = np.array(o["stomach_radii_mm"]) * (0.6 if o["stomach_empty"] else 1.0)
        centre = (0.35 * self.A, -0.2 * self.BA, o["stomach_w_mm"])
        box = c.box(*_ellipsoid_box(centre, radii, 10))
        if box is None:
            return
        rot = _rotation(25.0, -20.0)
        q = _ellipsoid_q(box, centre, radii, rot)
        d = self.f_organ(box.xr, box.yr, box.w[:, 0, 0]) * 0.1
        clip = self._clip_below(box)
        wall = 8.0 if o["stomach_empty"] else 4.0
        inner = _ellipsoid_q(box, centre, radii - wall, rot)
        c.paint(box, (q + d < 1) & clip, GUT_WALL, (VISC_FAT,))
        content = ORAL_CONTRAST if o["oral_contrast"] else GUT_FLUID
        c.paint(box, (inner + d < 1) & clip, content, (GUT_WALL,))
        g = -1.0 if self.b["prone"] else 1.0  # gas rises: anterior (small v) when supine
        level = centre[1] - g * radii[1] * (1.0 - 2.0 * o["stomach_air"])
        c.paint(box, (g * (box.v[None] - level) < 0) & (inner + d < 1) & clip, GAS, (content,))
        # Antrum towards the pylorus, right of the midline.
        _tube(
            c,
            centre,
            (-0.1 * self.A, -0.55 * self.BA, -105.0),
            radii[1] * 0.6,
            12.0,
            GUT_FLUID,
            (VISC_FAT,),
            (4.0, GUT_WALL),
        )

    def paint_gallbladder(self, c: _Canvas) -> None:
        o = self.o
        if not o["gallbladder"]:
            return
        cu, cv, cw = o["gallbladder_centre"]
        centre = (cu * self.A, cv * self.BA, cw)
        radii = o["gallbladder_radii_mm"]
        box = c.box(*_ellipsoid_box(centre, radii, 3))
        if box is None:
            return
        rot = _rotation(20.0, 0.0, 35.0)
        q = _ellipsoid_q(box, centre, radii, rot)
        c.paint(box, (q < 1) & self._clip_below(box), GALLBLADDER, (VISC_FAT,))
        c.paint(box, (q < 1.12) & (q >= 1) & self._clip_below(box), GUT_WALL, (VISC_FAT,))

    # -- liver ----------------------------------------------------------------------------------
    def liver_parts(self) -> list[tuple[tuple, tuple, np.ndarray, float]]:
        """(centre, radii, rotation, left taper) of the ellipsoids whose smooth union is the liver."""
        o = self.o
        # The liver follows the cavity's shape but only half its size variation (a liver is not
        # twice as big in a patient twice as wide): dimensions pulled towards a reference cavity.
        A, BA, BP = (
            (x * ref) ** 0.5 for x, ref in ((self.A, 125.0), (self.BA, 85.0), (self.BP, 80.0))
        )
        s = o["liver_scale"]
        sh = o["liver_shift_mm"]
        rr = o["liver_right_radii"]
        right = (
            (-0.42 * A + sh[0], 0.01 * (BA + BP) + sh[1], -75.0 + sh[2]),
            (rr[0] * A * s, rr[1] * 0.5 * (BA + BP) * s, rr[2] * s),
            _rotation(0.0, -o["liver_right_tilt_deg"]),
            0.0,
        )
        lc, lr = o["liver_left_centre"], o["liver_left_radii"]
        left = (
            (lc[0] * A + sh[0], lc[1] * BA + sh[1], lc[2] + sh[2]),
            (lr[0] * A * s, lr[1] * BA * s, lr[2] * s),
            _rotation(0.0, 12.0),
            0.6,
        )
        caudate = (
            (-0.08 * A + sh[0], 0.2 * BP + sh[1], -55.0 + sh[2]),
            (28 * s, 28 * s, 40 * s),
            np.eye(3),
            0.0,
        )
        parts = [right, left, caudate]
        if o["liver_riedel"]:
            parts.append(
                (
                    (-0.6 * A + sh[0], 0.05 * BA + sh[1], -150.0 + sh[2]),
                    (35 * s, 45 * s, 55 * s),
                    np.eye(3),
                    0.0,
                )
            )
        return parts

    def liver_implicit(self, box: _Box) -> np.ndarray:
        """Smooth union of the liver's ellipsoids plus a random deformation: < 0 inside, (nz, ny, nx)."""
        k = 0.12  # smooth-union softness, in normalised radius
        acc = None
        for centre, radii, rot, taper in self.liver_parts():
            q = _local(box, centre, rot)
            scale = 1.0
            if taper:  # the left lobe thins towards the patient's left
                scale = np.clip(1.0 - taper * np.maximum(q[0], 0) / radii[0], 0.15, 1.0)
            f = (
                np.sqrt(
                    (q[0] / radii[0]) ** 2
                    + (q[1] / (radii[1] * scale)) ** 2
                    + (q[2] / (radii[2] * scale)) ** 2
                )
                - 1.0
            )
            e = np.exp(-f / k)
            acc = e if acc is None else acc + e
        f = -k * np.log(acc)
        return f + self.o["liver_deform"] * self.f_liver(box.xr, box.yr, box.w[:, 0, 0])

    def paint_liver(self, c: _Canvas) -> None:
        parts = self.liver_parts()
        lo = np.min([np.subtract(p[0], max(p[1])) for p in parts], axis=0) - 20
        hi = np.max([np.add(p[0], max(p[1])) for p in parts], axis=0) + 20
        # The liver never leaves the cavity nor rises above the right dome.
        lo = np.maximum(lo, [-1.2 * self.a, -1.2 * self.ba, -1e4])
        hi = np.minimum(hi, [1.2 * self.a, 1.2 * self.bp, 5.0])
        box = c.box(lo, hi)
        if box is None:
            return
        f = c.smooth_eval(box, self.liver_implicit, 3.0)
        zd = self.at(box, "diaphragm")[None] - self.b["diaphragm_mm"] - 0.5
        cav = self.at(box, "cavity")[None] < self.z_scale(box.w) * 0.995
        c.paint(box, (f < 0) & cav & (box.w < zd), LIVER, (VISC_FAT,))
        self.texture_boxes.append((box, LIVER_CODES, "liver"))

    def paint_liver_vessels(self, c: _Canvas) -> None:
        rng = self.rngs["vessels"]
        A, BA, BP = self.A, self.BA, self.BP
        segs: list[tuple[tuple, tuple, float, float, int]] = []

        def grow(p, direction, length, radius, depth, code):
            d = np.asarray(direction, float)
            d /= np.linalg.norm(d)
            q = tuple(np.asarray(p) + d * length)
            r_end = max(radius * 0.7, 1.2)
            segs.append((tuple(p), q, radius, r_end, code))
            if depth == 0:
                return
            for _ in range(2):
                jitter = rng.normal(0, 0.6, 3)
                grow(q, d + jitter, length * rng.uniform(0.6, 0.85), r_end, depth - 1, code)

        h = self.hilum
        grow(h, (-1.0, 0.1, 0.25), 0.25 * A, 6.5, 3, PORTAL_BRANCH)
        grow(h, (1.0, -0.6, 0.4), 0.22 * A, 5.5, 3, PORTAL_BRANCH)
        top = (-0.1 * A, -0.0 * BP - 15, -15.0)
        for target in (
            (-0.75 * A, 0.1 * BP, -55.0),
            (-0.3 * A, -0.55 * BA, -75.0),
            (0.12 * A, -0.5 * BA, -40.0),
        ):
            grow(
                top,
                np.subtract(target, top),
                0.35 * np.linalg.norm(np.subtract(target, top)),
                6.0,
                2,
                HEPATIC_VEIN,
            )
        for p0, p1, r0, r1, code in segs:
            _tube(c, p0, p1, r0, r1, code, (LIVER,))

    def paint_lesions(self, c: _Canvas) -> None:
        parts = self.liver_parts()
        for i, les in enumerate(self.lesions):
            centre_p, radii_p, rot_p, _ = parts[0] if i % 3 else parts[min(1, len(parts) - 1)]
            pos = np.asarray(les["position"])
            pos = pos / max(1.0, float(np.linalg.norm(pos))) * 0.6
            centre = tuple(np.asarray(centre_p) + rot_p @ (pos * np.asarray(radii_p)))
            r = les["radius_mm"]
            radii = (r, r * les["elongation"][0], r * les["elongation"][1])
            box = c.box(*_ellipsoid_box(centre, radii, 1))
            if box is None:
                continue
            q = _ellipsoid_q(box, centre, radii)
            c.paint(box, q < 1, LESION_BASE + i, (LIVER, PORTAL_BRANCH, HEPATIC_VEIN))

    # -- bowel ----------------------------------------------------------------------------------
    def paint_colon(self, c: _Canvas) -> None:
        o, A, BA = self.o, self.A, self.BA
        rng = self.rngs["bowel"]
        pts = [(-0.62 * A, 0.0, -330.0), (-0.62 * A, -0.05 * BA, -170.0), (-0.3 * A, -0.55 * BA, -160.0),
               (0.2 * A, -0.6 * BA, -190.0), (0.6 * A, -0.1 * BA, -120.0), (0.62 * A, 0.15 * BA, -330.0)]  # fmt: skip
        pts = [tuple(np.add(p, rng.normal(0, 10, 3))) for p in pts]
        r = o["colon_radius_mm"]
        for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
            _tube(c, p0, p1, r, r, STOOL, (VISC_FAT,), (3.0, GUT_WALL))
        box = c.box((-A, -BA, -400), (A, self.BP, 0))
        if box is None:
            return
        fine = c.smooth_eval(box, lambda b: self.f_fine(b.xr, b.yr, b.w[:, 0, 0]), 2.5)
        c.paint(box, fine > o["colon_gas"], GAS, (STOOL,))
        # Mesenteric vessels: thin ridges of the same field through the visceral fat.
        c.paint(box, np.abs(fine) < 0.05, MESENTERIC_VESSEL, (VISC_FAT,))

    def paint_small_bowel(self, c: _Canvas) -> None:
        o = self.o
        box = c.box((-0.75 * self.A, -self.BA, -420), (0.75 * self.A, 0.4 * self.BP, -150))
        if box is None:
            return
        f1 = c.smooth_eval(box, lambda b: self.f_bowel1(b.xr, b.yr, b.w[:, 0, 0]), 3.0)
        f2 = c.smooth_eval(box, lambda b: self.f_bowel2(b.xr, b.yr, b.w[:, 0, 0]), 3.0)
        band = 0.35 + 0.5 * o["bowel_density"]
        wall = np.abs(f1) < band
        lumen = np.abs(f1) < band - 0.2
        below = np.clip((-150.0 - box.w) / 40.0, 0, 1)  # fade in below the transverse colon
        region = self.at(box, "cavity")[None] < self.z_scale(box.w) * 0.97
        c.paint(box, wall & region & (below > 0.5), GUT_WALL, (VISC_FAT,))
        content = ORAL_CONTRAST if o["oral_contrast"] else GUT_FLUID
        c.paint(box, lumen, content, (GUT_WALL,))
        c.paint(box, lumen & (f2 > 1.3), GAS, (content,))

    def paint(self, c: _Canvas) -> None:
        self.prepare(c)
        self.paint_body(c)
        self.paint_thorax(c)
        self.paint_spine(c)
        self.paint_ribs(c)
        self.paint_great_vessels(c)
        self.paint_kidneys(c)
        self.paint_spleen(c)
        self.paint_pancreas(c)
        self.paint_stomach(c)
        self.paint_gallbladder(c)
        self.paint_liver(c)
        self.paint_liver_vessels(c)
        self.paint_lesions(c)
        self.paint_colon(c)
        self.paint_small_bowel(c)
        self.paint_pelvis(c)


# ----------------------------------------------------------------------------------------------
# Intensities and the scanner.


def _hu_values(
    phase: str, uniforms: dict[str, float], organs: dict, lesions: list, offset: float
) -> dict[str, float]:
    """HU of every tissue for this phantom: the drawn quantile of its range for the phase."""
    hu = {}
    for name in HU_RANGES:
        lo, hi = _hu_range(name, phase)
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


def _kernel_energy(sigma_vox: float) -> float:
    """Sum of squared weights of scipy's 1D Gaussian kernel: how much it shrinks white-noise variance."""
    if sigma_vox < 1e-3:
        return 1.0
    radius = int(3.0 * sigma_vox + 0.5)  # as scipy's gaussian_filter with truncate=3
    x = np.arange(-radius, radius + 1, dtype=float)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    k /= k.sum()
    return float((k**2).sum())


def _intensities(
    anat: _Anatomy,
    c: _Canvas,
    hu: dict[str, float],
    scan: dict,
    tex: dict[str, float],
    rng: np.random.Generator,
    n_lesions: int,
) -> np.ndarray:
    """HU image (D, H, W) float32: tissue means + texture + cupping, then scanner noise and blur."""
    lut = np.zeros(256, np.float32)
    for code, name in _TISSUE_OF_CODE.items():
        lut[code] = hu[name]
    for i in range(n_lesions):
        lut[LESION_BASE + i] = hu[f"lesion_{i}"]
    t = c.tissue
    img = lut[t]
    for box, codes, name in anat.texture_boxes:
        amp = np.zeros(256, np.float32)
        amp[list(codes)] = _TEXTURE_HU[name] * tex[name]
        field = c.smooth_eval(box, lambda b: anat.f_texture(b.xr, b.yr, b.w[:, 0, 0]), 5.0)
        img[box.sl] += amp[t[box.sl]] * field
    rho = anat.maps["body"]
    img -= (scan["cupping_hu"] * np.clip(1.0 - rho**2, 0.0, 1.0))[None]
    sigma_mm = np.array(
        [
            scan["blur_sigma_mm"],
            scan["blur_sigma_mm"],
            max(scan["slice_thickness_mm"] / 2.355, scan["blur_sigma_mm"]),
        ]
    )
    sigma_vox = sigma_mm / c.spacing
    energy = float(np.prod([_kernel_energy(s) for s in sigma_vox]))
    noise = rng.standard_normal(t.shape, dtype=np.float32)
    sd = np.full(256, scan["noise_sd_hu"] / math.sqrt(energy), np.float32)
    sd[AIR] *= 0.25  # reconstructed air is far less noisy than tissue
    noise *= sd[t]
    img += noise
    del noise
    img = ndi.gaussian_filter(
        img, sigma=tuple(sigma_vox[::-1]), output=np.float32, mode="nearest", truncate=3.0
    )
    if scan["fov_circle"]:
        xc = c.xr + (scan["body_centre_xy_mm"][0] - scan["fov_centre_xy_mm"][0])
        yc = c.yr + (scan["body_centre_xy_mm"][1] - scan["fov_centre_xy_mm"][1])
        outside = (xc[None, :] ** 2 + yc[:, None] ** 2) > (0.5 * scan["fov_mm"]) ** 2
        img[:, outside] = scan["fov_fill_hu"]
    return img


# ----------------------------------------------------------------------------------------------
# Geometry: the canonical (identity-direction) grid, and the requested image axes.


def _as_direction(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    d = np.asarray(direction, float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise ValueError(
            f"direction must be an orthonormal 3x3 matrix (row-major, 9 values), got {d.ravel().tolist()}"
        )
    return d


def _signed_permutation(d: np.ndarray) -> tuple[list[int], list[int]] | None:
    """(perm, signs) with d[:, j] = signs[j] * e[perm[j]], or None for an oblique direction."""
    perm, signs = [], []
    for j in range(3):
        col = d[:, j]
        p = int(np.argmax(np.abs(col)))
        if not math.isclose(abs(col[p]), 1.0, abs_tol=1e-9):
            return None
        perm.append(p)
        signs.append(1 if col[p] > 0 else -1)
    return perm, signs


def _axis_grid(
    extent_lo: float,
    extent_hi: float,
    spacing: float | None,
    size: int | None,
    default_size: int | None,
    default_spacing: float | None,
) -> tuple[float, int]:
    """Spacing and size for one axis covering [lo, hi]: what is given wins, the rest follows the extent."""
    extent = extent_hi - extent_lo
    if spacing is None and size is None:
        if default_size is not None:
            size = default_size
        else:
            spacing = default_spacing
    if spacing is None:
        spacing = extent / size
    if size is None:
        size = max(1, int(round(extent / spacing)))
    return float(spacing), int(size)


def _to_image_axes(arr: np.ndarray, perm: list[int], signs: list[int]) -> np.ndarray:
    """Re-index a canonical (z, y, x) array onto image axes whose axis j is signs[j] * physical perm[j]."""
    for j in range(3):
        if signs[j] < 0:
            arr = np.flip(arr, axis=2 - perm[j])
    return np.ascontiguousarray(np.transpose(arr, [2 - perm[2 - i] for i in range(3)]))


def _image(arr: np.ndarray, origin, spacing, direction: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    return img


def make_phantom(
    seed: int,
    *,
    spacing_xyz_mm: Sequence[float] | None = None,
    size_xyz: Sequence[int] | None = None,
    phase: str | None = None,
    z_range: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    fov_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    noise_sd_hu: float | None = None,
    blur_sigma_mm: float | None = None,
    n_lesions: int | None = None,
    fatty_liver: bool | None = None,
    arms: bool | None = None,
    table: bool | None = None,
    fov_circle: bool | None = None,
) -> Phantom:
    """A synthetic abdominal CT (HU, int16) and its liver label (uint8 0/1) on the same grid.

    Everything random comes from `numpy.random.SeedSequence(seed)`; the same seed gives identical
    arrays and geometry, and a keyword given here replaces its draw without changing the others
    (the anatomy of a seed is the same whatever the grid). Arguments, all optional:
      spacing_xyz_mm, size_xyz: along the image's own axes (x, y, z). In-plane, if neither is
        given the image is 512 wide over the drawn field of view; along z the range decides.
      phase: one of PHASES ("native", "arterial", "portal", "delayed").
      z_range: (lo, hi) mm along the patient's superior axis relative to the top of the liver
        dome (params["geometry"]["dome_xyz_mm"]), e.g. (-60, -20) for a slab in the liver.
        Slices sit on a lattice anchored at the dome, so a slab of a seed is an exact crop of
        that seed's longer scan at the same spacing (labels equal; noise differs). With
        size_xyz given too, the slices are centred on the range.
      direction: 9 direction cosines (row-major, SimpleITK's order). A signed permutation (axis
        flips, axis swaps) is rasterised exactly; an oblique one is resampled from an LPS grid.
        The anatomy stays at the same physical place whatever the direction.
      fov_mm (in-plane field of view), slice_thickness_mm, noise_sd_hu, blur_sigma_mm,
      n_lesions (0..MAX_LESIONS), fatty_liver, arms, table, fov_circle (pad outside the
      reconstruction circle).
    Raises ValueError for a negative seed, an unknown phase, a non-orthonormal direction or a
    bad size.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    seq = np.random.SeedSequence(int(seed))
    names = (
        "scan",
        "body",
        "organs",
        "lesions",
        "hu",
        "fields",
        "vessels",
        "bowel",
        "noise",
        "texture",
    )
    rngs = dict(zip(names, (np.random.default_rng(s) for s in seq.spawn(len(names))), strict=True))
    scan = _draw_scan(rngs["scan"])
    body = _draw_body(rngs["body"])
    organs = _draw_organs(rngs["organs"])
    n_drawn, all_lesions = _draw_lesions(rngs["lesions"])
    hu_u = {name: float(rngs["hu"].uniform()) for name in HU_RANGES}
    tex = {name: float(rngs["texture"].uniform(0.3, 1.5)) for name in sorted(_TEXTURE_HU)}

    if phase is not None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        scan["phase"] = phase
    if z_range is not None:
        lo, hi = float(z_range[0]), float(z_range[1])
        if not hi > lo:
            raise ValueError(f"z_range must be (lo, hi) with hi > lo, got {tuple(z_range)}")
        scan["kind"], scan["z_range_mm"] = "given", [lo, hi]
    for key, value in (
        ("fov_mm", fov_mm),
        ("noise_sd_hu", noise_sd_hu),
        ("blur_sigma_mm", blur_sigma_mm),
        ("fov_circle", fov_circle),
    ):
        if value is not None:
            scan[key] = value
    if arms is not None:
        body["arms"] = bool(arms)
    if table is not None:
        body["table"] = bool(table)
    if fatty_liver is not None:
        organs["fatty_liver"] = bool(fatty_liver)
    if n_lesions is not None:
        if not 0 <= n_lesions <= MAX_LESIONS:
            raise ValueError(f"n_lesions must be in 0..{MAX_LESIONS}, got {n_lesions}")
        n_drawn = n_lesions
    lesions = all_lesions[:n_drawn]

    d = (
        _as_direction(direction)
        if direction is not None
        else np.diag([float(f) for f in scan["direction_flip"]])
    )
    sp = _signed_permutation(d)
    perm, signs = sp if sp is not None else ([0, 1, 2], [1, 1, 1])
    spacing_phys: list[float | None] = [None, None, None]
    size_phys: list[int | None] = [None, None, None]
    for j in range(3):
        if spacing_xyz_mm is not None:
            spacing_phys[perm[j]] = float(spacing_xyz_mm[j])
        if size_xyz is not None:
            if int(size_xyz[j]) < 1:
                raise ValueError(f"size_xyz must be positive, got {tuple(size_xyz)}")
            size_phys[perm[j]] = int(size_xyz[j])

    fov = float(scan["fov_mm"])
    fcx, fcy = scan["fov_centre_xy_mm"]
    sx, nx = _axis_grid(
        -fov / 2, fov / 2, spacing_phys[0], size_phys[0], scan["inplane_size"], None
    )
    sy, ny = _axis_grid(
        -fov / 2, fov / 2, spacing_phys[1], size_phys[1], scan["inplane_size"], None
    )
    zlo, zhi = scan["z_range_mm"]
    ph = scan["z_phase"]
    if size_phys[2] is not None:
        nz = size_phys[2]
        sz = spacing_phys[2] if spacing_phys[2] is not None else (zhi - zlo) / nz
        k0 = int(round((zlo + zhi) / 2 / sz - ph - (nz - 1) / 2))
    else:
        sz = spacing_phys[2] if spacing_phys[2] is not None else scan["slice_spacing_mm"]
        k0 = math.ceil(zlo / sz - ph - 1e-9)
        nz = max(1, math.floor(zhi / sz - ph + 1e-9) - k0 + 1)
    scan["slice_thickness_mm"] = (
        float(slice_thickness_mm)
        if slice_thickness_mm is not None
        else float(sz * scan["slice_thickness_factor"])
    )
    dome_z = scan["dome_z_mm"]
    bcx, bcy = fcx + scan["body_offset_xy_mm"][0], fcy + scan["body_offset_xy_mm"][1]
    scan["body_centre_xy_mm"] = [bcx, bcy]
    spacing_c = np.array([sx, sy, sz])
    size_c = np.array([nx, ny, nz])
    origin_c = np.array([fcx - (nx - 1) / 2 * sx, fcy - (ny - 1) / 2 * sy, dome_z + (k0 + ph) * sz])

    if sp is None:  # oblique: render on an LPS grid covering the requested one, then resample
        target_spacing, target_size = spacing_c.copy(), size_c.copy()
        centre = origin_c + (size_c - 1) / 2 * spacing_c
        target_origin = centre - d @ ((target_size - 1) / 2 * target_spacing)
        corners = np.array(
            [
                target_origin + d @ (np.array(c3) * (target_size - 1) * target_spacing)
                for c3 in np.ndindex(2, 2, 2)
            ]
        )
        iso = float(target_spacing.min())
        origin_c = corners.min(0) - iso
        size_c = np.ceil((corners.max(0) + iso - origin_c) / iso).astype(int) + 1
        spacing_c = np.full(3, iso)

    canvas = _Canvas(
        origin_c, spacing_c, size_c, (bcx, bcy), dome_z, math.radians(body["roll_deg"])
    )
    anatomy = _Anatomy(body, organs, lesions, rngs)
    anatomy.paint(canvas)
    hu = _hu_values(scan["phase"], hu_u, organs, lesions, scan["hu_offset"])
    img = _intensities(anatomy, canvas, hu, scan, tex, rngs["noise"], len(lesions))
    is_liver = np.zeros(256, np.uint8)
    is_liver[list(LIVER_CODES)] = 1
    label = is_liver[canvas.tissue]
    np.rint(img, out=img)
    ct = np.clip(img, -32768, 32767, out=img).astype(np.int16)
    del img

    if sp is not None:
        ct_arr, lab_arr = _to_image_axes(ct, perm, signs), _to_image_axes(label, perm, signs)
        origin = np.array(
            [
                origin_c[perm[j]]
                + (0 if signs[j] > 0 else (size_c[perm[j]] - 1) * spacing_c[perm[j]])
                for j in range(3)
            ]
        )
        origin_phys = np.zeros(3)
        for j in range(3):
            origin_phys[perm[j]] = origin[j]
        spacing_img = [spacing_c[perm[j]] for j in range(3)]
        ct_img = _image(ct_arr, origin_phys, spacing_img, d)
        lab_img = _image(lab_arr, origin_phys, spacing_img, d)
        tis_img = _image(_to_image_axes(canvas.tissue, perm, signs), origin_phys, spacing_img, d)
    else:
        ref = sitk.Image([int(v) for v in target_size], sitk.sitkUInt8)
        ref.SetOrigin(tuple(float(v) for v in target_origin))
        ref.SetSpacing(tuple(float(v) for v in target_spacing))
        ref.SetDirection(tuple(float(v) for v in d.ravel()))
        src_ct = _image(ct, origin_c, spacing_c, np.eye(3))
        src_lab = _image(label, origin_c, spacing_c, np.eye(3))
        ct_img = sitk.Resample(
            src_ct, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16
        )
        lab_img = sitk.Resample(
            src_lab, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        src_tis = _image(canvas.tissue, origin_c, spacing_c, np.eye(3))
        tis_img = sitk.Resample(
            src_tis, ref, sitk.Transform(), sitk.sitkNearestNeighbor, AIR, sitk.sitkUInt8
        )

    params = {
        "seed": int(seed),
        "phase": scan["phase"],
        "geometry": {
            "spacing_xyz_mm": list(ct_img.GetSpacing()),
            "size_xyz": list(ct_img.GetSize()),
            "origin_xyz_mm": list(ct_img.GetOrigin()),
            "direction": list(ct_img.GetDirection()),
            "dome_xyz_mm": [float(bcx), float(bcy), float(dome_z)],
            "body_centre_xy_mm": [float(bcx), float(bcy)],
        },
        "scan": scan,
        "body": body,
        "organs": organs,
        "lesions": lesions,
        "hu": hu,
        "texture": tex,
        "liver_volume_ml": float(
            sitk.GetArrayViewFromImage(lab_img).sum() * np.prod(lab_img.GetSpacing()) / 1000.0
        ),
    }
    return Phantom(ct=ct_img, liver=lab_img, params=params, tissues=tis_img)


# ----------------------------------------------------------------------------------------------
# DICOM output, so that phantoms can exercise the service's DICOM path end to end.

_RESCALE_INTERCEPT = -1024.0


def write_dicom_series(
    ct: sitk.Image,
    folder: str | Path,
    *,
    patient_id: str = "PHANTOM",
    patient_name: str = "PHANTOM^LIVERSEG",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "liverseg phantom",
    series_number: int = 1,
    slice_thickness_mm: float | None = None,
    contrast_agent: str | None = None,
    file_prefix: str = "CT",
) -> list[Path]:
    """Write a 3D CT (HU; float values are rounded) as a single-frame CT Image Storage series.

    One file per slice (index z of the image), named `{file_prefix}{n:04d}.dcm` in `folder`
    (created if missing), explicit VR little endian, signed 16-bit stored values with
    RescaleIntercept -1024 and slope 1. UIDs not given are minted with pydicom's
    generate_uid; all slices share study, series and frame of reference. ImageOrientationPatient
    holds the image's first two direction columns and ImagePositionPatient each slice's origin, so
    SimpleITK's ImageSeriesReader reads back the same geometry when the direction is right-handed
    (det +1, e.g. LPS or RAS); DICOM stores no third axis, so a left-handed image comes back with
    its slices in the other order (same voxels in space, z axis flipped). Returns the paths in
    slice order. Raises ValueError for a non-3D image, a slice axis not normal to the rows and
    columns, or HU outside what 16 bits can hold.
    """
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"write_dicom_series needs a 3D scalar image, got {ct.GetDimension()}D "
            f"with {ct.GetNumberOfComponentsPerPixel()} components"
        )
    d = np.asarray(ct.GetDirection(), float).reshape(3, 3)
    row, col, axis = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row, col)
    if not np.allclose(np.abs(normal @ axis), 1.0, atol=1e-6):
        raise ValueError(
            "write_dicom_series: the slice axis must be normal to rows and columns "
            f"(direction {d.ravel().tolist()})"
        )
    hu = np.rint(sitk.GetArrayViewFromImage(ct).astype(np.float64))
    stored = hu - _RESCALE_INTERCEPT
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(
            f"write_dicom_series: HU range [{hu.min():.0f}, {hu.max():.0f}] does not fit "
            "16-bit stored values with intercept -1024"
        )
    stored = stored.astype("<i2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    sx, sy, sz = ct.GetSpacing()
    origin = np.asarray(ct.GetOrigin(), float)
    now = _dt.datetime.now()
    date, time_ = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    thickness = float(slice_thickness_mm) if slice_thickness_mm is not None else float(sz)

    def fmt(x: float) -> str:
        # DS values are at most 16 characters; repr of a float can be longer.
        text = f"{x:.10g}"
        return text if len(text) <= 16 else f"{x:.6e}"

    paths = []
    for k in range(stored.shape[0]):
        position = origin + axis * sz * k
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "liverseg"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "ABDOMEN"
        ds.PatientPosition = "HFS"
        ds.KVP = "120"
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [fmt(v) for v in position]
        ds.ImageOrientationPatient = [fmt(v) for v in np.concatenate([row, col])]
        ds.SliceLocation = fmt(float(position @ normal))
        ds.SliceThickness = fmt(thickness)
        ds.SpacingBetweenSlices = fmt(float(sz))
        ds.PixelSpacing = [fmt(sy), fmt(sx)]  # DICOM order: between rows, then between columns
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = fmt(_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{file_prefix}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.debug("wrote %d CT slices to %s (series %s)", len(paths), folder, series_uid)
    return paths
