"""The viewer page at `/`: drop a CT, follow its job, then see the mask over the CT in Niivue and
download the results. Everything the page loads is served from service/viewer/static (Niivue
built into one file by service/viewer/build.sh), so it works on a network with no internet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parents[2] / "viewer" / "static"
# The files the page may load, with their media types; nothing else in the folder is served.
ASSETS = {
    "viewer.js": "text/javascript",
    "viewer.css": "text/css",
    "niivue.min.js": "text/javascript",
    "niivue.LICENSES.txt": "text/plain; charset=utf-8",
}

router = APIRouter(tags=["viewer"], include_in_schema=False)


@router.get("/", response_class=FileResponse)
def page() -> FileResponse:
    """The viewer page (no API key needed for the page itself; it sends the one you enter)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


@router.get("/viewer/{name}", response_class=FileResponse)
def asset(name: Annotated[str, PathParam()]) -> FileResponse:
    """One of the page's files (ASSETS)."""
    if name not in ASSETS:
        raise NotFound(f"The viewer has no file {name!r}.")
    return FileResponse(STATIC_DIR / name, media_type=ASSETS[name])
