"""The fast paths give the plain path's mask with the bundled model: ROI inference against every
window, OpenVINO against PyTorch (Dice >= 0.999 on the input grid), on held-out phantoms and on
the real scans in ../shared/data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from model_zoo.backends import OpenVinoRuntime, TorchRuntime
from model_zoo.registry import LoadedModel, load_model
from service.io.decode import Upload, decode_upload
from service.options import resolve_options
from service.pipeline import segment
from service.settings import Settings
from tests.conftest import REPO, dice
from train.phantoms import make_phantom

BUNDLED = Settings.model_fields["model"].default
HELD_OUT_SEEDS = [200_000, 200_002]  # held out (200000+); 18 and 36 windows at 1.6 x 1.6 x 2 mm
SHARED_DATA = REPO.parent / "shared" / "data"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served() -> LoadedModel:
    """The bundled model as the service runs it on the CPU: OpenVINO."""
    model = load_model(BUNDLED, backend="auto")
    assert isinstance(model.runtime, OpenVinoRuntime), model.runtime.fallback_reason
    return model


def roi_against_every_window(model: LoadedModel, ct: sitk.Image) -> tuple[float, object, object]:
    options = resolve_options(model.card)
    fast = segment(ct, model, options)
    plain = segment(ct, model, replace(options, roi=False))
    score = dice(sitk.GetArrayViewFromImage(fast.mask), sitk.GetArrayViewFromImage(plain.mask))
    return score, fast, plain


@pytest.mark.parametrize("seed", HELD_OUT_SEEDS)
def test_roi_gives_every_windows_mask_on_held_out_phantoms(served, seed) -> None:
    ct = make_phantom(seed, spacing_xyz_mm=(1.6, 1.6, 2.0)).ct
    score, fast, plain = roi_against_every_window(served, ct)
    assert plain.liver_volume_ml > 500  # a liver was found: two empty masks would agree too
    assert score >= 0.999
    assert plain.windows_skipped == 0 and fast.windows_skipped > 0


def real_scans() -> list:
    return [pytest.param(name, marks=pytest.mark.realdata) for name in ("ts-example-ct", "ct-dicom-sample")]


def read_real_scan(name: str, tmp_path) -> sitk.Image:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real scan {name} not found at {folder} (it lives in ../shared/data beside the repo)")
    if name == "ct-dicom-sample":
        uploads = [Upload(filename=p.name, path=p) for p in sorted((folder / "dicom").glob("*.dcm"))]
        return decode_upload(uploads, Settings(data_dir=tmp_path)).image
    return sitk.ReadImage(str(folder / "ct.nii.gz"))


@pytest.mark.parametrize("name", real_scans())
def test_roi_gives_every_windows_mask_on_the_real_scans(served, name, tmp_path) -> None:
    score, fast, plain = roi_against_every_window(served, read_real_scan(name, tmp_path))
    assert plain.liver_volume_ml > 300
    assert score >= 0.999


def test_openvino_gives_pytorchs_mask(served) -> None:
    ct = make_phantom(HELD_OUT_SEEDS[0], spacing_xyz_mm=(1.6, 1.6, 2.0)).ct
    reference = LoadedModel(served.network, served.card, TorchRuntime(served.network))
    options = resolve_options(served.card)
    fast, plain = segment(ct, served, options), segment(ct, reference, options)
    assert plain.liver_volume_ml > 500
    assert dice(sitk.GetArrayViewFromImage(fast.mask), sitk.GetArrayViewFromImage(plain.mask)) >= 0.999
    assert abs(fast.confidence_summary.mean_in_liver - plain.confidence_summary.mean_in_liver) < 1e-3
    assert np.isclose(fast.liver_volume_ml, plain.liver_volume_ml, rtol=1e-3)
