"""PACS integration: `liverseg-pacs run` (a DICOMweb bridge) and `liverseg-pacs listen` (a C-STORE receiver).

Both talk to the service over HTTP only (its jobs API); nothing here imports FastAPI or the worker.
"""

from __future__ import annotations

from client.pacs.cli import main

__all__ = ["main"]
