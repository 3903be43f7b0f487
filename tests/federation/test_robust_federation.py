"""Attacks and defences in real Flower simulations: a site that fails is left out and named, a
simulated attack records its malicious sites, defences log what they did, and the robustness
command writes its table."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.simulation import run_simulation
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.config import RunConfig
from fedlstm.federation.apps import make_client_app, make_server_app
from fedlstm.federation.partitions import save_records
from fedlstm.federation.server import CHECKPOINT, ServerTask
from fedlstm.federation.sites import federated_data
from fedlstm.tasks import task_for


def _config(datasets_dir, **federation) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"data_dir": str(datasets_dir), "max_train_rows": 2000, "max_test_rows": 1000},
        "windows": {"window": 1}, "model": {"hidden_size": 8},
        "federation": {"clients": 3, "rounds": 2, "local_epochs": 1, **federation}})


def test_a_failing_site_is_left_out_and_a_round_in_which_every_site_fails_stops_the_run(
        datasets_dir, tmp_path):
    """Site 2 raises in round 2: the round goes on with the others and names it. Every site
    raises in round 3: nothing is aggregated, and going on would release round 2's model as if
    it had been trained (a run whose every round failed used to end with an untrained detector
    and exit 0), so the run stops, naming why, with round 2 in the checkpoint."""
    cfg = _config(datasets_dir, rounds=3, evaluate_clients=False, server_test_curves=False)
    data = federated_data(cfg)
    for i, recs in enumerate(data.clients):
        save_records(recs, tmp_path / f"client-{i}.parquet", data.spec)

    def crash(msg, ctxt, call_next):
        config = msg.content.config_records.get("fitins.config", {})
        site, rnd = int(ctxt.node_config.get("partition-id", 0)), config.get("server_round")
        if rnd == 3 or (rnd == 2 and site == 2):
            raise RuntimeError("disk full")
        return call_next(msg, ctxt)

    task = ServerTask(task_for(cfg), data.spec, data.tests, tmp_path / "run")
    try:
        run_simulation(server_app=make_server_app(task),
                       client_app=make_client_app(str(tmp_path), cfg, mods=(crash,)),
                       num_supernodes=3, backend_config={"client_resources": {"num_cpus": 1}})
    except Exception:  # Flower may re-raise a ServerApp's error; what it says is in the task
        pass
    assert set(task.rounds[1]["clients_fit"]) == {"client-0", "client-1", "client-2"}
    assert set(task.rounds[2]["clients_fit"]) == {"client-0", "client-1"}
    assert list(task.rounds[2]["clients_failed"]) == ["client-2"]  # named, not a node id
    assert "disk full" in task.rounds[2]["clients_failed"]["client-2"]
    assert task.result is None
    assert task.failure.startswith("round 3: every site asked to train failed")
    assert "disk full" in task.failure and "client-1" in task.failure
    assert set(task.rounds[3]["clients_failed"]) == {"client-0", "client-1", "client-2"}
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["round"] == 2  # the last trained round is kept


def test_a_simulated_attack_is_recorded_and_the_defences_log_what_they_did(datasets_dir,
                                                                         tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "federate", "--detector", "supervised", "--clients", "4", "--rounds", "2",
        "--attack", "sign-flip", "--malicious", "0.25", "--strategy", "median",
        "--defence", "norm-bound", "--defence", "reputation", "--defence", "cap-counts",
        "--data-dir", str(datasets_dir), "--out", str(out),
        "--set", "data.max_train_rows=2000", "--set", "data.max_test_rows=1000",
        "--set", "model.hidden_size=8"])
    assert result.exit_code == 0, result.output
    assert "simulated attack sign-flip by 25% of the sites" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["attack"]["kind"] == "sign-flip" and len(m["attack"]["malicious_sites"]) == 1
    bad = m["attack"]["malicious_sites"][0]
    last = m["rounds"][-1]
    assert last["reputation"][bad] < 1.0  # flagged for reversing its update
    assert all(v == 1.0 for site, v in last["reputation"].items() if site != bad)
    assert last["norm_bound"]["bound"] > 0 and "sites" in last["norm_bound"]
    assert m["federation"]["strategy"] == "median"


def test_the_robustness_command_writes_its_table_and_figure(datasets_dir, tmp_path):
    out = tmp_path / "robust"
    args = ["robustness", "--attacks", "backdoor", "--defences", "fedavg,robust",
            "--shares", "0,0.25", "--clients", "4", "--max-train-rows", "2000",
            "--data-dir", str(datasets_dir), "--out", str(out), "--set", "detector=supervised",
            "--set", "federation.rounds=1", "--set", "federation.local_epochs=1",
            "--set", "data.max_test_rows=1000", "--set", "model.hidden_size=8",
            "--set", "federation.tolerate=0.25"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (out / "robustness.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| backdoor |")]
    assert len(rows) == 2 and all("ASR" in row for row in rows)
    cells = json.loads((out / "robustness.json").read_text())
    assert set(cells) == {"backdoor|fedavg|0", "backdoor|fedavg|0.25", "backdoor|robust|0",
                          "backdoor|robust|0.25"}
    assert 0 <= cells["backdoor|fedavg|0.25"]["attack_success_rate"] <= 1
    assert (out / "robustness.png").stat().st_size > 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    again = CliRunner().invoke(app, args)  # every cell is reused
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs
    assert all(json.loads((out / "runs" / r / "metrics.json").read_text())["command"]
               for r in runs)


@pytest.mark.parametrize("flags, message", [
    (["--attack", "sign-flip"], "needs a share of malicious sites"),
    (["--attack", "poison", "--malicious", "0.3"], "label-flip"),
    (["--strategy", "krum", "--clients", "4"], "krum needs n > 2f + 2"),
    # 30% of 3 sites is none: the rule averaged as FedAvg does, and nothing said so
    (["--strategy", "trimmed-mean", "--clients", "3"], "use at least 4 sites"),
])
def test_attack_and_defence_mistakes_are_clear_errors(datasets_dir, tmp_path, flags, message):
    result = CliRunner().invoke(app, ["federate", *flags, "--data-dir", str(datasets_dir),
                                      "--out", str(tmp_path / "x"),
                                      "--set", "data.max_train_rows=2000"])
    assert result.exit_code != 0 and message in result.output, result.output


def test_robust_calibration_leaves_the_label_flippers_out_of_the_detector(datasets_dir):
    """A site that trains on its attacks relabelled benign also describes attacks as normal
    traffic when the hybrid's novelty part is calibrated: the robust calibration finds it by
    its answers alone (many of its "normal" windows above the others' ζ) and fits μ, Σ and ζ
    on the other sites' answers. Without attackers no site is left out."""
    from fedlstm.federation.attacks import malicious_sites
    from fedlstm.federation.simulation import federate

    def run(**attack):
        cfg = RunConfig.model_validate({
            "detector": "hybrid", "data": {"data_dir": str(datasets_dir), "max_train_rows": 12000,
                                           "max_test_rows": 500},
            "model": {"hidden_size": 16},
            "federation": {"clients": 4, "rounds": 2, "local_epochs": 2,
                           "defences": ["robust-calibration"], "server_test_curves": False,
                           "evaluate_clients": False, **attack}})
        return cfg, federate(cfg, federated_data(cfg), engine="inprocess")

    cfg, attacked = run(attack="label-flip", malicious=0.25)
    check = attacked.calibration_check
    bad = [f"client-{i}" for i in malicious_sites(cfg.federation)]
    assert len(bad) == 1 and check["left_out"] == bad
    shares = check["tail_shares"]
    assert shares[bad[0]] > 3 * max(v for site, v in shares.items() if site != bad[0])
    _, clean = run()
    assert clean.calibration_check["left_out"] == []
    assert set(clean.calibration_check["distances"]) == {f"client-{i}" for i in range(4)}


def test_the_in_process_engine_refuses_what_it_cannot_do(datasets_dir):
    from fedlstm.federation.simulation import federate

    cfg = _config(datasets_dir, strategy="trimmed-mean", clients=4)
    with pytest.raises(ValueError, match="FedAvg .* only.*engine flower"):
        federate(cfg, federated_data(cfg), engine="inprocess")
