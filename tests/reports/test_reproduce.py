"""The quick profile of `fedlstm reproduce`, end to end on the real files."""

import json

from typer.testing import CliRunner

from fedlstm.cli import app
from fedlstm.reports.reproduce import METHODS


def test_quick_reproduction_writes_the_report_and_resumes(datasets_dir, tmp_path):
    out = tmp_path / "paper"
    args = ["reproduce", "--profile", "quick", "--out", str(out), "--data-dir", str(datasets_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    for heading in ("Table I", "Table II", "QUICK PROFILE", "Fig. 5", "Fig. 6", "Fig. 7", "Fig. 8",
                    "protocol `official`", "protocol `random-split`", "Wall time",
                    "Non-IID sites", "Privacy–utility", "Unsupervised detection"):
        assert heading in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # self-contained
    steps = [json.loads(p.read_text()) for p in (out / "steps").glob("*.json")]
    methods = {s["step"]["method"] for s in steps if "step" in s}
    assert methods == set(METHODS)
    assert any(s["key"].startswith("networks-ab") for s in steps)
    extras = {s["key"]: s for s in steps if "kind" in s}
    assert set(extras) == {"noniid--fedavg--s0", "noniid--fedprox--s0", "privacy--eps1--s0",
                           "privacy--eps8--s0", "anomaly--nsl-kdd--s0"}
    skew = [p["attack_share"] for p in extras["noniid--fedavg--s0"]["partitions"]]
    assert max(skew) - min(skew) > 0.2  # Dirichlet 0.1 gives the sites different label mixes
    for eps in (1, 8):  # the accountant's ε stays within the target
        assert 0 < extras[f"privacy--eps{eps}--s0"]["epsilon"] <= eps * 1.01
    assert extras["anomaly--nsl-kdd--s0"]["evaluations"]["test"]["unseen_n"] > 0
    for s in steps:
        assert all(0 <= ev["accuracy"] <= 1 for ev in s["evaluations"].values())
    # a second run reuses every finished step
    before = {p.name: p.stat().st_mtime for p in (out / "steps").glob("*.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime for p in (out / "steps").glob("*.json")} == before
