"""schemathesis against the running service's own OpenAPI schema: no 5xx, no undocumented answer.

Every operation is fuzzed with requests generated from the schema (valid and invalid ones), sent
to a real uvicorn on loopback. Random multipart bodies are never a readable CT, so /segment and
/jobs answer 4xx; what is checked is that each answer is one the schema documents, in the
documented content type and body shape, and never a server error.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.e2e.conftest import Server, tiny_service_env

EXAMPLES_PER_OPERATION = 30  # enough to reach every documented error path; the run stays near a minute

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def running(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("schema")
    server = Server(tiny_service_env(tiny_checkpoint_dir, folder / "var"), folder / "server.log").start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.mark.slow
def test_api_conforms_to_its_schema(running: Server) -> None:
    # one test over every operation: schemathesis's lazy `from_fixture` does not run on this pytest
    api_schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"/segment", "/jobs", "/jobs/{job_id}", "/models"} <= {op.path for op in operations}
    answered: Counter[tuple[str, int]] = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case) -> None:
            response = case.call_and_validate(base_url=running.url, checks=CHECKS, timeout=60)
            answered[(f"{case.method.upper()} {case.operation.path}", response.status_code)] += 1

        conforms()
    print(sorted(answered.items()))  # noqa: T201  (shown with -s: what the fuzzer reached)
    # the fuzzer reached the upload endpoints and they refused what is not a CT, as documented
    assert any(op == "POST /segment" and 400 <= code < 500 for op, code in answered)
    assert any(op == "POST /jobs" and 400 <= code < 500 for op, code in answered)
