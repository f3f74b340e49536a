"""A real uvicorn server on loopback, started as `python -m service` in its own process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` with LIVERSEG_* settings; start, stop, kill, start again on the same data."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> Server:
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


@pytest.fixture
def server_factory(tiny_checkpoint_dir: Path, tmp_path: Path) -> Iterator:
    """Make servers with the tiny checkpoint and extra LIVERSEG_* settings; all stopped at the end."""
    servers: list[Server] = []

    def make(**settings: str) -> Server:
        env = {
            "LIVERSEG_MODEL": "unet3d_ds.tiny",
            "LIVERSEG_MODEL_DIR": str(tiny_checkpoint_dir),
            "LIVERSEG_DATA_DIR": str(tmp_path / "var"),
            "LIVERSEG_DEVICE": "cpu",
            "LIVERSEG_LOG_LEVEL": "warning",
        } | {f"LIVERSEG_{k.upper()}": str(v) for k, v in settings.items()}
        server = Server(env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)
        # Shown by pytest only when the test failed: what the server said, e.g. a traceback.
        if server.log.exists():
            print(f"--- {server.log.name} (last 5000 characters) ---\n{server.log.read_text()[-5000:]}")  # noqa: T201
