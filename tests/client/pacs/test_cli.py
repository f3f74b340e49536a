"""`liverseg-pacs` argument handling and exit statuses that need no PACS and no service."""

from __future__ import annotations

import pytest

from client.pacs.cli import main
from client.pacs.listener import Destination
from tests.e2e.conftest import free_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [("pacs.local:104:ORTHANC", Destination("pacs.local", 104, "ORTHANC")), ("::1:4242:AE", Destination("::1", 4242, "AE"))],
)
def test_destination_parses_host_port_aet(text, expected) -> None:
    assert Destination.parse(text) == expected


@pytest.mark.parametrize("text", ["pacs.local", "pacs.local:104", "pacs.local:port:AE", ":104:AE", "pacs.local:104:"])
def test_a_bad_destination_says_the_form(text, capsys) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT:AET"):
        Destination.parse(text)
    assert main(["listen", "--port", "11112", "--service", "http://127.0.0.1:8000", "--destination", text]) == 2
    assert "is not HOST:PORT:AET" in capsys.readouterr().err


def test_an_unreachable_pacs_exits_2_with_the_reason(capsys) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    status = main(["run", "--dicomweb", f"{closed}/dicom-web", "--service", closed, "--retries", "2", "--backoff", "0.01"])
    assert status == 2
    err = capsys.readouterr().err
    assert "the PACS could not be searched: QIDO-RS search for CT series failed 2 time(s)" in err
    assert "ConnectionError" in err
