"""A real Orthanc (with its DICOMweb plugin) and a real liverseg service, both on loopback.

Orthanc and its plugin come from the Debian packages `orthanc` and `orthanc-dicomweb`. Where they
are missing the tests that need them skip and say why, except under CI=true, where they fail:
CI installs them (.ci/run), so their absence there is a broken build, not a reason to skip.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from dicomweb_client.api import DICOMwebClient

from model_zoo import create_network
from model_zoo.card import InputContract, ModelCard
from model_zoo.preprocessing import prepare
from model_zoo.registry import save_checkpoint
from tests.conftest import IN_CI, TINY
from tests.e2e.conftest import Server, free_port, tiny_service_env
from train.phantoms import make_phantom, write_dicom_series

ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
# Phantoms for the PACS tests: 4 mm, a 5 cm slab through the liver (about 100 x 100 x 13 voxels).
PHANTOM = {"spacing_xyz_mm": (4.0, 4.0, 4.0), "z_range": (-60.0, -10.0)}
FOREGROUND_FRACTION = 0.4


def missing(reason: str) -> None:
    """Skip for a missing external dependency; fail under CI=true, where it must be installed."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run installs it, so this is a broken build)")
    pytest.skip(reason)


class Orthanc:
    """An Orthanc process with a temporary storage folder and JSON configuration."""

    aet = "ORTHANC"

    def __init__(self, binary: str, plugin: str, folder: Path):
        self.binary, self.plugin, self.folder = binary, plugin, folder
        self.http_port = self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        """The orthanc.json of the README's worked example, on free ports and a temporary folder."""
        return {
            "Name": "liverseg-tests",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,  # loopback only
            "AuthenticationEnabled": False,
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
        }

    def start(self, timeout: float = 60) -> Orthanc:
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        self.process = subprocess.Popen(
            [self.binary, str(path)], cwd=self.folder, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                plugins = httpx.get(f"{self.url}/plugins", timeout=2)
                if plugins.status_code == 200:
                    if "dicom-web" not in plugins.json():
                        raise RuntimeError(f"Orthanc started without its DICOMweb plugin ({self.plugin}):\n{self.log.read_text()[-3000:]}")
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def dicomweb(self) -> DICOMwebClient:
        return DICOMwebClient(self.dicomweb_url)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = next((found for name in ORTHANC_BINARIES if (found := shutil.which(name))), None)
    if binary is None:
        missing("Orthanc is not installed (Debian package `orthanc`)")
    plugin = next((p for pattern in DICOMWEB_PLUGINS for p in sorted(glob.glob(pattern))), None)
    if plugin is None:
        missing(f"Orthanc's DICOMweb plugin is not installed (Debian package `orthanc-dicomweb`; looked for {DICOMWEB_PLUGINS})")
    server = Orthanc(binary, plugin, tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def partial_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded unet3d_ds whose mask covers about 40% of a phantom slab.

    A random network marks nearly every voxel as liver, and against a near-full mask any SEG
    scores a high Dice; so the main head's liver bias is lowered to the 60th percentile of the
    logit margin on a phantom, which gives a partial, irregular mask that a misplaced frame breaks.
    """
    folder = tmp_path_factory.mktemp("pacs-checkpoint")
    kwargs = {"features": [4, 8, 16]}
    contract = InputContract(spacing_xyz_mm=(4.0, 4.0, 4.0), hu_window=(-200.0, 300.0), patch_size_dhw=(32, 32, 32))
    torch.manual_seed(0)
    network = create_network("unet3d_ds", **kwargs).eval()
    prepared = prepare(make_phantom(10, **PHANTOM).ct, contract)
    with torch.no_grad():
        logits = network(torch.from_numpy(prepared.array)[None, None])
        margin = (logits[0, 1] - logits[0, 0]).flatten()
        network.heads[0].bias[1] -= torch.quantile(margin, 1 - FOREGROUND_FRACTION)
    card = ModelCard(name=TINY, arch="unet3d_ds", arch_kwargs=kwargs, input=contract, intended_use="Tests only: random weights.")
    save_checkpoint(network, card, folder)
    return folder


@pytest.fixture(scope="session")
def service(partial_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m service` on loopback with the tiny checkpoint, shared by the PACS tests."""
    folder = tmp_path_factory.mktemp("service")
    server = Server(tiny_service_env(partial_checkpoint_dir, folder / "var"), folder / "server.log").start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Series:
    """A phantom CT series written as DICOM files with full UIDs."""

    study_uid: str
    series_uid: str
    files: list[Path]

    def sop_uids(self) -> list[str]:
        return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in self.files]


def phantom_series(folder: Path, seed: int) -> Series:
    files = write_dicom_series(make_phantom(seed, **PHANTOM).ct, folder / f"phantom-{seed}")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Series(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), files)


def service_mask(service: Server, files: list[Path]) -> sitk.Image:
    """The service's NIfTI mask for a DICOM series (POST /segment)."""
    from tests.conftest import read_nifti

    with service.client() as client:
        response = client.post("/segment", files=[("files", (f.name, f.read_bytes(), "application/dicom")) for f in files])
    assert response.status_code == 200, response.text
    return read_nifti(response.content)


def seg_on_grid(seg: pydicom.Dataset, files: list[Path], reference: sitk.Image) -> np.ndarray:
    """A SEG's liver pixels placed on `reference`'s grid (D, H, W) by each source image's position."""
    import highdicom as hd

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        [str(h.SOPInstanceUID) for h in headers], segment_numbers=[1]
    )[..., 0]
    placed = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
    for header, frame in zip(headers, pixels, strict=True):
        k = reference.TransformPhysicalPointToIndex([float(v) for v in header.ImagePositionPatient])[2]
        placed[k] = frame
    return placed
