"""One smoke test of Flower's simulation engine, through the comparison command."""

import json

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.detection import ModelBundle


def test_compare_local_centralised_and_fed_lstm(datasets_dir, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "federate", "--dataset", "nsl-kdd", "--clients", "2", "--partition", "dirichlet:0.5",
        "--strategy", "fedprox", "--rounds", "2", "--window", "2", "--out", str(out), "--compare",
        "--data-dir", str(datasets_dir), "--set", "data.max_train_rows=3000",
        "--set", "train.epochs=1", "--set", "model.hidden_size=16"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "comparison.json").read_text())
    # and gradient boosting on the pooled shares, the centralised LSTM's split
    assert set(summary["methods"]) == {"local-client-0", "local-client-1", "centralised", "hgb",
                                       "fed-lstm"}
    for scores in summary["methods"].values():
        assert set(scores) == {"test", "test-21"} and 0 < scores["test"]["accuracy"] <= 1
    fed = json.loads((out / "fed-lstm" / "metrics.json").read_text())
    assert fed["mode"] == "federated" and fed["federation"]["strategy"] == "fedprox"
    assert [r["round"] for r in fed["rounds"]] == [0, 1, 2]
    last = fed["rounds"][-1]
    assert {"train_loss", "val_loss", "test_accuracy/test"} <= set(last)
    assert set(last["clients_fit"]) == {"client-0", "client-1"}
    assert sum(p["rows"] for p in fed["partitions"]) == pytest.approx(3000, abs=5)
    assert (out / "fed-lstm" / "checkpoints" / "last.pt").exists()
    assert not (out / "fed-lstm" / "partitions").exists()  # no copies of data in results
    bundle = ModelBundle.load(out / "fed-lstm" / "model.fedlstm")
    assert bundle.metadata["mode"] == "federated" and bundle.metadata["rounds"] == 2
    assert (out / "comparison_curves.png").stat().st_size > 0


def test_a_new_run_never_continues_what_a_failed_run_left(datasets_dir, tmp_path):
    """A failed run keeps its checkpoint for --resume; a new run to the same --out stops rather
    than silently continuing it, and --overwrite clears it."""
    left = tmp_path / ".x.partial" / "checkpoints" / "last.pt"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"a failed run's checkpoint")
    result = CliRunner().invoke(app, ["federate", "--out", str(tmp_path / "x"),
                                      "--data-dir", str(datasets_dir)])
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output
    assert left.read_bytes() == b"a failed run's checkpoint"  # kept, for --resume


def test_resume_without_checkpoint_is_an_error(datasets_dir, tmp_path):
    result = CliRunner().invoke(app, ["federate", "--out", str(tmp_path / "x"), "--resume",
                                      "--data-dir", str(datasets_dir)])
    assert result.exit_code == 2 and "nothing to resume" in result.output


def test_deploy_local_resume_without_checkpoint_is_an_error(datasets_dir, tmp_path):
    result = CliRunner().invoke(app, ["deploy", "local", "--out", str(tmp_path / "x"), "--resume",
                                      "--data-dir", str(datasets_dir)])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    assert not (tmp_path / ".x.deploy").exists()  # nothing started, nothing written


def test_one_ray_runtime_hands_idle_actors_to_the_next_simulation_and_replaces_dead_ones():
    """What `reproduce` (and this suite) rely on to skip Ray's and torch's start-up per
    simulation: the next pool gets the same live actors; a dead one makes it start fresh ones."""
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    from fedlstm.federation.simulation import one_ray_runtime

    def pool() -> BasicActorPool:  # as Flower's Ray backend builds one for each simulation
        built = BasicActorPool(ClientAppActor, {"num_cpus": 1, "num_gpus": 0.0}, {})
        built.add_actors_to_pool(built.actors_capacity)
        return built

    with one_ray_runtime():
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     logging_level="error")
        first = pool()
        ids = {a._actor_id for a in first.pool}
        first.terminate_all_actors()
        second = pool()
        assert {a._actor_id for a in second.pool} == ids and second.num_actors == len(ids)
        ray.kill(second.pool[0])
        second.terminate_all_actors()
        third = pool()
        assert third.num_actors == len(ids) and not {a._actor_id for a in third.pool} & ids
        ray.get([a.__ray_ready__.remote() for a in third.pool], timeout=60)  # alive
        third.terminate_all_actors()


def test_a_simulation_builds_flowers_runtime_queues_that_notice_the_stop_event_promptly(
        monkeypatch):
    """Flower's runtime reads its queues with a 1 s timeout between stop checks; `simulate`
    hands it queues that wait at most 50 ms at a time, and only while it runs."""
    import queue

    from flwr.server.superlink.fleet.vce import vce_api

    from fedlstm.federation import simulation

    # The runtime takes its queue class from the module at call time (else the patch is moot).
    assert "Queue" in vce_api.run_api.__code__.co_names
    built = []
    monkeypatch.setattr(vce_api, "run_api", lambda *a, **k: built.append(vce_api.Queue()))

    def fake_run_simulation(**kwargs):  # Flower's entry point down to the runtime it starts
        vce_api.run_api()

    monkeypatch.setattr("flwr.simulation.run_simulation", fake_run_simulation)
    simulation.simulate(None, None, 2, simulation.threading.Event())
    assert isinstance(built[0], simulation._PromptQueue) and vce_api.Queue is queue.Queue

    waits = []
    monkeypatch.setattr(queue.Queue, "get", lambda self, block=True, timeout=None:
                        waits.append(timeout))
    built[0].get(timeout=1.0)
    built[0].get(timeout=0.01)
    built[0].get()
    assert waits == [0.05, 0.01, None]


def test_a_simulated_federation_keeps_gradient_boosting_on_the_pooled_shares_beside_it(
        datasets_dir, tmp_path):
    """What the sites' pooled shares give gradient boosting, scored on the federation's test
    sets: the summary's reference, which a simulation can train and a real federation cannot."""
    from fedlstm.config import RunConfig
    from fedlstm.federation.client import ClientTask
    from fedlstm.federation.simulation import run_federated
    from fedlstm.federation.sites import federated_data, pooled_split
    from fedlstm.tasks import task_for

    cfg = RunConfig.model_validate({
        "data": {"data_dir": str(datasets_dir), "max_train_rows": 2000, "max_test_rows": 400},
        "federation": {"clients": 2, "rounds": 1}, "model": {"hidden_size": 8},
        "windows": {"window": 2}})
    run_federated(cfg, tmp_path / "run", engine="inprocess", plots=False, baseline=True)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    base = m["baseline"]
    assert (base["method"], base["on"]) == ("hgb", "the sites' pooled shares")
    for name, ev in m["evaluations"].items():
        assert base["evaluations"][name]["binary"]["n"] == ev["binary"]["n"]
    # pooled: every site's training and validation records, carved as each site carves them
    data = federated_data(cfg)
    split = pooled_split(cfg, data)
    assert len(split.train) + len(split.val) == sum(len(c) for c in data.clients)
    sites = [ClientTask(task_for(cfg), c, data.spec, n) for c, n in zip(data.clients, data.names)]
    assert len(split.val) == sum(len(s.val_records) for s in sites) > 0
    run_federated(cfg, tmp_path / "plain", engine="inprocess", plots=False)
    assert "baseline" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
