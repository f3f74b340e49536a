"""The Makefile as a newcomer runs it, with a stand-in for the venv's python that records its calls:
TORCH_SPEC reaches pip word by word, a new one installs torch again, and serving installs no test tools."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

RECORDER = """#!/bin/sh
# Stands in for .venv/bin/python: records each call, one line of shell words, and succeeds.
for word in "$@"; do printf '%s\\0' "$word"; done >> "$(dirname "$0")/calls"
printf '\\n' >> "$(dirname "$0")/calls"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(RECORDER)
    python.chmod(0o755)
    return tmp_path


def make(project: Path, *args: str) -> list[list[str]]:
    """Run make; the python calls it made, each as its argument list."""
    calls = project / ".venv" / "bin" / "calls"
    calls.unlink(missing_ok=True)
    subprocess.run(["make", "--no-print-directory", *args], cwd=project, check=True, capture_output=True)
    if not calls.exists():
        return []
    return [line.split("\0")[:-1] for line in calls.read_text().splitlines() if line]


def pip_targets(calls: list[list[str]]) -> list[list[str]]:
    return [call[call.index("--disable-pip-version-check") + 1 :] for call in calls if call[:3] == ["-m", "pip", "install"]]


def test_a_torch_spec_with_spaces_reaches_pip_as_separate_words(project: Path) -> None:
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
    calls = make(project, "install", f"TORCH_SPEC={spec}")
    assert pip_targets(calls) == [shlex.split(spec), ["-e", "."]]


def test_a_new_torch_spec_installs_again_and_the_same_one_does_not(project: Path) -> None:
    assert pip_targets(make(project, "install")) == [["torch==2.13.0"], ["-e", "."]]
    assert make(project, "install") == []  # nothing changed: nothing installed
    changed = make(project, "install", "TORCH_SPEC=torch>=2.13,<2.14")
    assert pip_targets(changed) == [["torch>=2.13,<2.14"], ["-e", "."]]  # the shell kept < and >


def test_serve_installs_only_what_serving_needs_and_test_the_rest(project: Path) -> None:
    serve = make(project, "serve")
    assert pip_targets(serve) == [["torch==2.13.0"], ["-e", "."]]
    assert serve[-1] == ["-m", "service"]
    # -n: what `make test` would run (ruff and pytest are not in this stand-in venv)
    out = subprocess.run(["make", "-n", "test"], cwd=project, capture_output=True, text=True, check=True).stdout
    assert "-e '.[dev]'" in out and "-m pytest" in out
