"""Sites with their own logs: `fedlstm federate --schema FILE.toml --train-file SITE ...`, each
file or folder one client, through Flower's simulation engine."""

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.detection import ModelBundle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
from _detect_helpers import SCHEMA_TOML, write_flows  # noqa: E402


def test_federate_one_client_per_site_file_or_folder(tmp_path):
    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    site_a = write_flows(tmp_path / "site-a.csv", 500, seed=1)
    site_b = write_flows(tmp_path / "site-b.csv", 400, seed=2)
    site_c = tmp_path / "site-c"  # a folder of rotated logs, one of them gzipped
    site_c.mkdir()
    write_flows(site_c / "flows.1.csv", 200, seed=3)
    write_flows(site_c / "flows.2.csv.gz", 200, seed=4, gz=True)
    held_out = write_flows(tmp_path / "held-out.csv", 300, seed=5)
    out = tmp_path / "fed"
    result = CliRunner().invoke(app, [
        "federate", "--schema", str(schema), "--train-file", str(site_a), "--train-file",
        str(site_b), "--train-file", str(site_c), "--test-file", str(held_out), "--rounds", "2",
        "--window", "3", "--out", str(out), "--set", "train.epochs=1",
        "--set", "model.hidden_size=8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["federation"]["partition"] == "files"  # the default with several files
    parts = {p["client"]: p["rows"] for p in metrics["partitions"]}
    assert parts == {"site-0-site-a.csv": 500, "site-1-site-b.csv": 400, "site-2-site-c": 400}
    assert set(metrics["rounds"][-1]["clients_fit"]) == set(parts)
    # every held-out record is scored, each host's first W-1 = 2 included
    assert metrics["evaluations"]["test"]["binary"]["n"] == 300
    bundle = ModelBundle.load(out / "model.fedlstm")
    assert bundle.spec.name == "tiny-flows" and bundle.window == 3
    # Trained on the sites' files, tested on the held-out one: protocol `files` everywhere.
    assert metrics["protocol"] == "files" and "/ protocol files /" in result.output
    assert bundle.metadata["protocol"] == bundle.metadata["split"]["protocol"] == "files"


def test_files_partition_needs_several_sites(tmp_path):
    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    only = write_flows(tmp_path / "site-a.csv", 100)
    result = CliRunner().invoke(app, [
        "federate", "--schema", str(schema), "--train-file", str(only), "--partition", "files",
        "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "at least two" in result.output


def test_time_split_sites_each_test_on_their_latest_flows(tmp_path):
    """`--protocol time-split`: each site's latest 20% of flows (in line order, though windows
    group them by host) are its test share, and the shares are pooled into the test set."""
    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    site_a = write_flows(tmp_path / "site-a.csv", 300, seed=1)
    site_b = write_flows(tmp_path / "site-b.csv", 200, seed=2)
    out = tmp_path / "fed"
    result = CliRunner().invoke(app, [
        "federate", "--schema", str(schema), "--train-file", str(site_a), "--train-file",
        str(site_b), "--protocol", "time-split", "--rounds", "1", "--window", "3",
        "--out", str(out), "--set", "train.epochs=1", "--set", "model.hidden_size=8"])
    assert result.exit_code == 0, result.output
    assert "protocol time-split (the latest 20% of records)" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "time-split" and "/ protocol time-split /" in result.output
    assert metrics["evaluations"]["test"]["binary"]["n"] == 60 + 40
    notes = metrics["data_notes"]
    assert [notes[s]["test_from_record"] for s in sorted(notes)] == [241, 161]
    assert ModelBundle.load(out / "model.fedlstm").metadata["protocol"] == "time-split"


def test_a_deployed_run_directory_names_its_flower_run(tmp_path):
    """`deploy run` wrote no run id anywhere: its metrics.json could not be matched with what
    `flwr ls` and `flwr log` show. The ServerApp writes it (`deploy local` added it after)."""
    import json

    from conftest import SYNTHETIC_SPEC, synthetic_records
    from fedlstm.config import RunConfig
    from fedlstm.federation.client import ClientTask
    from fedlstm.federation.deploy.launch import write_deployed_run
    from fedlstm.federation.inprocess import run_inprocess
    from fedlstm.federation.server import ServerTask
    from fedlstm.tasks import task_for

    cfg = RunConfig.model_validate({"detector": "supervised", "windows": {"window": 2},
                                    "model": {"hidden_size": 8}, "train": {"epochs": 1},
                                    "federation": {"clients": 2, "rounds": 1}})
    sites = [ClientTask(task_for(cfg), synthetic_records(200, seed=i), SYNTHETIC_SPEC, f"c{i}")
             for i in range(2)]
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    out = write_deployed_run(server, {"out-dir": str(tmp_path / "run")}, run_id=4242)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["deployment"]["run_id"] == "4242" and metrics["runtime"] == "deployment"
