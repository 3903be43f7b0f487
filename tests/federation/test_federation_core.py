"""Client and server logic in-process, without Flower's engine (fast)."""

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data import schemas
from fedlstm.data.readers import concat_records
from fedlstm.features import PreprocessingStats
from fedlstm.federation.apps import FlowerClient, _site
from fedlstm.federation.client import ClientTask
from fedlstm.federation.partitions import (
    PartitionScheme,
    describe,
    load_client_records,
    partition_indices,
    save_records,
)
from fedlstm.federation.server import ServerTask
from fedlstm.tasks import task_for
from fedlstm.tasks.base import make_preprocessor
from fedlstm.training.loop import epochs_for

CFG = RunConfig.model_validate({"windows": {"window": 3}, "model": {"hidden_size": 8},
                                "train": {"batch_size": 32, "lr": 0.01},
                                "federation": {"clients": 3, "rounds": 3}})


def _clients(n=3, rows=300):
    return [ClientTask(task_for(CFG), synthetic_records(rows, seed=i), SYNTHETIC_SPEC, f"c{i}") for i in range(n)]


def test_federated_preprocessing_equals_pooled_fit():
    clients = _clients()
    server = ServerTask(task_for(CFG), SYNTHETIC_SPEC)
    merged = server.merge_statistics([c.statistics() for c in clients])
    pooled = concat_records([c.train_records for c in clients])
    central = make_preprocessor(SYNTHETIC_SPEC, CFG).fit(pooled.frame)
    np.testing.assert_array_equal(merged.transform(pooled.frame), central.transform(pooled.frame))
    assert server.statistics_received == [{"count": len(c.train_records)} for c in clients]


def test_local_preprocessing_mode_uses_own_statistics():
    cfg = CFG.model_copy(update={"federation": CFG.federation.model_copy(update={"preprocessing": "local"})})
    a = ClientTask(task_for(cfg), synthetic_records(300, seed=0), SYNTHETIC_SPEC)
    a.use_preprocessing(None)
    own = make_preprocessor(SYNTHETIC_SPEC, cfg).fit(a.train_records.frame)
    np.testing.assert_array_equal(a.windows.train.features.numpy(), own.transform(a.train_records.frame))


def test_fedavg_rounds_improve_the_global_model(tmp_path):
    clients = _clients()
    server = ServerTask(task_for(CFG), SYNTHETIC_SPEC, out_dir=tmp_path)
    pre = server.merge_statistics([c.statistics() for c in clients]).to_dict()
    weights = server.initial_weights()
    losses = []
    for rnd in range(1, 4):
        results = []
        for c in clients:
            c.use_preprocessing(pre)
            results.append(c.fit(weights, epochs=1, seed=rnd))
        n = sum(k for _, k, _ in results)
        weights = [sum(w[i] * k / n for w, k, _ in results) for i in range(len(weights))]
        server.record_fit(rnd, [(k, m) for _, k, m in results])
        evals = [c.evaluate(weights) for c in clients]
        agg = server.record_evaluate(rnd, [(k, m) for _, k, m in evals])
        server.on_global_model(rnd, weights)
        losses.append(agg["val_loss"])
    assert losses[-1] < losses[0]
    assert set(server.rounds[3]["clients_fit"]) == {"c0", "c1", "c2"}
    # the checkpoint of the last round resumes where the run stopped
    again = ServerTask(task_for(CFG), SYNTHETIC_SPEC, out_dir=tmp_path)
    again.merge_statistics([c.statistics() for c in clients])
    resumed = again.initial_weights()
    assert again.round_offset == 3 and again.remaining_rounds == 0
    assert all(np.array_equal(a, b) for a, b in zip(resumed, weights))
    # other settings: named (it blamed "other preprocessing statistics", whatever had changed)
    other = CFG.model_copy(update={"federation": CFG.federation.model_copy(
        update={"strategy": "fedprox", "clients": 7})})
    changed = ServerTask(task_for(other), SYNTHETIC_SPEC, out_dir=tmp_path)
    changed.merge_statistics([c.statistics() for c in clients])
    with pytest.raises(ValueError, match=r"other settings \(federation.clients: 3 then, 7 now, "
                                         r"federation.strategy: 'fedavg' then, 'fedprox' now\)"):
        changed.initial_weights()


def test_a_small_site_takes_min_steps_batches_over_the_planned_rounds(tmp_path):
    cfg = CFG.model_copy(update={"train": CFG.train.model_copy(update={"min_steps": 60})})
    small, large = (ClientTask(task_for(cfg), synthetic_records(rows, seed=0), SYNTHETIC_SPEC, name)
                    for rows, name in ((300, "small"), (3000, "large")))
    server = ServerTask(task_for(cfg), SYNTHETIC_SPEC, out_dir=tmp_path)
    pre = server.merge_statistics([small.statistics(), large.statistics()]).to_dict()
    results = []
    for site in (small, large):
        site.use_preprocessing(pre)
        batches = -(-len(site.windows.train) // cfg.train.batch_size)
        _, _, metrics = site.fit(server.initial_weights(), epochs=1, seed=1)
        results.append((batches, metrics["local_epochs"]))
    (small_batches, small_epochs), (large_batches, large_epochs) = results
    assert small_batches * cfg.federation.rounds < 60 <= large_batches * cfg.federation.rounds
    assert large_epochs == 1  # enough batches already: the round's epochs
    assert small_epochs == -(-60 // (small_batches * cfg.federation.rounds)) > 1
    assert (small_epochs - 1) * small_batches * cfg.federation.rounds < 60
    record = server.record_fit(1, [(len(small.windows.train), {"train_loss": 1.0, "client": "small",
                                                               "local_epochs": small_epochs})])
    assert server.rounds[1]["clients_fit"]["small"]["local_epochs"] == small_epochs
    assert record == {"train_loss": 1.0}
    assert epochs_for(CFG.train, 2, 10, rounds=3) == 2  # min_steps 0 (benchmark datasets): as asked


def test_weighted_fit_metrics():
    server = ServerTask(task_for(CFG), SYNTHETIC_SPEC)
    agg = server.record_fit(1, [(100, {"train_loss": 1.0, "train_accuracy": 0.5, "client": "a"}),
                                (300, {"train_loss": 2.0, "train_accuracy": 0.9, "client": "b"})])
    assert agg == pytest.approx({"train_loss": 1.75, "train_accuracy": 0.8})


def test_flower_client_handlers_move_only_aggregates(tmp_path, monkeypatch):
    monkeypatch.setitem(schemas.DATASETS, "synthetic", SYNTHETIC_SPEC)
    cfg_json = CFG.model_copy(update={"data": CFG.data.model_copy(update={"dataset": "synthetic"})}).model_dump_json()
    path = save_records(synthetic_records(200), tmp_path / "client-0.parquet")
    client = FlowerClient(str(path), "client-0", cfg_json)
    config = {}  # the configuration comes with the app (run config), never in a message
    props = client.get_properties(config)
    assert set(props) == {"statistics", "client"} and isinstance(props["statistics"], bytes)
    stats = PreprocessingStats.from_bytes(props["statistics"])
    assert stats.count == len(_site(str(path), cfg_json, "client-0").train_records)
    server = ServerTask(task_for(CFG), SYNTHETIC_SPEC)
    server.merge_statistics([stats])
    fit_config = {**config, "preprocessor": __import__("json").dumps(server.preprocessor.to_dict()),
                  "local_epochs": 1, "seed": 1}
    weights, n, metrics = client.fit(server.initial_weights(), fit_config)
    assert n > 0 and set(metrics) == {"train_loss", "train_accuracy", "client", "seconds",
                                      "local_epochs"}
    loss, n_val, m = client.evaluate(weights, fit_config)
    assert n_val > 0 and 0 <= m["val_accuracy"] <= 1


def test_partitions():
    recs = synthetic_records(1000)
    iid = partition_indices(recs, PartitionScheme.parse("iid"), 4, seed=0)
    assert sorted(np.concatenate(iid).tolist()) == list(range(1000))
    assert all(np.all(np.diff(p) > 0) for p in iid)  # file order kept
    skew = partition_indices(recs, PartitionScheme.parse("dirichlet:0.1"), 4, seed=0)
    mixes = [np.mean(recs.is_attack[p]) for p in skew]
    assert max(mixes) - min(mixes) > 0.3  # label skew
    by = partition_indices(recs, PartitionScheme.parse("by:proto"), 0, seed=0)
    assert len(by) == 3 and all(len(set(recs.frame["proto"].iloc[p])) == 1 for p in by)
    rows = describe([recs.take(p) for p in iid], ["a", "b", "c", "d"])
    assert sum(r["rows"] for r in rows) == 1000


@pytest.mark.parametrize("bad", ["dirichlet", "dirichlet:-1", "by:", "zipf:2"])
def test_bad_partition_specs(bad):
    with pytest.raises(ValueError):
        PartitionScheme.parse(bad)


def test_client_share_round_trip(tmp_path):
    recs = synthetic_records(50)
    back, spec = load_client_records(save_records(recs, tmp_path / "c.parquet"), SYNTHETIC_SPEC)
    assert back.frame.equals(recs.frame) and (back.family == recs.family).all()
    assert spec is SYNTHETIC_SPEC and back.segment is None


def test_client_share_carries_its_schema_and_window_segments(tmp_path):
    recs = synthetic_records(50)
    recs.segment = np.repeat([3, 7], 25)
    own = SYNTHETIC_SPEC.model_copy(update={"name": "site-schema", "family_order": ["normal", "probe", "dos"]})
    back, spec = load_client_records(save_records(recs, tmp_path / "c.parquet", own), SYNTHETIC_SPEC)
    assert spec == own  # the share's own schema wins over the caller's default
    assert (back.segment == recs.segment).all() and (back.is_attack == recs.is_attack).all()


@pytest.mark.parametrize("name,cls", [("fedavg", "FedAvg"), ("fedprox", "FedProx"), ("fedadam", "FedAdam")])
def test_strategies_come_from_flower(name, cls):
    from fedlstm.federation.apps import build_strategy

    cfg = CFG.model_copy(update={"federation": CFG.federation.model_copy(
        update={"strategy": name, "fraction_fit": 0.6, "proximal_mu": 0.1})})
    server = ServerTask(task_for(cfg), SYNTHETIC_SPEC)
    server.merge_statistics([c.statistics() for c in _clients(2)])
    strategy = build_strategy(server).strategy  # inside the downlink bookkeeping
    assert type(strategy).__name__ == cls and strategy.fraction_fit == 0.6
    fit_config = strategy.on_fit_config_fn(1)
    assert fit_config["local_epochs"] == 1 and "preprocessor" in fit_config
    assert "run_config" not in fit_config  # settings travel in the run config, not in messages
    if name == "fedprox":
        assert strategy.proximal_mu == 0.1
