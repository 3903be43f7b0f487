"""The message contract, reply type by reply type, and the guarded grid that applies it: every
check names the site, the record and the key, and every wait can be bounded or stopped."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, EvaluateRes, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG
from flwr.compat.common.recorddict_compat import (
    evaluateres_to_recorddict,
    fitres_to_recorddict,
    getpropertiesres_to_recorddict,
)

from fedlstm.federation.audit import (
    ContractViolation,
    GuardedGrid,
    ReplyContract,
    RunInterrupted,
    array_of,
    check_reply,
    summarise,
)
from fedlstm.federation.client import REPLY_METRICS

SHAPES = ((8, 5), (8,), (2, 8))
OK = Status(code=Code.OK, message="Success")


def _reply(content: RecordDict, node: int = 7, reply_to: str = "m1", error: bool = False):
    return SimpleNamespace(content=content, has_error=lambda: error,
                           metadata=SimpleNamespace(src_node_id=node, reply_to_message_id=reply_to,
                                                    message_type="train", dst_node_id=0),
                           error=SimpleNamespace(reason="boom"))


def _contract(**kw) -> ReplyContract:
    return ReplyContract(SHAPES, REPLY_METRICS, **kw)


def _weights(dtype=np.float32):
    return [np.zeros(s, dtype) for s in SHAPES]


def _fit(arrays=None, metrics=None, n=120, status=OK):
    res = FitRes(status, ndarrays_to_parameters(_weights() if arrays is None else arrays), n,
                 {"train_loss": 0.3, "client": "a"} if metrics is None else metrics)
    return _reply(fitres_to_recorddict(res, keep_input=True))


def _evaluate(loss=0.2, n=50, metrics=None, status=OK):
    res = EvaluateRes(status, loss, n, {"val_loss": 0.2, "client": "a"} if metrics is None
                      else metrics)
    return _reply(evaluateres_to_recorddict(res))


def _violation(reply, kind, phase=None, contract=None) -> str:
    with pytest.raises(ContractViolation) as caught:
        check_reply(reply, kind, phase, contract or _contract())
    return str(caught.value)


# --- training replies ----------------------------------------------------------------------------
def test_a_training_reply_passes_and_names_what_is_wrong_otherwise():
    check_reply(_fit(), "train", None, _contract())
    check_reply(_fit(metrics={"train_loss": 1, "epsilon": 2.5, "delta": 1e-5, "seconds": 3.0,
                              "client": "site-a"}), "train", None, _contract())
    why = _violation(_fit(arrays=_weights()[:2]), "train")
    assert "site 7 sent an undeclared train reply" in why and "2 arrays, the model has 3" in why
    why = _violation(_fit(arrays=_weights(np.int64)), "train")
    assert "fitres.parameters/" in why and "expected kind 'f'" in why
    assert "expected a finite number" in _violation(_fit(metrics={"train_loss": float("nan")}),
                                                    "train")
    assert "fitres.metrics/train_loss" in _violation(_fit(metrics={"train_loss": True}), "train")
    assert "undeclared key(s) ['rows']" in _violation(_fit(metrics={"rows": 1.0}), "train")
    long_name = _violation(_fit(metrics={"client": "x" * 201}), "train")
    assert "fitres.metrics/client" in long_name and "at most 200 characters" in long_name
    check_reply(_fit(metrics={"client": "x" * 200}), "train", None, _contract())


def test_counts_and_statuses_of_a_training_reply():
    reply = _fit()
    reply.content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": -1})
    assert "fitres.num_examples/num_examples" in _violation(reply, "train")
    reply.content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 3,
                                                                        "rows": 4})
    assert "undeclared key(s) ['rows']" in _violation(reply, "train")
    reply = _fit(status=Status(code=Code.OK, message="x" * 300))
    assert "fitres.status/message" in _violation(reply, "train")
    reply = _fit()
    reply.content.config_records["fitres.status"]["extra"] = "1"
    assert "fitres.status" in _violation(reply, "train")
    reply = _fit()
    reply.content.config_records["fitres.status"]["code"] = "0"
    assert "fitres.status/code" in _violation(reply, "train")
    reply = _fit()
    reply.content.array_records["other"] = ArrayRecord({"a": Array(np.zeros(2))})
    assert "array records: undeclared key(s) ['other']" in _violation(reply, "train")


def test_an_empty_update_record_is_secagg_and_passes():
    reply = _fit()
    reply.content.array_records["fitres.parameters"] = ArrayRecord()
    check_reply(reply, "train", None, _contract())


def _secagg(**record) -> SimpleNamespace:
    reply = _fit()
    reply.content.config_records[SECAGG] = ConfigRecord(record)
    return reply


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_secagg_stage_messages_hold_keys_ids_shares_and_masked_vectors_only():
    n = sum(int(np.prod(s)) for s in SHAPES)
    packed = 1 + 8 * (n + 1)  # the most a bit-packed masked update can take: 64 bits a value
    check_reply(_secagg(pk1=b"k" * 1024, pk2=b"k", dsts=[1, 2], ctxts=[b"s" * 4096], nids=[3],
                        shares=[b"s"], masked_params=[_npy(np.zeros(packed, np.uint8))]),
                "train", None, _contract())
    cases = {"pk1": b"k" * 1025, "pk2": "text", "dsts": ["1"], "ctxts": [b"s" * 4097],
             "nids": 3,
             "shares": b"s", "masked_params": [_npy(np.zeros(packed + 1, np.uint8))]}
    for key, bad in cases.items():
        assert f"{SECAGG}/{key}" in _violation(_secagg(**{key: bad}), "train"), key
    two = [_npy(np.zeros(1, np.uint8))] * 2
    assert "bit-packed in one array" in _violation(_secagg(masked_params=two), "train")
    assert "expected kind 'u'" in _violation(_secagg(masked_params=[_npy(np.zeros(3))]), "train")
    assert "undeclared key(s) ['rows']" in _violation(_secagg(rows=b"x"), "train")
    limited = _contract(max_sites=2)
    assert "list of site ids" in _violation(_secagg(dsts=[1, 2, 3]), "train", contract=limited)
    check_reply(_secagg(dsts=[1, 2]), "train", None, limited)


# --- evaluation and questions --------------------------------------------------------------------
def test_an_evaluation_reply_passes_and_is_checked():
    check_reply(_evaluate(), "evaluate", None, _contract())
    assert "evaluateres.loss/loss" in _violation(_evaluate(loss=float("inf")), "evaluate")
    assert "evaluateres.metrics" in _violation(_evaluate(metrics={"rows": 1.0}), "evaluate")
    reply = _evaluate()
    reply.content.metric_records["evaluateres.num_examples"] = MetricRecord({"num_examples": -2})
    assert "evaluateres.num_examples/num_examples" in _violation(reply, "evaluate")
    reply = _evaluate()
    reply.content.config_records["leak"] = ConfigRecord({"rows": "1,2"})
    assert "records: undeclared key(s) ['leak']" in _violation(reply, "evaluate")
    reply = _evaluate()
    reply.content.metric_records["evaluateres.loss"] = MetricRecord({"loss": 0.1, "x": 1.0})
    assert "evaluateres.loss" in _violation(reply, "evaluate")


def _answer(answer: dict):
    return _reply(getpropertiesres_to_recorddict(GetPropertiesRes(OK, answer)))


def test_declared_answers_are_checked_key_by_key():
    contract = _contract(answers={"q": {"h": lambda v: None if v == b"ok" else "bad h"}})
    check_reply(_answer({"h": b"ok", "client": "a"}), "get_properties", "q", contract)
    assert "getpropertiesres.properties/h: bad h" in _violation(
        _answer({"h": b"no"}), "get_properties", "q", contract)
    assert "declared answer missing" in _violation(_answer({"client": "a"}), "get_properties",
                                                   "q", contract)
    assert "/client" in _violation(_answer({"h": b"ok", "client": "x" * 300}), "get_properties",
                                   "q", contract)
    reply = _answer({"h": b"ok"})
    reply.content.array_records["x"] = ArrayRecord({"a": Array(np.zeros(2))})
    assert "records: undeclared key(s) ['x']" in _violation(reply, "get_properties", "q", contract)


def test_an_error_reply_carries_no_content_to_check():
    reply = _fit(arrays=[np.zeros((300, 5))])
    reply.has_error = lambda: True
    check_reply(reply, "train", None, _contract())


# --- arrays ----------------------------------------------------------------------------------------
def test_array_of_decodes_plain_arrays_only():
    assert array_of("x").startswith("expected array bytes, found str")
    assert array_of(b"not numpy").startswith("not an array")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert array_of(buffer.getvalue()).startswith("not an array")  # pickles are never loaded
    assert "expected kind 'f'" in array_of(_npy(np.zeros(3, np.int64)))
    assert array_of(_npy(np.zeros(3)), shape=(4,)) == "array of shape (3,), expected (4,)"
    assert array_of(_npy(np.zeros(5, np.int64)), kind="iu", max_items=4) == \
        "array of 5 values, at most 4 declared"
    assert array_of(_npy(np.ones((2, 2))), shape=(2, 2)).sum() == 4


# --- the guarded grid ------------------------------------------------------------------------------
class FakeGrid:
    """A Flower grid whose sites answer after `delays[i]` polls (None: never)."""

    def __init__(self, delays, reply=None):
        self.delays, self.polls, self.reply = list(delays), 0, reply or (lambda i: _fit())
        self.node_ids = [11, 12]

    def get_node_ids(self):
        return self.node_ids

    def push_messages(self, messages):
        return [f"m{i}" for i in range(len(messages))]

    def pull_messages(self, ids):
        self.polls += 1
        out = []
        for i, d in enumerate(self.delays):
            if f"m{i}" in ids and d is not None and d <= self.polls:
                r = self.reply(i)
                r.metadata.reply_to_message_id, r.metadata.src_node_id = f"m{i}", 20 + i
                out.append(r)
        return out


def _message(kind="train", phase=None, node=11):
    """A message the server sends (the fields GuardedGrid and summarise read)."""
    content = RecordDict({"getpropertiesins.config": ConfigRecord({"phase": phase})}) \
        if phase else RecordDict({"fitins.parameters": ArrayRecord({"w": Array(np.ones((2, 3)))})})
    return SimpleNamespace(content=content, has_error=lambda: False,
                           metadata=SimpleNamespace(dst_node_id=node, message_type=kind))


def test_the_grid_checks_every_reply_against_the_contract():
    bad = FakeGrid([1], reply=lambda i: _fit(arrays=[np.zeros((300, 5))]))
    guard = GuardedGrid(bad, _contract)
    with pytest.raises(ContractViolation, match="site 20"):
        guard.send_and_receive([_message()], timeout=5)
    good = GuardedGrid(FakeGrid([1, 2]), _contract, record=True, poll_interval=0.01)
    replies = good.send_and_receive([_message(), _message(node=12)], timeout=5)
    assert len(replies) == 2 and good.get_node_ids() == [11, 12]  # other calls pass through
    sent = [m for m in good.log if m.direction == "sent"]
    got = [m for m in good.log if m.direction == "received"]
    assert [m.node_id for m in sent] == [11, 12] and sorted(m.node_id for m in got) == [20, 21]
    assert sent[0].arrays == [("fitins.parameters/w", (2, 3), "float64")]
    assert sent[0].nbytes == 48 and not sent[0].float_arrays


def test_a_site_that_never_answers_costs_one_timeout():
    grid = FakeGrid([1, None])
    guard = GuardedGrid(grid, _contract, poll_interval=0.01, timeout=0.2)
    replies = guard.send_and_receive([_message(), _message(node=12)])
    assert len(replies) == 1 and grid.polls >= 2
    assert guard._questions == {}  # nothing left waiting for the missing site


def test_a_stop_request_ends_the_wait():
    stop = threading.Event()
    stop.set()
    guard = GuardedGrid(FakeGrid([None]), _contract, stop=stop, poll_interval=0.01)
    with pytest.raises(RunInterrupted):
        guard.send_and_receive([_message()], timeout=5)


def test_questions_are_checked_as_the_question_that_was_asked():
    grid = FakeGrid([1], reply=lambda i: _answer({"statistics": b"x", "client": "a"}))
    contract = _contract(answers={"preprocessing": {"statistics": lambda v: None}})
    guard = GuardedGrid(grid, lambda: contract, record=True, keep_arrays=True)
    assert len(guard.send_and_receive([_message("get_properties", "preprocessing")], timeout=5)) == 1
    grid = FakeGrid([1], reply=lambda i: _answer({"statistics": b"x"}))
    guard = GuardedGrid(grid, lambda: contract)
    with pytest.raises(ContractViolation, match="no answers are declared for the question 'dump'"):
        guard.send_and_receive([_message("get_properties", "dump")], timeout=5)


def test_summaries_keep_float_arrays_only_when_asked():
    message = _message()
    kept = summarise(message, "sent", keep_arrays=True)
    assert kept.message_type == "train" and kept.node_id == 11 and len(kept.float_arrays) == 1
    reply = _answer({"statistics": b"abc", "client": "a"})
    got = summarise(reply, "received")
    assert got.node_id == 7 and got.config["getpropertiesres.properties/statistics"] == ("bytes", 3)
    assert got.config["getpropertiesres.status/code"] == ("int", 8)
    failed = _fit()
    failed.has_error = lambda: True
    assert summarise(failed, "received").arrays == []


def test_messages_name_the_record_and_the_key_exactly():
    reply = _fit()
    reply.content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 3, "x": 1})
    assert _violation(reply, "train").endswith("fitres.num_examples: undeclared key(s) ['x']")
    reply.content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 1.5})
    assert _violation(reply, "train").endswith(
        "fitres.num_examples/num_examples: expected a non-negative integer count")
    reply = _fit()
    reply.content.config_records["leak"] = ConfigRecord({"a": 1})
    assert "config records: undeclared key(s) ['leak']" in _violation(reply, "train")
    reply = _fit()
    reply.content.metric_records["leak"] = MetricRecord({"a": 1})
    assert "metric records: undeclared key(s) ['leak']" in _violation(reply, "train")
    assert _violation(_fit(arrays=_weights()[:2]), "train").endswith(
        "fitres.parameters: 2 arrays, the model has 3")
    assert _violation(_fit(metrics={"train_loss": "0.3"}), "train").endswith(
        "fitres.metrics/train_loss: expected a finite number, found str")
    assert _violation(_fit(), "query").endswith(
        "message: a reply to a 'query' message is not part of the protocol")
    contract = _contract(answers={"q": {"h": lambda v: None}})
    assert _violation(_answer({"x": b""}), "get_properties", "q", contract).endswith(
        "getpropertiesres.properties: undeclared key(s) ['x']")
    assert _violation(_answer({"client": "a"}), "get_properties", "q", contract).endswith(
        "getpropertiesres.properties/h: declared answer missing")
    assert _violation(_answer({}), "get_properties", "other", contract).endswith(
        "getpropertiesres.properties: no answers are declared for the question 'other'")
    reply = _answer({"h": b""})
    reply.content.config_records["getpropertiesres.status"]["code"] = "0"
    assert "getpropertiesres.status/code" in _violation(reply, "get_properties", "q", contract)
    reply = _evaluate()
    reply.content.config_records["evaluateres.status"]["x"] = "1"
    assert "evaluateres.status: undeclared key(s) ['x']" in _violation(reply, "evaluate")
    reply = _evaluate()
    reply.content.config_records["evaluateres.metrics"]["val_loss"] = "high"
    assert "evaluateres.metrics/val_loss: expected a finite number" in _violation(reply, "evaluate")
    reply = _evaluate()
    reply.content.metric_records["evaluateres.loss"] = MetricRecord({"loss": 0.1, "x": 1.0})
    assert "evaluateres.loss: undeclared key(s) ['x']" in _violation(reply, "evaluate")
    assert _violation(_evaluate(loss=float("nan")), "evaluate").endswith(
        "evaluateres.loss/loss: expected a finite number, found float")
    assert array_of(_npy(np.zeros(3, np.int64))) == "array of dtype int64, expected kind 'f'"


def test_zero_counts_and_full_lists_are_allowed():
    check_reply(_evaluate(n=0), "evaluate", None, _contract())
    reply = _fit()
    reply.content.metric_records["fitres.num_examples"] = MetricRecord({"num_examples": 0})
    check_reply(reply, "train", None, _contract())
    limited = _contract(max_sites=2)
    check_reply(_secagg(ctxts=[b"a", b"b"], nids=[1, 2]), "train", None, limited)
    assert "ctxts" in _violation(_secagg(ctxts=[b"a"] * 3), "train", contract=limited)
    n = sum(int(np.prod(s)) for s in SHAPES)
    for size in (1, n, 1 + 8 * (n + 1)):  # bit-packed masked vectors, up to 64 bits a value
        check_reply(_secagg(masked_params=[_npy(np.zeros(size, np.uint8))]), "train", None,
                    _contract())
    assert _violation(_secagg(pk1=b"k" * 2000), "train").endswith(
        f"{SECAGG}/pk1: expected a public key")
    assert _violation(_secagg(ctxts=[b"s" * 5000]), "train").endswith(
        f"{SECAGG}/ctxts: expected a list of encrypted key shares")
    assert _violation(_secagg(nids=["a"]), "train").endswith(
        f"{SECAGG}/nids: expected a list of site ids")
    assert _violation(_secagg(masked_params=b"x"), "train").endswith(
        f"{SECAGG}/masked_params: expected the masked vectors bit-packed in one array")
    assert f"{SECAGG}: undeclared key(s) ['x']" in _violation(_secagg(x=b""), "train")


def test_waits_without_any_limit_and_with_a_limit_per_exchange():
    guard = GuardedGrid(FakeGrid([1, 3]), _contract, poll_interval=0.01)
    assert len(guard.send_and_receive([_message(), _message(node=12)])) == 2  # no limit at all
    guard = GuardedGrid(FakeGrid([1, None]), _contract, poll_interval=0.01, timeout=None)
    assert len(guard.send_and_receive([_message(), _message(node=12)], timeout=0.1)) == 1


def test_a_reply_to_no_question_this_server_asked_is_refused():
    grid = FakeGrid([1])
    guard = GuardedGrid(grid, _contract)
    reply = _fit()
    reply.metadata.reply_to_message_id = "never-sent"
    guard.push_messages([_message()])
    grid.pull_messages = lambda ids: [reply]
    with pytest.raises(ContractViolation, match="a reply to a 'unknown' message"):
        guard.pull_messages(["m0"])


def test_a_question_without_a_phase_is_the_preprocessing_question():
    grid = FakeGrid([1], reply=lambda i: _answer({"statistics": b"x"}))
    contract = _contract(answers={"preprocessing": {"statistics": lambda v: None}})
    guard = GuardedGrid(grid, lambda: contract)
    message = _message("get_properties", "preprocessing")
    message.content = RecordDict({"getpropertiesins.config": ConfigRecord({})})
    assert len(guard.send_and_receive([message], timeout=5)) == 1


def test_a_recording_grid_keeps_the_float_arrays_it_saw():
    guard = GuardedGrid(FakeGrid([1]), _contract, keep_arrays=True)
    guard.send_and_receive([_message()], timeout=5)
    sent = next(m for m in guard.log if m.direction == "sent")
    received = next(m for m in guard.log if m.direction == "received")
    assert sent.float_arrays[0].shape == (2, 3)
    assert [a.shape for a in received.float_arrays] == list(SHAPES)
    assert received.nbytes > sum(int(np.prod(s)) * 4 for s in SHAPES)
