"""A real headless Chromium (Debian's `chromium`, driven by Playwright without its own browser
download) against a real uvicorn serving the bundled model, with an API key set."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO
from tests.e2e.conftest import Server, show_log, tiny_service_env

CHROMIUM = "/usr/bin/chromium"
# WebGL 2 without a GPU: SwiftShader, which headless Chromium only enables when told to.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
BUNDLED_MODEL = (
    "unet3d_ds.phantom_4mm"  # a real mask on the real sample (the tiny test model draws noise)
)
API_KEY = "viewer-test-key"


def missing(reason: str) -> None:
    """Skip for a missing browser; fail under CI=true, where .ci/run installs it."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run installs it, so this is a broken build)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright is not installed (pip install -e '.[dev]')")
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if chromium is None:
        missing(f"no Chromium at {CHROMIUM} or on PATH (apt-get install chromium chromium-driver)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("viewer")
    env = tiny_service_env(
        REPO / "model_zoo" / "checkpoints",
        folder / "var",
        "info",
        model=BUNDLED_MODEL,
        api_keys=API_KEY,
    )
    server = Server(env, folder / "server.log").start()
    yield server
    server.stop(signal.SIGKILL)
    show_log(server.log)
