"""The clients stand apart from the server: importing every client module pulls in no part of
`service`, and neither torch nor SimpleITK, so they run beside a PACS without the model."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

CLIENT_MODULES = ("client.cli", "client.jobs_client", "client.pacs.cli", "client.pacs.bridge", "client.pacs.listener")


def test_the_clients_import_no_server_module_nor_torch_nor_simpleitk() -> None:
    script = (
        f"import importlib, json, sys\nfor m in {CLIENT_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert "client.pacs.listener" in loaded  # the import really happened
    forbidden = [m for m in loaded if m.split(".")[0] in ("service", "model_zoo", "train", "torch", "SimpleITK")]
    assert forbidden == []
