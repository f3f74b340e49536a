"""The PNG preview of a finished job: axial, coronal and sagittal slices through the liver with
the mask outlined (and, asked for, the confidence), a legend, and the figures a reader checks first.

The preview follows the radiological convention: the patient's right on the viewer's left,
anterior at the top of the axial view, superior at the top of the coronal and sagittal views,
anterior on the left of the sagittal view. Every panel is drawn at one scale, so its size in
pixels is its physical extent; oblique volumes are shown along their nearest patient axes.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# One scale for every panel: the longest extent gets PANEL_PX pixels, more where the thinnest
# extent (a 20-slice series' height) would get fewer than THIN_PX, up to MAX_PANEL_PX.
PANEL_PX = 512
THIN_PX = 96
MAX_PANEL_PX = 800
GAP_PX = 8
SOFT_TISSUE_HU = (-160.0, 240.0)  # window 400, level 40
OUTLINE_RGB = (255, 215, 0)  # amber: visible on grey and on red
UNSURE_RGB = (255, 40, 40)
AROUND_LIVER_MM = 10.0  # confidence is shown inside the mask and this far around it, not on other organs
TEXT_PX = 15
LINE_PX = TEXT_PX + 6
SWATCH_PX = TEXT_PX + 3  # a colour key's square and its space
LEGEND_PAD_PX = 8
TEXT_RGB = (255, 255, 255)
NO_REVIEW_RGB = (150, 220, 150)
RGB = tuple[int, int, int] | np.ndarray  # 0-255 per channel

VIEWS = ("axial", "coronal", "sagittal")
# The letters at each panel's left edge, right edge and top.
VIEW_LETTERS = {"axial": ("R", "L", "A"), "coronal": ("R", "L", "S"), "sagittal": ("A", "P", "S")}


@dataclass(frozen=True)
class Caption:
    """The figures the preview writes under its panels."""

    liver_volume_ml: float
    liver_mean_hu: float | None
    review_reasons: tuple[str, ...] = ()  # finding codes (e.g. "low_confidence"); empty: no review


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Layout:
    """Where everything goes: each panel's box by (variant, view), the legend's top, the canvas size.

    Variants are "outline" (the CT with the mask's outline) and, with confidence, "confidence". Views sit
    side by side and variants one under the other; for a slab (a short series, wider than twice
    its height) views are stacked and variants side by side, so no panel is a strip beside a square.
    """

    scale_px_per_mm: float
    panels: dict[tuple[str, str], Box]
    legend_top: int
    width: int
    height: int


def preview_png(
    ct: sitk.Image, mask: sitk.Image, confidence: sitk.Image | None = None, *, caption: Caption
) -> bytes:
    """A PNG of the CT (window 400 / level 40) with the mask outlined in amber, through the mask's
    centre (the volume's centre for an empty mask), and a legend with `caption`'s figures.

    With `confidence` (float in [0, 1], 1 = sure) a second set of panels shows low confidence in
    red (opacity 0.85 * (1 - confidence)) over the dimmed CT, inside the mask and within
    AROUND_LIVER_MM of it in the plane shown.

    Raises:
        ValueError: the images do not share one grid size.
    """
    for other in (mask, confidence):
        if other is not None and other.GetSize() != ct.GetSize():
            raise ValueError(f"preview images must share one grid: {ct.GetSize()} vs {other.GetSize()}")
    perm, flips = _nearest_lps_axes(ct)
    font = _font()
    lines = legend_lines(caption, with_confidence=confidence is not None)
    layout = preview_layout(ct, caption, with_confidence=confidence is not None)
    centre = _centre(sitk.GetArrayViewFromImage(mask), perm, flips)
    ct_planes = _planes(_as_lps(sitk.GetArrayViewFromImage(ct), perm, flips), centre)
    mask_planes = _planes(_as_lps(sitk.GetArrayViewFromImage(mask), perm, flips), centre)
    conf_planes = None
    if confidence is not None:
        conf_planes = _planes(_as_lps(sitk.GetArrayViewFromImage(confidence), perm, flips), centre)

    canvas = np.zeros((layout.height, layout.width, 3), dtype=np.uint8)
    around_px = AROUND_LIVER_MM * layout.scale_px_per_mm
    for (variant, view), box in layout.panels.items():
        size = (box.width, box.height)
        plane_hu = _resize(ct_planes[view], size, Image.BILINEAR)
        inside = _resize(mask_planes[view].astype(np.float32), size, Image.NEAREST) > 0.5
        outlines = [(inside, OUTLINE_RGB)]
        if variant == "outline":
            panel = outline_overlay(plane_hu, outlines)
        else:
            unsure = 1.0 - np.clip(_resize(conf_planes[view], size, Image.BILINEAR), 0.0, 1.0)
            near = ndimage.distance_transform_edt(~inside) <= around_px if inside.any() else inside
            panel = outline_overlay(plane_hu, outlines, dim=0.6, tint=(0.85 * unsure * near, UNSURE_RGB))
        canvas[box.y : box.y + box.height, box.x : box.x + box.width] = np.clip(np.rint(panel), 0, 255).astype(np.uint8)

    picture = Image.fromarray(canvas)  # mode RGB
    draw = ImageDraw.Draw(picture)
    for (_, view), box in layout.panels.items():
        if box.width >= 48 and box.height >= 24:  # letters only where they do not hide the picture
            left, right, top = VIEW_LETTERS[view]
            draw.text((box.x + 3, box.y + 2), left, fill=TEXT_RGB, font=font)
            draw.text((box.x + box.width - 12, box.y + 2), right, fill=TEXT_RGB, font=font)
            draw.text((box.x + box.width // 2 - 4, box.y + 2), top, fill=TEXT_RGB, font=font)
    _draw_legend(draw, font, layout.legend_top, lines)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def preview_layout(ct: sitk.Image, caption: Caption, *, with_confidence: bool) -> Layout:
    """The preview's layout for this CT's grid (see `Layout`): panel sizes are extents in mm
    times one scale (see PANEL_PX, THIN_PX, MAX_PANEL_PX); the legend goes under the panels and
    widens the canvas where its text needs it."""
    perm, _ = _nearest_lps_axes(ct)
    lr, ap, si = (ct.GetSize()[perm[p]] * ct.GetSpacing()[perm[p]] for p in range(3))
    longest, thinnest = max(lr, ap, si), min(lr, ap, si)
    scale = min(max(PANEL_PX / longest, THIN_PX / thinnest), MAX_PANEL_PX / longest)

    def px(mm: float) -> int:
        return max(1, round(mm * scale))

    sizes = {"axial": (px(lr), px(ap)), "coronal": (px(lr), px(si)), "sagittal": (px(ap), px(si))}
    variants = ("outline", "confidence") if with_confidence else ("outline",)
    grid = [[(variant, view) for view in VIEWS] for variant in variants]  # rows of (variant, view)
    if 2 * si < max(lr, ap):  # a slab: views stacked, variants side by side
        grid = [list(column) for column in zip(*grid, strict=True)]
    col_widths = [max(sizes[row[c][1]][0] for row in grid) for c in range(len(grid[0]))]
    row_heights = [max(sizes[view][1] for _, view in row) for row in grid]
    panels = {}
    for r, row in enumerate(grid):
        for c, key in enumerate(row):
            x, y = sum(col_widths[:c]) + GAP_PX * c, sum(row_heights[:r]) + GAP_PX * r
            panels[key] = Box(x, y, *sizes[key[1]])
    grid_width = sum(col_widths) + GAP_PX * (len(col_widths) - 1)
    legend_top = sum(row_heights) + GAP_PX * len(row_heights)
    legend_width, legend_height = _legend_size(legend_lines(caption, with_confidence=with_confidence), _font())
    return Layout(scale, panels, legend_top, max(grid_width, legend_width), legend_top + legend_height)


def legend_lines(caption: Caption, *, with_confidence: bool) -> list[tuple[RGB | None, str, RGB]]:
    """The legend, one (swatch colour or None, text, text colour) a line: what the colours mean,
    the liver's figures, and the review flag (amber when raised)."""
    lines: list[tuple[RGB | None, str, RGB]] = [(OUTLINE_RGB, "liver mask (outline)", TEXT_RGB)]
    if with_confidence:
        lines.append((UNSURE_RGB, f"low confidence, shown in and {AROUND_LIVER_MM:g} mm around the liver", TEXT_RGB))
    hu = "" if caption.liver_mean_hu is None else f", mean {caption.liver_mean_hu:.0f} HU"
    lines.append((None, f"Liver {caption.liver_volume_ml:.1f} mL{hu}", TEXT_RGB))
    if caption.review_reasons:
        reasons = ", ".join(code.replace("_", " ") for code in caption.review_reasons)
        lines.append((None, f"Review recommended: {reasons}", OUTLINE_RGB))
    else:
        lines.append((None, "No review recommended", NO_REVIEW_RGB))
    return lines


def _legend_size(lines: list[tuple[RGB | None, str, RGB]], font: ImageFont.ImageFont) -> tuple[int, int]:
    width = max(SWATCH_PX + round(font.getlength(text)) for _, text, _ in lines) + 2 * LEGEND_PAD_PX
    return width, len(lines) * LINE_PX + 2 * LEGEND_PAD_PX


def _draw_legend(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, top: int, lines: list[tuple[RGB | None, str, RGB]]) -> None:
    for k, (swatch, text, colour) in enumerate(lines):
        x, y = LEGEND_PAD_PX, top + LEGEND_PAD_PX + k * LINE_PX
        if swatch is not None:
            draw.rectangle((x, y + 2, x + TEXT_PX - 3, y + TEXT_PX - 1), fill=tuple(int(c) for c in swatch))
        draw.text((x + SWATCH_PX, y), text, fill=tuple(int(c) for c in colour), font=font)


def _font() -> ImageFont.ImageFont:
    # Pillow's bundled font at TEXT_PX (a bitmap fallback where Pillow has no FreeType).
    return ImageFont.load_default(size=TEXT_PX)


def _planes(volume_lps: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The three planes through `centre`, each (rows, columns) as the panel draws it."""
    return {
        "axial": volume_lps[:, :, centre[2]].T,  # rows: anterior -> posterior; columns: right -> left
        "coronal": volume_lps[:, centre[1], :].T[::-1],  # rows: superior -> inferior
        "sagittal": volume_lps[centre[0], :, :].T[::-1],  # columns: anterior -> posterior
    }


def _nearest_lps_axes(image: sitk.Image) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each patient axis L, P, S: the image index axis (0=x, 1=y, 2=z) closest to it, and
    whether that index axis runs against it."""
    direction = np.array(image.GetDirection()).reshape(3, 3)  # [physical, index axis]
    perm = max(itertools.permutations(range(3)), key=lambda q: sum(abs(direction[p, q[p]]) for p in range(3)))
    flips = tuple(bool(direction[p, perm[p]] < 0) for p in range(3))
    return perm, flips  # type: ignore[return-value]


def _as_lps(array_zyx: np.ndarray, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> np.ndarray:
    """A (L, P, S)-indexed view of a (z, y, x) array (no copy): index grows to left, posterior, superior."""
    view = np.transpose(array_zyx, [2 - perm[p] for p in range(3)])
    for p in range(3):
        if flips[p]:
            view = np.flip(view, axis=p)
    return view


def _centre(
    mask_zyx: np.ndarray, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> tuple[int, int, int]:
    """The 0/1 mask's centre of mass as (L, P, S) indices; the volume's centre when it is empty.

    Two passes of integer sums over the (z, y, x) array: ~10x faster than counting non-zeros
    along each axis of a transposed view.
    """
    per_zy = mask_zyx.sum(axis=2, dtype=np.uint32)
    profiles_xyz = (mask_zyx.sum(axis=(0, 1), dtype=np.uint64), per_zy.sum(axis=0, dtype=np.uint64), per_zy.sum(axis=1, dtype=np.uint64))
    centre = []
    for p in range(3):
        profile = profiles_xyz[perm[p]].astype(np.float64)
        total = profile.sum()
        index = (profile @ np.arange(profile.size)) / total if total else (profile.size - 1) / 2
        index = int(round(float(index)))
        centre.append(profile.size - 1 - index if flips[p] else index)
    return centre[0], centre[1], centre[2]


def _resize(plane: np.ndarray, size_wh: tuple[int, int], resample: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode F
    return np.asarray(image.resize(size_wh, resample=resample), dtype=np.float32)


def outline_overlay(
    plane_hu: np.ndarray,
    outlines: Sequence[tuple[np.ndarray, RGB]],
    *,
    window_hu: tuple[float, float] = SOFT_TISSUE_HU,
    width: int = 2,
    dim: float = 1.0,
    tint: tuple[np.ndarray, RGB] | None = None,
    coincide_rgb: RGB | None = None,
) -> np.ndarray:
    """A CT plane (H, W) in HU drawn with mask outlines: RGB float32 (H, W, 3) in [0, 255].

    The plane is shown grey in `window_hu`, scaled by `dim`, blended with a colour where `tint`
    = (opacity (H, W) in [0, 1], colour) asks; then the inner border (`width` pixels) of each
    (mask (H, W) bool, colour) in `outlines` is drawn in its colour, later over earlier, and
    where every border passes, in `coincide_rgb` when given. The preview and the evaluation
    montage both draw with it.
    """
    low, high = window_hu
    grey = dim * (np.clip((plane_hu - low) / (high - low), 0.0, 1.0) * 255.0)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32, copy=False)
    if tint is not None:
        alpha = tint[0][..., None]
        rgb = rgb * (1 - alpha) + np.asarray(tint[1], dtype=np.float32) * alpha
    borders = [outline(inside, width) for inside, _ in outlines]
    for border, (_, colour) in zip(borders, outlines, strict=True):
        rgb[border] = colour
    if coincide_rgb is not None and borders:
        rgb[np.logical_and.reduce(borders)] = coincide_rgb
    return rgb


def outline(inside: np.ndarray, width: int = 2) -> np.ndarray:
    """A line `width` pixels wide along the inner border of a 2D mask."""
    return inside & ~ndimage.binary_erosion(inside, iterations=width, border_value=0)
