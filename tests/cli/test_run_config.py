"""Every command that runs a configuration defaults to the same detector: the hybrid, unless the
configuration or the command line names a kind (the supervised one with DP-SGD)."""

import json

from fedlstm.cli.common import load_run_config


def test_a_configuration_that_names_no_detector_runs_the_hybrid(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": {"dataset": "nsl-kdd"}}))
    cfg = load_run_config(path, [])
    assert cfg.detector == "hybrid"
    assert cfg.windows.window == 1  # and the dataset's defaults


def test_dp_sgd_falls_back_to_the_supervised_detector_and_a_named_kind_wins(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train": {"dp": True}}))
    assert load_run_config(path, []).detector == "supervised"
    path.write_text(json.dumps({"detector": "supervised"}))
    assert load_run_config(path, []).detector == "supervised"
    assert load_run_config(path, ["detector=hybrid"]).detector == "hybrid"
    assert load_run_config(None, [], detector="anomaly").detector == "anomaly"


def test_a_federation_across_schemas_runs_the_hybrid_with_one_site_per_network():
    from fedlstm.cli.common import n_sites

    cfg = load_run_config(None, ["federation.partition=networks",
                                 'federation.networks=["nsl-kdd","kdd99","unsw-nb15"]'])
    assert cfg.detector == "hybrid" and n_sites(cfg) == 3  # not federation.clients (5)
    assert load_run_config(None, ["federation.partition=networks", "train.dp=true"]
                           ).detector == "supervised"


def test_federate_and_deploy_local_take_the_task_as_train_does(tmp_path):
    """`--task family` was a `train` option only; the docs' `federate --task family` exited 2."""
    from typer.testing import CliRunner

    from fedlstm.cli.main import app

    taken = tmp_path / "taken"
    taken.mkdir()
    for command in (["federate"], ["deploy", "local"]):
        ok = CliRunner().invoke(app, [*command, "--task", "family", "--out", str(taken)])
        assert "already exists" in ok.output, ok.output  # parsed and validated up to --out
        bad = CliRunner().invoke(app, [*command, "--task", "families", "--out", str(taken)])
        assert bad.exit_code != 0 and "already exists" not in bad.output
        assert "task" in bad.output, bad.output
