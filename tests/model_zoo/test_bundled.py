"""The bundled model: it loads by its checksum, its card is honest, and it finds the liver.

The figures asserted here are floors a little under what the card reports, so a retrained model
that is worse fails, while float noise across CPUs does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from model_zoo.registry import get_card, list_cards, load_model
from service.io.decode import Upload, decode_upload
from service.pipeline import InferenceOptions, segment
from service.settings import Settings
from tests.conftest import dice
from train.phantoms import make_phantom

BUNDLED = Settings.model_fields["model"].default
HELD_OUT_SEED = 300_001  # neither a training (0-) nor a validation (100000-) seed; a portal-phase abdomen


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


def test_finds_the_liver_of_an_unseen_phantom(bundled) -> None:
    phantom = make_phantom(HELD_OUT_SEED, spacing_xyz_mm=(2.0, 2.0, 2.5))
    result = segment(phantom.ct, bundled, InferenceOptions(batch_size=2))
    mask = sitk.GetArrayViewFromImage(result.mask) > 0
    assert result.mask.GetSize() == phantom.ct.GetSize()
    # 0.962 when the model was bundled (seeds 300000-3 gave 0.88-0.96: thin native-phase slabs are
    # the hard ones, see README); 0.92 fails a worse retrained model, not float noise
    assert dice(mask, sitk.GetArrayViewFromImage(phantom.liver) > 0) >= 0.92


@pytest.mark.realdata
@pytest.mark.slow
def test_finds_the_liver_of_the_real_scan(bundled, real_sample, tmp_path) -> None:
    uploads = [Upload(filename=p.name, path=p) for p in sorted((real_sample / "dicom").glob("*.dcm"))]
    volume = decode_upload(uploads, Settings(data_dir=tmp_path))
    result = segment(volume.image, bundled, InferenceOptions(batch_size=2))
    reference = sitk.ReadImage(str(real_sample / "liver_mask.nii.gz"))
    mask = sitk.GetArrayViewFromImage(result.mask) > 0
    score = dice(mask, sitk.GetArrayViewFromImage(reference) > 0)
    assert score >= 0.9, f"Dice {score:.3f} on the real sample (0.944 when bundled; the issue aims at 0.85)"
    assert np.isclose(get_card(BUNDLED).metrics["real_sample_dice"], score, atol=0.01)
