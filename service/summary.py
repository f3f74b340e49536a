"""What a client is told about a finished segmentation: the JSON summary and its X-Liverseg-* headers."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict

from service.confidence import HOW_COMPUTED
from service.pipeline import Segmentation
from service.schemas import BoundingBox, ConfidenceSummary, Finding, InputGeometry, Summary
from service.volume import Volume
from service.worker import WorkerResult


def build_summary(volume: Volume, result: WorkerResult, timings_s: dict[str, float]) -> Summary:
    """The JSON summary of one segmentation: the liver found, confidence, geometry, timings."""
    seg = result.segmentation
    image = volume.image
    card = result.model.card
    bbox = None
    if seg.bbox_start_xyz is not None:
        bbox = BoundingBox(
            start_xyz=seg.bbox_start_xyz,
            size_xyz=seg.bbox_size_xyz,
            min_lps_mm=seg.bbox_min_lps_mm,
            max_lps_mm=seg.bbox_max_lps_mm,
        )
    reasons = review_reasons(seg)
    return Summary(
        model=card.name,
        model_sha256=card.weights_sha256,
        intended_use=card.intended_use,
        device=result.device,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        liver_volume_ml=round(seg.liver_volume_ml, 2),
        liver_mean_hu=None if seg.liver_mean_hu is None else round(seg.liver_mean_hu, 1),
        bbox=bbox,
        confidence=ConfidenceSummary(**asdict(seg.confidence_summary), how=HOW_COMPUTED),
        review_recommended=bool(reasons),
        review_reasons=reasons,
        notes=[Finding(code=f.code, sentence=f.sentence) for f in seg.findings if not f.recommends_review],
        input=InputGeometry(
            source=volume.source,
            size_xyz=list(image.GetSize()),
            spacing_xyz_mm=list(image.GetSpacing()),
            origin_lps_mm=list(image.GetOrigin()),
            direction=list(image.GetDirection()),
            warnings=list(volume.warnings),
        ),
        windows_total=seg.windows_total,
        windows_skipped=seg.windows_skipped,
        oom_fallback=result.oom_fallback,
        options=seg.options.reported(),
        timings_s={k: round(v, 4) for k, v in {**timings_s, **seg.timings_s, "queued": result.queued_s}.items()},
    )


def review_reasons(seg: Segmentation) -> list[Finding]:
    """Why review is recommended: the heads' disagreement first, then each anatomical finding."""
    reasons = []
    confidence = seg.confidence_summary
    if confidence.review_recommended:
        reasons.append(Finding(
            code="low_confidence",
            sentence=f"{confidence.fraction_below_threshold:.0%} of the liver has confidence below "
            f"{confidence.threshold:g}: the deep-supervision heads disagree with the mask there.",
        ))
    reasons += [Finding(code=f.code, sentence=f.sentence) for f in seg.findings if f.recommends_review]
    return reasons


def summary_headers(summary: Summary) -> dict[str, str]:
    """The summary's main figures as X-Liverseg-* headers, for clients that only save the mask.

    X-Liverseg-Warnings (only when there are any) joins the input's warnings with " | ", e.g.
    that a DICOM SEG references UIDs minted for an anonymised series.
    """
    return warnings_header(summary.input.warnings) | {
        "X-Liverseg-Model": summary.model,
        "X-Liverseg-Liver-Volume-Ml": f"{summary.liver_volume_ml:.2f}",
        "X-Liverseg-Liver-Mean-Hu": "" if summary.liver_mean_hu is None else f"{summary.liver_mean_hu:.1f}",
        "X-Liverseg-Confidence-Mean": f"{summary.confidence.mean_in_liver:.4f}",
        "X-Liverseg-Review-Recommended": str(summary.review_recommended).lower(),
        "X-Liverseg-Device": summary.device,
    }


def warnings_header(warnings: list[str]) -> dict[str, str]:
    """{"X-Liverseg-Warnings": the sentences joined with " | "} (ASCII), or {} when there are none."""
    if not warnings:
        return {}
    text = " | ".join(" ".join(w.split()) for w in warnings)  # header values hold no line breaks
    return {"X-Liverseg-Warnings": text.encode("ascii", "replace").decode("ascii")}
