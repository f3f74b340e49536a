"""Fixtures shared by the whole suite: the real sample, tiny checkpoints, synthetic volumes."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model_zoo import create_network
from model_zoo.card import InputContract, ModelCard
from model_zoo.registry import save_checkpoint
from service.io.decode import Upload, decode_upload
from service.options import resolve_options
from service.pipeline import segment
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "data" / "ct-dicom-sample"
IN_CI = os.environ.get("CI") == "true"
TINY = "unet3d_ds.tiny"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real JPEG 2000 CT series with its liver mask (read-only, never copied into the repo)."""
    if not (REAL_SAMPLE / "dicom").is_dir():
        pytest.skip(f"real CT sample not found at {REAL_SAMPLE} (it lives in ../shared/data beside the repo)")
    return REAL_SAMPLE


def rotation(axis: str, degrees: float) -> np.ndarray:
    """A 3x3 rotation about x, y or z."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


# Directions a CT arrives in: LPS (DICOM), RAS (NIfTI from many tools), a flipped slice axis,
# and an oblique acquisition.
ORIENTATIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "flipped_z": np.diag([1.0, 1.0, -1.0]),
    "oblique": rotation("z", 20) @ rotation("x", 10),
}


def physical_points(image: sitk.Image) -> np.ndarray:
    """(D, H, W, 3) physical (x, y, z) coordinates of every voxel centre, in mm."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)  # (x, y, z) index order
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T


def sphere_ct(
    direction: np.ndarray,
    *,
    size_xyz: tuple[int, int, int] = (72, 64, 40),
    spacing_xyz: tuple[float, float, float] = (1.5, 1.5, 2.5),
    centre_mm: tuple[float, float, float] = (-20.0, 10.0, 5.0),
    radius_mm: float = 25.0,
) -> tuple[sitk.Image, np.ndarray]:
    """A small CT (HU, int16): a soft-tissue body (0 HU), a 200 HU sphere, air around.

    The grid is centred on the physical origin whatever its direction, so the same physical
    sphere appears at different voxel indices in every orientation. Returns (ct, sphere mask (D, H, W)).
    """
    image = sitk.Image(list(size_xyz), sitk.sitkInt16)
    image.SetSpacing(spacing_xyz)
    image.SetDirection(direction.ravel().tolist())
    half = (np.array(size_xyz) - 1) / 2 * np.array(spacing_xyz)
    image.SetOrigin((-(direction @ half)).tolist())
    points = physical_points(image)
    body = (points[..., 0] / 50.0) ** 2 + (points[..., 1] / 40.0) ** 2 <= 1.0
    sphere = np.linalg.norm(points - np.array(centre_mm), axis=-1) <= radius_mm
    hu = np.full(points.shape[:3], -1000, dtype=np.int16)
    hu[body] = 0
    hu[sphere] = 200
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(image)
    return ct, sphere


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


HELD_OUT_SEED = 300_001  # neither a training (0-) nor a validation (100000-) seed; a portal-phase abdomen


def held_out_phantom():
    """The served models' unseen phantom: the classic anatomy they learnt from, at 2 x 2 x 2.5 mm
    (test_bundled's golden input is cut from it too)."""
    from train.phantoms import make_phantom

    return make_phantom(HELD_OUT_SEED, spacing_xyz_mm=(2.0, 2.0, 2.5), anatomy=1)


def served_options(model):
    """What /segment runs `model` with when the request asks for nothing (its card's defaults,
    its tta included), two windows a batch to keep the tests' memory small."""
    return replace(resolve_options(model.card), batch_size=2)


def dice_on_held_out_phantom(model) -> float:
    """Dice of `model`'s mask of the held-out phantom, segmented as /segment does, on its own grid."""
    phantom = held_out_phantom()
    result = segment(phantom.ct, model, served_options(model))
    assert result.mask.GetSize() == phantom.ct.GetSize(), "the mask left the input's grid"
    return dice(sitk.GetArrayViewFromImage(result.mask) > 0, sitk.GetArrayViewFromImage(phantom.liver) > 0)


def dice_on_real_sample(model, real_sample: Path, data_dir: Path) -> float:
    """Dice of `model`'s mask of the real DICOM sample, decoded and segmented as /segment does."""
    uploads = [Upload(filename=p.name, path=p) for p in sorted((real_sample / "dicom").glob("*.dcm"))]
    volume = decode_upload(uploads, Settings(data_dir=data_dir))
    result = segment(volume.image, model, served_options(model))
    reference = sitk.ReadImage(str(real_sample / "liver_mask.nii.gz"))
    return dice(sitk.GetArrayViewFromImage(result.mask) > 0, sitk.GetArrayViewFromImage(reference) > 0)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight unet3d_ds checkpoint, small enough for API tests on a 2-core CPU."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints"), TINY, spacing_mm=4.0)


def save_tiny_checkpoint(folder: Path, name: str, spacing_mm: float, seed: int = 0) -> Path:
    """Save a random-weight unet3d_ds [4, 8, 16] with 32^3 patches on a `spacing_mm` grid as `name`."""
    kwargs = {"features": [4, 8, 16]}
    card = ModelCard(
        name=name,
        arch="unet3d_ds",
        arch_kwargs=kwargs,
        input=InputContract(spacing_xyz_mm=(spacing_mm,) * 3, hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32)),
        intended_use="Tests only: random weights.",
    )
    # Seeded, so that every run of the suite serves the same random network: with fresh weights
    # each run, a network that happened to find "liver" somewhere odd failed one CI run in many.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = create_network("unet3d_ds", **kwargs)
    save_checkpoint(network, card, folder)
    return folder


@pytest.fixture
def settings(tiny_checkpoint_dir: Path, tmp_path: Path) -> Settings:
    return Settings(model=TINY, model_dir=tiny_checkpoint_dir, data_dir=tmp_path / "var", device="cpu")


def nifti_bytes(image: sitk.Image) -> bytes:
    """An image as .nii.gz bytes, written by SimpleITK."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.nii.gz"
        sitk.WriteImage(image, str(path))
        return path.read_bytes()


def read_nifti(data: bytes) -> sitk.Image:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mask.nii.gz"
        path.write_bytes(data)
        return sitk.ReadImage(str(path))


def wait_for_job(client, url: str, timeout: float) -> dict:
    """Poll GET `url` (with a TestClient or an httpx.Client) until the job is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(url).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {url} did not finish in {timeout} s: {job}")
