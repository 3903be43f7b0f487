"""`fedlstm privacy-utility`'s table: read from the runs it caches (written here as a run writes
them), one row per scored test set, with the FPR beside the accuracy."""

import json

from fedlstm.config import RunConfig
from fedlstm.reports.privacy import sweep


def _binary(accuracy: float, fpr: float) -> dict:
    return {"binary": {"accuracy": accuracy, "fpr": fpr, "f1": accuracy - 0.01,
                       "roc_auc": accuracy + 0.01}}


def _cache(out, name: str, spent, evaluations: dict) -> None:
    fit = {} if spent is None else {"a": {"epsilon": spent, "delta": 1e-5}}
    (out / name).mkdir(parents=True)
    (out / name / "metrics.json").write_text(json.dumps({
        "rounds": [{"round": 1, "epsilon": spent, "clients_fit": fit}],
        "evaluations": evaluations}))


def test_a_networks_sweep_reports_each_networks_own_test_set(tmp_path):
    cfg = RunConfig.model_validate({"federation": {
        "partition": "networks", "networks": ["nsl-kdd", "unsw-nb15"]}})
    _cache(tmp_path, "eps-3", 2.99, {"nsl-kdd/test": _binary(0.71, 0.12),
                                     "nsl-kdd/test-21": _binary(0.5, 0.3),
                                     "unsw-nb15/test": _binary(0.95, 0.04)})
    _cache(tmp_path, "eps-inf", None, {"nsl-kdd/test": _binary(0.78, 0.07),
                                       "unsw-nb15/test": _binary(0.99, 0.01)})
    table = sweep(cfg, [3, float("inf")], tmp_path).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 3 ") or
            line.startswith("| inf ")]
    assert rows == [
        "| 3 | 2.99 | 1.0e-05 | nsl-kdd/test | 0.7100 | 0.1200 | 0.7000 | 0.7200 | eps-3 |",
        "| 3 | 2.99 | 1.0e-05 | unsw-nb15/test | 0.9500 | 0.0400 | 0.9400 | 0.9600 | eps-3 |",
        "| inf | - | - | nsl-kdd/test | 0.7800 | 0.0700 | 0.7700 | 0.7900 | eps-inf |",
        "| inf | - | - | unsw-nb15/test | 0.9900 | 0.0100 | 0.9800 | 1.0000 | eps-inf |"]
    assert "2 networks (nsl-kdd, unsw-nb15)" in table
    assert (tmp_path / "privacy_utility.png").exists()
