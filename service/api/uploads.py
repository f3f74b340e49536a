"""Uploaded parts -> files on disk, which is what the decoder reads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import File, UploadFile
from starlette.formparsers import MultiPartParser

from service.errors import UnsupportedFormat
from service.io.decode import Upload

# Starlette keeps each uploaded part in memory up to 1 MiB before it rolls over to a temporary
# file: a 3,000-slice series of half-megabyte DICOM files would sit in RAM whole. 64 kB a part
# bounds it to ~200 MB at the part limit; the spooled parts are read once, in chunks, anyway.
MultiPartParser.spool_max_size = 64 * 1024

FileField = Annotated[UploadFile | None, File(description="One CT: .nii, .nii.gz, .mha, .nrrd, or a .zip of one DICOM series.")]
FilesField = Annotated[list[UploadFile] | None, File(description="The DICOM files of one series, repeated.")]


def collect(file: UploadFile | None, files: list[UploadFile] | None) -> list[UploadFile]:
    """The uploaded parts, whichever field they came in; refuses a request with none."""
    parts = ([file] if file is not None else []) + list(files or [])
    if not parts:
        raise UnsupportedFormat(
            "No file was uploaded: send the CT as a multipart field 'file' (one file or a .zip), "
            "or DICOM files as repeated 'files' fields."
        )
    return parts


def spool(parts: list[UploadFile], folder: Path) -> list[Upload]:
    """Copy each part to `folder` in chunks (the upload limit was enforced while it streamed in)."""
    folder.mkdir(parents=True, exist_ok=True)
    uploads = []
    for index, part in enumerate(parts):
        path = folder / f"{index:05d}.upload"
        part.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(part.file, out, 1024 * 1024)
        uploads.append(Upload(part.filename or path.name, path))
    return uploads
