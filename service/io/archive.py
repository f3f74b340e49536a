"""Extract an uploaded zip safely: every limit checked before and while inflating, no path escapes.

Members are checked (no absolute paths, drive letters, '..', symbolic links or encryption) before
anything is written, written under names of our own, and inflated bytes are counted as they come,
so a zip bomb stops at LIVERSEG_MAX_DECOMPRESSED_BYTES whatever its headers declare.
"""

from __future__ import annotations

import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path

from service.errors import TooLarge, UnsupportedFormat, client_name, format_bytes
from service.settings import Settings

READ_CHUNK = 1 << 20
ZIP_DIRECTORY_BYTES_PER_MEMBER = 4096  # a generous central-directory entry (name and extras)



def extract_zip(name: str, path: Path, settings: Settings, target: Path) -> list[tuple[str, Path]]:
    """Extract a zip into `target` under names of our own, checking every limit on the way.

    Returns (member name, extracted path) for each file member, junk (macOS forks, dot files)
    left out. Nothing is extracted until every member's name and type has been checked.
    """
    entries, directory_bytes = _zip_directory_size(name, path)
    if entries > settings.max_zip_members:
        raise TooLarge(
            f"The zip '{name}' holds {entries:,} entries; this service accepts at most "
            f"{settings.max_zip_members:,} (LIVERSEG_MAX_ZIP_MEMBERS)."
        )
    if directory_bytes > settings.max_zip_members * ZIP_DIRECTORY_BYTES_PER_MEMBER:
        raise TooLarge(f"The zip '{name}' has a {format_bytes(directory_bytes)} directory, far more than its entries need: refused.")
    damaged = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error)
    try:
        archive = zipfile.ZipFile(path)
    except damaged:
        raise UnsupportedFormat(f"'{name}' is not a readable zip archive (it is truncated or damaged).") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > settings.max_zip_members:
            raise TooLarge(
                f"The zip '{name}' holds {len(infos):,} entries; this service accepts at most "
                f"{settings.max_zip_members:,} (LIVERSEG_MAX_ZIP_MEMBERS)."
            )
        members = []
        for info in infos:
            _check_member(name, info)
            if info.is_dir() or _is_junk(info.filename):
                continue
            members.append(info)
        declared = sum(info.file_size for info in members)
        if declared > settings.max_decompressed_bytes:  # an early refusal; acceptance counts real bytes
            raise TooLarge(_inflates_too_much(name, settings))
        target.mkdir(parents=True, exist_ok=True)
        extracted: list[tuple[str, Path]] = []
        total = 0
        for number, info in enumerate(members):
            out_path = target / f"member{number:06d}"  # our names: a member's own name never reaches the disk
            try:
                with archive.open(info) as src, out_path.open("wb") as out:
                    while chunk := src.read(READ_CHUNK):
                        total += len(chunk)
                        if total > settings.max_decompressed_bytes:
                            raise TooLarge(_inflates_too_much(name, settings))
                        out.write(chunk)
            except (NotImplementedError, RuntimeError):
                raise UnsupportedFormat(
                    f"The zip '{name}' uses a compression method or encryption this service cannot read "
                    f"(member '{client_name(info.filename)}'); re-create it with plain deflate."
                ) from None
            except damaged:
                raise UnsupportedFormat(
                    f"The zip '{name}' is damaged: member '{client_name(info.filename)}' fails its check. "
                    "Upload it again and check that the transfer completed."
                ) from None
            extracted.append((client_name(info.filename), out_path))
    return extracted


def _zip_directory_size(name: str, path: Path) -> tuple[int, int]:
    """(entries, central directory bytes) from the zip's end record, read before anything else."""
    size = path.stat().st_size
    with path.open("rb") as f:
        tail_length = min(size, 22 + 65535)
        f.seek(size - tail_length)
        tail = f.read(tail_length)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise UnsupportedFormat(
                f"'{name}' is not a readable zip archive: its end record is missing (the file is truncated)."
            )
        entries, directory_bytes, directory_offset = struct.unpack("<HII", tail[at + 10 : at + 20])
        if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF:
            locator = tail[at - 20 : at] if at >= 20 else b""
            if locator[:4] == b"PK\x06\x07":  # zip64: the real counts are in the zip64 end record
                (record_at,) = struct.unpack("<Q", locator[8:16])
                f.seek(record_at)
                record = f.read(56)
                if record[:4] == b"PK\x06\x06":
                    entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    return entries, directory_bytes


def _check_member(name: str, info: zipfile.ZipInfo) -> None:
    member = info.filename
    shown = client_name(member, keep_folders=True)
    normal = member.replace("\\", "/")
    if (
        "\x00" in member
        or normal.startswith("/")
        or re.match(r"^[A-Za-z]:", normal)
        or ".." in normal.split("/")
    ):
        raise UnsupportedFormat(
            f"The zip '{name}' is refused: its entry '{shown}' points outside the archive (an absolute "
            "path, a drive letter or '..'). Re-create the archive with relative paths."
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsupportedFormat(
            f"The zip '{name}' is refused: its entry '{shown}' is a symbolic link. Re-create the archive "
            "with the files themselves."
        )
    if info.flag_bits & 0x1:
        raise UnsupportedFormat(
            f"The zip '{name}' is encrypted (entry '{shown}'); upload an archive without a password."
        )


def _is_junk(member: str) -> bool:
    """Entries that file managers add beside the data (macOS resource forks, dot files, thumbnails)."""
    parts = member.replace("\\", "/").split("/")
    return parts[0] == "__MACOSX" or parts[-1].startswith(".") or parts[-1].lower() in ("thumbs.db", "desktop.ini")


def _inflates_too_much(name: str, settings: Settings) -> str:
    return (
        f"The zip '{name}' inflates to more than {format_bytes(settings.max_decompressed_bytes)}, the most this "
        "service extracts (LIVERSEG_MAX_DECOMPRESSED_BYTES)."
    )
