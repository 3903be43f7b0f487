"""The message contract: a site's replies hold only what it declared, or the run stops.

Unit tests build replies the way Flower's compat layer does and smuggle records into them in
every place a reply has room; the simulation test injects a site's own raw records into its
real replies (through a client mod, as a compromised or buggy site would) and must be stopped.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import (
    fitres_to_recorddict,
    getpropertiesres_to_recorddict,
)

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.features import PreprocessingStats
from fedlstm.federation.audit import ContractViolation, ReplyContract, check_reply
from fedlstm.federation.client import REPLY_METRICS
from fedlstm.federation.server import ServerTask
from fedlstm.tasks import task_for

SHAPES = ((8, 5), (8,), (2, 8))
OK = Status(code=Code.OK, message="Success")


def _reply(content: RecordDict, node: int = 7):
    return SimpleNamespace(content=content, has_error=lambda: False,
                           metadata=SimpleNamespace(src_node_id=node))


def _fit_reply(arrays=None, metrics=None) -> SimpleNamespace:
    arrays = arrays if arrays is not None else [np.zeros(s, np.float32) for s in SHAPES]
    metrics = metrics if metrics is not None else {"train_loss": 0.3, "client": "site-a"}
    return _reply(fitres_to_recorddict(FitRes(OK, ndarrays_to_parameters(arrays), 120, metrics),
                                       keep_input=True))


def _contract(answers=None) -> ReplyContract:
    return ReplyContract(SHAPES, REPLY_METRICS, answers or {})


def test_an_honest_update_passes():
    check_reply(_fit_reply(), "train", None, _contract())


RECORDS = np.random.default_rng(0).random((300, 5)).astype(np.float32)  # 300 raw "records"
CSV = "\n".join(",".join(f"{v:.3f}" for v in row) + ",neptune" for row in RECORDS)


@pytest.mark.parametrize("smuggle", [
    "records as an extra array", "records in place of a weight", "records as csv text",
    "records as a long site name", "a number sent as text", "an extra record",
    "an extra metric record"])
def test_records_smuggled_into_an_update_are_caught(smuggle):
    arrays = [np.zeros(s, np.float32) for s in SHAPES]
    metrics = {"train_loss": 0.3, "client": "site-a"}
    if smuggle == "records as an extra array":
        arrays.append(RECORDS)
    elif smuggle == "records in place of a weight":
        arrays[0] = RECORDS  # (300, 5) where the model has (8, 5)
    elif smuggle == "records as csv text":
        metrics["rows"] = CSV
    elif smuggle == "records as a long site name":
        metrics["client"] = CSV
    elif smuggle == "a number sent as text":
        metrics["train_loss"] = "0.3 " + CSV[:50]
    reply = _fit_reply(arrays, metrics)
    if smuggle == "an extra record":
        reply.content.config_records["leak"] = ConfigRecord({"rows": CSV})
    if smuggle == "an extra metric record":
        reply.content.metric_records["leak"] = MetricRecord({"x": RECORDS[:, 0].tolist()})
    with pytest.raises(ContractViolation, match="site 7"):
        check_reply(reply, "train", None, _contract())


def _properties(answer: dict) -> SimpleNamespace:
    return _reply(getpropertiesres_to_recorddict(GetPropertiesRes(OK, answer)))


def test_statistics_answers_must_have_the_declared_layout():
    from fedlstm.tasks.base import make_preprocessor

    cfg, spec = RunConfig(), SYNTHETIC_SPEC
    records = synthetic_records(200)
    task = ServerTask(task_for(cfg), spec)
    contract = ReplyContract(SHAPES, REPLY_METRICS, task.declared_answers())
    stats = make_preprocessor(spec, cfg).compute_stats(records.frame)
    check_reply(_properties({"statistics": stats.to_bytes(), "client": "a"}), "get_properties",
                "preprocessing", contract)

    with pytest.raises(ContractViolation, match="undeclared key"):
        check_reply(_properties({"statistics": stats.to_bytes(), "rows": CSV}), "get_properties",
                    "preprocessing", contract)
    with pytest.raises(ContractViolation, match="no answers are declared"):
        check_reply(_properties({"dump": CSV}), "get_properties", "dump-your-data", contract)
    # records hidden as an extra "column" of statistics, or as a bogus category list
    wide = PreprocessingStats(stats.numeric_columns + ["leak"], stats.count,
                              np.append(stats.minimum, 0), np.append(stats.maximum, 1),
                              np.vstack([stats.histogram, stats.histogram[:1]]), stats.categories)
    with pytest.raises(ContractViolation, match="numeric columns"):
        check_reply(_properties({"statistics": wide.to_bytes()}), "get_properties",
                    "preprocessing", contract)
    leaky = PreprocessingStats(stats.numeric_columns, stats.count, stats.minimum, stats.maximum,
                               stats.histogram, {**stats.categories,
                                                 next(iter(stats.categories)): [CSV]})
    with pytest.raises(ContractViolation, match="categories"):
        check_reply(_properties({"statistics": leaky.to_bytes()}), "get_properties",
                    "preprocessing", contract)
    buffer = __import__("io").BytesIO()
    np.savez(buffer, rows=RECORDS)
    with pytest.raises(ContractViolation, match="not preprocessing statistics"):
        check_reply(_properties({"statistics": buffer.getvalue()}), "get_properties",
                    "preprocessing", contract)


def test_a_reply_to_a_message_the_protocol_does_not_have_is_refused():
    with pytest.raises(ContractViolation, match="not part of the protocol"):
        check_reply(_fit_reply(), "query", None, _contract())


def test_a_site_that_sends_its_records_stops_the_run(datasets_dir, tmp_path):
    """300 of the site's own records, as a float array and as labelled CSV text, added to every
    update it sends: the server refuses the reply and the run fails naming what was sent."""
    from flwr.app import Array, ArrayRecord
    from flwr.simulation import run_simulation

    from fedlstm.federation.apps import make_client_app, make_server_app
    from fedlstm.federation.partitions import load_client_records, save_records
    from fedlstm.federation.sites import federated_data

    cfg = RunConfig.model_validate({
        "data": {"data_dir": str(datasets_dir), "max_train_rows": 1200},
        "windows": {"window": 2}, "model": {"hidden_size": 8},
        "federation": {"clients": 2, "rounds": 1, "evaluate_clients": False,
                       "server_test_curves": False}})
    data = federated_data(cfg)
    for i, recs in enumerate(data.clients):
        save_records(recs, tmp_path / f"client-{i}.parquet", data.spec)
    part_dir = str(tmp_path)

    def leak_records(msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        pid = int(ctxt.node_config.get("partition-id", 0))
        records, spec = load_client_records(f"{part_dir}/client-{pid}.parquet", data.spec)
        rows = records.frame.head(300)
        arrays = reply.content.array_records["fitres.parameters"]
        numeric = rows[spec.numeric_columns].to_numpy(np.float32)
        reply.content.array_records["fitres.parameters"] = ArrayRecord(
            {**dict(arrays), "leak": Array(numeric)})
        reply.content.config_records["fitres.metrics"]["rows"] = \
            rows.assign(label=records.attack[:300]).to_csv(index=False)
        return reply

    task = ServerTask(task_for(cfg), data.spec)
    with pytest.raises(Exception) as caught:
        run_simulation(server_app=make_server_app(task),
                       client_app=make_client_app(part_dir, cfg, mods=(leak_records,)),
                       num_supernodes=2, backend_config={"client_resources": {"num_cpus": 1}})
    chain, exc = [], caught.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    violations = [e for e in chain if isinstance(e, ContractViolation)]
    assert violations, chain
    assert "fitres.parameters" in str(violations[0]) and "train" in str(violations[0])
    assert not task.rounds.get(1, {}).get("clients_fit")  # no leaked update was aggregated
