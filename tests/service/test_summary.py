"""The summary's review flag: the heads' disagreement and the anatomical findings, each with its
reason, and the notes that do not call for review; the X-Liverseg header says the same."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import SimpleITK as sitk

from service.options import InferenceOptions
from service.pipeline import segment
from service.summary import build_summary, summary_headers
from service.volume import Volume
from service.worker import WorkerResult
from tests.conftest import ORIENTATIONS, sphere_ct
from tests.service.test_pipeline import threshold_model


def summarise(ct: sitk.Image):
    loaded = threshold_model()
    # The card as the registry loads it, with its weights' hash.
    model = replace(loaded, card=loaded.card.model_copy(update={"weights_sha256": "0" * 64}))
    result = segment(ct, model, InferenceOptions())
    return build_summary(Volume(ct), WorkerResult(result, model, "cpu", False, 0.0), {"decode": 0.0, "encode": 0.0})


def test_a_liver_far_too_small_recommends_review_with_its_reason() -> None:
    ct, _ = sphere_ct(ORIENTATIONS["RAS"])  # a 65 mL "liver" that the grid holds whole
    summary = summarise(ct)
    assert summary.review_recommended
    codes = [reason.code for reason in summary.review_reasons]
    assert "volume_low" in codes and summary.notes == []
    (low,) = [r for r in summary.review_reasons if r.code == "volume_low"]
    assert "65 mL" in low.sentence or "66 mL" in low.sentence
    assert summary_headers(summary)["X-Liverseg-Review-Recommended"] == "true"


def test_a_liver_cut_by_the_field_of_view_is_a_note_not_a_reason() -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(72, 64, 40), centre_mm=(-20.0, 10.0, 40.0))  # through the top slice
    summary = summarise(ct)
    assert [note.code for note in summary.notes] == ["liver_cut_by_fov"]
    assert "volume_low" not in [reason.code for reason in summary.review_reasons]  # a partial liver says nothing
    assert summary.review_recommended == bool(summary.review_reasons)
    assert np.isfinite(summary.liver_volume_ml)
