"""The canvas (a tissue label map on an identity-direction grid, with body-frame coordinates) and
the shapes painted on it: boxes, rotations, ellipsoids and tapered tubes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from train.phantoms.fields import expand


@dataclass
class Box:
    sl: tuple[slice, slice, slice]  # (z, y, x) slices into the canvas
    u: np.ndarray  # (ny, nx) body-frame u of the box's voxels, mm
    v: np.ndarray  # (ny, nx)
    w: np.ndarray  # (nz, 1, 1)
    xr: np.ndarray  # (nx,) translated (un-rolled) x, for fields
    yr: np.ndarray  # (ny,)


class Canvas:
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

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
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
        return Box(
            sl=(sz, sy, sx),
            u=self.u[sy, sx],
            v=self.v[sy, sx],
            w=self.w[sz][:, None, None],
            xr=self.xr[sx],
            yr=self.yr[sy],
        )

    def smooth_eval(self, box: Box, fn: Callable[[Box], np.ndarray], step_mm: float) -> np.ndarray:
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
        cbox = Box(
            sl=box.sl,
            u=self.cos * xc[None, :] + self.sin * yc[:, None],
            v=-self.sin * xc[None, :] + self.cos * yc[:, None],
            w=wc[:, None, None],
            xr=xc,
            yr=yc,
        )
        t = fn(cbox)
        for axis, (i0, w) in zip((2, 1, 0), taps, strict=True):
            t = expand(t, axis, i0, w)
        return t

    def paint(
        self, box: Box, mask: np.ndarray, code: int, into: Sequence[int] | None = None
    ) -> None:
        """Set `code` where `mask` (box-shaped, broadcastable) holds and, if given, the tissue is in `into`."""
        sub = self.tissue[box.sl]
        mask = np.broadcast_to(mask, sub.shape)
        if into is not None:
            allowed = np.zeros(256, bool)
            allowed[list(into)] = True
            mask = mask & allowed[sub]
        np.copyto(sub, np.uint8(code), where=mask)


def rotation(yaw_deg: float, tilt_deg: float = 0.0, pitch_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix in (u, v, w): yaw about w, then tilt about v, then pitch about u."""
    a, b, c = (math.radians(x) for x in (yaw_deg, tilt_deg, pitch_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


def local(box: Box, centre: Sequence[float], rot: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Box coordinates in an organ's local frame: R^T (p - centre), each (nz, ny, nx) or 2D/1D parts."""
    du = box.u - centre[0]
    dv = box.v - centre[1]
    dw = box.w - centre[2]
    if rot is None:
        return du[None], dv[None], dw
    return tuple(rot[0, i] * du[None] + rot[1, i] * dv[None] + rot[2, i] * dw for i in range(3))


def ellipsoid_q(box: Box, centre, radii, rot=None) -> np.ndarray:
    """Normalised squared radius ((q/r)^2 summed) of an ellipsoid, < 1 inside; (nz, ny, nx)."""
    q = local(box, centre, rot)
    return (q[0] / radii[0]) ** 2 + (q[1] / radii[1]) ** 2 + (q[2] / radii[2]) ** 2


def ellipsoid_box(centre, radii, pad: float = 0.0) -> tuple[list[float], list[float]]:
    """A body-frame box surely holding a (rotated) ellipsoid: centre +- max radius."""
    r = max(radii) + pad
    return [c - r for c in centre], [c + r for c in centre]


def tube(
    canvas: Canvas,
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
