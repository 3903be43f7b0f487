"""The HTTP scoring service: contract, validation, limits, concurrency, fuzzing, a real server."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from _detect_helpers import HEADER, flow_lines, tiny, tiny_model  # noqa: F401
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fedlstm.detection.service import create_app

COLUMNS = HEADER.split(",")


def records(n: int, seed: int = 0) -> list[dict]:
    return [dict(zip(COLUMNS, line.split(","))) for line in flow_lines(n, seed)]


@pytest.fixture
def client(tiny_model):
    with TestClient(create_app(tiny_model, max_records=50, max_body_bytes=20_000)) as c:
        yield c


def test_health_metrics_and_openapi(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["window"] == 3 and h["entity"] == "src"
    spec = client.get("/openapi.json").json()
    assert "/score" in spec["paths"] and "/healthz" in spec["paths"]
    client.post("/score", json=records(5))
    text = client.get("/metrics").text
    assert "# TYPE fedlstm_requests_total counter" in text
    assert 'fedlstm_requests_total{path="/score",status="200"} 1' in text
    assert "fedlstm_records_total 5" in text and 'fedlstm_score_seconds_bucket{le="+Inf"} 1' in text


def _first_scores(model, batch: list[dict]) -> list[float]:
    """Scores of `batch` sent as the first records of one stream to a new service."""
    with TestClient(create_app(model)) as c:
        return [r["score"] for r in c.post("/score", json=batch).json()["results"]]


def test_every_record_is_scored_from_its_entitys_first(client, tiny_model):
    first = client.post("/score", json=records(8)).json()  # 2 per host, fewer than W=3
    assert first["scored"] == 8 and all(r["scored"] and r["score"] is not None
                                        for r in first["results"])
    second = client.post("/score", json=records(4, seed=1)).json()  # the third for each host
    assert second["scored"] == 4
    r = second["results"][0]
    assert 0 <= r["score"] <= 1 and r["threshold"] == pytest.approx(client.get("/healthz").json()["threshold"])
    assert r["entity"] == "10.0.0.1"
    # The histories carry over between requests: as if all 12 had come in one.
    assert [r["score"] for r in second["results"]] == \
        _first_scores(tiny_model, records(8) + records(4, seed=1))[8:]


def test_invalid_requests_get_clear_4xx_and_change_nothing(client):
    bad = records(3)
    bad[1]["bytes"] = "lots"
    del bad[2]["proto"]
    r = client.post("/score", json=bad)
    assert r.status_code == 422
    locs = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert ("body", 1, "bytes") in locs and ("body", 2, "proto") in locs
    assert client.post("/score", json={"not": "a list"}).status_code == 422
    assert client.post("/score", content=b"{oops", headers={"content-type": "application/json"}).status_code == 422
    # JSON sent as another type was read as JSON anyway, and refused as "not a valid list"
    for media in ("text/plain", "application/x-www-form-urlencoded"):  # curl -d's default
        r = client.post("/score", content=json.dumps(records(2)).encode(),
                        headers={"content-type": media})
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]
    for literal in (b"NaN", b"Infinity", b"1e400"):  # JSON extensions Python's parser accepts
        body = b'[{"bytes": %s, "rate": 1, "proto": "tcp", "flag": "SF"}]' % literal
        r = client.post("/score", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", 0, "bytes"]
    too_many = client.post("/score", json=records(51))
    assert too_many.status_code == 422 and "at most 50" in too_many.text
    big = b"[" + b" " * 30_000 + b"]"
    assert client.post("/score", content=big, headers={"content-type": "application/json"}).status_code == 413
    assert client.app.state.scorer._tails == {}  # nothing rejected reached the stream


def test_concurrent_requests_are_safe(client):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: client.post("/score", json=records(12, seed=i)), range(16)))
    assert all(r.status_code == 200 for r in responses)
    total = sum(r.json()["scored"] for r in responses)
    assert total == 16 * 12  # every record, each host's first included


_value = st.one_of(st.none(), st.booleans(), st.integers(),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
_record = st.dictionaries(st.sampled_from([*COLUMNS, "other"]), _value, max_size=9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.lists(_record, max_size=6), _record, _value,
                      st.lists(st.lists(_value, max_size=3), max_size=3)))
def test_service_fuzz_never_500(client, body):
    r = client.post("/score", json=body)
    assert r.status_code in (200, 413, 422), r.text
    if r.status_code == 200:
        assert r.json()["records"] == len(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_on_loopback(tiny_model):
    import uvicorn
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_model), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/score", json=records(12), timeout=10)
        assert r.status_code == 200 and r.json()["scored"] == 12
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


# ---------------------------------------------------------------------- authentication

KEY = "k3y-" + "x" * 28


def test_api_key_guards_score_and_metrics_but_not_health(tiny_model):
    with TestClient(create_app(tiny_model, api_key=KEY)) as c:
        for method, path in (("post", "/score"), ("get", "/metrics")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                            {"Authorization": f"Basic {KEY}"}, {"X-API-Key": "caf\u00e9".encode()}):
                r = c.request(method, path, json=records(3), headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
            for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
                assert c.request(method, path, json=records(3), headers=headers).status_code == 200
        unread = c.post("/score", content=b"{oops" + b" " * 50_000,
                        headers={"content-type": "application/json"})
        assert unread.status_code == 401  # before the body is read: not a 413, not a 422
        assert c.get("/healthz").status_code == 200
        spec = c.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    for path, method in (("/score", "post"), ("/metrics", "get")):
        assert len(spec["paths"][path][method]["security"]) == 2  # either scheme will do
        assert "401" in spec["paths"][path][method]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_without_api_key_the_service_is_open_and_documents_no_scheme(client):
    assert client.post("/score", json=records(3)).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_api_key_must_not_be_trivial(tiny_model):
    with pytest.raises(ValueError, match="at least 16"):
        create_app(tiny_model, api_key="short")


# ---------------------------------------------------------------------- metrics


def _samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def test_metrics_values_cannot_be_forged_through_the_path(client):
    client.post("/score", json=records(8))
    before = _samples(client.get("/metrics").text, "fedlstm_alerts_total")
    # '"} 1e9' + newline + a forged sample: pasted into a label unescaped, it became a line.
    assert client.get('/x%22%7D%201e9%0Afedlstm_alerts_total%201e9').status_code == 404
    text = client.get("/metrics").text
    assert _samples(text, "fedlstm_alerts_total") == before
    assert "fedlstm_alerts_total 1e9" not in text  # the path's text is in no label
    paths = {s.labels["path"] for s in _samples(text, "fedlstm_requests_total")}
    assert paths == {"/score", "/metrics", "other"}


def test_unknown_paths_add_at_most_one_series(client):
    client.get("/healthz")

    def series() -> int:
        return len(_samples(client.get("/metrics").text, "fedlstm_requests_total"))

    start = series()
    for i in range(500):
        client.get(f"/probe/{i}")
    assert series() <= start + 2  # "other"/404, and the first /metrics call itself


def test_counters_keep_their_names_for_dashboards(client):
    alerts = client.post("/score", json=records(8)).json()["alerts"]
    client.post("/score", json=[{"bytes": "lots"}])
    text = client.get("/metrics").text
    value = lambda name: sum(s.value for s in _samples(text, name))  # noqa: E731
    assert value("fedlstm_records_total") == 8 and value("fedlstm_records_rejected_total") == 1
    assert value("fedlstm_records_scored_total") == 8 and value("fedlstm_alerts_total") == alerts
    assert value("fedlstm_score_seconds_count") == 2
    assert {s.labels["status"] for s in _samples(text, "fedlstm_requests_total")} == {"200", "422"}


def test_every_rejected_record_is_counted_and_only_posts_are_timed(client):
    """Records refused by FastAPI's own checks (a list for a value) or with their stream's name
    were not counted as rejected, and a GET /score (405) was timed as scoring."""
    client.post("/score", json=[{"bytes": [1, 2]}, {"bytes": 1}])
    client.post("/score", json=records(3), headers={"X-Fedlstm-Stream": "x" * 1000})
    client.get("/score")
    text = client.get("/metrics").text
    value = lambda name: sum(s.value for s in _samples(text, name))  # noqa: E731
    assert value("fedlstm_records_rejected_total") == 5
    assert value("fedlstm_score_seconds_count") == 2


# ---------------------------------------------------------------------- numbers


@pytest.mark.parametrize("digits", [b"1" + b"0" * 400, b"-1" + b"0" * 400])
def test_integers_beyond_float_range_are_a_422_naming_the_field(client, digits):
    body = b'[{"bytes": 1, "rate": %s, "proto": "tcp", "flag": "SF"}]' % digits
    r = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", 0, "rate"] and len(detail[0]["msg"]) < 100
    assert client.app.state.scorer._tails == {}


# ---------------------------------------------------------------------- streams


def _without_entity(bundle):
    bundle.spec = bundle.spec.model_copy(update={"entity_column": None})
    return bundle


def _scores(c, stream_records, **kw):
    return [c.post("/score", json=[r], **kw).json()["results"][0].get("score")
            for r in stream_records]


@pytest.mark.parametrize("entity", [True, False], ids=["per-entity", "no-entity-column"])
def test_other_streams_do_not_change_a_streams_scores(tiny_model, entity):
    model = tiny_model if entity else _without_entity(tiny_model)
    target, other = records(12, seed=2), records(12, seed=3)
    with TestClient(create_app(model)) as alone:
        expected = _scores(alone, target, params={"stream": "a"})
    with TestClient(create_app(model)) as shared:
        got = []
        for mine, theirs in zip(target, other):
            shared.post("/score", json=[theirs], headers={"X-Fedlstm-Stream": "b"})
            got += _scores(shared, [mine], params={"stream": "a"})
    assert sum(s is not None for s in got) >= 4 and got == expected


def _joined(model) -> dict[str, float]:
    """The score of records(1) as a history's first record ("new"), and after records(2) or
    records(1, seed=1): a record's score shows which history it joined."""
    seen = {"new": _first_scores(model, records(1))[0],
            "after 2": _first_scores(model, records(2) + records(1))[2],
            "after other": _first_scores(model, records(1, seed=1) + records(1))[1]}
    assert len(set(seen.values())) == 3
    return seen


def _score(response) -> float:
    return response.json()["results"][0]["score"]


def test_a_stream_defaults_to_the_client_address(tiny_model):
    model = _without_entity(tiny_model)
    joined = _joined(model)
    other = _first_scores(model, records(1, seed=1))[0]
    app = create_app(model)
    with TestClient(app, client=("192.0.2.1", 1)) as one, \
            TestClient(app, client=("192.0.2.2", 1)) as two:
        first = one.post("/score", json=records(2)).json()
        assert first["stream"] == "192.0.2.1"
        assert _score(two.post("/score", json=records(1, seed=1))) == other  # its own history
        assert _score(one.post("/score", json=records(1))) == joined["after 2"]
        named = one.post("/score", json=records(1), params={"stream": "192.0.2.2"})
        # a name never reaches the history of the address it spells
        assert named.json()["stream"] == "192.0.2.2" and _score(named) == joined["new"]
        assert one.post("/score", json=records(1), params={"stream": "x" * 200}).status_code == 422


def test_stream_histories_are_bounded(tiny_model):
    model = _without_entity(tiny_model)
    with TestClient(create_app(model, max_entities=2)) as c:
        for name in ("s1", "s2", "s3"):  # W-1 records each: a history per stream
            c.post("/score", json=records(2), params={"stream": name})
        assert len(c.app.state.scorer._tails) == 2
        joined = _joined(model)
        assert _score(c.post("/score", json=records(1), params={"stream": "s1"})) == joined["new"]
        assert _score(c.post("/score", json=records(1), params={"stream": "s3"})) == \
            joined["after 2"]
        # an operator sees the bound reached: histories kept and evicted
        text = c.get("/metrics").text
        assert "fedlstm_histories 2.0" in text and "fedlstm_histories_evicted 2.0" in text
