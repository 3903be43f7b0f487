"""`fedlstm privacy-utility`'s table: read from the runs it caches (written here as a run writes
them), one row per scored test set, with the FPR beside the accuracy."""

import json

import pytest

from fedlstm.config import RunConfig
from fedlstm.reports import privacy
from fedlstm.reports.privacy import point_config, sweep
from fedlstm.runs.rundir import REQUEST_NAME


def _binary(accuracy: float, fpr: float) -> dict:
    return {"binary": {"accuracy": accuracy, "fpr": fpr, "f1": accuracy - 0.01,
                       "roc_auc": accuracy + 0.01}}


def _cache(out, name: str, spent, evaluations: dict, cfg: RunConfig) -> None:
    fit = {} if spent is None else {"a": {"epsilon": spent, "delta": 1e-5}}
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / "metrics.json").write_text(json.dumps({
        "rounds": [{"round": 1, "epsilon": spent, "clients_fit": fit}],
        "evaluations": evaluations}))
    eps = float(name.removeprefix("eps-"))
    (out / name / "config.json").write_text(point_config(cfg, eps).model_dump_json())


def test_a_networks_sweep_reports_each_networks_own_test_set(tmp_path):
    cfg = RunConfig.model_validate({"federation": {
        "partition": "networks", "networks": ["nsl-kdd", "unsw-nb15"]}})
    _cache(tmp_path, "eps-3", 2.99, {"nsl-kdd/test": _binary(0.71, 0.12),
                                     "nsl-kdd/test-21": _binary(0.5, 0.3),
                                     "unsw-nb15/test": _binary(0.95, 0.04)}, cfg)
    _cache(tmp_path, "eps-inf", None, {"nsl-kdd/test": _binary(0.78, 0.07),
                                       "unsw-nb15/test": _binary(0.99, 0.01)}, cfg)
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


def test_a_cached_run_of_other_settings_is_run_again(tmp_path, monkeypatch):
    """Runs were reused whatever their settings: another --rounds in the same folder reported
    the old runs under the new settings."""
    old = RunConfig.model_validate({"federation": {"rounds": 2}})
    new = RunConfig.model_validate({"federation": {"rounds": 3}})
    for name, spent in (("eps-1", 0.99), ("eps-inf", None)):
        _cache(tmp_path, name, spent, {"test": _binary(0.8, 0.1)}, old)
    ran = []

    def fake_run(cfg, run_dir, overwrite, command):
        ran.append((run_dir.name, cfg.federation.rounds))
        _cache(tmp_path, run_dir.name, 0.98, {"test": _binary(0.9, 0.05)}, new)

    monkeypatch.setattr(privacy, "run_federated", fake_run)
    sweep(old, [1, float("inf")], tmp_path)
    assert ran == []  # the same settings: the cached runs
    table = sweep(new, [1, float("inf")], tmp_path).read_text()
    assert ran == [("eps-1", 3), ("eps-inf", 3)] and "| 0.8000 |" not in table


def test_a_networks_sweep_reuses_its_runs_though_the_sites_settled_their_config(tmp_path,
                                                                                  monkeypatch):
    """A federation across networks writes the configuration its sites settled (one client per
    network, the inputs 'auto' picked) to config.json: compared with that, the request never
    matched and every rerun of the sweep trained every point again."""
    cfg = RunConfig.model_validate({"federation": {
        "partition": "networks", "networks": ["nsl-kdd", "unsw-nb15"]}})
    ran = []

    def fake_run(run_cfg, run_dir, overwrite, command):  # as run_federated writes a run
        ran.append(run_dir.name)
        settled = run_cfg.model_copy(update={"federation": run_cfg.federation.model_copy(
            update={"clients": 2, "inputs": "encoders"})})
        _cache(tmp_path, run_dir.name, 0.99, {"nsl-kdd/test": _binary(0.8, 0.1)}, settled)
        (run_dir / REQUEST_NAME).write_text(run_cfg.model_dump_json())

    monkeypatch.setattr(privacy, "run_federated", fake_run)
    sweep(cfg, [1, float("inf")], tmp_path)
    sweep(cfg, [1, float("inf")], tmp_path)
    assert ran == ["eps-1", "eps-inf"]


def test_a_sweep_of_only_inf_draws_its_figure_and_a_failure_keeps_the_earlier_table(
        tmp_path, monkeypatch):
    """One ε = ∞ failed on the figure's log axis, after the table of the earlier sweep had
    already been replaced by its one row."""
    cfg = RunConfig.model_validate({})
    for name, spent in (("eps-1", 0.99), ("eps-inf", None)):
        _cache(tmp_path, name, spent, {"test": _binary(0.8, 0.1)}, cfg)
    sweep(cfg, [1, float("inf")], tmp_path)
    before = (tmp_path / "privacy_utility.md").read_text()
    monkeypatch.setattr(privacy.plt, "subplots", lambda **kw: (_ for _ in ()).throw(
        RuntimeError("figure failed")))
    with pytest.raises(RuntimeError):
        sweep(cfg, [float("inf")], tmp_path)
    assert (tmp_path / "privacy_utility.md").read_text() == before
    monkeypatch.undo()
    table = sweep(cfg, [float("inf")], tmp_path).read_text()
    assert "| inf |" in table and "| 1 |" not in table
