"""Schemathesis against the service's own OpenAPI document: requests generated from it, with
valid and invalid bodies, for every operation, get a documented status, never a 5xx, and a
response matching the declared schema. (Driven through hypothesis directly: schemathesis'
pytest plugin does not support pytest 9's node API yet.)"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from _detect_helpers import tiny, tiny_model  # noqa: F401
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from fedlstm.detection.service import create_app


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_service_honours_its_openapi_contract(tiny_model, mode):
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(tiny_model, max_records=50))  # body limit (413) tested elsewhere
    statuses: Counter = Counter()
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/score"), ("GET", "/healthz"), ("GET", "/metrics")}
    if mode is GenerationMode.NEGATIVE:  # only a body can be invalid here
        operations = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            response = case.call_and_validate()
            statuses[(case.path, response.status_code)] += 1

        check()
    if mode is GenerationMode.POSITIVE:
        assert statuses[("/healthz", 200)] and statuses[("/metrics", 200)]
        assert statuses[("/score", 200)]
    else:  # invalid bodies were refused with a 4xx (call_and_validate checks it), never a crash
        assert statuses[("/score", 422)]
