"""Logging for the service's processes, with patient data kept out of every line.

`configure_logging` is called once by each entry point (`python -m service`, the queue worker,
`liverseg-pacs`): one handler on stderr, one format (uvicorn's access lines included: the server
passes uvicorn no logging config of its own, so its loggers propagate here), plain text or JSON
lines (`LIVERSEG_LOG_FORMAT=json`: one object a line, a traceback inside it), Python warnings
captured into logging, and highdicom's and pydicom's INFO chatter (about ten lines per SEG, each
naming a SOP Instance UID) held back to WARNING and up. Every root handler gets
`PatientDataFilter`, the net under all of it.

The rule, for every record's message and exception text:
- a DICOM UID (four or more dotted numbers; an IPv4 address and the standard's own UIDs under
  1.2.840.10008, transfer syntaxes and SOP classes, are kept) becomes `<uid>`: a UID identifies
  a study as surely as a name, and the service's logs may be kept and shipped far from the PACS;
- a person name in DICOM form (`Doe^John`) becomes `<name>`, a date (YYYYMMDD, YYYY-MM-DD)
  `<date>`;
- the value given to a patient, study or person attribute (its keyword or its DICOM name:
  `PatientName='Doe^John'`, `PatientID: 123`) becomes `<redacted>`, and so does every quoted
  value in a line that names one (`value 'Doe^John' of PatientName`);
- every value of a dataset dump (pydicom's `(0010,0010) Patient's Name  PN: 'Doe^John'`);
- in the lines of the libraries that read the client's headers (pydicom, highdicom, pynetdicom,
  Python warnings) and in exception messages, where any quoted value may be the client's data,
  every quoted value (but DICOM keywords and VR codes, which say what went wrong), absolute
  paths (but source files, `.py`) and the file names an OSError carries. Traceback frames (our
  code's lines) are kept as they are.

A redaction that misses is the failure mode, so the code that logs does not hand patient data to
the log in the first place (the SEG writer logs the error's class and attribute, not the value);
this filter is the net.

The PACS CLI keeps UIDs (`keep_uids=True`): it runs beside the PACS, which holds the same UIDs
next to the patient's name, and a series UID is what an operator needs to find a failed series
there (`liverseg-pacs listen` has no other record of it; Orthanc's own log names the resources
it stores). Names, IDs and dates are redacted there as everywhere.
"""

from __future__ import annotations

import builtins
import datetime
import json
import logging
import re
import sys
import traceback

from pydicom.datadict import DicomDictionary, keyword_dict

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log at INFO what they copy from the client's headers (highdicom: a SOP
# Instance UID per module it copies); their warnings stay.
CHATTY = ("highdicom", "pydicom")
# Loggers of libraries that read the client's headers, whose quoted values may be patient data.
STRICT = {"pydicom", "highdicom", "pynetdicom", "py.warnings"}

# Attributes whose values identify a patient: the Patient modules (group 0010), every person name
# and date, and the study identifiers a clerk types.
_EXTRA_KEYWORDS = (
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "AdmissionID", "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID",
    "StudyDescription", "RequestingService", "MedicalRecordLocator",
)
_SENSITIVE = {
    entry[4]: entry[2]
    for tag, entry in DicomDictionary.items()
    if entry[4] and (tag >> 16 == 0x0010 or entry[0] in ("PN", "DA", "DT") or entry[4] in _EXTRA_KEYWORDS)
    and entry[4] not in ("Date", "DateTime")  # (0040,A121/A120): words too common to mark a line
}
_VRS = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
        "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}

# Quoted words that say what went wrong rather than whose data: VR codes, Python's type names.
_KEPT = _VRS | {name for name in dir(builtins) if not name.startswith("_")} | {"NoneType", "<redacted>"}

_NAMES = "|".join(re.escape(name) for name in sorted({*_SENSITIVE, *_SENSITIVE.values()}, key=len, reverse=True))
_MENTION = re.compile(rf"(?<!\w)(?:{_NAMES})(?!\w)")
_QUOTED = r"'[^'\n]*'|\"[^\"\n]*\""
# A keyword (quoted too, as a dict's key) given a value: `PatientID: 12`, `'PatientName': 'Doe'`.
_ASSIGNED = re.compile(
    rf"(?P<key>(?<!\w)(?:{_NAMES})(?!\w)['\"]?)(?:(?P<sep>\s*[=:]\s*)(?P<value>{_QUOTED}|[^\s,;)\]}}]*[^\s,;)\]}}.])"
    rf"|(?P<space>\s+)(?P<quoted>{_QUOTED}))"
)
# One element of a pydicom dataset dump: tag, name, VR, then the value to the end of the line.
_DUMP = re.compile(r"^(?P<head>[ \t]*\([0-9A-Fa-f]{4},\s?[0-9A-Fa-f]{4}\)[^\n]*?\s(?:[A-Z]{2})):[ \t]+\S[^\n]*$", re.M)
# A quote opens after no letter, so the apostrophe of "Patient's Name" opens nothing.
_LITERAL = re.compile(r"(?<!\w)(?P<q>['\"])(?P<text>[^'\"\n]*)(?P=q)(?!\w)")
_PERSON = re.compile(r"[\w.\-]*\w\^[\w.\-^]*|\^[\w.\-]*\w[\w.\-^]*")
# A full stop may end the sentence after a UID or a date; a digit after it continues the number.
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){3,}(?!\w|\.\d)")
_DATE = re.compile(r"(?<![\w.])(?:1[89]|20)\d\d(?P<dash>-?)(?:0[1-9]|1[0-2])(?P=dash)(?:0[1-9]|[12]\d|3[01])(?!\w|\.\d)")
_PATH = re.compile(r"(?<![\w:/.~])(?:~|\.{1,2})?/(?:[^\s'\"/:]+/)*[^\s'\"/:]+")
_FRAME = re.compile(r'\s*File "[^"\n]*", line \d+')
DICOM_ROOT = "1.2.840.10008."  # the standard's UIDs (transfer syntaxes, SOP classes): no patient's


def redact(text: str, *, strict: bool = False, keep_uids: bool = False) -> str:
    """`text` without patient data, by the module's rule; `strict` for text that quotes the client's
    values (a DICOM library's line, an exception message)."""
    text = _DUMP.sub(r"\g<head>: <redacted>", text)
    text = _ASSIGNED.sub(_assigned, text)
    if strict or _MENTION.search(text):
        text = _LITERAL.sub(_literal, text)
    if strict:
        text = _PATH.sub(lambda m: m[0] if m[0].endswith(".py") else "<path>", text)
    text = _PERSON.sub("<name>", text)
    if not keep_uids:
        text = _UID.sub(_uid, text)
    return _DATE.sub("<date>", text)


def _assigned(match: re.Match[str]) -> str:
    if match["sep"] is not None:
        return f"{match['key']}{match['sep']}<redacted>"
    return f"{match['key']}{match['space']}'<redacted>'"


def _literal(match: re.Match[str]) -> str:
    text = match["text"]
    if text in _KEPT or text in keyword_dict or not re.search(r"\w", text):
        return match[0]  # what went wrong ('DA', 'PatientName', "'<' ... 'NoneType' and 'int'"), not whose data
    return f"{match['q']}<redacted>{match['q']}"


def _uid(match: re.Match[str]) -> str:
    uid = match[0]
    parts = uid.split(".")
    if uid.startswith(DICOM_ROOT) or (len(parts) == 4 and all(int(p) <= 255 for p in parts)):
        return uid  # a standard UID or an IPv4 address: nobody's data
    return "<uid>"


def format_exception(error: BaseException, *, keep_uids: bool = False) -> str:
    """A traceback as `logging` prints one, each exception's message redacted (strictly); the
    frames, which show our code, kept."""
    names: set[str] = set()
    parts: list[str] = []
    _walk(error, parts, names, set(), "", keep_uids)
    text = "".join(parts)
    # The file names an OSError carried, wherever another message repeats them.
    for name in sorted((n for n in names if len(n) > 2), key=len, reverse=True):
        text = text.replace(name, "<path>")
    return text.rstrip("\n")


def _walk(error: BaseException, parts: list[str], names: set[str], seen: set[int], indent: str, keep_uids: bool) -> None:
    seen.add(id(error))
    if error.__cause__ is not None and id(error.__cause__) not in seen:
        _walk(error.__cause__, parts, names, seen, indent, keep_uids)
        parts.append(f"\n{indent}The above exception was the direct cause of the following exception:\n\n")
    elif error.__context__ is not None and not error.__suppress_context__ and id(error.__context__) not in seen:
        _walk(error.__context__, parts, names, seen, indent, keep_uids)
        parts.append(f"\n{indent}During handling of the above exception, another exception occurred:\n\n")
    if isinstance(error, OSError):  # the path an OSError names may be the client's file name
        names.update(str(f) for f in (error.filename, error.filename2) if f is not None)
    if error.__traceback__ is not None:
        parts.append(f"{indent}Traceback (most recent call last):\n")
        parts.extend(indent + line for line in "".join(traceback.format_tb(error.__traceback__)).splitlines(True))
    message = "".join(traceback.format_exception_only(type(error), error))
    parts.extend(indent + line for line in redact(message, strict=True, keep_uids=keep_uids).splitlines(True))
    if isinstance(error, BaseExceptionGroup):
        for number, inner in enumerate(error.exceptions, 1):
            parts.append(f"{indent}+---- {number} ----\n")
            _walk(inner, parts, names, seen, indent + "| ", keep_uids)


class PatientDataFilter(logging.Filter):
    """Rewrites each record's message and exception text by the module's rule; drops nothing."""

    def __init__(self, *, keep_uids: bool = False):
        super().__init__()
        self.keep_uids = keep_uids

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True  # the filter of another handler got to it first
        record._redacted = True
        args = record.args if isinstance(record.args, tuple) else (record.args,) if record.args else ()
        # A library's line, or ours with an exception in it: its quoted values may be the client's.
        strict = record.name.split(".")[0] in STRICT or record.name in STRICT or any(
            isinstance(a, BaseException) for a in args
        )
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call must not raise where it logged
            message = f"{record.msg} (with arguments that do not fit it)"
        record.msg, record.args = redact(message, strict=strict, keep_uids=self.keep_uids), None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters print exc_text when it is set; without exc_info none formats the raw one.
            record.exc_text = format_exception(record.exc_info[1], keep_uids=self.keep_uids)
            record.exc_info = None
        elif record.exc_text:  # formatted before it got here: each line but the frames' headers
            record.exc_text = "".join(
                line if _FRAME.match(line) else redact(line, strict=True, keep_uids=self.keep_uids)
                for line in record.exc_text.splitlines(True)
            )
        if record.stack_info:
            record.stack_info = redact(record.stack_info, keep_uids=self.keep_uids)
        return True


class JsonLineFormatter(logging.Formatter):
    """One JSON object a record, on one line: time (UTC, ISO 8601), level, logger, message, and
    the exception's traceback where there is one (already redacted by the filter)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, *, keep_uids: bool = False, log_format: str = "text") -> None:
    """Log at `level` (a name: "info", "debug", ...) to stderr in the one format ("text", or "json"
    lines), through `PatientDataFilter` on every root handler; called once by each process's entry point."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_liverseg", False)]:
        root.removeHandler(handler)  # a second call replaces ours rather than doubling each line
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else logging.Formatter(FORMAT))
    handler._liverseg = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    for each in root.handlers:  # any handler already there is covered by the same net
        each.filters = [f for f in each.filters if not isinstance(f, PatientDataFilter)]
        each.addFilter(PatientDataFilter(keep_uids=keep_uids))
    root.setLevel(level.upper())
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # pydicom's and highdicom's warnings quote header values
