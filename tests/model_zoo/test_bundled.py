"""The bundled model: it loads by its checksum, its card is honest, and it finds the liver.

The figures asserted here are floors a little under what the card reports, so a retrained model
that is worse fails, while float noise across CPUs does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.preprocessing import prepare
from model_zoo.registry import get_card, list_cards, load_model
from service.settings import Settings
from tests.conftest import dice_on_held_out_phantom, dice_on_real_sample, held_out_phantom

BUNDLED = Settings.model_fields["model"].default
# A small prepared input and every output the bundled network gave for it when it was released
# (timm's golden tensors): a refactor of the networks, blocks or loading that changes what the
# model says fails here. Rewrite it only when the bundled weights change:
#     python -m tests.model_zoo.test_bundled
GOLDEN = Path(__file__).parent / "data" / f"{BUNDLED}.golden.npz"


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED)


def test_the_default_setting_names_a_bundled_card() -> None:
    assert BUNDLED in [card.name for card in list_cards()]
    card = get_card(BUNDLED)
    assert "synthetic phantoms" in card.training.data
    assert "not a medical device" in card.intended_use
    assert card.training.command.startswith("python -m train ")
    for key in ("val_dice", "real_sample_dice", "held_out_phantom_dice", "real_sample_confidence_auroc"):
        assert key in card.metrics, key


def golden_input(model) -> np.ndarray:
    """(1, 1, 24, 24, 24) float32: the card's preprocessing of the held-out phantom, around its liver."""
    prepared = prepare(held_out_phantom().ct, model.card.input)
    d, h, w = (int(c) for c in np.argwhere(prepared.array > 0.5).mean(0))
    return np.ascontiguousarray(prepared.array[d - 12:d + 12, h - 12:h + 12, w - 12:w + 12])[None, None]


def network_outputs(model, image: np.ndarray) -> list[np.ndarray]:
    """Main logits and every head's, float32, for a prepared (1, 1, D, H, W) input."""
    with torch.inference_mode():
        outputs = model.network.eval()(torch.from_numpy(image), deep_supervision=True)
    return [o.numpy() for o in outputs]


def test_says_what_it_said_when_released(bundled) -> None:
    golden = np.load(GOLDEN)
    assert golden["weights_sha256"].item() == bundled.card.weights_sha256, (
        f"{GOLDEN.name} was written for other weights: rewrite it with python -m tests.model_zoo.test_bundled")
    outputs = network_outputs(bundled, golden["input"])
    expected = [golden[f"output_{k}"] for k in range(len(outputs))]
    assert len(expected) == len(outputs) == len(bundled.network.heads)
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == want.shape
        # float noise across CPUs and BLAS builds is ~1e-5 of the logits' range
        np.testing.assert_allclose(got, want, atol=1e-3 * float(np.abs(want).max()))


def test_finds_the_liver_of_an_unseen_phantom(bundled) -> None:
    # 0.967 for the bundled weights (0.962 for the 8-64 model; thin native-phase slabs
    # are the hard ones, see README); 0.92 fails a worse retrained model, not float noise
    assert dice_on_held_out_phantom(bundled) >= 0.92


@pytest.mark.realdata
@pytest.mark.slow
def test_finds_the_liver_of_the_real_scan(bundled, real_sample, tmp_path) -> None:
    score = dice_on_real_sample(bundled, real_sample, tmp_path)
    assert score >= 0.9, f"Dice {score:.3f} on the real sample (0.948 when bundled; the issue aims at 0.85)"
    assert np.isclose(get_card(BUNDLED).metrics["real_sample_dice"], score, atol=0.01)


if __name__ == "__main__":  # rewrite the golden outputs for the bundled weights
    model = load_model(BUNDLED)
    image = golden_input(model)
    outputs = network_outputs(model, image)
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, input=image, weights_sha256=np.array(model.card.weights_sha256),
                        **{f"output_{k}": o for k, o in enumerate(outputs)})
    sys.stdout.write(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)\n")
