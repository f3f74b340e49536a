"""Deployment fixtures: tools that CI installs, a real redis-server, queue worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO, TINY, save_tiny_checkpoint
from tests.e2e.conftest import free_port, server_factory  # noqa: F401  (the e2e fixture, reused here)


def require(tool: str, where: str) -> str:
    """The path of `tool`; skip when it is missing here, fail in CI (CI=true), which installs it."""
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{tool} is not installed ({where})"
        if IN_CI:
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(message)
    return path


FINE = "unet3d_ds.tiny_1mm"


@pytest.fixture(scope="session")
def fine_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network on a 1 mm grid, alone in its folder: a 10 cm CT is a hundred windows or
    more, so a job runs for seconds and a test can kill its worker in the middle of it."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fine-checkpoint"), FINE, spacing_mm=1.0)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence; its URL."""
    binary = require("redis-server", "Debian package redis-server")
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not _pong(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start:\n{(tmp_path / 'redis.log').read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


class QueueWorker:
    """`python -m service.queue_worker` in its own process, as a compose worker replica runs it."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """host:pid, as the job summary's `worker` field records it."""
        assert self.process is not None
        return f"{socket.gethostname()}:{self.process.pid}"

    def start(self) -> QueueWorker:
        """Start the process; returns at once (wait_ready waits for the model to be loaded)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.queue_worker"], cwd=REPO, env=self.env,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 120) -> QueueWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"queue worker exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if f"queue worker {self.name} ready" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"queue worker not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def worker_factory(tiny_checkpoint_dir: Path, tmp_path: Path, redis_url: str) -> Iterator:
    """Make queue workers sharing the e2e servers' data dir (tmp_path/var) and this test's Redis."""
    workers: list[QueueWorker] = []

    def make(**settings: str) -> QueueWorker:
        env = {
            "LIVERSEG_MODEL": TINY,
            "LIVERSEG_MODEL_DIR": str(tiny_checkpoint_dir),
            "LIVERSEG_DATA_DIR": str(tmp_path / "var"),
            "LIVERSEG_DEVICE": "cpu",
            "LIVERSEG_LOG_LEVEL": "info",  # the "ready" line
            "LIVERSEG_QUEUE_URL": redis_url,
            "OMP_NUM_THREADS": "1",  # two workers and an API on two shared cores
        } | {f"LIVERSEG_{k.upper()}": str(v) for k, v in settings.items()}
        worker = QueueWorker(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.kill()
