"""The HTTP scoring service: contract, validation, limits, concurrency, fuzzing, a real server."""

from __future__ import annotations

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


def test_records_warm_up_per_entity_then_score(client):
    first = client.post("/score", json=records(8)).json()  # 2 per host: none has W=3 yet
    assert first["scored"] == 0 and not any(r["scored"] for r in first["results"])
    second = client.post("/score", json=records(4, seed=1)).json()  # the third for each host
    assert second["scored"] == 4
    r = second["results"][0]
    assert 0 <= r["score"] <= 1 and r["threshold"] == pytest.approx(client.get("/healthz").json()["threshold"])
    assert r["entity"] == "10.0.0.1"


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
    assert total == 16 * 12 - 4 * (3 - 1)  # only each host's first W-1 records go unscored


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
        assert r.status_code == 200 and r.json()["scored"] == 4
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
