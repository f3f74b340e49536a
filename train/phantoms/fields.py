"""Smooth random fields: separable cubic B-splines over a box of the body frame.

Resolution independent: the control values are drawn per phantom in mm, then evaluated on
whatever grid with three interpolation passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bspline_taps(
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


def expand(t: np.ndarray, axis: int, first: np.ndarray, w: np.ndarray) -> np.ndarray:
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


class Field:
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
            bspline_taps(c, self.lo[a], self.step, self.n[a]) for a, c in enumerate((xs, ys, zs))
        ]
        # Keep only the control points these coordinates touch, then expand x, y, z in turn.
        lo = [int(i.min()) for i, _ in taps]
        hi = [int(i.max()) + 4 for i, _ in taps]
        t = self.coef[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        for axis, (first, w) in zip((2, 1, 0), taps, strict=True):
            t = expand(t, axis, first - lo[2 - axis], w)
        return np.ascontiguousarray(t, dtype=np.float32)
