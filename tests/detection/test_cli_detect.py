"""`fedlstm detect` / `schema` end to end: the CICIDS2017 sample as a user's own CICFlowMeter log."""

from __future__ import annotations

import json
import tomllib

import pytest
from _detect_helpers import HEADER, flow_lines, tiny  # noqa: F401
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.config import RunConfig
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split_from_files
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

runner = CliRunner()


@pytest.fixture(scope="module")
def cic_bundle(datasets_dir, tmp_path_factory):
    cfg = RunConfig.model_validate({
        "data": {"dataset": "cicflowmeter"}, "windows": {"window": 4},
        "model": {"hidden_size": 32, "task": "family"},
        "train": {"epochs": 3, "class_weights": "balanced", "threshold": "val-f1", "lr": 0.005}})
    split = build_split_from_files(get_spec("cicflowmeter"),
                                   datasets_dir / "cicids2017-sample" / "CICIDS2017_sample.csv",
                                   None, cfg.data, seed=0)
    result = train(task_for(cfg), split)
    assert result.evaluations["test"]["binary"]["roc_auc"] > 0.8
    return result.bundle.save(tmp_path_factory.mktemp("cic") / "model.fedlstm")


def test_detect_on_cicids_sample_writes_alerts_and_summary(cic_bundle, datasets_dir, tmp_path):
    src = datasets_dir / "cicids2017-sample" / "CICIDS2017_sample.csv"
    out, summary = tmp_path / "alerts.jsonl", tmp_path / "summary.json"
    r = runner.invoke(app, ["detect", str(cic_bundle), str(src), "--out", str(out),
                            "--summary-json", str(summary)])
    assert r.exit_code == 0, r.output
    s = json.loads(summary.read_text())
    assert s["records"] == 6311 and s["bad_lines"] == 0 and s["scored"] == 6311
    assert s["files"][0]["filled"] == {"Flow Bytes/s": 10, "Flow Packets/s": 10}
    alerts = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(alerts) == s["alerts"] > 0
    assert set(alerts[0]["probabilities"]) == {"normal", "bot", "bruteforce", "dos", "infiltration",
                                              "portscan", "webattack"}
    assert s["labelled"]["recall"] > 0.9
    assert "alerts" in r.output and "records" in r.output


def test_detect_reports_bad_lines_and_strict_fails_fast(tiny, tmp_path):
    _, _, bundle = tiny
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join([HEADER, *flow_lines(10), "a,b", *flow_lines(5, seed=2)]) + "\n")
    r = runner.invoke(app, ["detect", str(bundle), str(path), "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0, r.output
    assert f"{path}:12" in r.output.replace("\n", "")
    assert (tmp_path / "a.csv").read_text().startswith("file,line,entity,score")
    r = runner.invoke(app, ["detect", str(bundle), str(path), "--strict"])
    assert r.exit_code == 2 and "expected 8 fields" in r.output


def test_detect_refuses_a_broken_bundle(tiny, tmp_path):
    bad = tmp_path / "x.fedlstm"
    bad.write_bytes(b"not a zip")
    r = runner.invoke(app, ["detect", str(bad), str(tiny[1])])
    # The console wraps at 80 columns where the tmp path's length puts it: compare unwrapped.
    assert r.exit_code == 2 and "not a fedlstm model bundle" in " ".join(r.output.split())


def test_a_path_the_cli_echoes_stays_whole_on_a_narrow_terminal(tmp_path, tiny, monkeypatch):
    """Lines that echo a path ("schema drafted to PATH", "run written to PATH") are never
    wrapped at the terminal's width, so whoever copies or greps them gets the whole path."""
    from fedlstm.cli import common

    monkeypatch.setattr(common.console, "_width", 40)
    out = tmp_path / f"{'a-long-schema-name-' * 4}s.toml"
    r = runner.invoke(app, ["schema", "infer", str(tiny[1]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"schema drafted to {out}: check" in r.output


def test_schema_infer_and_show(tmp_path, tiny):
    out = tmp_path / "s.toml"
    r = runner.invoke(app, ["schema", "infer", str(tiny[1]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    drafted = tomllib.loads(text)["schema"]
    assert drafted["label"] == "label" and drafted["normal"] == ["benign"]
    assert drafted["entity"] == "src"
    r = runner.invoke(app, ["schema", "show", str(out)])
    assert r.exit_code == 0 and '"entity_column": "src"' in r.output
    r = runner.invoke(app, ["schema", "show", "zeek-conn"])
    assert r.exit_code == 0 and "id.orig_h" in r.output
