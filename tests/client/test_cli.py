"""`liverseg segment` as a user runs it (a subprocess, its output piped) against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import ORIENTATIONS, REPO, sphere_ct

pytestmark = pytest.mark.slow


def liverseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "segment", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def server(server_factory):
    return server_factory().start()


@pytest.fixture
def ct_file(tmp_path: Path) -> tuple[sitk.Image, Path]:
    ct, _ = sphere_ct(ORIENTATIONS["RAS"], size_xyz=(40, 36, 20))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(path))
    return ct, path


def test_the_mask_and_summary_land_on_disk_with_a_line_per_state_when_piped(server, ct_file, tmp_path) -> None:
    ct, path = ct_file
    out, summary = tmp_path / "liver.nii.gz", tmp_path / "summary.json"
    result = liverseg(str(path), "-o", str(out), "--json", str(summary), "--server", server.url)
    assert result.returncode == 0, result.stderr
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == ct.GetSize() and np.allclose(mask.GetDirection(), ct.GetDirection())
    assert '"liver_volume_ml"' in summary.read_text()
    assert result.stdout.startswith("liver ") and f"-> {out}" in result.stdout
    # Piped: no progress bar redrawn with carriage returns, one line per state the job passed.
    assert "\r" not in result.stderr
    states = [line.split(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("job ")]
    assert states[-1] == "done" and len(states) == len(set(states)), result.stderr


@pytest.mark.parametrize(("flag", "ran"), [((), False), (("--tta",), True)], ids=["unsaid", "--tta"])
def test_tta_is_sent_only_when_said_so_the_card_decides_otherwise(server, ct_file, tmp_path, flag, ran) -> None:
    # The tiny model's card leaves tta off: unsaid, the server's default (the card's) is what runs.
    _, path = ct_file
    summary = tmp_path / "summary.json"
    result = liverseg(str(path), "-o", str(tmp_path / "liver.nii.gz"), "--json", str(summary), "--server", server.url, *flag)
    assert result.returncode == 0, result.stderr
    assert json.loads(summary.read_text())["options"]["tta"] is ran


def test_the_servers_warnings_about_the_input_reach_the_user(server, tmp_path) -> None:
    # A mask uploaded instead of its CT: the server segments it and says it is no CT in HU.
    mask = sitk.GetImageFromArray(np.pad(np.ones((10, 16, 16), np.uint8), 4))
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(mask, str(path))
    result = liverseg(str(path), "-o", str(tmp_path / "out.nii.gz"), "--server", server.url, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warning: The values lie within [0, 1]: this looks like a mask" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("where", ["missing folder", "a folder", "read-only folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_upload(server, ct_file, tmp_path, where) -> None:
    _, path = ct_file
    target = {
        "missing folder": tmp_path / "no" / "such" / "liver.nii.gz",
        "a folder": tmp_path,
        "read-only folder": tmp_path / "locked" / "liver.nii.gz",
    }[where]
    if where == "read-only folder":
        target.parent.mkdir()
        target.parent.chmod(0o555)
        if os.access(target.parent, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
    result = liverseg(str(path), "-o", str(target), "--server", server.url)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert {"missing folder": "does not exist", "a folder": "is a folder", "read-only folder": "cannot be written"}[where] in result.stderr
    assert httpx.get(f"{server.url}/jobs").json()["queued"] + httpx.get(f"{server.url}/jobs").json()["done"] == 0


def test_a_refused_upload_exits_1_with_the_servers_sentence(server, tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("patient list, not a CT\n" * 20)
    result = liverseg(str(path), "-o", str(tmp_path / "out.nii.gz"), "--server", server.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: unsupported_format: ")
