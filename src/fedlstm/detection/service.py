"""HTTP scoring service (FastAPI): POST /score, GET /healthz, GET /metrics, OpenAPI docs at /docs.

The service is one stream: each record of a request joins its entity's history (or the global
history when the schema has no entity key) in request order, and is scored once W records of that
entity have arrived; earlier ones come back with `scored: false`. A request is validated as a
whole before it touches that history, so a rejected request (4xx) changes nothing. Scoring holds a
lock, so concurrent requests are safe and each request's records stay contiguous.

`POST /score` is an async handler: it scores on the event loop, with no hop to a worker thread.
A small request takes about a millisecond, less than that hop and its wakeups cost under load,
and the stream serialises requests anyway. A request of many records delays the others for its
duration (bounded by `max_records`).
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from fedlstm import __version__
from fedlstm.data.byo import finite_float32
from fedlstm.detection.bundle import ModelBundle
from fedlstm.detection.stream import StreamScorer, alert_records

Value = str | float | int | bool | None
Record = dict[str, Value]
# A number sent as text (records read from CSV): no exponent beyond two digits, so always finite.
NUMERIC_TEXT = r"^-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][-+]?[0-9]{1,2})?$"
_NUMERIC_TEXT = re.compile(NUMERIC_TEXT)


def record_schema(bundle: ModelBundle) -> dict:
    """The JSON schema of one record for this bundle, as `records_to_frame` enforces it; the
    OpenAPI document carries it, so clients (and schemathesis) see the real contract."""
    spec, pre = bundle.spec, bundle.preprocessor
    fill = spec.fill_missing is not None
    unset = ([{"enum": list(spec.missing_values)}] if fill and spec.missing_values else []) + \
        ([{"type": "null"}] if fill else [])
    number = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": NUMERIC_TEXT}, *unset]}
    category = {"anyOf": [{"type": "string"}, {"type": "number"}, *unset]}
    properties = {**{c: number for c in pre.numeric_columns},
                  **{c: category for c in pre.categorical_columns}}
    if spec.entity_column:
        properties[spec.entity_column] = {"type": ["string", "number", "boolean", "null"],
                                          "description": "entity key: windows are kept per entity"}
    return {"type": "object", "title": "FlowRecord", "properties": properties,
            "required": [] if fill else list(properties.keys() - {spec.entity_column}),
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            "description": "One flow record: column -> value. Other columns are ignored."}


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413, streamed or not."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = (b'{"detail":"request body larger than %d bytes; send fewer records per '
                b'request"}' % self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """ASGI middleware: count every request and time it. Plain ASGI rather than
    `@app.middleware("http")`, whose per-request wrapping cost ~1 ms here."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - t)


class Metrics:
    """Counters and a latency histogram, rendered in Prometheus' text format."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, float("inf"))

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.records = self.scored = self.alerts = self.rejected = 0
        self.buckets = [0] * len(self.BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            if path == "/score":
                self.latency_sum += seconds
                self.latency_count += 1
                for i, bound in enumerate(self.BUCKETS):
                    if seconds <= bound:
                        self.buckets[i] += 1

    def render(self) -> str:
        with self.lock:
            out = ["# HELP fedlstm_requests_total HTTP requests by path and status.",
                   "# TYPE fedlstm_requests_total counter"]
            out += [f'fedlstm_requests_total{{path="{p}",status="{s}"}} {n}'
                    for (p, s), n in sorted(self.requests.items())]
            for name, value, text in (
                    ("records", self.records, "Records received in valid requests."),
                    ("records_scored", self.scored, "Records that ended a full window."),
                    ("alerts", self.alerts, "Records scored at or above the threshold."),
                    ("records_rejected", self.rejected, "Records in rejected requests.")):
                out += [f"# HELP fedlstm_{name}_total {text}", f"# TYPE fedlstm_{name}_total counter",
                        f"fedlstm_{name}_total {value}"]
            out += ["# HELP fedlstm_score_seconds Latency of POST /score.",
                    "# TYPE fedlstm_score_seconds histogram"]
            for bound, n in zip(self.BUCKETS, self.buckets):
                le = "+Inf" if math.isinf(bound) else repr(bound)
                out.append(f'fedlstm_score_seconds_bucket{{le="{le}"}} {n}')
            out += [f"fedlstm_score_seconds_sum {self.latency_sum:.6f}",
                    f"fedlstm_score_seconds_count {self.latency_count}"]
        return "\n".join(out) + "\n"


class ScoredRecord(BaseModel):
    index: int
    entity: str | None = None
    scored: bool
    score: float | None = None
    threshold: float
    alert: bool = False
    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    top_features: list[dict[str, Any]] | None = None


class ScoreResponse(BaseModel):
    model: str
    records: int
    scored: int
    alerts: int
    results: list[ScoredRecord]


class RecordError(ValueError):
    def __init__(self, errors: list[dict]):
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def records_to_frame(bundle: ModelBundle, records: list[Record], max_errors: int = 20
                     ) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray]:
    """Validate JSON records against the bundle's schema; every problem names records[i].column.
    Returns the records as a frame, their entity keys and their preprocessed features."""
    spec, pre = bundle.spec, bundle.preprocessor
    errors: list[dict] = []

    def fail(i: int, column: str, msg: str) -> None:
        if len(errors) < max_errors:
            errors.append({"loc": ["body", i, column], "msg": msg, "type": "value_error"})

    numeric = np.zeros((len(records), len(pre.numeric_columns)), np.float64)
    text = {c: [""] * len(records) for c in pre.categorical_columns}
    entity_col = spec.entity_column
    entity = [""] * len(records) if entity_col else None
    unset = set(spec.missing_values)
    for i, record in enumerate(records):
        for j, c in enumerate(pre.numeric_columns):
            value = record.get(c, None) if c in record else _MISSING
            if value is _MISSING or value is None or (isinstance(value, str) and value in unset):
                if spec.fill_missing is None:
                    fail(i, c, "missing value: a number is required" if value is _MISSING
                         else "unset value: a number is required")
                    continue
                value = spec.fill_missing
            if isinstance(value, bool) or (isinstance(value, str)
                                           and not _NUMERIC_TEXT.match(value)):
                fail(i, c, f"expected a number, found {value!r}")
                continue
            number = float(value)
            if not math.isfinite(number):
                if spec.fill_missing is None:
                    fail(i, c, f"non-finite value {value!r}")
                    continue
                number = spec.fill_missing
            numeric[i, j] = number
        for c in pre.categorical_columns:
            value = record.get(c, _MISSING)
            if value is _MISSING or value is None:
                if spec.fill_missing is None:
                    fail(i, c, "missing value: a category is required")
                    continue
                value = ""
            elif isinstance(value, bool):
                fail(i, c, f"expected a category (text or number), found {value!r}")
                continue
            text[c][i] = str(value)
        if entity_col:
            value = record.get(entity_col)
            entity[i] = "" if value is None else str(value)
    if errors:
        raise RecordError(errors)
    numeric = finite_float32(numeric)
    categorical = {c: np.array(values, object) for c, values in text.items()}
    features = pre.transform_arrays(numeric, categorical)
    # Object columns: pandas' default string dtype costs more to build than scoring a record.
    frame = pd.concat([pd.DataFrame(numeric, columns=pre.numeric_columns),
                       pd.DataFrame(categorical, dtype=object)], axis=1)
    return frame, None if entity is None else np.array(entity, object), features


_MISSING = object()


def create_app(bundle: ModelBundle, max_records: int = 1000, max_body_bytes: int = 1 << 20,
               max_entities: int = 10_000, explain_top: int = 3) -> FastAPI:
    """The scoring service of one model bundle."""
    app = FastAPI(title="fedlstm scoring service", version=__version__,
                  description=f"Scores flow records with a {bundle.task} "
                              f"{bundle.model_name.upper()} (W={bundle.window}) trained on "
                              f"{bundle.spec.name}.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    scorer = StreamScorer(bundle, explain_top=explain_top, max_entities=max_entities)
    lock = threading.Lock()
    metrics = Metrics()
    app.state.metrics, app.state.scorer = metrics, scorer
    model_name = str(bundle.metadata.get("dataset", bundle.spec.name))

    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: also counts 413s

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness and what the service scores with."""
        return {"status": "ok", "fedlstm_version": __version__, "schema": bundle.spec.name,
                "task": bundle.task, "window": bundle.window, "threshold": bundle.threshold_,
                "features": [*bundle.preprocessor.numeric_columns,
                             *bundle.preprocessor.categorical_columns],
                "entity": bundle.spec.entity_column}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        """Counters and latency histogram in Prometheus' text format."""
        return metrics.render()

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True,
              responses={400: {"description": "Body is not JSON"},
                         413: {"description": "Body over the size limit"},
                         422: {"description": "Invalid records (`detail` names each field), or "
                                               "more records than the limit"}})
    async def score(records: list[Record] = Body(..., description="Flow records: column -> value",
                                           examples=[[{c: 0 for c in
                                                       bundle.preprocessor.numeric_columns[:3]}]]),
              ) -> ScoreResponse:
        """Score records; each joins its entity's stream and is scored once W have arrived."""
        if len(records) > max_records:  # `maxItems` of the documented body
            with metrics.lock:
                metrics.rejected += len(records)
            raise HTTPException(422, [{"loc": ["body"], "type": "too_long",
                                       "msg": f"{len(records)} records in one request; at most "
                                              f"{max_records}"}])
        try:
            frame, entity, features = records_to_frame(bundle, records)
        except RecordError as exc:
            with metrics.lock:
                metrics.rejected += len(records)
            raise HTTPException(422, exc.errors) from None
        if not len(records):
            return ScoreResponse(model=model_name, records=0, scored=0, alerts=0, results=[])
        with lock:
            scores = scorer.score(frame, entity, features)
        items = alert_records(bundle, frame, scores, range(len(records)), entity=entity)
        results = []
        for i, item in enumerate(items):
            if not scores.scored[i]:
                results.append(ScoredRecord(index=i, entity=item.get("entity"), scored=False,
                                            threshold=bundle.threshold_))
                continue
            results.append(ScoredRecord(index=i, scored=True, **item))
        n_scored, n_alerts = int(scores.scored.sum()), int(scores.alert.sum())
        with metrics.lock:
            metrics.records += len(records)
            metrics.scored += n_scored
            metrics.alerts += n_alerts
        return ScoreResponse(model=model_name, records=len(records), scored=n_scored,
                             alerts=n_alerts, results=results)

    generated = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:  # document the records as they are validated
            doc = generated()
            body = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = {"type": "array", "items": record_schema(bundle),
                              "maxItems": max_records,
                              "title": "Records", "description": body["schema"].get("description")}
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(RecordError)
    async def record_error(_: Request, exc: RecordError):  # pragma: no cover - safety net
        return JSONResponse({"detail": exc.errors}, status_code=422)

    return app
