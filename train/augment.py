"""Data augmentation on a batch of patches, in torch (cheap enough for a 2-core CPU).

Spatial transforms (flips; one resampling for rotation, scaling and an elastic field together)
move image and label identically: the image is resampled trilinearly, an integer label by
nearest neighbour, so it stays a label map, and a float label (liver fractions) trilinearly.
Intensity transforms (shift and scale, Gaussian noise, gamma, blur) touch the image only. Each transform is drawn per sample with its own probability from a
`torch.Generator`, so a seed fixes the whole stream. The defaults are milder versions of nnU-Net's
(rotation +-15 degrees instead of +-30, scaling 0.85-1.15, probabilities around 0.1-0.2) because
the networks we train on CPU see few iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges. Angles in degrees, sizes in voxels, intensities in input units."""

    p_flip: float = 0.5  # per axis
    flip_axes: tuple[int, ...] = (0, 1, 2)  # spatial axes (d, h, w) that may be flipped
    p_rotate: float = 0.2
    max_rotation_deg: float = 15.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_elastic: float = 0.1
    elastic_grid: int = 4  # control points per axis of the coarse displacement field
    elastic_magnitude_vox: float = 3.0  # standard deviation of the control displacements
    p_intensity: float = 0.15
    shift_range: float = 0.1  # additive, in normalised input units
    intensity_scale_range: tuple[float, float] = (0.9, 1.1)
    p_noise: float = 0.1
    noise_std: float = 0.03
    p_gamma: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_blur: float = 0.1
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)  # voxels

    @classmethod
    def off(cls) -> AugmentConfig:
        """Every probability 0: the identity (for validation and tests)."""
        return cls(p_flip=0, p_rotate=0, p_scale=0, p_elastic=0, p_intensity=0, p_noise=0, p_gamma=0, p_blur=0)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(p: float, n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) < p


def _rotation_matrices(angles: Tensor) -> Tensor:
    """(N, 3) angles in radians about the d, h, w axes -> (N, 3, 3) rotations in (x, y, z) order."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def rot(c: Tensor, s: Tensor, axis: int) -> Tensor:
        # rows/cols in grid order (x=w, y=h, z=d); rotation about `axis`
        if axis == 0:  # about x
            rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
        elif axis == 1:  # about y
            rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
        else:  # about z
            rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    # angles[:, 0] about d (= z), [:, 1] about h (= y), [:, 2] about w (= x)
    return rot(cos[:, 0], sin[:, 0], 2) @ rot(cos[:, 1], sin[:, 1], 1) @ rot(cos[:, 2], sin[:, 2], 0)


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (1, C, D, H, W) with `sigma` voxels, reflect-padded."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    out = image
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        weight = kernel.view(shape).repeat(channels, 1, 1, 1, 1)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        # reflect padding needs the axis longer than the radius; replicate otherwise
        mode = "reflect" if out.shape[2 + axis] > radius else "replicate"
        out = F.conv3d(F.pad(out, pad, mode=mode), weight, groups=channels)
    return out


class Augmenter:
    """Random spatial and intensity transforms of (image (N, C, D, H, W) float, label (N, 1, D, H, W))."""

    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def __call__(
        self, image: Tensor, label: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Augmented copies; label keeps its dtype and values. Random numbers come from `generator` (CPU)."""
        image, label = self.spatial(image, label, generator)
        return self.intensity(image, generator), label

    def spatial(
        self, image: Tensor, label: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Flips, then rotation + scaling + elastic in one resampling (only for samples that drew one)."""
        cfg = self.config
        n = image.shape[0]
        image, label = image.clone(), label.clone()
        for axis in cfg.flip_axes:
            flips = _coin(cfg.p_flip, n, generator)
            for i in torch.nonzero(flips).flatten().tolist():
                image[i] = image[i].flip(1 + axis)
                label[i] = label[i].flip(1 + axis)

        rotate = _coin(cfg.p_rotate, n, generator)
        scale = _coin(cfg.p_scale, n, generator)
        elastic = _coin(cfg.p_elastic, n, generator)
        max_angle = math.radians(cfg.max_rotation_deg)
        angles = _uniform(-max_angle, max_angle, 3 * n, generator).view(n, 3) * rotate[:, None]
        factors = torch.where(scale, _uniform(*cfg.scale_range, n, generator), torch.ones(n))
        fields = torch.randn(n, 3, *(cfg.elastic_grid,) * 3, generator=generator)
        todo = torch.nonzero(rotate | scale | elastic).flatten().tolist()
        if not todo:
            return image, label

        size_dhw = image.shape[2:]
        idx = torch.tensor(todo)
        # affine_grid works in [-1, 1] per axis; rotate in voxel units so non-cubic patches stay
        # undistorted: theta = S^-1 R S / scale, with S the half-size per axis (x, y, z order).
        half = torch.tensor([size_dhw[2], size_dhw[1], size_dhw[0]], dtype=torch.float32) / 2
        linear = torch.diag(1 / half) @ _rotation_matrices(angles[idx]) @ torch.diag(half)
        linear = linear / factors[idx, None, None]  # zoom in by `factor`
        theta = torch.cat([linear, torch.zeros(len(todo), 3, 1)], dim=2)
        grid = F.affine_grid(theta, [len(todo), 1, *size_dhw], align_corners=False)

        do_elastic = elastic[idx]
        if do_elastic.any():
            # a coarse random field, upsampled: smooth displacements of a few voxels
            coarse = fields[idx] * do_elastic[:, None, None, None, None]
            dense = F.interpolate(coarse, size=tuple(size_dhw), mode="trilinear", align_corners=True)
            # voxels -> normalised units, channels in grid (x, y, z) order
            dense = dense * cfg.elastic_magnitude_vox / half.view(1, 3, 1, 1, 1)
            grid = grid + dense.permute(0, 2, 3, 4, 1)

        grid = grid.to(image.device, image.dtype)
        image[idx] = F.grid_sample(
            image[idx], grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        soft = label.is_floating_point()
        warped = F.grid_sample(
            label[idx].to(grid.dtype), grid, mode="bilinear" if soft else "nearest",
            padding_mode="zeros", align_corners=False,
        )
        # trilinear weights can sum to 1 + 1e-7: keep fractions fractions
        label[idx] = (warped.clamp(0.0, 1.0) if soft else warped.round()).to(label.dtype)
        return image, label

    def intensity(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """Shift/scale, gamma (on the sample's own range, as nnU-Net), blur, then Gaussian noise."""
        cfg = self.config
        n = image.shape[0]
        image = image.clone()
        shift_scale = _coin(cfg.p_intensity, n, generator)
        shifts = _uniform(-cfg.shift_range, cfg.shift_range, n, generator)
        scales = _uniform(*cfg.intensity_scale_range, n, generator)
        gamma = _coin(cfg.p_gamma, n, generator)
        gammas = _uniform(*cfg.gamma_range, n, generator)
        blur = _coin(cfg.p_blur, n, generator)
        sigmas = _uniform(*cfg.blur_sigma_range, n, generator)
        noise = _coin(cfg.p_noise, n, generator)
        for i in range(n):
            if shift_scale[i]:
                image[i] = image[i] * float(scales[i]) + float(shifts[i])
            if gamma[i]:
                lo, hi = image[i].min(), image[i].max()
                span = (hi - lo).clamp_min(1e-6)
                image[i] = ((image[i] - lo) / span) ** float(gammas[i]) * span + lo
            if blur[i]:
                image[i] = _gaussian_blur(image[i : i + 1], float(sigmas[i]))[0]
        if noise.any():
            draws = torch.randn(image.shape, generator=generator).to(image.device, image.dtype)
            image = image + draws * cfg.noise_std * noise.view(-1, 1, 1, 1, 1).to(image.device, image.dtype)
        return image
