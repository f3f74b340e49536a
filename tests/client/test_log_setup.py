"""Patient data kept out of the logs (client.log_setup): the redaction rule, the filter on the
root handler, the processes that install it, and the SEG writer's own warning."""

from __future__ import annotations

import errno
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk

from client.log_setup import PatientDataFilter, configure_logging, redact
from service.errors import UnsupportedOutput
from service.io.decode import Upload, decode_upload
from service.io.seg import make_seg
from service.settings import Settings
from tests.e2e.conftest import free_port
from tests.service.test_seg import CARD
from train.phantoms import make_phantom, write_dicom_series

UID = "1.2.826.0.1.3680043.8.498.51796897422950435360083541336338894791"


@pytest.mark.parametrize(
    ("text", "strict", "expected"),
    [
        # highdicom's INFO line (held back, and redacted should it come through)
        (f'copy Patient-related attributes from dataset "{UID}"', False, 'copy Patient-related attributes from dataset "<uid>"'),
        (f"series {UID} failed", False, "series <uid> failed"),
        # quoted patient attributes, however the line puts them
        ("PatientName='Doe^John', PatientID: ZZID-4711 and PatientBirthDate=19010203.",
         False, "PatientName=<redacted>, PatientID: <redacted> and PatientBirthDate=<redacted>."),
        ("value 'Doe Smith' of PatientName is too long", False, "value '<redacted>' of PatientName is too long"),
        ("Patient's Name 'Zz Marker' and Patient's Birth Date '1901-02-03'", False,
         "Patient's Name '<redacted>' and Patient's Birth Date '<redacted>'"),
        ("(0010,0010) Patient's Name                      PN: 'Doe^John'\n(0008,0018) SOP Instance UID  UI: 1.2.3.4.5",
         False, "(0010,0010) Patient's Name                      PN: <redacted>\n(0008,0018) SOP Instance UID  UI: <redacted>"),
        ("name Doe^John, born 19010203", False, "name <name>, born <date>"),
        (f"series {UID}. Born 1901-02-03. ZZDOB-19010203", False, "series <uid>. Born <date>. ZZDOB-<date>"),
        # pydicom's and highdicom's warnings quote the bad value without saying whose it is
        ("Invalid value for VR DA: '19010203zz'.", True, "Invalid value for VR DA: '<redacted>'."),
        ("'Zzsex' is not a valid PatientSexValues", True, "'<redacted>' is not a valid PatientSexValues"),
        ("Unable to convert '19010203zz' to 'DA' object", True, "Unable to convert '<redacted>' to 'DA' object"),
        ("[Errno 2] No such file: /tmp/liverseg-decode-x/zzfile_0001.dcm", True, "[Errno 2] No such file: <path>"),
        # what says what happened stays
        ('127.0.0.1:5555 - "POST /segment?output=dicom-seg HTTP/1.1" 200', False,
         '127.0.0.1:5555 - "POST /segment?output=dicom-seg HTTP/1.1" 200'),
        ("transfer syntax 1.2.840.10008.1.2.4.90; torch 2.5.1", True, "transfer syntax 1.2.840.10008.1.2.4.90; torch 2.5.1"),
        ("TypeError: '<' not supported between instances of 'NoneType' and 'int'", True,
         "TypeError: '<' not supported between instances of 'NoneType' and 'int'"),
        ("KeyError: 'PatientName'", True, "KeyError: 'PatientName'"),
        ("/venv/lib/python3.11/site-packages/pydicom/valuerep.py:440: UserWarning: x", True,
         "/venv/lib/python3.11/site-packages/pydicom/valuerep.py:440: UserWarning: x"),
    ],
)
def test_redact_removes_patient_data_and_keeps_the_rest(text, strict, expected) -> None:
    assert redact(text, strict=strict) == expected


def record(name: str, msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)


def formatted(item: logging.LogRecord, **kwargs: bool) -> str:
    assert PatientDataFilter(**kwargs).filter(item) is True  # redacts, never drops
    return logging.Formatter("%(name)s: %(message)s").format(item)


def test_the_filter_redacts_the_message_with_its_arguments() -> None:
    text = formatted(record("client.pacs.bridge", "series %s of %s: %r", UID, "Doe^John", {"PatientID": "ZZID-4711"}))
    assert text == "client.pacs.bridge: series <uid> of <name>: {'PatientID': <redacted>}"
    # The PACS CLI keeps UIDs (an operator finds a failed series by them), names still go.
    assert formatted(record("liverseg.pacs", "series %s of %s", UID, "Doe^John"), keep_uids=True) == (
        f"liverseg.pacs: series {UID} of <name>"
    )


def _read_patient_name(path: str) -> str:
    return open(path, "rb").PatientName  # noqa: SIM115 - open raises first


def test_a_traceback_loses_the_file_name_and_the_dataset_but_keeps_its_frames(tmp_path) -> None:
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientID = "Zzmarker^Patient", "ZZID-4711"
    upload = str(tmp_path / "Zzmarker name.dcm")  # not on a line the traceback shows
    try:
        try:
            _read_patient_name(upload)
        except OSError as error:
            raise RuntimeError(f"could not read {ds}") from error
    except RuntimeError:
        item = record("service.jobs.runner", "job %s failed", "0123abcd", exc_info=sys.exc_info())
    text = formatted(item)
    assert "Zzmarker" not in text and "ZZID-4711" not in text and str(tmp_path) not in text
    assert "FileNotFoundError: [Errno 2] No such file or directory: '<redacted>'" in text
    # The frames are our code, kept whole, though this one's line names an attribute and quotes.
    assert f'File "{__file__}", line' in text and 'in _read_patient_name\n    return open(path, "rb").PatientName' in text
    assert "The above exception was the direct cause" in text
    assert "(0010,0020) Patient ID" in text and "LO: <redacted>" in text
    assert item.exc_info is None  # no handler after this one formats the raw exception


def test_a_relative_file_name_an_oserror_carried_goes_wherever_it_is_repeated() -> None:
    name = "zzfile_" + "\u00c4" * 70 + ".dcm"  # the client's name, as the 500 had it
    try:
        try:
            raise OSError(errno.ENAMETOOLONG, "File name too long", name)
        except OSError:
            raise ValueError("could not store " + name)  # noqa: B904 - unquoted, and no path
    except ValueError:
        text = formatted(record("uvicorn.error", "Exception in ASGI application", exc_info=sys.exc_info()))
    assert "zzfile" not in text and "\u00c4" not in text
    assert text.endswith("ValueError: could not store <path>")


def test_configure_logging_quiets_highdicom_and_captures_warnings_redacted(restore_logging, capsys) -> None:
    configure_logging("debug")
    configure_logging("debug")  # twice: still one handler of ours
    logging.getLogger("highdicom.base").info('copy Image-related attributes from dataset "%s"', UID)
    logging.getLogger("highdicom.seg").warning("value 'Doe^John' of PatientName is too long")
    logging.getLogger("service.test").debug("debug lines of ours come through")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Invalid value for VR DA: '19010203zz'.", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "copy Image-related attributes" not in err  # INFO of highdicom: held back
    assert "WARNING highdicom.seg: value '<redacted>' of PatientName is too long" in err
    assert "DEBUG service.test: debug lines of ours come through" in err
    assert "WARNING py.warnings: " in err and "UserWarning: Invalid value for VR DA: '<redacted>'." in err
    assert "19010203" not in err and err.count("debug lines of ours") == 1


def test_json_lines_give_one_object_a_line_for_uvicorn_and_the_app_without_patient_data(restore_logging, capsys) -> None:
    configure_logging("info", log_format="json")
    # As uvicorn logs a request (log_config=None: its loggers propagate to ours), and as the job
    # runner logs an outcome.
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/jobs", "1.1", 202)
    logging.getLogger("service.jobs.runner").info("job %s %s: %d input bytes in %.1f s", "ab" * 16, "done", 52_000, 3.25)
    logging.getLogger("highdicom.base").info('copy Patient-related attributes from dataset "%s"', UID)  # held back
    logging.getLogger("highdicom.seg").warning("value 'Doe^John' of PatientName is too long")
    name = "Zzmarker" + "^Patient"  # not in the traceback's source line, which is kept
    try:
        raise ValueError(f"'{name}' is not a valid PatientSexValues\nsecond line")
    except ValueError:
        logging.getLogger("service.jobs.runner").exception("job %s failed", "cd" * 16)
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) >= {"time", "level", "logger", "message"} and r["time"].endswith("+00:00") for r in records)
    assert [{k: r[k] for k in ("level", "logger", "message")} for r in records] == [
        {"level": "INFO", "logger": "uvicorn.access", "message": '127.0.0.1:5000 - "POST /jobs HTTP/1.1" 202'},
        {"level": "INFO", "logger": "service.jobs.runner", "message": f"job {'ab' * 16} done: 52000 input bytes in 3.2 s"},
        {"level": "WARNING", "logger": "highdicom.seg", "message": "value '<redacted>' of PatientName is too long"},
        {"level": "ERROR", "logger": "service.jobs.runner", "message": f"job {'cd' * 16} failed"},
    ]
    exception = records[-1]["exception"]
    assert exception.startswith("Traceback (most recent call last):") and f'File "{__file__}", line' in exception
    assert exception.endswith("ValueError: '<redacted>' is not a valid PatientSexValues\nsecond line")
    assert "Zzmarker" not in "\n".join(lines) and "exception" not in records[0]


def test_configure_logging_puts_the_filter_on_handlers_already_there(restore_logging, capsys) -> None:
    existing = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(existing)
    configure_logging("info")
    assert [type(f) for f in existing.filters] == [PatientDataFilter]
    problem = ValueError("'Zzmarker^Patient' is not a valid PatientSexValues")  # off the traceback's lines
    try:
        raise problem
    except ValueError:
        logging.getLogger("service.jobs.runner").exception("job %s failed", "0123abcd")
    for text in (capsys.readouterr().err, existing.stream.getvalue()):  # both handlers, each whole
        assert "ValueError: '<redacted>' is not a valid PatientSexValues" in text and "Zzmarker" not in text
        assert f'File "{__file__}", line' in text


def test_the_pacs_cli_logs_through_the_filter_and_keeps_uids(restore_logging, capsys) -> None:
    from client.pacs.cli import main

    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["run", "--dicomweb", closed, "--service", closed, "--retries", "1", "--backoff", "0.01"]) == 2
    logging.getLogger("client.pacs.bridge").info("failed series %s of %s", UID, "Zzmarker^Patient")
    err = capsys.readouterr().err
    assert f"INFO client.pacs.bridge: failed series {UID} of <name>" in err


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, on the date written into the files
def test_the_seg_writer_logs_which_attribute_highdicom_refused_not_its_value(tmp_path, caplog) -> None:
    phantom = make_phantom(1, spacing_xyz_mm=(8.0, 8.0, 8.0), z_range=(-40, 0))
    files = write_dicom_series(phantom.ct, tmp_path / "dicom")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = "19010203zz"
        ds.save_as(path)
    volume = decode_upload([Upload(f.name, f) for f in files], Settings(data_dir=tmp_path / "var"))
    mask = sitk.Cast(volume.image > 0, sitk.sitkUInt8)
    with caplog.at_level(logging.WARNING, logger="service.io.seg"), pytest.raises(UnsupportedOutput) as refused:
        make_seg(volume, mask, CARD)
    assert "19010203zz" in refused.value.detail  # the client is told what its header holds
    (line,) = [r.getMessage() for r in caplog.records if r.name == "service.io.seg"]
    assert line == "DICOM SEG refused by highdicom: ValueError about PatientBirthDate"


def test_the_server_entry_point_gives_uvicorn_no_logging_config_of_its_own(monkeypatch, tmp_path, restore_logging) -> None:
    # uvicorn's default config puts its own handlers and format on its loggers, past the filter.
    import service.__main__ as entry

    seen: dict[str, object] = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(entry, "create_app", lambda settings: None)
    monkeypatch.setenv("LIVERSEG_DATA_DIR", str(Path(tmp_path) / "var"))
    entry.main(["--port", "8123"])
    assert "log_config" in seen and seen["log_config"] is None
    assert any(isinstance(f, PatientDataFilter) for h in logging.getLogger().handlers for f in h.filters)
