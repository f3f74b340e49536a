"""Recognise an uploaded file's format from its first bytes, never from its name.

A file called `ct.nii.gz` that is a zip is a zip. gzip is looked into: only a gzip stream that
inflates to a NIfTI header is a `.nii.gz`. The magic tables also name the formats people upload
by mistake (pictures, PDFs, other archives), so that the refusal can say what was sent.
"""

from __future__ import annotations

import re
import struct
import zlib
from enum import StrEnum
from pathlib import Path

HEAD_BYTES = 64 * 1024  # enough for any NIfTI, MetaImage or NRRD header we accept


class Kind(StrEnum):
    """What a file's first bytes say it is."""

    EMPTY = "empty"
    NIFTI = "NIfTI"
    NIFTI_GZ = "gzip-compressed NIfTI"
    NIFTI_PAIR = "NIfTI header of a .hdr/.img pair"
    ANALYZE = "Analyze 7.5 header"
    GZIP_OTHER = "gzip-compressed file that is not NIfTI"
    METAIMAGE = "MetaImage"
    NRRD = "NRRD"
    ZIP = "zip archive"
    DICOM = "DICOM"
    TEXT = "text"
    OTHER = "file of unknown format"


OTHER_MAGIC = {  # formats people upload by mistake, named so the message helps
    b"\x89PNG": "a PNG picture",
    b"\xff\xd8\xff": "a JPEG picture",
    b"%PDF": "a PDF document",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ": "an xz archive",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"Rar!": "a RAR archive",
    b"II*\x00": "a TIFF picture",
    b"MM\x00*": "a TIFF picture",
}
DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}


def sniff(path: Path) -> Kind:
    """The format of a file, from its first bytes (and, for gzip, from what it inflates to)."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return Kind.EMPTY
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(wbits=31).decompress(head, 1024)
        except zlib.error:
            return Kind.GZIP_OTHER
        return Kind.NIFTI_GZ if nifti_kind(inner) is Kind.NIFTI else Kind.GZIP_OTHER
    nifti = nifti_kind(head)
    if nifti is not None:
        return nifti
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":  # the latter: an empty zip
        return Kind.ZIP
    if head[128:132] == b"DICM":
        return Kind.DICOM
    if _dicom_without_preamble(head):
        return Kind.DICOM
    if head[:7] == b"NRRD000":
        return Kind.NRRD
    if re.match(rb"\s*(ObjectType|NDims)\s*=", head[:64]):
        return Kind.METAIMAGE
    if _looks_like_text(head[:1024]):
        return Kind.TEXT
    return Kind.OTHER


def nifti_kind(head: bytes) -> Kind | None:
    if len(head) < 348:
        return None
    for endian in "<>":
        (size,) = struct.unpack(endian + "i", head[:4])
        if size == 348:
            magic = head[344:348]
            return {b"n+1\x00": Kind.NIFTI, b"ni1\x00": Kind.NIFTI_PAIR}.get(magic, Kind.ANALYZE)
        if size == 540 and len(head) >= 540:
            magic = head[4:12]
            return {b"n+2\x00\r\n\x1a\n": Kind.NIFTI, b"ni2\x00\r\n\x1a\n": Kind.NIFTI_PAIR}.get(magic)
    return None


def _dicom_without_preamble(head: bytes) -> bool:
    """A DICOM stream that starts at its first element (group 0002 or 0008, little endian)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if head[4:6] in DICOM_VRS:  # explicit VR
        return True
    (length,) = struct.unpack("<I", head[4:8])  # implicit VR: a plausible first value length
    return head[:2] == b"\x08\x00" and length < 256


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", errors="ignore")
    if len(text.encode("utf-8")) < 0.9 * len(head):  # much of it is not UTF-8: binary
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)
