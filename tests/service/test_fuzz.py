"""A bounded fuzz run of both APIs against their own OpenAPI schema, on a real server with a worker behind it.

schemathesis makes requests from the schema (valid and invalid), and each answer must be no server error,
with a status code, content type and body the schema documents for that operation.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from studio_helpers import fast_config, install_checkpoint, running_worker

from atelier.service.server import StudioServer
from atelier.service.studio import Studio

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def fuzzed_server(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(
        tmp_path_factory.mktemp("fuzz") / "data",
        max_workers=0,
        port=0,
        # Small enough that a fuzzed generation finishes in a moment; bigger sizes are refused with 422.
        max_output_pixels=128 * 128,
        request_timeout_seconds=60.0,
        max_upload_bytes=8 * 1024**2,
    )
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    with running_worker(server.studio):
        yield url
    server.stop()


def test_every_operation_answers_as_its_schema_says(fuzzed_server):
    """Each operation gets valid and invalid examples (hypothesis, derandomized); every failure is listed."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{fuzzed_server}/openapi.json")
    failures: list[str] = []
    tried = calls = 0
    operations = [result.ok() for result in api.get_all_operations()]
    # Server-sent events stream until their job ends; test_api.py covers them.
    operations = [operation for operation in operations if not operation.path.endswith("/events")]
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        tried += 1

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(checks=CHECKS, timeout=90)

        try:
            fuzz()
        except Unsatisfiable:
            continue  # no invalid request exists for an operation without parameters or body
        except Exception as problem:  # noqa: BLE001 - collected and reported together
            failures.append(f"{operation.label} ({mode.value}): {str(problem)[:800]}")
    print(f"fuzzed {tried} operations with {calls} requests")
    assert len(operations) >= 40 and calls >= tried * 3
    assert failures == [], "\n\n".join(failures)
