"""HTTP scoring service (FastAPI): POST /score, GET /healthz, GET /metrics, OpenAPI docs at /docs.

Streams. Every request belongs to a stream: the `stream` query parameter, else the
`X-Fedlstm-Stream` header, else the client's IP address (uvicorn's view of it: the peer, or
X-Forwarded-For when the peer is a trusted proxy, 127.0.0.1 by default; behind other proxies,
name streams). History is kept per (stream, entity), per stream alone when the schema has no
entity key, so one client's records never enter another's windows. Each record joins its history
in request order and is scored at once (a history's first W-1 records in windows left-padded with
its first record, as in training). At most `max_entities` histories are kept, least recently used
evicted first, which bounds the number of streams too (a client inventing streams evicts old
histories, never grows memory). Names are not secrets: any client may write to a stream it can
name. A request is validated as a whole before it touches any history, so a rejected one changes
nothing.

Access. With an API key (`create_app(api_key=...)`, `fedlstm serve --api-key-file`), POST /score
and GET /metrics need `Authorization: Bearer <key>` or `X-API-Key: <key>` (401 otherwise);
/healthz and the docs stay open. `server_config` sets up uvicorn: TLS, a cap on connections,
heads of at most MAX_HEAD_BYTES, and a read deadline: a request's head must arrive within
`read_timeout` seconds of the connection opening (or the previous response), its body within
`read_timeout` of the head, else 408 and the connection closes, so slow senders cannot hold
connections.

`POST /score` is an async handler: it scores on the event loop, with no hop to a worker thread.
A small request takes about a millisecond, less than that hop and its wakeups cost under load.
A request of many records delays the others for its duration (bounded by `max_records`). The
middlewares are plain ASGI for the same reason.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
import os
import re
import reprlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import numpy as np
import pandas as pd
import uvicorn
from fastapi import Body, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel
from uvicorn.protocols.http.h11_impl import H11Protocol

from fedlstm import __version__
from fedlstm.detection.bundle import ModelBundle
from fedlstm.detection.stream import (
    FLOAT32_MAX,
    Scores,
    StreamScorer,
    alert_records,
    nonnegative_columns,
)

try:  # uvicorn's fast parser, an optional extra of uvicorn; h11 parses without it
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - depends on the environment
    HttpToolsProtocol = None

Value = str | float | int | bool | None
Record = dict[str, Value]
# The model computes in float32: a number beyond its range is refused, never clipped.
# A number sent as text (records read from CSV): at most 18 integer digits and a positive
# exponent of at most 19, so always finite and inside float32's range.
NUMERIC_TEXT = r"^-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE](-[0-9]{1,2}|\+?1?[0-9]))?$"
NONNEGATIVE_TEXT = NUMERIC_TEXT.replace("^-?", "^", 1)  # the same without a sign
_NUMERIC_TEXT, _NONNEGATIVE_TEXT = re.compile(NUMERIC_TEXT), re.compile(NONNEGATIVE_TEXT)
_brief = reprlib.Repr()  # values quoted in errors: a 400-digit number is cut, not echoed
_brief.maxstring = _brief.maxlong = 40
MIN_API_KEY_CHARS = 16
MAX_STREAM_NAME = 128
KEEP_ALIVE_SECONDS = 5  # idle time before a kept-alive connection is closed
MAX_HEAD_BYTES = 16 * 1024  # request line and headers (431 beyond)
# Open connections (and requests in progress) before new requests get 503. Each request in
# progress may buffer up to max_body_bytes, so this also bounds the memory bodies can take.
LIMIT_CONCURRENCY = 128


class RecordRules:
    """What a valid record is for one bundle (`records_to_frame` enforces it, `record_schema`
    documents it), worked out once per bundle:

    - every feature column is required, unless the schema declares a default for it
      (`defaults`: Zeek's JSON writer leaves unset fields out);
    - an unset value (null, or a token such as Zeek's '-') is allowed where the schema fills
      unset numbers (`fill_missing`), and read as that value;
    - numbers are finite: NaN, Infinity (raw JSON or the strings "NaN", "Infinity"), and numbers
      beyond float64 (1e400) get one error, type `finite_number`;
    - numbers lie within float32's range (±3.4e38), the model's: beyond is `out_of_range`;
    - non-negative columns refuse negative numbers (`negative`). They are the schema's
      `nonnegative` list, or, where it has none, the columns named like counts (bytes, packets,
      durations: `flowschemas.count_like`) in which no training record was negative.
    """

    def __init__(self, bundle: ModelBundle):
        spec, pre = bundle.spec, bundle.preprocessor
        self.fill = spec.fill_missing
        # A missing-value token that reads as a non-finite number (CICFlowMeter's "Infinity")
        # marks an unset value in a file; sent to the service, it is a non-finite number.
        self.unset_tokens = [t for t in spec.missing_values if not _non_finite_text(t)] \
            if self.fill is not None else []
        self.defaults = {c: v for c, v in spec.defaults.items()
                         if c in pre.numeric_columns or c in pre.categorical_columns}
        self.nonnegative = nonnegative_columns(bundle)  # as `detect` reports them
        self.required = [c for c in [*pre.numeric_columns, *pre.categorical_columns]
                         if c not in self.defaults]
        self.schema_name = spec.name


def _non_finite_text(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def record_schema(bundle: ModelBundle, rules: RecordRules | None = None) -> dict:
    """The JSON schema of one record for this bundle, as `records_to_frame` enforces it; the
    OpenAPI document carries it, so clients (and schemathesis) see the real contract."""
    spec, pre = bundle.spec, bundle.preprocessor
    rules = rules or RecordRules(bundle)
    unset = ([{"enum": list(rules.unset_tokens)}] if rules.unset_tokens else []) + \
        ([{"type": "null"}] if rules.fill is not None else [])

    def number(nonnegative: bool) -> dict:
        low = 0 if nonnegative else -FLOAT32_MAX
        return {"anyOf": [{"type": "number", "minimum": low, "maximum": FLOAT32_MAX},
                          {"type": "string",
                           "pattern": NONNEGATIVE_TEXT if nonnegative else NUMERIC_TEXT},
                          *unset],
                **({"description": "a count: never negative"} if nonnegative else {})}

    category = {"anyOf": [{"type": "string"},
                          {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
                          *unset]}
    properties = {**{c: number(nn) for c, nn in zip(pre.numeric_columns, rules.nonnegative)},
                  **{c: category for c in pre.categorical_columns}}
    for c, value in rules.defaults.items():
        properties[c] = {**properties[c], "default": value}
    if spec.entity_column:
        properties[spec.entity_column] = {"type": ["string", "number", "boolean", "null"],
                                          "description": "entity key: windows are kept per entity"}
    return {"type": "object", "title": "FlowRecord", "properties": properties,
            "required": list(rules.required),
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
            "description": "One flow record: column -> value. Other columns are ignored. Every "
                           "feature is required unless it has a default; numbers are finite, "
                           "within float32's range, and never negative where a count."}


# ---------------------------------------------------------------------- transport guards


class _TooLarge(Exception):
    pass


async def _refuse(send, status: int, detail: str, headers: list | None = None) -> None:
    """Answer for the app and close the connection: the rest of the body is never read."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyGuard:
    """ASGI middleware: read the whole request body before the app runs; 413 when it is over
    `max_bytes` (declared, or streamed/chunked past the limit), 408 when it has not all arrived
    `read_timeout` seconds after the head. The app then gets the body as one message.

    Both answers are sent from here, not raised into the app: FastAPI turns any error while it
    reads a body into a 400, which is how a chunked body over the limit used to get one."""

    def __init__(self, app, max_bytes: int, read_timeout: float):
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope.get("method") == "POST":  # read as JSON whatever it said: 422 "a valid list"
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media and media != b"application/json" and not media.endswith(b"+json"):
                return await _refuse(send, 415, "send the records as JSON (Content-Type: "
                                                f"application/json), not {media.decode('latin-1')}")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _refuse(send, 413, self._too_large())
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._read(receive)
        except TimeoutError:
            return await _refuse(send, 408, f"request body not received within "
                                            f"{self.read_timeout:g} seconds")
        except _TooLarge:
            return await _refuse(send, 413, self._too_large())
        if body is None:
            return  # the client went away
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:  # after the body only a disconnect can come
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                raise _TooLarge
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes; send fewer records per request"


def _close_with(transport, status: bytes, message: bytes) -> None:
    """Answer with `status` and close, outside any request cycle (the app never saw the head)."""
    transport.write(b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (status, len(message), message))
    transport.close()


class _HeadDeadline:
    """Mixin for uvicorn's HTTP protocols: a request's head, which the app never sees, must
    arrive in full within `read_timeout` seconds of the connection opening or the previous
    response ending, else 408 (a plain close when nothing came). uvicorn's only timer, the
    keep-alive one, stops at the first byte, so a client sending half a head held its connection
    for as long as it liked. `BodyGuard` times the body. `_head_state` says (waiting for a head,
    some of it arrived)."""

    read_timeout: float
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.read_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        waiting, started = self._head_state()
        if not waiting or self.transport.is_closing():
            return  # the head is in: the app answers
        if started:
            _close_with(self.transport, b"408 Request Timeout", b"request head not sent in time")
        else:
            self.transport.close()


def _refused_head(transport, buffered: int, data: bytes, limit: int) -> bool:
    """Answer 431 and close when the request head, `buffered` bytes so far and `data` up to its
    blank line, is over `limit`. Both parsers admitted any head that came whole in one read:
    httptools parsed it at once, and h11 bounds only a head still incomplete."""
    end = data.find(b"\r\n\r\n")
    if buffered + (len(data) if end < 0 else end + 4) <= limit or transport.is_closing():
        return False
    _close_with(transport, b"431 Request Header Fields Too Large",
                b"request head over %d bytes" % limit)
    return True


class GuardedH11Protocol(_HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol with the head deadline and the bound on the head's size."""

    def __init__(self, *args, read_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def _head_state(self) -> tuple[bool, bool]:
        return self.conn.their_state is h11.IDLE, bool(self.conn.trailing_data[0])

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and _refused_head(
                self.transport, len(self.conn.trailing_data[0]), data, MAX_HEAD_BYTES):
            return
        super().data_received(data)


class GuardedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol or object):  # object: unusable
    """uvicorn's httptools protocol with the head deadline, and a bound on the head's size
    (httptools buffers any amount): over `max_head_bytes`, 431. Preferred over h11 when
    installed: h11's pure-Python parsing costs ~60 µs a request, a tenth of scoring a record."""

    def __init__(self, *args, read_timeout: float, max_head_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout, self.max_head_bytes = read_timeout, max_head_bytes
        self._in_head, self._head_bytes, self._head_started = True, 0, False

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if _refused_head(self.transport, self._head_bytes, data, self.max_head_bytes):
                return
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes \
                and not self.transport.is_closing():
            _close_with(self.transport, b"431 Request Header Fields Too Large",
                        b"request head over %d bytes" % self.max_head_bytes)

    # httptools' parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._head_started = True, 0, False  # the next head

    def _head_state(self) -> tuple[bool, bool]:
        return self._in_head, self._head_started


def _guarded_protocol(parser: str, read_timeout: float) -> Callable[..., asyncio.Protocol]:
    """uvicorn's protocol factory for `parser` (httptools | h11 | auto), with the guards."""
    if parser == "auto":
        parser = "h11" if HttpToolsProtocol is None else "httptools"
    if parser == "h11":
        return functools.partial(GuardedH11Protocol, read_timeout=read_timeout)
    if parser != "httptools":
        raise ValueError(f"unknown HTTP parser {parser!r}: httptools, h11 or auto")
    if HttpToolsProtocol is None:
        raise ValueError("the httptools parser is not installed (pip install httptools)")
    return functools.partial(GuardedHttpToolsProtocol, read_timeout=read_timeout,
                             max_head_bytes=MAX_HEAD_BYTES)


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, *,
                  tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                  limit_concurrency: int = LIMIT_CONCURRENCY, parser: str = "auto",
                  log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's configuration for the service `app` (from `create_app`): heads bounded in size
    and held to the app's read deadline, a short keep-alive, a cap on connections, TLS when given
    a certificate and its key. `parser`: httptools | h11 | auto (httptools when installed, as
    uvicorn chooses). Loaded here, so unreadable TLS files fail before serving starts."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, ws="none",
        http=_guarded_protocol(parser, app.state.read_timeout),
        lifespan="off", timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=limit_concurrency,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ssl_certfile=None if tls_cert is None else str(tls_cert),
        ssl_keyfile=None if tls_key is None else str(tls_key))
    config.load()
    return config


# ---------------------------------------------------------------------- metrics


# Status labels come from this set (other codes as their class), paths from the app's routes
# (unknown paths as "other"): request text never reaches a label, so series stay few.
_STATUS_LABELS = {code: str(code) for code in
                  (200, 307, 400, 401, 404, 405, 408, 413, 415, 422, 499, 500, 503)}


def _status_label(status: int) -> str:
    return _STATUS_LABELS.get(status) or f"{status // 100}xx"


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process never
    share counts). Names are those of earlier versions, so dashboards keep working."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

    def __init__(self):
        self.registry = CollectorRegistry()

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, labels, registry=self.registry)

        self.requests = counter("fedlstm_requests_total", "HTTP requests by route and status.",
                                ("path", "status"))
        self.records = counter("fedlstm_records_total", "Records received in valid requests.")
        self.scored = counter("fedlstm_records_scored_total", "Records scored.")
        self.alerts = counter("fedlstm_alerts_total", "Records scored at or above the threshold.")
        self.rejected = counter("fedlstm_records_rejected_total", "Records in rejected requests.")
        self.latency = Histogram("fedlstm_score_seconds", "Latency of POST /score.",
                                 buckets=self.BUCKETS, registry=self.registry)
        self.histories = Gauge("fedlstm_histories", "(stream, entity) histories kept now.",
                               registry=self.registry)
        self.evicted = Gauge("fedlstm_histories_evicted", "Histories evicted since the start "
                             "(least recently used, beyond max_entities): a record of an "
                             "evicted one starts a new window.", registry=self.registry)

    def watch(self, scorer: StreamScorer) -> None:
        """Read the scorer's histories at each scrape (nothing to update per request)."""
        self.histories.set_function(lambda: scorer.histories)
        self.evicted.set_function(lambda: scorer.evicted)

    def observe(self, path: str, status: int, seconds: float, method: str = "POST") -> None:
        self.requests.labels(path, _status_label(status)).inc()
        if path == "/score" and method == "POST":  # a GET's 405 is no scoring latency
            self.latency.observe(seconds)

    def exposition(self, accept: str | None) -> Response:
        """The metrics in the format the scraper asks for (Prometheus text by default)."""
        encode, media_type = choose_encoder(accept or "")
        return Response(encode(self.registry), media_type=media_type)


class RequestMetrics:
    """ASGI middleware: count every request by route template and status, and time POST /score.
    Plain ASGI rather than `@app.middleware("http")`, whose per-request wrapping cost ~1 ms."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics = app, metrics
        self.paths = frozenset(getattr(r, "path", None) for r in routes)  # built on first request

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), None

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            failed = True  # uvicorn answers 500
            raise
        finally:
            if status is None:  # no answer: 499, nginx's "client closed request"
                status = 500 if failed else 499
            self.metrics.observe(self._route(scope), status, time.perf_counter() - t,
                                 scope.get("method", ""))

    def _route(self, scope) -> str:
        route = scope.get("route")  # FastAPI's matched route, with its path template
        if route is not None:
            return route.path
        return scope["path"] if scope["path"] in self.paths else "other"


# ---------------------------------------------------------------------- records


class ScoredRecord(BaseModel):
    index: int
    entity: str | None = None
    scored: bool = True  # every record is scored (kept for clients that read it)
    score: float | None = None
    threshold: float
    alert: bool = False
    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    top_features: list[dict[str, Any]] | None = None
    fired: str | None = None  # hybrid detector: "known attack", "anomalous" or both
    reason: str | None = None  # e.g. "known attack: dos (p = 0.98)"


class ScoreResponse(BaseModel):
    model: str
    stream: str
    records: int
    scored: int
    alerts: int
    results: list[ScoredRecord]


class RecordError(ValueError):
    def __init__(self, errors: list[dict]):
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def records_to_frame(bundle: ModelBundle, records: list[Record], max_errors: int = 20,
                     rules: RecordRules | None = None
                     ) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray]:
    """Validate JSON records against the bundle's schema (`RecordRules`); every problem names
    records[i].column, and a field left out is named whatever the number of problems.
    Returns the records as a frame, their entity keys and their preprocessed features."""
    spec, pre = bundle.spec, bundle.preprocessor
    rules = rules or RecordRules(bundle)
    errors: list[dict] = []
    left_out: dict[str, int] = {}
    hidden = 0

    def fail(i: int, column: str, kind: str, msg: str) -> None:
        nonlocal hidden
        if len(errors) < max_errors:
            errors.append({"loc": ["body", i, column], "msg": msg, "type": kind})
        else:
            hidden += 1

    numeric = np.zeros((len(records), len(pre.numeric_columns)), np.float64)
    text = {c: [""] * len(records) for c in pre.categorical_columns}
    entity_col = spec.entity_column
    entity = [""] * len(records) if entity_col else None
    unset = set(rules.unset_tokens)
    def field(i: int, record: dict, c: str):
        """The record's value of `c`, else the schema's default, else _MISSING (reported)."""
        value = record[c] if c in record else rules.defaults.get(c, _MISSING)
        if value is _MISSING:
            left_out[c] = left_out.get(c, 0) + 1
            fail(i, c, "missing", f"field required: schema {rules.schema_name!r} declares "
                                  "no default for it")
        return value

    for i, record in enumerate(records):
        for j, c in enumerate(pre.numeric_columns):
            value = field(i, record, c)
            if value is _MISSING:
                continue
            if value is None or (isinstance(value, str) and value in unset):
                if rules.fill is None:
                    fail(i, c, "value_error", "unset value: a number is required")
                    continue
                value = rules.fill
            number, problem = _number(value, rules.nonnegative[j])
            if problem is not None:
                fail(i, c, *problem)
                continue
            numeric[i, j] = number
        for c in pre.categorical_columns:
            value = field(i, record, c)
            if value is _MISSING:
                continue
            if value is None:
                if rules.fill is None:
                    fail(i, c, "value_error", "unset value: a category is required")
                    continue
                value = ""
            elif isinstance(value, bool):
                fail(i, c, "value_error", f"expected a category (text or number), found {value!r}")
                continue
            elif isinstance(value, (int, float)):
                _, problem = _number(value, False)
                if problem is not None:
                    fail(i, c, *problem)
                    continue
            text[c][i] = str(value)
        if entity_col:
            value = record.get(entity_col)
            entity[i] = "" if value is None else str(value)
    if errors:
        if hidden:
            errors.append({"loc": ["body"], "type": "too_many_errors",
                           "msg": f"{hidden} more problem(s) not listed" +
                                  (f"; fields left out: {sorted(left_out)}" if left_out else "")})
        raise RecordError(errors)
    numeric = numeric.astype(np.float32)  # inside float32's range: checked above
    categorical = {c: np.array(values, object) for c, values in text.items()}
    features = pre.transform_arrays(numeric, categorical)
    # Object columns: pandas' default string dtype costs more to build than scoring a record.
    frame = pd.concat([pd.DataFrame(numeric, columns=pre.numeric_columns),
                       pd.DataFrame(categorical, dtype=object)], axis=1)
    return frame, None if entity is None else np.array(entity, object), features


def _number(value, nonnegative: bool) -> tuple[float, tuple[str, str] | None]:
    """A record's number, or the (type, message) of the error it is: one kind for every
    non-finite value (JSON NaN/Infinity, 1e400, the strings "NaN"/"Infinity"), one for values
    beyond float32, one for negatives in a count."""
    shown = _brief.repr(value)
    if isinstance(value, bool):
        return 0.0, ("value_error", f"expected a number, found {shown}")
    if isinstance(value, str):
        if (_NONNEGATIVE_TEXT if nonnegative else _NUMERIC_TEXT).match(value):
            return float(value), None
        try:
            number = float(value.strip())
        except ValueError:
            return 0.0, ("value_error", f"expected a number, found {shown}")
        checked = _checked(number, shown, nonnegative)
        if checked is None:  # a number, but not written as the documented pattern says
            return 0.0, ("value_error",
                         f"expected a number in plain or short scientific notation, found {shown}")
        return 0.0, checked
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64 (JSON numbers have any length)
        number = math.inf
    except (TypeError, ValueError):
        return 0.0, ("value_error", f"expected a number, found {shown}")
    if isinstance(value, int) and math.isfinite(number) and abs(value) > FLOAT32_MAX:
        number = math.copysign(FLOAT32_MAX * 2, value)  # rounds to the limit as a float
    return number, _checked(number, shown, nonnegative)


def _checked(number: float, shown: str, nonnegative: bool) -> tuple[str, str] | None:
    if not math.isfinite(number):
        return "finite_number", f"expected a finite number, found {shown}"
    if abs(number) > FLOAT32_MAX:
        return "out_of_range", f"{shown} is beyond float32's range (±3.4e38)"
    if nonnegative and number < 0:
        return "negative", f"expected a count (never negative), found {shown}"
    return None


_MISSING = object()


# ---------------------------------------------------------------------- access


class ApiKeyGuard:
    """ASGI middleware: requests to `paths` need the API key, as `Authorization: Bearer <key>` or
    `X-API-Key: <key>` (compared in constant time), else 401, sent before any of the body is
    read: a client without the key costs no parsing and learns nothing about the schema."""

    def __init__(self, app, api_key: str, paths: frozenset[str]):
        self.app, self.key, self.paths = app, api_key.encode(), paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths or self._allowed(scope):
            return await self.app(scope, receive, send)
        await _refuse(send, 401, "missing or wrong API key: send `Authorization: Bearer <key>` "
                                 "or `X-API-Key: <key>`", [(b"www-authenticate", b"Bearer")])

    def _allowed(self, scope) -> bool:
        for name, value in scope["headers"]:  # raw bytes, as the client sent them
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
                    return True
            elif name == b"x-api-key" and hmac.compare_digest(value, self.key):
                return True
        return False


def check_api_key(api_key: str) -> None:
    if len(api_key) < MIN_API_KEY_CHARS:
        raise ValueError(f"an API key needs at least {MIN_API_KEY_CHARS} characters; make one "
                         "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def document_api_key(doc: dict, operations: list[tuple[str, str]]) -> None:
    """Add the API key's two security schemes (either will do) to `operations` of an OpenAPI
    document; FastAPI's own scheme models describe them."""
    schemes = {"bearer": HTTPBearer(description="`Authorization: Bearer <API key>`"),
               "apiKey": APIKeyHeader(name="X-API-Key", description="The API key.")}
    doc.setdefault("components", {})["securitySchemes"] = {
        name: scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, scheme in schemes.items()}
    for path, method in operations:
        doc["paths"][path][method]["security"] = [{name: []} for name in schemes]


def load_api_key(path: str | Path | None = None, environ: dict | None = None) -> str | None:
    """The service's API key: the content of `path` (surrounding whitespace dropped), else
    $FEDLSTM_API_KEY, else None (no authentication). A file keeps the key out of `ps` and shell
    history."""
    if path is not None:
        key = Path(path).read_text().strip()
        if not key:
            raise ValueError(f"{path}: empty API key file")
        return key
    return (os.environ if environ is None else environ).get("FEDLSTM_API_KEY") or None


# ---------------------------------------------------------------------- the app


def _stream_parameter(name: str, where: str, description: str) -> dict:
    return {"name": name, "in": where, "required": False, "description": description,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_STREAM_NAME}}


# Read from the request by `_stream_key` rather than declared as FastAPI parameters, whose
# validation cost more than the rest of the request's handling outside scoring; documented here.
STREAM_PARAMETERS = [
    _stream_parameter("stream", "query", "The stream these records belong to (default: the "
                                         "client's IP address); windows never mix streams."),
    _stream_parameter("X-Fedlstm-Stream", "header", "The stream, when the query names none.")]


def _stream_key(request: Request) -> tuple[tuple[str, str], str]:
    """The history key of a request's stream, and its name for the response. Named streams and
    address streams are kept apart, so naming a stream never joins an address's history."""
    query = request.query_params.get("stream") if request.scope["query_string"] else None
    named = [(["query", "stream"], query),
             (["header", "X-Fedlstm-Stream"], request.headers.get("x-fedlstm-stream"))]
    for loc, name in named:
        if name is not None and not 1 <= len(name) <= MAX_STREAM_NAME:
            raise HTTPException(422, [{"loc": loc, "type": "string_length",
                                       "msg": f"a stream name has 1 to {MAX_STREAM_NAME} "
                                              "characters"}])
    name = next((name for _, name in named if name is not None), None)
    if name is not None:
        return ("named", name), name
    host = request.client.host if request.client else ""
    return ("client", host), host


class _ScoreHandler:
    """What POST /score does with a request's records once FastAPI has parsed them: check their
    number, validate them, score them, and count it all. One per app; its lock serialises
    scoring, since every stream's history lives in the one scorer."""

    def __init__(self, bundle: ModelBundle, scorer: StreamScorer, metrics: Metrics,
                 max_records: int):
        self.bundle, self.scorer, self.metrics, self.max_records = (bundle, scorer, metrics,
                                                                    max_records)
        self.lock = threading.Lock()
        self.model_name = str(bundle.metadata.get("dataset", bundle.spec.name))
        self.rules = RecordRules(bundle)

    def validate(self, records: list[Record]) -> tuple[pd.DataFrame, np.ndarray | None,
                                                       np.ndarray]:
        """`records_to_frame`'s answer, or a 422 (the records counted as rejected): a request is
        validated as a whole before it touches any history, so a rejected one changes nothing."""
        if len(records) > self.max_records:  # `maxItems` of the documented body
            self.metrics.rejected.inc(len(records))
            raise HTTPException(422, [{"loc": ["body"], "type": "too_long",
                                       "msg": f"{len(records)} records in one request; at most "
                                              f"{self.max_records}"}])
        try:
            return records_to_frame(self.bundle, records, rules=self.rules)
        except RecordError as exc:
            self.metrics.rejected.inc(len(records))
            raise HTTPException(422, exc.errors) from None

    def score(self, stream: tuple[str, str], shown: str, records: list[Record],
              frame: pd.DataFrame, entity: np.ndarray | None,
              features: np.ndarray) -> ScoreResponse:
        """Score valid records on `stream`'s histories; `shown`: the stream's name in the
        response."""
        if not len(records):
            return ScoreResponse(model=self.model_name, stream=shown, records=0, scored=0,
                                 alerts=0, results=[])
        with self.lock:
            scores = self.scorer.score(frame, entity, features, stream=stream)
        return self._respond(shown, records, frame, entity, scores)

    def _respond(self, shown: str, records: list[Record], frame: pd.DataFrame,
                 entity: np.ndarray | None, scores: Scores) -> ScoreResponse:
        """The response, counted in the metrics."""
        items = alert_records(self.bundle, frame, scores, range(len(records)), entity=entity)
        # Inline, not a call per record: this is the hot path.
        results = [ScoredRecord(index=i, scored=True, **item) for i, item in enumerate(items)]
        n_scored, n_alerts = int(scores.scored.sum()), int(scores.alert.sum())
        self.metrics.records.inc(len(records))
        self.metrics.scored.inc(n_scored)
        self.metrics.alerts.inc(n_alerts)
        return ScoreResponse(model=self.model_name, stream=shown, records=len(records),
                             scored=n_scored, alerts=n_alerts, results=results)


def _new_app(bundle: ModelBundle) -> FastAPI:
    """An empty FastAPI app, titled and described for `bundle` (the OpenAPI document's info)."""
    return FastAPI(title="fedlstm scoring service", version=__version__,
                   description=f"Scores flow records with a {bundle.task} "
                               f"{bundle.model_name.upper()} (W={bundle.window}) trained on "
                               f"{bundle.spec.name}. Each request joins a stream (`stream`, "
                               "else `X-Fedlstm-Stream`, else the client's address): windows "
                               "never mix records of two streams.")


def _add_middlewares(app: FastAPI, metrics: Metrics, max_body_bytes: int, read_timeout: float,
                     api_key: str | None) -> None:
    """The plain-ASGI guards and metrics. Each `add_middleware` wraps those added before it, so
    the order matters: the API key is checked outside BodyGuard (no key, no body read), and the
    metrics are outermost, so they also count the guards' 401s, 408s and 413s."""
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes, read_timeout=read_timeout)
    if api_key is not None:
        check_api_key(api_key)
        app.add_middleware(ApiKeyGuard, api_key=api_key, paths=frozenset({"/score", "/metrics"}))
    # The routes list itself, not a copy: RequestMetrics reads it once the routes are added.
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.routes)


def _add_healthz(app: FastAPI, bundle: ModelBundle) -> None:
    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness and what the service scores with."""
        return {"status": "ok", "fedlstm_version": __version__, "schema": bundle.spec.name,
                "task": bundle.task, "window": bundle.window, "threshold": bundle.threshold_,
                "features": [*bundle.preprocessor.numeric_columns,
                             *bundle.preprocessor.categorical_columns],
                "entity": bundle.spec.entity_column}


def _add_metrics_route(app: FastAPI, metrics: Metrics, denied: dict) -> None:
    @app.get("/metrics", response_class=PlainTextResponse, responses={
        200: {"description": "Prometheus exposition",
              "content": {"text/plain": {"schema": {"type": "string"}},
                          "application/openmetrics-text": {"schema": {"type": "string"}}}},
        **denied})
    async def prometheus(request: Request) -> Response:
        """Counters and latency histogram in Prometheus' text format (or OpenMetrics, if the
        scraper's Accept header asks for it)."""
        return metrics.exposition(request.headers.get("accept"))


def _add_score_route(app: FastAPI, handler: _ScoreHandler, denied: dict) -> None:
    # The endpoint keeps its name and parameters: they make the OpenAPI document's operation id
    # and body schema. Its body is the handler's steps, with no other work per request.
    numeric_columns = handler.bundle.preprocessor.numeric_columns

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True,
              openapi_extra={"parameters": STREAM_PARAMETERS},
              responses={400: {"description": "Malformed HTTP (e.g. a bad Content-Length)"},
                         **denied,
                         408: {"description": "Body not received within the read timeout"},
                         413: {"description": "Body over the size limit"},
                         415: {"description": "Body not sent as application/json"},
                         422: {"description": "Invalid records (`detail` names each field), a "
                                               "body that is not JSON (type `json_invalid`), or "
                                               "more records than the limit"}})
    async def score(
            request: Request,
            records: list[Record] = Body(..., description="Flow records: column -> value",
                                         examples=[[{c: 0 for c in numeric_columns[:3]}]]),
    ) -> ScoreResponse:
        """Score records; each joins its (stream, entity) history and is scored at once."""
        try:  # first: a bad stream name is refused before records
            key, shown = _stream_key(request)
        except HTTPException:
            handler.metrics.rejected.inc(len(records))
            raise
        frame, entity, features = handler.validate(records)
        return handler.score(key, shown, records, frame, entity, features)


def _document_records(app: FastAPI, bundle: ModelBundle, max_records: int,
                      api_key: str | None) -> None:
    """Replace FastAPI's generic schema of POST /score's body by the records as
    `records_to_frame` validates them, and document the API key when there is one. The
    document is built once, on first use, and cached by FastAPI."""
    generated = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:  # document the records as they are validated
            doc = generated()
            body = doc["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = {"type": "array", "items": record_schema(bundle),
                              "maxItems": max_records,
                              "title": "Records", "description": body["schema"].get("description")}
            if api_key is not None:
                document_api_key(doc, [("/score", "post"), ("/metrics", "get")])
        return app.openapi_schema

    app.openapi = openapi


async def _record_error(_: Request, exc: RecordError):  # pragma: no cover - safety net
    """A RecordError that escaped validation is still the client's fault: 422, not 500."""
    return JSONResponse({"detail": exc.errors}, status_code=422)


def create_app(bundle: ModelBundle, max_records: int = 1000, max_body_bytes: int = 1 << 20,
               max_entities: int = 10_000, explain_top: int = 3, api_key: str | None = None,
               read_timeout: float = 10.0) -> FastAPI:
    """The scoring service of one model bundle. `api_key`: required of /score and /metrics
    callers when set; `read_timeout`: seconds a request's body may take to arrive (and, when
    served through `server_config`, its head)."""
    app = _new_app(bundle)
    metrics = Metrics()
    _add_middlewares(app, metrics, max_body_bytes, read_timeout, api_key)  # checks the key
    scorer = StreamScorer(bundle, explain_top=explain_top, max_entities=max_entities)
    metrics.watch(scorer)
    app.state.metrics, app.state.scorer, app.state.read_timeout = metrics, scorer, read_timeout
    denied = {401: {"description": "Missing or wrong API key"}} if api_key is not None else {}
    _add_healthz(app, bundle)
    _add_metrics_route(app, metrics, denied)
    _add_score_route(app, _ScoreHandler(bundle, scorer, metrics, max_records), denied)
    _document_records(app, bundle, max_records, api_key)
    app.add_exception_handler(RecordError, _record_error)

    async def invalid_body(request: Request, exc: RequestValidationError):
        # refused by FastAPI's own checks (a list for a value, a non-object item): counted too
        if isinstance(exc.body, list):
            metrics.rejected.inc(len(exc.body))
        return await request_validation_exception_handler(request, exc)

    app.add_exception_handler(RequestValidationError, invalid_body)
    return app
