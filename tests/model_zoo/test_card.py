"""The checkpoint card: exact JSON round trip, and validators that refuse nonsense with a clear message."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from model_zoo.card import InputContract, ModelCard, current_framework_versions

FULL_CARD = {
    "name": "unetpp3d.phantom_3mm",
    "version": "1.2",
    "arch": "unetpp3d",
    "arch_kwargs": {"features": [8, 16, 32], "norm": "instance", "deep_supervision": False},
    "weights_file": "unetpp3d.phantom_3mm.safetensors",
    "weights_sha256": "0" * 63 + "a",
    "input": {
        "modality": "CT",
        "spacing_xyz_mm": [3.0, 3.0, 2.5],
        "orientation": "RAS",
        "hu_window": [-200.0, 250.0],
        "normalisation": "zscore",
        "mean": 60.5,
        "std": 45.25,
        "patch_size_dhw": [48, 64, 64],
        "crop_to_body": True,
        "antialias": True,
        "body_threshold_hu": -500.0,
        "body_margin_mm": 12.0,
    },
    "channel_def": {"0": "background", "1": "liver"},
    "inference": {
        "overlap": 0.25,
        "mode": "constant",
        "sigma_scale": 0.125,
        "mirror_axes": [0, 2],
        "tta": True,
        "skip_air_hu": -900.0,
        "window_batch_size": 8,
        "unetpp_depth": 3,
    },
    "training": {
        "data": "40 synthetic phantoms (seeds 0-39), validated on seeds 100-109",
        "epochs": 30,
        "seconds": 1234.5,
        "command": "python -m train --arch unetpp3d",
        "code_revision": "1ae9e99",
        "seed": 7,
        "device": "cuda",
        "distillation": "knowledge distillation from unet3d_ds.phantom_4mm (train/distill.py)",
    },
    "metrics": {"dice_phantoms": 0.9312345678901234, "confidence_auroc": 0.87},
    "confidence": "1 - mean absolute difference between each head's liver probability and the main output's.",
    "calibration": {
        "temperature": 1.31, "ece_before": 0.0123, "ece_after": 0.0045,
        "data": "4 held-out phantoms (seeds 200004-200007)", "command": "python -m train.calibrate --model unet3d_ds.phantom_3mm",
    },
    "intended_use": "Research; not a medical device.",
    "license": "Apache-2.0",
    "framework_versions": {"torch": "2.13.0"},
}


def card_dict(**changes: object) -> dict:
    """FULL_CARD with changes at "__"-separated paths ("input__hu_window" -> value; None deletes)."""
    data = copy.deepcopy(FULL_CARD)
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = data
        for parent in parents:
            node = node[parent]
        if value is None:
            node.pop(key)
        else:
            node[key] = value
    return data


def test_round_trip_is_exact() -> None:
    card = ModelCard.model_validate(FULL_CARD)
    text = card.model_dump_json(indent=2)
    again = ModelCard.model_validate_json(text)
    assert again == card
    assert again.model_dump_json(indent=2) == text
    assert json.loads(text) == FULL_CARD  # plain JSON: exactly what was written, no extra fields
    assert card.tag == "phantom_3mm"
    assert card.input.spacing_xyz_mm == (3.0, 3.0, 2.5)
    assert card.metrics["dice_phantoms"] == 0.9312345678901234


def test_defaults_make_a_minimal_card() -> None:
    card = ModelCard(
        name="unet3d_ds.tiny",
        arch="unet3d_ds",
        arch_kwargs={"features": (4, 8, 16)},  # tuples are stored as the lists JSON gives back
        input=InputContract(
            spacing_xyz_mm=(3, 3, 3), hu_window=(-200, 250), patch_size_dhw=(32, 32, 32)
        ),
    )
    assert card.channel_def == {"0": "background", "1": "liver"}
    assert card.input.orientation == "LPS" and card.input.normalisation == "window01"
    assert card.input.antialias is False  # cards from before the option keep their meaning
    assert card.arch_kwargs == {"features": [4, 8, 16]}
    assert ModelCard.model_validate_json(card.model_dump_json()) == card


def test_card_is_frozen() -> None:
    card = ModelCard.model_validate(FULL_CARD)
    with pytest.raises(ValidationError, match="frozen"):
        card.name = "unetpp3d.other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        card.input.hu_window = (0.0, 1.0)  # type: ignore[misc]


def test_orientation_is_normalised_to_upper_case() -> None:
    assert ModelCard.model_validate(card_dict(input__orientation="ras")).input.orientation == "RAS"


BAD_CARDS = [
    ({"input__hu_window": [250.0, -200.0]}, "lo < hi"),
    ({"input__hu_window": [100.0, 100.0]}, "lo < hi"),
    ({"input__spacing_xyz_mm": [0.0, 3.0, 3.0]}, "greater than 0"),
    ({"input__spacing_xyz_mm": [3.0, -1.0, 3.0]}, "greater than 0"),
    ({"input__spacing_xyz_mm": [3.0, 3.0]}, r"spacing_xyz_mm.2\s+Field required"),
    ({"input__patch_size_dhw": [0, 64, 64]}, "greater than 0"),
    ({"input__orientation": "LLS"}, "one of each of L/R, P/A, S/I"),
    ({"input__orientation": "LP"}, "one of each of L/R, P/A, S/I"),
    ({"input__orientation": "XYZ"}, "one of each of L/R, P/A, S/I"),
    ({"input__modality": "MR"}, "Input should be 'CT'"),
    ({"input__normalisation": "minmax"}, "'window01' or 'zscore'"),
    ({"input__mean": None}, "needs mean and std"),
    ({"input__std": 0.0}, "greater than 0"),
    ({"input__normalisation": "window01"}, "only used by normalisation 'zscore'"),
    ({"input__spacing": [3, 3, 3]}, "Extra inputs are not permitted"),
    ({"name": "dsn3d.phantom_3mm"}, "must be 'unetpp3d.TAG'"),
    ({"name": "unetpp3d"}, "must be 'unetpp3d.TAG'"),
    ({"name": "unetpp3d."}, "must be 'unetpp3d.TAG'"),
    ({"name": "unetpp3d.../../etc"}, "must be 'unetpp3d.TAG'"),
    ({"weights_file": "../elsewhere.safetensors"}, "beside the card"),
    ({"weights_file": "unetpp3d.phantom_3mm.pt"}, "beside the card"),
    ({"weights_sha256": "abc"}, "64 lower-case hex"),
    ({"channel_def": {"0": "background", "2": "liver"}}, "channel_def keys must be '0'..'1'"),
    ({"channel_def": {}}, "channel_def keys"),
    ({"arch_kwargs": {"out_channels": 3}}, "out_channels=3 but channel_def names 2"),
    ({"arch_kwargs": {"act": {1, 2}}}, "not a valid JSON value"),
    ({"inference__overlap": 1.0}, "less than 1"),
    ({"inference__mode": "mean"}, "'gaussian' or 'constant'"),
    ({"inference__mirror_axes": [0, 0]}, "repeats an axis"),
    ({"inference__mirror_axes": [3]}, "Input should be 0, 1 or 2"),
    ({"inference__window_batch_size": 0}, "greater than 0"),
    ({"inference__unetpp_depth": 5}, "less than or equal to 4"),
    ({"training__epochs": -1}, "greater than or equal to 0"),
    ({"metrics": {"dice": float("nan")}}, "finite number"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_CARDS, ids=[str(c) for c, _ in BAD_CARDS])
def test_bad_cards_are_refused(changes: dict, message: str) -> None:
    data = card_dict(**changes)
    with pytest.raises(ValidationError, match=message):
        ModelCard.model_validate(data)
    # The same refusal from JSON text, as the registry reads cards (sets are not JSON: skip those).
    if not any(
        isinstance(v, dict) and any(isinstance(x, set) for x in v.values())
        for v in changes.values()
    ):
        with pytest.raises(ValidationError, match=message):
            ModelCard.model_validate_json(json.dumps(data))


def test_framework_versions_name_the_stack() -> None:
    versions = current_framework_versions()
    assert {"python", "torch", "numpy", "SimpleITK", "safetensors", "pydantic"} <= versions.keys()
    assert all(isinstance(v, str) and v for v in versions.values())
