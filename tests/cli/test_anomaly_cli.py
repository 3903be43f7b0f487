"""The `fedlstm anomaly` commands on a small slice of the real NSL-KDD files."""

import json

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.detection import ModelBundle
from fedlstm.detection.anomaly import MahalanobisDetector

runner = CliRunner()
QUICK = ["--set", "data.max_train_rows=3000", "--set", "data.max_test_rows=3000",
         "--set", "model.hidden_size=16", "--set", "train.epochs=1"]


def test_anomaly_train_on_nsl_kdd(datasets_dir, tmp_path):
    out = tmp_path / "an"
    result = runner.invoke(app, ["anomaly", "train", "--dataset", "nsl-kdd", "--window", "1",
                                 "--out", str(out), "--data-dir", str(datasets_dir), *QUICK])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "lstm-ae" and m["mode"] == "centralised" and m["protocol"] == "official"
    test = m["evaluations"]["test"]
    assert test["binary"]["roc_auc"] > 0.8  # normal-only training already separates attacks
    assert test["unseen"]["n"] > 0 and 0 <= test["unseen"]["recall_at_threshold"] <= 1
    assert m["anomaly"]["normal_windows_for_mu_sigma"] > 0
    assert {"roc.png", "pr.png", "model.fedlstm", "config.json"} <= {p.name for p in out.iterdir()}
    assert "anomaly" in json.loads((out / "config.json").read_text())
    # supervised gradient boosting on the same records, beside it
    assert (m["baseline"]["method"], m["baseline"]["on"]) == ("hgb", "the same split")
    assert {k: v["binary"]["n"] for k, v in m["baseline"]["evaluations"].items()} == \
        {k: v["binary"]["n"] for k, v in m["evaluations"].items()}
    assert "hgb" in result.output  # its rows (the narrow console wraps their names)
    detector = ModelBundle.load(out / "model.fedlstm")
    assert isinstance(detector, MahalanobisDetector)

    # the same bundle scores new traffic through the streaming detector
    from fedlstm.detection.stream import detect

    alerts = tmp_path / "alerts.jsonl"
    with alerts.open("w") as fh:
        from fedlstm.detection.stream import AlertWriter

        summary = detect(detector, [datasets_dir / "nsl-kdd" / "KDDTest-21.txt"],
                         AlertWriter(fh, "jsonl", detector.class_names))
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert summary.to_dict()["scored"] > 0 and lines
    assert all(a["score_type"] == "mahalanobis" and a["score"] >= a["threshold"] for a in lines)
    assert all(len(a["top_features"]) == 3 for a in lines)


def test_anomaly_federate_with_flower_on_nsl_kdd(datasets_dir, tmp_path):
    out = tmp_path / "fed"
    result = runner.invoke(app, ["anomaly", "federate", "--dataset", "nsl-kdd", "--window", "2",
                                 "--clients", "2", "--rounds", "2", "--out", str(out),
                                 "--data-dir", str(datasets_dir), *QUICK])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "federated" and m["engine"] == "flower"
    assert [r["round"] for r in m["rounds"]] == [1, 2] and all("train_loss" in r for r in m["rounds"])
    phases = [a["phase"] for a in m["answers_received"]]
    assert sorted(phases) == ["error-stats"] * 2 + ["score-histogram"] * 2
    assert m["evaluations"]["test"]["binary"]["roc_auc"] > 0.7
    assert not (out / "partitions").exists()
    assert m["baseline"]["on"] == "the sites' pooled shares"


@pytest.mark.parametrize("engine", ["bogus"])
def test_unknown_engine_is_an_error(engine, tmp_path):
    result = runner.invoke(app, ["anomaly", "federate", "--engine", engine, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown engine" in result.output


def test_anomaly_train_takes_your_own_flow_files_as_train_does(tmp_path):
    """It had no --schema/--train-file: own logs went only through --set data.* keys."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
    from _detect_helpers import SCHEMA_TOML, write_flows

    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA_TOML)
    train, test = write_flows(tmp_path / "a.csv", 600), write_flows(tmp_path / "b.csv", 200, 1)
    out = tmp_path / "an"
    result = runner.invoke(app, ["anomaly", "train", "--schema", str(schema), "--train-file",
                                 str(train), "--test-file", str(test), "--window", "2",
                                 "--out", str(out), "--set", "model.hidden_size=8",
                                 "--epochs", "2"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "files" and m["evaluations"]["test"]["binary"]["n"] == 200
