"""service.io.preview: panels sized by their physical extent (a 20-slice series gives no thin
strip), the radiological convention in any orientation, a legend with the figures and the review
flag, and confidence drawn only in and around the liver."""

from __future__ import annotations

import io

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from service.io.preview import (
    AROUND_LIVER_MM,
    MAX_PANEL_PX,
    OUTLINE_RGB,
    PANEL_PX,
    UNSURE_RGB,
    VIEWS,
    Caption,
    legend_lines,
    preview_layout,
    preview_png,
)

CAPTION = Caption(liver_volume_ml=1234.5, liver_mean_hu=88.6)


def phantom(size_xyz=(40, 30, 20), spacing=(1.0, 1.0, 2.0)):
    """CT at 60 HU with air around, and a liver blob in the patient's right, superior, anterior part (LPS)."""
    nx, ny, nz = size_xyz
    ct = np.full((nz, ny, nx), -1000, np.int16)
    ct[2:-2, 3:-3, 3:-3] = 60
    mask = np.zeros((nz, ny, nx), np.uint8)
    mask[nz * 6 // 10 : nz * 9 // 10, ny // 6 : ny // 2, nx // 10 : nx * 2 // 5] = 1  # low x: right; low y: anterior; high z: superior
    ct_image, mask_image = sitk.GetImageFromArray(ct), sitk.GetImageFromArray(mask)
    for image in (ct_image, mask_image):
        image.SetSpacing(spacing)
    return ct_image, mask_image


def decode_png(data: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.mode == "RGB"
    return np.asarray(picture)


def crop(picture: np.ndarray, box) -> np.ndarray:
    return picture[box.y : box.y + box.height, box.x : box.x + box.width]


def is_colour(picture: np.ndarray, rgb) -> np.ndarray:
    return np.all(picture == np.asarray(rgb, dtype=picture.dtype), axis=2)


# (size xyz, spacing xyz mm): a small cube-ish volume, a full abdomen, and the real sample's
# 20-slice slab (500 x 500 x 40 mm).
GRIDS = {
    "small": ((40, 30, 20), (1.0, 1.0, 2.0)),
    "abdomen": ((512, 512, 300), (0.8, 0.8, 1.5)),
    "20-slice slab": ((512, 512, 20), (0.977, 0.977, 2.0)),
    "anisotropic in-plane": ((200, 100, 60), (1.0, 2.5, 3.0)),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("with_confidence", [False, True])
def test_panels_are_sized_by_their_physical_extent(grid, with_confidence):
    size, spacing = GRIDS[grid]
    ct = sitk.Image(list(size), sitk.sitkInt16)
    ct.SetSpacing(spacing)
    layout = preview_layout(ct, CAPTION, with_confidence=with_confidence)
    lr, ap, si = (n * s for n, s in zip(size, spacing, strict=True))
    extents = {"axial": (lr, ap), "coronal": (lr, si), "sagittal": (ap, si)}
    assert len(layout.panels) == 3 * (2 if with_confidence else 1)
    for (_, view), box in layout.panels.items():
        width_mm, height_mm = extents[view]
        assert abs(box.width - width_mm * layout.scale_px_per_mm) <= 0.5, view
        assert abs(box.height - height_mm * layout.scale_px_per_mm) <= 0.5, view
        assert box.x + box.width <= layout.width and box.y + box.height <= layout.legend_top
    assert PANEL_PX - 0.5 <= max(lr, ap, si) * layout.scale_px_per_mm <= MAX_PANEL_PX + 0.5
    boxes = list(layout.panels.values())
    for i, a in enumerate(boxes):  # no panel over another
        for b in boxes[i + 1 :]:
            assert a.x + a.width <= b.x or b.x + b.width <= a.x or a.y + a.height <= b.y or b.y + b.height <= a.y


def test_a_20_slice_series_gives_no_thin_strip():
    """The slab's coronal and sagittal panels are stacked under the axial one at a scale that
    gives its 40 mm at least 60 pixels, and the canvas is mostly picture, not black."""
    size, spacing = GRIDS["20-slice slab"]
    ct = sitk.Image(list(size), sitk.sitkInt16)
    ct.SetSpacing(spacing)
    layout = preview_layout(ct, CAPTION, with_confidence=False)
    axial, coronal, sagittal = (layout.panels["outline", view] for view in VIEWS)
    assert coronal.height >= 60 and sagittal.height >= 60
    assert coronal.y >= axial.y + axial.height and sagittal.y >= coronal.y + coronal.height, "stacked, not side by side"
    assert coronal.width == axial.width
    drawn = sum(b.width * b.height for b in layout.panels.values())
    assert drawn / (layout.width * layout.legend_top) > 0.85


def test_the_picture_has_the_layouts_size_and_draws_each_panel():
    ct, mask = phantom()
    confidence = sitk.Cast(mask, sitk.sitkFloat32) * 0.5 + 0.25
    picture = decode_png(preview_png(ct, mask, confidence, caption=CAPTION))
    layout = preview_layout(ct, CAPTION, with_confidence=True)
    assert picture.shape[:2] == (layout.height, layout.width)
    for key, box in layout.panels.items():
        assert is_colour(crop(picture, box), OUTLINE_RGB).sum() > 20, f"{key}: the outline must be drawn"


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIR", "LSA"])
def test_the_radiological_convention_in_any_orientation(orientation):
    """The blob lies in the patient's right, anterior, superior: whatever the volume's axes, it is
    drawn on the viewer's left of the axial and coronal views, near the top of the axial view,
    near the top of the coronal and sagittal views, and on the left (anterior) of the sagittal view."""
    ct, mask = phantom()
    ct, mask = sitk.DICOMOrient(ct, orientation), sitk.DICOMOrient(mask, orientation)
    picture = decode_png(preview_png(ct, mask, caption=CAPTION))
    layout = preview_layout(ct, CAPTION, with_confidence=False)
    for view in VIEWS:
        panel = crop(picture, layout.panels["outline", view])
        rows, cols = np.nonzero(is_colour(panel, OUTLINE_RGB))
        assert rows.size > 20, f"{view}: the outline must be drawn"
        assert cols.mean() < panel.shape[1] / 2, f"{view}: right (axial, coronal) or anterior (sagittal) on the left"
        assert rows.mean() < panel.shape[0] / 2, f"{view}: anterior (axial) or superior at the top"


def test_the_legend_explains_the_colours_and_gives_the_figures():
    ct, mask = phantom()
    confidence = sitk.Cast(mask, sitk.sitkFloat32) * 0.5 + 0.25
    flagged = Caption(liver_volume_ml=699.44, liver_mean_hu=88.6, review_reasons=("low_confidence", "mask_in_thorax"))
    layout = preview_layout(ct, flagged, with_confidence=True)
    picture = decode_png(preview_png(ct, mask, confidence, caption=flagged))
    legend = picture[layout.legend_top :]
    assert is_colour(legend, OUTLINE_RGB).sum() > 50, "the outline's colour key"
    assert is_colour(legend, UNSURE_RGB).sum() > 50, "the confidence's colour key"
    assert is_colour(legend, (255, 255, 255)).sum() > 100, "text"
    texts = [text for _, text, _ in legend_lines(flagged, with_confidence=True)]
    assert texts[2] == "Liver 699.4 mL, mean 89 HU"
    assert texts[3] == "Review recommended: low confidence, mask in thorax"
    assert [text for _, text, _ in legend_lines(CAPTION, with_confidence=False)][-1] == "No review recommended"
    # The figures are drawn, not only listed: another volume gives another legend.
    other = decode_png(preview_png(ct, mask, confidence, caption=Caption(15.0, None, flagged.review_reasons)))
    assert other.shape != picture.shape or not np.array_equal(other[layout.legend_top :], legend)


def test_the_legend_without_confidence_has_no_confidence_key():
    ct, mask = phantom()
    layout = preview_layout(ct, CAPTION, with_confidence=False)
    legend = decode_png(preview_png(ct, mask, caption=CAPTION))[layout.legend_top :]
    assert is_colour(legend, OUTLINE_RGB).sum() > 50
    assert not is_colour(legend, UNSURE_RGB).any()


def test_confidence_is_shown_only_in_and_around_the_liver():
    """A map unsure everywhere (as on other organs) is red inside the mask and within
    AROUND_LIVER_MM of it, and plain dimmed grey farther away."""
    ct, mask = phantom(size_xyz=(120, 100, 60), spacing=(1.0, 1.0, 1.0))
    confidence = sitk.Image(ct.GetSize(), sitk.sitkFloat32)  # 0 everywhere: unsure
    confidence.CopyInformation(ct)
    picture = decode_png(preview_png(ct, mask, confidence, caption=CAPTION)).astype(int)
    layout = preview_layout(ct, CAPTION, with_confidence=True)
    box = layout.panels["confidence", "axial"]
    panel = crop(picture, box)
    inside = crop(decode_png(preview_png(ct, mask, caption=CAPTION)), layout.panels["outline", "axial"])  # for the mask's place
    rows, cols = np.nonzero(is_colour(inside, OUTLINE_RGB))
    redness = panel[..., 0] - panel[..., 1]
    centre = (int(rows.mean()), int(cols.mean()))
    assert redness[centre] > 150, "unsure inside the liver: red"
    far = round((AROUND_LIVER_MM + 5) * layout.scale_px_per_mm)
    beyond = redness[:, cols.max() + far :]
    assert beyond.size and np.abs(beyond).max() <= 1, "unsure far from the liver: grey"
    near = redness[centre[0], cols.max() + 2 : cols.max() + round(0.5 * AROUND_LIVER_MM * layout.scale_px_per_mm)]
    assert near.min() > 100, "unsure just around the liver: red"


def test_an_empty_mask_still_draws():
    ct, mask = phantom()
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    layout = preview_layout(ct, CAPTION, with_confidence=False)
    picture = decode_png(preview_png(ct, empty, caption=Caption(0.0, None)))
    assert not is_colour(picture[: layout.legend_top], OUTLINE_RGB).any()
    assert picture[: layout.legend_top].max() > 0


def test_images_of_different_grids_are_refused():
    ct, _ = phantom()
    with pytest.raises(ValueError, match="share one grid"):
        preview_png(ct, sitk.Image([3, 3, 3], sitk.sitkUInt8), caption=CAPTION)
