"""One resolution of inference options (service.options): the precedence request > setting >
card, and every field of a card's `inference` block reaching the engine of a served request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from model_zoo.card import InferenceDefaults, InputContract, ModelCard
from model_zoo.preprocessing import hu_to_input_units
from service.app import create_app
from service.errors import InvalidOption
from service.options import InferenceOptions, SegmentParams, resolve_options
from service.settings import Settings
from tests.conftest import ORIENTATIONS, TINY, nifti_bytes, save_tiny_checkpoint, sphere_ct

CONTRACT = InputContract(spacing_xyz_mm=(4.0,) * 3, hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32))


def card(arch: str = "unet3d_ds", **inference: object) -> ModelCard:
    features = [4, 8, 16] if arch == "unet3d_ds" else [4, 8, 16, 32]
    return ModelCard(
        name=f"{arch}.test", arch=arch, arch_kwargs={"features": features}, input=CONTRACT,
        inference=InferenceDefaults(**inference), intended_use="tests",
    )


def test_the_request_beats_the_setting_which_beats_the_card() -> None:
    model = card(overlap=0.3, window_batch_size=3, skip_air_hu=-700.0)
    settings = Settings(overlap=0.4, window_batch_size=5, skip_air_hu=-600.0)
    request = SegmentParams(overlap=0.6)
    both = resolve_options(model, request, settings)
    assert (both.overlap, both.batch_size, both.skip_air_hu) == (0.6, 5, -600.0)
    operator = resolve_options(model, SegmentParams(), settings)
    assert (operator.overlap, operator.batch_size, operator.skip_air_hu) == (0.4, 5, -600.0)
    unset = resolve_options(model, SegmentParams(), Settings())
    assert (unset.overlap, unset.batch_size, unset.skip_air_hu) == (0.3, 3, -700.0)
    assert resolve_options(card()).overlap == InferenceDefaults().overlap == InferenceOptions().overlap


def test_without_settings_the_environment_plays_no_part(monkeypatch) -> None:
    # train.evaluate and training validation pass no settings: a shell's LIVERSEG_* must not change them.
    monkeypatch.setenv("LIVERSEG_OVERLAP", "0.8")
    monkeypatch.setenv("LIVERSEG_CONFIDENCE_REVIEW_THRESHOLD", "0.9")
    options = resolve_options(card(overlap=0.3))
    assert (options.overlap, options.review_fraction) == (0.3, 0.45)


def test_tta_mirrors_the_cards_axes_only_when_asked() -> None:
    model = card(mirror_axes=(0, 2))
    assert resolve_options(model).mirror_axes == ()
    assert resolve_options(model, SegmentParams(tta=True)).mirror_axes == (0, 2)


def test_a_card_that_mirrors_by_default_is_mirrored_unless_the_request_says_no() -> None:
    model = card(mirror_axes=(0, 2), tta=True)
    assert (resolve_options(model).tta, resolve_options(model).mirror_axes) == (True, (0, 2))
    off = resolve_options(model, SegmentParams(tta=False))
    assert (off.tta, off.mirror_axes) == (False, ())
    with pytest.raises(ValidationError, match="mirror_axes names no axis"):
        InferenceDefaults(tta=True)


def test_depth_comes_from_the_request_then_the_card_and_only_for_unetpp() -> None:
    assert resolve_options(card("unetpp3d", unetpp_depth=2)).depth == 2
    assert resolve_options(card("unetpp3d", unetpp_depth=2), SegmentParams(depth=1)).depth == 1
    with pytest.raises(InvalidOption, match="UNet\\+\\+ models only"):
        resolve_options(card(), SegmentParams(depth=2))
    with pytest.raises(InvalidOption, match="depth=4 asks for more: use 1..3"):
        resolve_options(card("unetpp3d"), SegmentParams(depth=4))


# Each card field, a value unlike the default, the engine argument it must arrive as, and how the
# request asks for the path that uses it.
CARD_FIELDS = [
    ("overlap", 0.25, "overlap", 0.25, {}),
    ("mode", "constant", "mode", "constant", {}),
    ("sigma_scale", 0.25, "sigma_scale", 0.25, {}),
    ("window_batch_size", 2, "batch_size", 2, {}),
    ("skip_air_hu", -800.0, "skip_below", hu_to_input_units(-800.0, CONTRACT), {}),
    ("mirror_axes", [1], "mirror_axes", (1,), {"tta": True}),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("options"), TINY, spacing_mm=4.0)


def served_with(checkpoints: Path, folder: Path, **inference: object) -> Settings:
    """Settings serving the tiny checkpoint with these card `inference` values (weights unchanged)."""
    shutil.copytree(checkpoints, folder)
    path = folder / f"{TINY}.json"
    data = json.loads(path.read_text())
    data["inference"] |= inference
    path.write_text(json.dumps(data))
    return Settings(model=TINY, model_dir=folder, data_dir=folder / "var", device="cpu")


@pytest.mark.parametrize(("field", "value", "argument", "expected", "params"), CARD_FIELDS, ids=[c[0] for c in CARD_FIELDS])
def test_every_card_inference_field_reaches_the_engine(checkpoints, tmp_path, monkeypatch, field, value, argument, expected, params) -> None:
    import service.pipeline as pipeline

    seen: dict = {}
    engine = pipeline.sliding_window_inference

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return engine(*args, **kwargs)

    monkeypatch.setattr(pipeline, "sliding_window_inference", spy)
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(40, 36, 20))
    with TestClient(create_app(served_with(checkpoints, tmp_path / "models", **{field: value}))) as client:
        answer = client.post("/segment", params={"output": "json", **params}, files={"file": ("ct.nii.gz", nifti_bytes(ct))})
    assert answer.status_code == 200, answer.text
    assert seen[argument] == expected
    reported = answer.json()["options"]
    for name in ("overlap", "mode", "sigma_scale", "skip_air_hu"):
        if name == field:
            assert reported[name] == value  # the summary says what ran, not null
    if field == "window_batch_size":
        assert reported["batch_size"] == value


@pytest.mark.parametrize(("params", "mirrored"), [({}, (1,)), ({"tta": "false"}, ())], ids=["unsaid", "tta=false"])
def test_a_served_card_that_mirrors_by_default(checkpoints, tmp_path, monkeypatch, params, mirrored) -> None:
    import service.pipeline as pipeline

    seen: dict = {}
    engine = pipeline.sliding_window_inference
    monkeypatch.setattr(pipeline, "sliding_window_inference", lambda *a, **k: seen.update(k) or engine(*a, **k))
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(40, 36, 20))
    with TestClient(create_app(served_with(checkpoints, tmp_path / "models", tta=True, mirror_axes=[1]))) as client:
        answer = client.post("/segment", params={"output": "json", **params}, files={"file": ("ct.nii.gz", nifti_bytes(ct))})
    assert answer.status_code == 200, answer.text
    assert seen["mirror_axes"] == mirrored
    assert answer.json()["options"]["tta"] is bool(mirrored)


def test_the_summary_reports_the_effective_options_not_nulls(checkpoints, tmp_path) -> None:
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(40, 36, 20))
    with TestClient(create_app(served_with(checkpoints, tmp_path / "models"))) as client:
        options = client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", nifti_bytes(ct))}).json()["options"]
    defaults = InferenceDefaults()
    assert options == {
        "tta": False, "overlap": defaults.overlap, "depth": None, "roi": True, "batch_size": defaults.window_batch_size,
        "skip_air_hu": defaults.skip_air_hu, "mode": defaults.mode, "sigma_scale": defaults.sigma_scale,
    }


def test_roi_is_on_unless_the_request_turns_it_off() -> None:
    assert resolve_options(card()).roi and resolve_options(card(), SegmentParams()).roi
    assert not resolve_options(card(), SegmentParams(roi=False)).roi


def test_the_operators_cost_limits_reach_the_pipeline(checkpoints, tmp_path) -> None:
    settings = served_with(checkpoints, tmp_path / "models").model_copy(update={"max_windows": 2})
    assert resolve_options(card(), SegmentParams(), settings).max_windows == 2
    ct, _ = sphere_ct(ORIENTATIONS["LPS"], size_xyz=(120, 100, 60))  # 8 windows of 32^3 at 4 mm
    with TestClient(create_app(settings)) as client:
        answer = client.post("/segment", params={"output": "json"}, files={"file": ("ct.nii.gz", nifti_bytes(ct))})
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_option", answer.text
    assert "at most 2 per" in answer.json()["detail"]
