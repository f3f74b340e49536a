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

from tests.conftest import REPO, TINY


def tiny_service_env(
    model_dir: Path, data_dir: Path, log_level: str = "warning", /, **settings: object
) -> dict[str, str]:
    """LIVERSEG_* for a process under test: the tiny model from `model_dir` on the CPU, its data in
    `data_dir`, and LIVERSEG_<KEY> for each further setting (model and model_dir among them override)."""
    return {
        "LIVERSEG_MODEL": TINY,
        "LIVERSEG_MODEL_DIR": str(model_dir),
        "LIVERSEG_DATA_DIR": str(data_dir),
        "LIVERSEG_DEVICE": "cpu",
        "LIVERSEG_LOG_LEVEL": log_level,
    } | {f"LIVERSEG_{k.upper()}": str(v) for k, v in settings.items()}


def process_env(env: dict[str, str]) -> dict[str, str]:
    """This environment plus `env`, unbuffered and with faulthandler on, so a crash leaves its
    traceback in the log."""
    return {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def stop_process(process: subprocess.Popen | None, sig: int, timeout: float = 60) -> None:
    """Send `sig` and wait; SIGKILL if it is still running after `timeout` seconds."""
    if process and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def show_log(log: Path) -> None:
    """Print a process's log tail; pytest shows it only when the test failed."""
    if log.exists():
        print(f"--- {log.name} (last 5000 characters) ---\n{log.read_text()[-5000:]}")  # noqa: T201


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` with LIVERSEG_* settings; start, stop, kill, start again on the same data."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = process_env(env)
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
        stop_process(self.process, sig, timeout)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


@pytest.fixture
def server_factory(tiny_checkpoint_dir: Path, tmp_path: Path) -> Iterator:
    """Make servers with the tiny checkpoint and extra LIVERSEG_* settings; all stopped at the end."""
    servers: list[Server] = []

    def make(**settings: str) -> Server:
        env = tiny_service_env(tiny_checkpoint_dir, tmp_path / "var", **settings)
        server = Server(env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(signal.SIGKILL)
        show_log(server.log)
