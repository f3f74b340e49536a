"""Real servers for the clients' tests (the e2e suite's factory), and logging put back after each
test: the CLIs' entry points configure process-wide logging."""

import logging

import pytest

from tests.e2e.conftest import server_factory  # noqa: F401  (a fixture, used by name)


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state: put it back for the next test."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    levels = {name: logging.getLogger(name).level for name in ("", "highdicom", "pydicom", "dicomweb_client", "pynetdicom", "httpx")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler, kept in filters.items():
        handler.filters = kept
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
