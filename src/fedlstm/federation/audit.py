"""The server's side of every message exchange: replies checked against a contract, optionally
recorded, and the exchange interruptible.

Why a contract: the server (and whoever audits a federation) must be able to show that only
aggregates leave a site. The server declares, from the detector kind, what a site may send
(re-read at every exchange: a histogram's size is known once calibration sets it): model
updates of the model's exact parameter shapes, numeric metrics from a fixed list, its name, and answers of
declared kinds and sizes to the aggregate questions a detector asks. Every reply is checked
against that declaration; anything else (an extra array, a record of rows, text where a number
belongs, an undeclared key) stops the run with `ContractViolation`, naming the node and the key.

`GuardedGrid` wraps Flower's Grid (all traffic of the workflow API goes through it). Its own
`send_and_receive` polls like Flower's, so that a stop request (Ctrl-C) ends a round within a
poll interval instead of after every site finished training.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG
from flwr.common.serde import recorddict_to_proto

from fedlstm.federation.codec import Codec, decode
from fedlstm.tasks.base import Check

log = logging.getLogger(__name__)

TEXT_METRICS = frozenset({"client"})  # the only text a site sends besides status messages
_STATUS = ("code", "message")
# SecAgg+ stage replies (Flower's secaggplus_mod): keys and what each holds.
_SECAGG_KEYS = {"pk1": "key", "pk2": "key", "dsts": "ids", "ctxts": "blobs", "nids": "ids",
                "shares": "blobs", "masked_params": "masked"}
_MAX_KEY_BYTES = 1024  # a serialised public key
_MAX_BLOB_BYTES = 4096  # an encrypted key share


class ContractViolation(RuntimeError):
    """A site sent something it did not declare: the run stops."""


class RunInterrupted(RuntimeError):
    """The user asked the run to stop (Ctrl-C); an Exception so Flower's server thread passes
    it back to the caller."""


@dataclass(frozen=True)
class ReplyContract:
    """What a site may send back, as the server declares it for the detector kind."""

    model_shapes: tuple[tuple[int, ...], ...]  # every update array, in order
    metrics: frozenset[str]  # numeric training/evaluation metrics
    answers: Mapping[str, Mapping[str, Check]] = field(default_factory=dict)  # phase -> key -> check
    max_text: int = 200  # site names and status messages
    max_sites: int = 100_000
    codec: Codec = Codec()  # how updates are packed (`--compress`)


def array_of(data: object, shape: tuple[int, ...] | None = None, kind: str = "f",
             max_items: int | None = None) -> np.ndarray | str:
    """Decode one serialised array (.npy bytes, no pickles); the array, or why it is wrong."""
    if not isinstance(data, bytes):
        return f"expected array bytes, found {type(data).__name__}"
    try:
        value = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return f"not an array ({exc})"
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kind:
        return f"array of dtype {getattr(value, 'dtype', '?')}, expected kind {kind!r}"
    if shape is not None and tuple(value.shape) != tuple(shape):
        return f"array of shape {tuple(value.shape)}, expected {tuple(shape)}"
    if max_items is not None and value.size > max_items:
        return f"array of {value.size} values, at most {max_items} declared"
    return value


def _record_value(array) -> object:
    """The bytes of a legacy-Parameters entry (whole .npy files), or a decoded array."""
    if not array.dtype and array.stype == "numpy.ndarray":
        return array.data
    return array.numpy()


class _Checker:
    def __init__(self, contract: ReplyContract, site: int, kind: str):
        self.contract, self.site, self.kind = contract, site, kind

    def fail(self, where: str, why: str) -> None:
        raise ContractViolation(f"site {self.site} sent an undeclared {self.kind} reply: "
                                f"{where}: {why}")

    def text(self, where: str, value: object) -> None:
        if not isinstance(value, str) or len(value) > self.contract.max_text:
            self.fail(where, f"expected text of at most {self.contract.max_text} characters")

    def number(self, where: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(float(value)):
            self.fail(where, f"expected a finite number, found {type(value).__name__}")

    def only(self, where: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
        extra = sorted(set(keys) - set(allowed))
        if extra:
            self.fail(where, f"undeclared key(s) {extra}")

    def status(self, name: str, record: Mapping) -> None:
        self.only(name, record, _STATUS)
        self.number(f"{name}/code", record.get("code"))
        self.text(f"{name}/message", record.get("message"))

    def metrics(self, name: str, record: Mapping) -> None:
        self.only(name, record, self.contract.metrics | TEXT_METRICS)
        for key, value in record.items():
            (self.text if key in TEXT_METRICS else self.number)(f"{name}/{key}", value)

    def count(self, name: str, record: Mapping, key: str) -> None:
        self.only(name, record, [key])
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"{name}/{key}", "expected a non-negative integer count")

    def model(self, name: str, record: Mapping) -> None:
        shapes = self.contract.model_shapes
        if not record:  # SecAgg+ sends the update masked, in its own record
            return
        if self.contract.codec.active:  # a packed update: what unpacks to the model's shapes
            arrays = [array_of(_record_value(a), kind="fu") for a in record.values()]
            bad = next((a for a in arrays if isinstance(a, str)), None)
            if bad:
                self.fail(name, bad)
            try:
                decode(arrays, self.contract.codec, list(shapes))
            except ValueError as exc:
                self.fail(name, f"not a {self.contract.codec} update of the model ({exc})")
            return
        if len(record) != len(shapes):
            self.fail(name, f"{len(record)} arrays, the model has {len(shapes)}")
        for (key, array), shape in zip(record.items(), shapes):
            value = array_of(_record_value(array), shape)
            if isinstance(value, str):
                self.fail(f"{name}/{key}", value)

    def secagg(self, name: str, record: Mapping) -> None:
        self.only(name, record, _SECAGG_KEYS)
        limit = self.contract.max_sites
        n_params = sum(int(np.prod(s)) for s in self.contract.model_shapes)
        for key, value in record.items():
            where, kind = f"{name}/{key}", _SECAGG_KEYS[key]
            if kind == "key":
                if not isinstance(value, bytes) or len(value) > _MAX_KEY_BYTES:
                    self.fail(where, "expected a public key")
            elif kind == "ids":
                if not isinstance(value, list) or len(value) > limit or \
                        not all(isinstance(v, int) for v in value):
                    self.fail(where, "expected a list of site ids")
            elif kind == "blobs":
                if not isinstance(value, list) or len(value) > limit or \
                        not all(isinstance(v, bytes) and len(v) <= _MAX_BLOB_BYTES for v in value):
                    self.fail(where, "expected a list of encrypted key shares")
            else:  # the masked update, bit-packed by the site (compression.pack_masked): one
                # uint8 array, at most 8 bytes per value (the model's and Flower's weight factor)
                # and the bit count; `UnpackedMasks` checks that it holds exactly the model
                if not isinstance(value, list) or len(value) != 1:
                    self.fail(where, "expected the masked vectors bit-packed in one array")
                decoded = array_of(value[0], kind="u", max_items=8 * (n_params + 1) + 1)
                if isinstance(decoded, str):
                    self.fail(f"{where}[0]", decoded)

    def answer(self, name: str, record: Mapping, phase: str) -> None:
        declared = self.contract.answers.get(phase)
        if declared is None:
            self.fail(name, f"no answers are declared for the question {phase!r}")
        self.only(name, record, [*declared, *TEXT_METRICS])
        for key, check in declared.items():
            if key not in record:
                self.fail(f"{name}/{key}", "declared answer missing")
            why = check(record[key])
            if why:
                self.fail(f"{name}/{key}", why)
        if "client" in record:
            self.text(f"{name}/client", record["client"])


# Reply layouts of Flower's legacy messages (flwr/compat/common/recorddict_compat.py).
def check_reply(reply, sent_type: str, phase: str | None, contract: ReplyContract) -> None:
    """Raise ContractViolation unless `reply` holds only what `contract` declares."""
    if reply.has_error():
        return  # an error carries a code and a reason, no content
    c = _Checker(contract, int(reply.metadata.src_node_id), sent_type)
    content = reply.content
    arrays, configs, metrics = (dict(content.array_records), dict(content.config_records),
                                dict(content.metric_records))
    if sent_type == "get_properties":
        c.only("records", [*arrays, *configs, *metrics],
               ["getpropertiesres.properties", "getpropertiesres.status"])
        c.answer("getpropertiesres.properties", configs.get("getpropertiesres.properties", {}),
                 phase or "")
        c.status("getpropertiesres.status", configs.get("getpropertiesres.status", {}))
    elif sent_type == "train":
        c.only("array records", arrays, ["fitres.parameters"])
        c.only("config records", configs, ["fitres.metrics", "fitres.status", SECAGG])
        c.only("metric records", metrics, ["fitres.num_examples"])
        if "fitres.parameters" in arrays:
            c.model("fitres.parameters", arrays["fitres.parameters"])
        if "fitres.metrics" in configs:
            c.metrics("fitres.metrics", configs["fitres.metrics"])
        if "fitres.status" in configs:
            c.status("fitres.status", configs["fitres.status"])
        if "fitres.num_examples" in metrics:
            c.count("fitres.num_examples", metrics["fitres.num_examples"], "num_examples")
        if SECAGG in configs:
            c.secagg(SECAGG, configs[SECAGG])
    elif sent_type == "evaluate":
        c.only("records", [*arrays, *configs, *metrics],
               ["evaluateres.metrics", "evaluateres.status", "evaluateres.loss",
                "evaluateres.num_examples"])
        c.metrics("evaluateres.metrics", configs.get("evaluateres.metrics", {}))
        c.status("evaluateres.status", configs.get("evaluateres.status", {}))
        loss = metrics.get("evaluateres.loss", {})
        c.only("evaluateres.loss", loss, ["loss"])
        c.number("evaluateres.loss/loss", loss.get("loss", 0.0))
        c.count("evaluateres.num_examples", metrics.get("evaluateres.num_examples",
                                                        {"num_examples": 0}), "num_examples")
    else:
        c.fail("message", f"a reply to a {sent_type!r} message is not part of the protocol")


# --- the record of a run (tests and --audit) -------------------------------------------------------
@dataclass
class MessageSummary:
    direction: str  # "sent" (server -> site) or "received" (site -> server)
    message_type: str
    node_id: int
    arrays: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    config: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (type, size)
    float_arrays: list[np.ndarray] = field(default_factory=list)  # only with keep_arrays

    @property
    def nbytes(self) -> int:
        arrays = sum(int(np.prod(s)) * _itemsize(d) for _, s, d in self.arrays)
        return arrays + sum(size for _, size in self.config.values())


def _decode(array) -> np.ndarray:
    value = _record_value(array)
    return np.load(io.BytesIO(value), allow_pickle=False) if isinstance(value, bytes) else value


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # arrays not serialised from numpy carry no numpy dtype
        return 8


def summarise(message, direction: str, keep_arrays: bool = False) -> MessageSummary:
    meta = message.metadata
    node = meta.dst_node_id if direction == "sent" else meta.src_node_id
    out = MessageSummary(direction, meta.message_type, int(node))
    if message.has_error():
        return out
    for rec_name, record in message.content.array_records.items():
        for name, array in record.items():
            if name == "_empty" and not array.data:  # Flower's entry for no arrays at all
                continue
            value = _decode(array)
            out.arrays.append((f"{rec_name}/{name}", tuple(value.shape), str(value.dtype)))
            if keep_arrays and value.dtype.kind == "f":
                out.float_arrays.append(value)
    records = {**message.content.config_records, **message.content.metric_records}
    for rec_name, record in records.items():
        for key, value in record.items():
            size = len(value) if isinstance(value, (bytes, str, list)) else 8
            out.config[f"{rec_name}/{key}"] = (type(value).__name__, size)
    return out


def _question(message) -> tuple[str, str | None]:
    """A sent message's type and, for aggregate questions, which question (its phase)."""
    kind = message.metadata.message_type
    if kind != "get_properties":
        return kind, None
    config = message.content.config_records.get("getpropertiesins.config", {})
    return kind, str(config.get("phase", "preprocessing"))


def wire_bytes(message) -> int:
    """The message's content as Flower serialises it for the wire (protobuf); gRPC and TLS
    framing and the metadata (about 100 bytes) are not counted."""
    return 0 if message.has_error() else recorddict_to_proto(message.content).ByteSize()


class Ledger:
    """What crossed the wire: bytes sent to sites ("down") and received from them ("up") by
    message type, each site's name by node id (from its replies), and the replies that were
    errors. `take` returns what accumulated for one message type since it was last taken (one
    round's share)."""

    def __init__(self):
        self.totals: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.failed: list[tuple[str, int, str]] = []  # (message type, node id, reason)
        self._taken: dict[str, int] = {}
        self._failed_taken: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, n: int) -> None:
        with self._lock:
            self.totals[key] = self.totals.get(key, 0) + n

    def reply(self, kind: str, reply) -> None:
        """Note a reply: its site's name, or its error."""
        node = int(reply.metadata.src_node_id)
        with self._lock:
            if reply.has_error():  # the reason's last line: the exception, not the traceback
                lines = [ln.strip() for ln in str(reply.error.reason).splitlines() if ln.strip()]
                # (Flower's simulation ends it with the "'>" of an exception's repr)
                why = (lines[-1] if lines else "error").removesuffix("'>")
                self.failed.append((kind, node, why[:200]))
                return
            for record in reply.content.config_records.values():  # the metrics' "client"
                if isinstance(record.get("client"), str):
                    self.names[node] = record["client"]

    def no_reply(self, kind: str, node: int, why: str) -> None:
        with self._lock:
            self.failed.append((kind, int(node), why))

    def name(self, node: int | str) -> str:
        return self.names.get(int(node), f"node {node}")

    def take(self, kind: str) -> dict[str, int]:
        with self._lock:
            out = {}
            for way in ("down", "up"):
                key = f"{kind}_{way}"
                out[way] = self.totals.get(key, 0) - self._taken.get(key, 0)
                self._taken[key] = self.totals.get(key, 0)
            return out

    def take_failures(self, kind: str) -> dict[str, str]:
        """Sites whose `kind` replies were errors since this was last taken: name -> reason."""
        with self._lock:
            mine = [(node, why) for k, node, why in self.failed if k == kind]
            new = mine[self._failed_taken.get(kind, 0):]
            self._failed_taken[kind] = len(mine)
        return {self.name(node): why for node, why in new}


class GuardedGrid:
    """Delegates to a Flower Grid; checks every reply against the contract, can record every
    message (`record`, `keep_arrays`), stops waiting when `stop` is set, and bounds every wait
    by `timeout` (sites that do not answer in time are left out of that exchange)."""

    def __init__(self, grid, contract: Callable[[], ReplyContract], *, record: bool = False,
                 keep_arrays: bool = False, stop: threading.Event | None = None,
                 timeout: float | None = None, poll_interval: float = 0.2,
                 ledger: Ledger | None = None):
        self._grid, self._contract = grid, contract
        self.ledger = ledger if ledger is not None else Ledger()
        # Flower's fit and evaluate steps wait without a timeout: one hung site would hold the
        # round until the SuperLink declares it dead. Their waits get this one.
        self.timeout = timeout
        self.record, self.keep_arrays = record or keep_arrays, keep_arrays
        self.stop = stop or threading.Event()
        self.poll_interval = poll_interval
        self.log: list[MessageSummary] = []
        self._questions: dict[str, tuple[str, str | None]] = {}
        self._destinations: dict[str, int] = {}  # message id -> the site it went to
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _keep(self, messages: list, direction: str) -> None:
        if self.record:
            with self._lock:
                self.log += [summarise(m, direction, self.keep_arrays) for m in messages]

    def push_messages(self, messages):
        messages = list(messages)
        self._keep(messages, "sent")
        ids = list(self._grid.push_messages(messages))
        with self._lock:
            self._questions.update({i: _question(m) for i, m in zip(ids, messages)})
            self._destinations.update({i: int(m.metadata.dst_node_id)
                                       for i, m in zip(ids, messages)})
        for m in messages:
            self.ledger.add(f"{m.metadata.message_type}_down", wire_bytes(m))
        return ids

    def pull_messages(self, message_ids):
        replies = list(self._grid.pull_messages(message_ids))
        contract = self._contract()
        for reply in replies:
            with self._lock:
                kind, phase = self._questions.pop(reply.metadata.reply_to_message_id,
                                                  ("unknown", None))
                self._destinations.pop(reply.metadata.reply_to_message_id, None)
            check_reply(reply, kind, phase, contract)
            self.ledger.add(f"{kind}_up", wire_bytes(reply))
            self.ledger.reply(kind, reply)
        self._keep(replies, "received")
        return replies

    def send_and_receive(self, messages, *, timeout: float | None = None):
        """Flower's push-then-poll, with a stop check at every poll."""
        timeout = self.timeout if timeout is None else timeout
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = []
        while pending:
            if self.stop.is_set():
                raise RunInterrupted("stopped on request")  # what is kept: the caller says
            got = self.pull_messages(pending)
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            self.stop.wait(self.poll_interval)
        if pending:
            with self._lock:
                silent = [(self._questions.pop(i, ("unknown", None))[0],
                           self._destinations.pop(i, -1)) for i in pending]
            for kind, node in silent:
                self.ledger.no_reply(kind, node, f"no answer within {timeout or 0:.0f} s")
            log.warning("%d of %d sites did not answer within %.0f s; going on without them",
                        len(pending), len(pending) + len(replies), timeout or 0)
        return replies
