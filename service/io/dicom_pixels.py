"""Check a DICOM series' pixel data against their headers, then decode them into one image.

GDCM reads pixel data that disagree with their header without complaint (a short Pixel Data
element is read past its end, 8 bits allocated over 16-bit data give garbage), and OpenJPEG
decodes a damaged JPEG 2000 codestream into noise. So, before decoding, an uncompressed image's
Pixel Data must hold exactly Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames
bytes (plus DICOM's one padding byte where that is odd), all present in the file; an
encapsulated one must have its items whole up to the sequence delimiter, and a JPEG, JPEG-LS or
JPEG 2000 frame must be a whole codestream (its markers from start to end; for JPEG 2000 the
image size in SIZ and every tile-part length). A slice that then fails to decode, or decodes to
another size, is refused naming its file. JPEG 2000 carries no checksum: a byte changed inside
the entropy-coded data, markers intact, decodes without any sign and cannot be detected.

The pixels are decoded by SimpleITK (GDCM, which reads JPEG, JPEG-LS and JPEG 2000 transfer
syntaxes), which applies the rescale slope and intercept, so the image is in HU.

Nothing here logs patient data: not names, IDs, UIDs, nor the client's file names.
"""

from __future__ import annotations

import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.filereader import data_element_generator

from service.errors import InvalidVolume, UnsupportedFormat
from service.io.dicom_slice import PixelData, Slice

log = logging.getLogger(__name__)

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS: the same SOI ... EOI frame
}
JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
# Syntaxes GDCM decodes: a failure there is a damaged file, not a format we cannot read.
DECODABLE_SYNTAXES = JPEG_SYNTAXES | JPEG2000_SYNTAXES | {"1.2.840.10008.1.2.5"}  # + RLE
# Slices decoded at once: JPEG 2000 decoding is CPU-bound and GDCM releases the GIL.
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
UNCOMPRESSED_SYNTAXES = {
    pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian,
}


def find_pixel_data(f: BinaryIO, ds: pydicom.Dataset, syntax: str) -> PixelData | None:
    """The Pixel Data element whose header is next in `f` (where pydicom stopped), without its value."""
    implicit, little = ds.original_encoding
    if implicit is None or (syntax and syntax not in UNCOMPRESSED_SYNTAXES and syntax not in DECODABLE_SYNTAXES):
        return None  # e.g. a deflated dataset: the file position is not the stream's
    size = os.fstat(f.fileno()).st_size
    if implicit:  # pydicom's own element reader, the value skipped (never encapsulated here)
        element = next(data_element_generator(f, True, little, defer_size=0), None)
        if element is None or element.tag != PIXEL_DATA_TAG:
            return None
        return PixelData(element.value_tell, element.length, size)
    # Explicit VR, read by hand: pydicom would scan an encapsulated value to its end for its length.
    at, head = f.tell(), f.read(12)
    endian = "<" if little else ">"
    if len(head) < 8:
        return None
    group, element_number = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element_number) != PIXEL_DATA_TAG:
        return None
    if head[4:6] in (b"OB", b"OW", b"UN") and len(head) == 12:
        (length,) = struct.unpack(endian + "I", head[8:12])
        return PixelData(at + 12, None if length == UNDEFINED_LENGTH else length, size)
    (length,) = struct.unpack(endian + "H", head[6:8])
    return PixelData(at + 8, length, size)


def check_native_pixels(s: Slice) -> None:
    """InvalidVolume unless an uncompressed image's Pixel Data holds exactly what its header announces."""
    if _syntax(s) not in UNCOMPRESSED_SYNTAXES:
        return  # encapsulated: checked frame by frame when decoded
    pixels = s.pixels
    if pixels is None:
        raise InvalidVolume(f"'{s.file.name}' has no Pixel Data: an image header without its image.")
    bits = s.rows * s.columns * s.samples * s.bits_allocated * s.frames
    expected = (bits + 7) // 8
    if pixels.length is None or pixels.length not in (expected, expected + expected % 2):
        raise InvalidVolume(
            f"'{s.file.name}' holds {pixels.length or 0:,} bytes of pixel data where its header (Rows {s.rows} x "
            f"Columns {s.columns} x SamplesPerPixel {s.samples} x BitsAllocated {s.bits_allocated}/8 x "
            f"NumberOfFrames {s.frames}) announces {expected:,}: the header does not describe its pixels "
            "(or they are cut short). Export the series again."
        )
    available = pixels.file_bytes - pixels.at
    if available < pixels.length:
        raise InvalidVolume(
            f"'{s.file.name}' ends early: its pixel data should hold {pixels.length:,} bytes, the file holds "
            f"{max(available, 0):,} of them. Upload it again and check that the transfer completed."
        )


def _check_encapsulated(s: Slice) -> None:
    """InvalidVolume unless a compressed slice's Pixel Data is whole: its items up to the sequence
    delimiter, and its one frame a whole JPEG (JPEG-LS) or JPEG 2000 codestream of the header's size."""
    pixels = s.pixels
    if pixels is None or pixels.length is not None:
        return  # not found (GDCM will say), or not encapsulated
    with s.file.path.open("rb") as f:
        f.seek(pixels.at)
        value = f.read(pixels.file_bytes - pixels.at)
    frame, problem = _frame(value)
    syntax = _syntax(s)
    if problem is None and syntax in JPEG_SYNTAXES:
        if frame[:2] != b"\xff\xd8" or b"\xff\xd9" not in frame[-4:]:
            problem = "its JPEG frame lacks its start or end marker (SOI, EOI): it is cut short or damaged"
    elif problem is None and syntax in JPEG2000_SYNTAXES:
        problem = _jpeg2000_problem(frame, s)
    if problem is not None:
        raise InvalidVolume(
            f"'{s.file.name}' holds damaged compressed pixel data ({_syntax_name(syntax)}): {problem}. "
            "Export the series again."
        )


def _frame(value: bytes) -> tuple[bytes, str | None]:
    """The one frame of an encapsulated Pixel Data value (Basic Offset Table item, fragments,
    delimiter, PS3.5 A.4), or a reason why the items are not whole."""
    pos, fragments, first = 0, [], True
    while True:
        if pos + 8 > len(value):
            return b"", "the file ends before the end of its pixel data (no sequence delimiter)"
        group, element, length = struct.unpack("<HHI", value[pos : pos + 8])
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == UNDEFINED_LENGTH:
            return b"", f"its pixel data items are damaged (tag ({group:04X},{element:04X}) at byte {pos:,})"
        if pos + 8 + length > len(value):
            return b"", f"a fragment of {length:,} bytes runs past the end of the file"
        if not first:  # the first item is the Basic Offset Table
            fragments.append(value[pos + 8 : pos + 8 + length])
        first, pos = False, pos + 8 + length
    if not fragments:
        return b"", "its pixel data hold no fragment"
    return b"".join(fragments), None


def _jpeg2000_problem(code: bytes, s: Slice) -> str | None:
    """Why a JPEG 2000 codestream cannot be whole (ISO 15444-1 Annex A), or None.

    Its image size (SIZ) must be the header's, and its tile-parts, whose SOT segments give their
    lengths, must lead exactly to the end-of-codestream marker: a cut or overwritten stretch of
    the codestream breaks that chain.
    """
    if code[4:8] == b"jP  ":  # a JP2 file around the codestream: not DICOM's rule, but GDCM reads it
        at = code.find(b"jp2c")
        code = code[at + 4 :] if at >= 0 else b""
    if len(code) < 42 or code[:4] != b"\xff\x4f\xff\x51":
        return "it does not start with a JPEG 2000 codestream (SOC, SIZ markers)"
    lsiz, _, xsiz, ysiz, x0, y0 = struct.unpack(">HHIIII", code[4:24])
    (components,) = struct.unpack(">H", code[40:42])
    if xsiz <= x0 or ysiz <= y0:
        return "its image size marker (SIZ) is damaged"
    if (xsiz - x0, ysiz - y0, components) != (s.columns, s.rows, s.samples):
        return (
            f"its codestream holds {xsiz - x0} x {ysiz - y0} pixels of {components} component(s), where "
            f"its header says {s.columns} x {s.rows} (Columns x Rows) of {s.samples}"
        )
    pos = 4 + lsiz
    while pos + 4 <= len(code) and code[pos : pos + 2] != b"\xff\x90":  # main header, up to the first SOT
        marker, length = struct.unpack(">HH", code[pos : pos + 4])
        if marker >> 8 != 0xFF or length < 2:
            return f"its main header is damaged at byte {pos:,}"
        pos += 2 + length
    while True:
        if pos + 2 > len(code):
            return "it ends inside a tile (cut short)"
        marker = code[pos : pos + 2]
        if marker == b"\xff\xd9":
            return None
        if marker != b"\xff\x90" or pos + 10 > len(code):
            return f"a tile-part does not start where the previous one ends (byte {pos:,})"
        (length,) = struct.unpack(">I", code[pos + 6 : pos + 10])
        if length == 0:  # the last tile-part runs to the end-of-codestream marker
            return None if b"\xff\xd9" in code[-4:] else "it lacks its end-of-codestream marker (cut short)"
        if length < 14:
            return f"a tile-part declares {length} bytes, fewer than its own header"
        pos += length


def _syntax_name(syntax: str) -> str:
    name = pydicom.uid.UID(syntax).name if syntax else ""
    return name if name and name != syntax else (syntax or "no transfer syntax")


def read_pixels(ordered: list[Slice]) -> sitk.Image:
    """Decode the slices with SimpleITK (GDCM) into one image, in slice order.

    Uncompressed series go through SimpleITK's ImageSeriesReader (one pass, no copy). Compressed
    ones (JPEG, JPEG-LS, JPEG 2000) are decoded a slice per thread, GDCM releasing the GIL, into
    one array; their geometry is built exactly as ImageSeriesReader builds it (origin and
    direction of the first file, slice spacing = distance from the first to the last origin over
    n - 1), so both paths give the series reader's result.
    """
    paths = [str(s.file.path) for s in ordered]
    rescales = {s.rescale for s in ordered}
    # GDCM rescales each slice with its own slope and intercept, in an integer type when they are
    # integers: with slopes that differ (or are fractional) the slices are read as float32.
    as_float = len(rescales) > 1 or any(not float(v).is_integer() for pair in rescales for v in pair)
    compressed = any(_syntax(s) not in UNCOMPRESSED_SYNTAXES for s in ordered)
    try:
        if not compressed:
            reader = sitk.ImageSeriesReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileNames(paths)
            if as_float:
                reader.SetOutputPixelType(sitk.sitkFloat32)
            return reader.Execute()
        try:
            return _read_slices(paths, as_float, ordered)
        except _PixelTypeChanged:
            return _read_slices(paths, True, ordered)
    except RuntimeError:
        # SimpleITK's message names the file, and file names may carry a patient's name: not logged.
        log.warning("DICOM pixel decoding failed (transfer syntax %s)", _syntaxes(ordered))
        if all(_syntax(s) in UNCOMPRESSED_SYNTAXES | DECODABLE_SYNTAXES for s in ordered):
            # A syntax GDCM reads: the files are damaged, not in a format we lack.
            raise InvalidVolume(
                f"The series' pixel data could not be decoded (transfer syntax {_syntaxes(ordered)}), "
                "which this service reads: the files are damaged. Export the series again."
            ) from None
        raise UnsupportedFormat(
            f"The series' pixel data could not be decoded (transfer syntax {_syntaxes(ordered)}): the "
            "files are damaged or use a compression this service cannot read; send them uncompressed "
            "(Explicit VR Little Endian)."
        ) from None


def _syntax(s: Slice) -> str:
    return str(getattr(s.ds.get("file_meta", {}), "TransferSyntaxUID", "") or "")


class _PixelTypeChanged(Exception):
    """A slice decoded to another pixel type than the first (e.g. other BitsStored)."""


def _slice_reader(path: str, as_float: bool) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    if as_float:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader


def _read_slices(paths: list[str], as_float: bool, ordered: list[Slice]) -> sitk.Image:
    first, last = _slice_reader(paths[0], as_float), _slice_reader(paths[-1], as_float)
    first.ReadImageInformation()  # also initialises GDCM's globals before the threads start
    last.ReadImageInformation()
    size = (ordered[0].columns, ordered[0].rows)
    if tuple(first.GetSize()[:2]) != size or first.GetNumberOfComponents() != 1:
        raise InvalidVolume(
            f"'{ordered[0].file.name}', the series' first image, decodes to {first.GetSize()[:2]} pixels with "
            f"{first.GetNumberOfComponents()} value(s) each, where its header says {size[0]} x {size[1]} "
            "single values: the file is damaged."
        )
    pixel_id = sitk.sitkFloat32 if as_float else first.GetPixelID()
    dtype = sitk.GetArrayFromImage(sitk.Image([1, 1], pixel_id)).dtype  # a copy: a view would outlive its image
    volume = np.empty((len(paths), size[1], size[0]), dtype=dtype)

    def load(k: int) -> None:
        s = ordered[k]
        _check_encapsulated(s)
        try:
            image = _slice_reader(paths[k], as_float).Execute()
        except RuntimeError:
            if _syntax(s) not in DECODABLE_SYNTAXES:
                raise  # a compression GDCM may lack: said for the whole series
            raise InvalidVolume(
                f"'{s.file.name}' (image {k + 1} of the series) could not be decoded "
                f"({_syntax_name(_syntax(s))}, which this service reads): its pixel data are damaged. "
                "Export the series again."
            ) from None
        if image.GetPixelID() != pixel_id:
            raise _PixelTypeChanged
        if tuple(image.GetSize()) not in ((*size, 1), size) or image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidVolume(
                f"'{s.file.name}' (image {k + 1} of the series) decodes to {image.GetSize()} pixels where "
                f"the series has {size[0]} x {size[1]}: the files disagree with one another."
            )
        volume[k] = sitk.GetArrayViewFromImage(image).reshape(size[1], size[0])

    with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, len(paths))) as pool:
        list(pool.map(load, range(len(paths))))  # list(): re-raise the first slice's error here

    image = sitk.GetImageFromArray(volume)
    origin = np.array(first.GetOrigin()[:3], dtype=np.float64)
    spacing = list(first.GetSpacing()[:3])
    spacing[2] = float(np.linalg.norm(np.array(last.GetOrigin()[:3]) - origin)) / (len(paths) - 1)
    image.SetOrigin(tuple(origin))
    image.SetSpacing(spacing)
    image.SetDirection(first.GetDirection())
    return image


def _syntaxes(ordered: list[Slice]) -> str:
    names = set()
    for s in ordered:
        uid = getattr(s.ds.get("file_meta", {}), "TransferSyntaxUID", None)
        names.add(uid.name if isinstance(uid, pydicom.uid.UID) else "unknown")
    return ", ".join(sorted(names))
