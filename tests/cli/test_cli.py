"""End to end through the command line, on a small slice of the real NSL-KDD files."""

import json
import zipfile

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.detection import BundleError, ModelBundle

runner = CliRunner()
QUICK = ["--epochs", "1", "--set", "data.max_train_rows=4000", "--set", "model.hidden_size=16"]


@pytest.fixture(scope="module")
def run_dir(datasets_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nsl"
    result = runner.invoke(app, ["train", "--dataset", "nsl-kdd", "--window", "4", "--out", str(out),
                                 "--data-dir", str(datasets_dir), "--task", "family", *QUICK])
    assert result.exit_code == 0, result.output
    return out


def test_gradient_boosting_trains_from_the_cli_with_scores_and_no_bundle(datasets_dir, tmp_path):
    """The baseline a user compares with: scores per family, no pickle for a bundle."""
    out = tmp_path / "hgb"
    result = runner.invoke(app, ["train", "--dataset", "nsl-kdd", "--detector", "supervised",
                                 "--set", "model.name=hgb", "--task", "family", "--out", str(out),
                                 "--data-dir", str(datasets_dir), *QUICK])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["model"], m["task"]) == ("hgb", "family") and m["bundle_signed_by"] is None
    assert set(m["evaluations"]["test"]["family"]["per_class"]) == {"normal", "dos", "probe",
                                                                     "r2l", "u2r"}
    assert not (out / "model.fedlstm").exists() and (out / "confusion_family_test.png").exists()
    assert "baseline" not in m  # it is the baseline
    # without --detector supervised a baseline (or the RNN) is refused, never quietly replaced
    # by the hybrid LSTM
    result = runner.invoke(app, ["train", "--dataset", "nsl-kdd", "--set", "model.name=hgb",
                                 "--out", str(tmp_path / "x"), "--data-dir", str(datasets_dir)])
    assert result.exit_code == 2 and "--detector supervised" in result.output
    result = runner.invoke(app, ["train", "--dataset", "nsl-kdd", "--set", "model.name=rnn",
                                 "--out", str(tmp_path / "x"), "--data-dir", str(datasets_dir)])
    assert result.exit_code == 2 and "model rnn is not the hybrid" in result.output


def test_train_scores_gradient_boosting_on_the_same_split_beside_the_detector(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    base = m["baseline"]
    assert (base["method"], base["task"], base["on"]) == ("hgb", "family", "the same split")
    assert set(base["evaluations"]) == set(m["evaluations"]) == {"val", "test", "test-21"}
    for name, ev in base["evaluations"].items():  # the same records, scored by both
        assert ev["binary"]["n"] == m["evaluations"][name]["binary"]["n"]
        assert sum(map(sum, ev["binary"]["confusion_matrix"])) == ev["binary"]["n"]
        assert 0.5 < ev["binary"]["accuracy"] <= 1
    assert set(base["evaluations"]["test"]["family"]["per_class"]) == {
        "normal", "dos", "probe", "r2l", "u2r"}


def test_no_baseline_trains_the_detector_alone(datasets_dir, tmp_path):
    out = tmp_path / "alone"
    result = runner.invoke(app, ["train", "--dataset", "nsl-kdd", "--window", "2", "--out",
                                 str(out), "--data-dir", str(datasets_dir), "--no-baseline", *QUICK])
    assert result.exit_code == 0, result.output
    assert "baseline" not in json.loads((out / "metrics.json").read_text())
    assert "hgb" not in result.output


def test_train_writes_a_complete_run(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.json", "model.fedlstm", "learning_curves.png", "roc.png",
            "confusion_test.png", "confusion_family_test.png"} <= names
    m = json.loads((run_dir / "metrics.json").read_text())
    assert (m["dataset"], m["protocol"], m["mode"], m["task"]) == ("nsl-kdd", "official",
                                                                  "centralised", "family")
    assert set(m["evaluations"]) == {"val", "test", "test-21"}
    test = m["evaluations"]["test"]
    assert 0.5 < test["binary"]["accuracy"] <= 1 and test["binary"]["roc_auc"] > 0.5
    assert set(test["family"]["per_class"]) == {"normal", "dos", "probe", "r2l", "u2r"}
    assert m["unseen_attacks"]["test"]["n"] > 0  # KDDTest+ holds attack types absent from training
    assert abs(m["data_notes"]["rows"]["train"] + m["data_notes"]["rows"]["val"] - 4000) <= 5
    assert len(m["history"]["epochs"]) == 1


def test_bundle_reevaluates_alone(run_dir, datasets_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(run_dir / "model.fedlstm"), "--protocol", "official",
                                 "--data-dir", str(datasets_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())["evaluations"]["test"]["binary"]
    first = json.loads((run_dir / "metrics.json").read_text())["evaluations"]["test"]["binary"]
    assert again["accuracy"] == pytest.approx(first["accuracy"])


def test_tampered_bundle_is_refused(run_dir, tmp_path):
    bad = tmp_path / "bad.fedlstm"
    with zipfile.ZipFile(run_dir / "model.fedlstm") as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "weights.pt":  # flip one bit in the middle of the weights
                data = data[:500] + bytes([data[500] ^ 1]) + data[501:]
            dst.writestr(item, data)
    with pytest.raises(BundleError, match="modified"):
        ModelBundle.load(bad)


def test_existing_run_is_not_overwritten(run_dir, datasets_dir):
    before = (run_dir / "metrics.json").read_text()
    result = runner.invoke(app, ["train", "--out", str(run_dir), "--data-dir", str(datasets_dir), *QUICK])
    assert result.exit_code == 2 and "already exists" in result.output
    assert (run_dir / "metrics.json").read_text() == before


def test_failed_run_leaves_nothing_behind(tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "--out", str(out), "--data-dir", str(tmp_path), *QUICK])
    assert result.exit_code == 2 and "fedlstm data fetch nsl-kdd" in result.output
    # the hint fetches into the folder the run reads (it fetched into the default one)
    assert "data fetch nsl-kdd --data-dir" in " ".join(result.output.split())
    assert "random-split" not in result.output  # no file to split either
    assert list(tmp_path.iterdir()) == []


def test_unsw_official_without_training_partition_says_so(datasets_dir, tmp_path):
    result = runner.invoke(app, ["train", "--dataset", "unsw-nb15", "--out", str(tmp_path / "u"),
                                 "--data-dir", str(datasets_dir), *QUICK])
    assert result.exit_code == 2 and "random-split" in result.output
