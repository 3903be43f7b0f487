"""What POST /score accepts, as `records_to_frame` enforces and `record_schema` documents it: a
field left out is a 422 naming it (unless the schema declares a default), every non-finite number
is one kind of 422, counts are never negative, and numbers beyond float32 are refused, not
clipped."""

from __future__ import annotations

import pytest
from _detect_helpers import tiny, tiny_model  # noqa: F401
from fastapi.testclient import TestClient

from fedlstm.detection import ModelBundle
from fedlstm.detection.service import (
    FLOAT32_MAX,
    RecordError,
    RecordRules,
    create_app,
    record_schema,
    records_to_frame,
)

GOOD = {"src": "10.0.0.1", "bytes": 120.0, "rate": 0.5, "proto": "tcp", "flag": "SF"}


def post(bundle: ModelBundle, body: bytes | list):
    client = TestClient(create_app(bundle))
    if isinstance(body, bytes):
        return client.post("/score", content=body, headers={"content-type": "application/json"})
    return client.post("/score", json=body)


@pytest.fixture
def filling(tiny) -> ModelBundle:
    """The tiny bundle with a schema that fills unset numbers ('-', null; 'Infinity' in files)
    and declares a default for `rate`, as Zeek's and CICFlowMeter's schemas do."""
    bundle = ModelBundle.load(tiny[2])
    bundle.spec = bundle.spec.model_copy(update={
        "fill_missing": 0.0, "missing_values": ["-", "Infinity", "-Infinity"],
        "defaults": {"rate": 0.25}})
    return bundle


def test_a_field_left_out_is_a_422_naming_it(tiny_model, filling):
    for bundle in (tiny_model, filling):  # filling unset values does not make fields optional
        r = post(bundle, [{"proto": "tcp"}])
        assert r.status_code == 422, r.text
        missing = {e["loc"][2] for e in r.json()["detail"] if e["type"] == "missing"}
        assert missing >= {"bytes", "flag"}
        assert all("field required" in e["msg"] for e in r.json()["detail"])
    assert "rate" in {e["loc"][2] for e in post(tiny_model, [{"proto": "tcp"}]).json()["detail"]}
    assert post(filling, [{k: v for k, v in GOOD.items() if k != "rate"}]).status_code == 200
    frame, _, _ = records_to_frame(filling, [{k: v for k, v in GOOD.items() if k != "rate"}])
    assert frame.loc[0, "rate"] == pytest.approx(0.25)  # the declared default
    assert post(filling, [{**GOOD, "bytes": None}, {**GOOD, "bytes": "-"}]).status_code == 200


def test_fields_left_out_are_all_named_beyond_the_error_limit(tiny_model):
    with pytest.raises(RecordError) as caught:
        records_to_frame(tiny_model, [{"src": "h"}] * 30, max_errors=5)
    assert len(caught.value.errors) == 6
    assert "fields left out: ['bytes', 'flag', 'proto', 'rate']" in caught.value.errors[-1]["msg"]


NON_FINITE_JSON = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9" * 400]
NON_FINITE_TEXT = ["NaN", "nan", "Infinity", "-Infinity", "inf"]


@pytest.mark.parametrize("bundle_name", ["tiny_model", "filling"])
def test_every_non_finite_number_is_one_consistent_422(bundle_name, request):
    bundle = request.getfixturevalue(bundle_name)
    bodies = [b'[{"bytes": 1, "rate": %s, "proto": "tcp", "flag": "SF"}]' % v
              for v in NON_FINITE_JSON]
    bodies += [[{**GOOD, "rate": v}] for v in NON_FINITE_TEXT]
    for body in bodies:
        r = post(bundle, body)
        assert r.status_code == 422, (body, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", 0, "rate"] and error["type"] == "finite_number", error
        assert error["msg"].startswith("expected a finite number, found ")


def test_negative_counts_are_a_422_by_the_documented_rule(tiny_model, tiny):
    r = post(tiny_model, [{**GOOD, "bytes": -5}])
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "negative"
    assert r.json()["detail"][0]["loc"] == ["body", 0, "bytes"]
    assert post(tiny_model, [{**GOOD, "bytes": "-5"}]).status_code == 422
    assert post(tiny_model, [{**GOOD, "rate": -0.5}]).status_code == 200  # not a count
    assert RecordRules(tiny_model).nonnegative == [True, False]  # bytes, rate
    # Training data with negatives in a count-like column (CIC's Init_Win_bytes_* = -1): allowed.
    seen_negative = ModelBundle.load(tiny[2])
    seen_negative.preprocessor.data_min_[0] = -1.0
    assert RecordRules(seen_negative).nonnegative == [False, False]
    # A schema's own `nonnegative` list decides.
    listed = ModelBundle.load(tiny[2])
    listed.spec = listed.spec.model_copy(update={"nonnegative": ["rate"]})
    assert post(listed, [{**GOOD, "rate": -0.5}]).json()["detail"][0]["type"] == "negative"
    assert post(listed, [{**GOOD, "bytes": -5}]).status_code == 200


def test_numbers_beyond_float32_are_refused_not_clipped(tiny_model):
    for value in (1e39, -1e99, "1e99", "4e38"):
        r = post(tiny_model, [{**GOOD, "rate": value}])
        assert r.status_code == 422, (value, r.text)
        assert r.json()["detail"][0]["type"] == "out_of_range"
    frame, _, _ = records_to_frame(tiny_model, [{**GOOD, "rate": 3.4e38}, {**GOOD, "rate": "1e19"}])
    assert frame["rate"].tolist() == [pytest.approx(3.4e38), pytest.approx(1e19)]


def test_the_record_schema_documents_the_rules(tiny_model, filling):
    schema = record_schema(tiny_model)
    assert set(schema["required"]) == {"bytes", "rate", "proto", "flag"}
    number = schema["properties"]["bytes"]["anyOf"][0]
    assert number == {"type": "number", "minimum": 0, "maximum": FLOAT32_MAX}
    assert schema["properties"]["rate"]["anyOf"][0]["minimum"] == -FLOAT32_MAX
    assert schema["properties"]["bytes"]["anyOf"][1]["pattern"].startswith("^(0|")
    filled = record_schema(filling)
    assert set(filled["required"]) == {"bytes", "proto", "flag"}
    assert filled["properties"]["rate"]["default"] == 0.25
    unset = filled["properties"]["bytes"]["anyOf"][2:]
    assert unset == [{"enum": ["-"]}, {"type": "null"}]  # 'Infinity' is no unset token here
