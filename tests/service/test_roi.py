"""ROI inference in the engine: only the windows that can hold the object run, and the object
comes back whole, however little of it the first look saw."""

from __future__ import annotations

import pytest
import torch

from service.sliding_window import RegionOfInterest, sliding_window_inference, window_starts

PATCH = (16, 16, 16)


def object_probability(x: torch.Tensor) -> list[torch.Tensor]:
    """Probability of 'liver' where the input passes 0.5, and a less sure head: the same answer at
    a voxel in every window, so any set of windows that covers it blends the full run's value."""
    return [torch.sigmoid((x - 0.5) * 40), torch.sigmoid((x - 0.5) * 5)]


def volume_with(boxes: list[tuple[slice, slice, slice]], shape: tuple[int, int, int]) -> torch.Tensor:
    """(1, 1, D, H, W): soft tissue (0.3) with the object (0.9) in each box."""
    image = torch.full((1, 1, *shape), 0.3)
    for box in boxes:
        image[(0, 0, *box)] = 0.9
    return image


def both(image: torch.Tensor, roi: RegionOfInterest):
    kwargs = {"overlap": 0.5, "batch_size": 4, "heads": True}
    full = sliding_window_inference(image, PATCH, object_probability, **kwargs)
    part = sliding_window_inference(image, PATCH, object_probability, roi=roi, **kwargs)
    return full, part


def first_look_windows(shape: tuple[int, int, int], every: int) -> int:
    """How many windows the first look runs: every `every`-th start per axis, and the last."""
    starts = window_starts(shape, PATCH, (0.5,) * 3)
    count = 1
    for axis in range(3):
        values = sorted({s[axis] for s in starts})
        count *= len(set(values[::every]) | {values[-1]})
    return count


def test_a_small_object_runs_few_windows_and_equals_every_window() -> None:
    image = volume_with([(slice(30, 42), slice(28, 40), slice(20, 34))], (72, 64, 64))
    full, part = both(image, RegionOfInterest())
    assert full.windows_skipped == 0
    assert part.windows_skipped > full.windows_total / 2  # most of the scan holds no object
    assert torch.equal(full.main > 0.5, part.main > 0.5)
    inside = full.main > 0.5
    for full_head, part_head in zip(full.heads, part.heads, strict=True):  # the heads too
        assert torch.allclose(full_head[inside], part_head[inside], atol=1e-5)


def test_an_object_reaching_the_first_looks_edge_is_still_whole() -> None:
    # The first look (the first and last window starts of each axis only) sees the bar's two
    # ends; the windows along it must be pulled in, round after round, until they meet.
    shape = (40, 40, 160)
    image = volume_with([(slice(4, 12), slice(4, 12), slice(6, 150))], shape)
    roi = RegionOfInterest(first_look_every=100)
    full, part = both(image, roi)
    assert torch.equal(full.main > 0.5, part.main > 0.5)
    assert int((part.main > 0.5).sum()) == 8 * 8 * 144
    ran = part.windows_total - part.windows_skipped
    assert first_look_windows(shape, 100) < ran < part.windows_total


def test_an_object_the_first_look_misses_runs_every_window() -> None:
    shape = (40, 40, 88)
    # Between the first look's windows (starts 0 and 72 along W): found only by the full grid.
    image = volume_with([(slice(18, 24), slice(18, 24), slice(36, 50))], shape)
    full, part = both(image, RegionOfInterest(first_look_every=100))
    assert part.windows_skipped == 0
    # the same windows, run in another order: equal to float rounding
    assert torch.allclose(full.main, part.main, atol=1e-6)


def test_no_object_anywhere_runs_every_window_and_finds_none() -> None:
    image = volume_with([], (40, 40, 40))
    full, part = both(image, RegionOfInterest())
    assert part.windows_skipped == 0 and not (part.main > 0.5).any()


def test_a_batch_of_images_gets_a_region_each() -> None:
    shape = (48, 48, 48)
    one = volume_with([(slice(2, 10), slice(2, 10), slice(2, 10))], shape)
    other = volume_with([(slice(36, 46), slice(36, 46), slice(36, 46))], shape)
    both_images = torch.cat([one, other])
    _, alone = both(one, RegionOfInterest())
    _, together = both(both_images, RegionOfInterest())
    assert torch.equal(together.main[:1] > 0.5, alone.main > 0.5)
    assert int((together.main[1] > 0.5).sum()) == 10**3


def test_progress_ends_at_the_total_with_windows_left_out() -> None:
    calls: list[tuple[int, int]] = []
    image = volume_with([(slice(30, 42), slice(28, 40), slice(20, 34))], (72, 64, 64))
    result = sliding_window_inference(image, PATCH, object_probability, roi=RegionOfInterest(),
                                      progress=lambda done, total: calls.append((done, total)))
    assert result.windows_skipped > 0
    assert calls[-1] == (result.windows_total, result.windows_total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_roi_on_cuda_equals_every_window() -> None:
    image = volume_with([(slice(30, 42), slice(28, 40), slice(20, 34))], (72, 64, 64)).cuda()
    full, part = both(image, RegionOfInterest())
    assert part.main.device.type == "cuda" and part.windows_skipped > 0
    assert torch.equal(full.main > 0.5, part.main > 0.5)
