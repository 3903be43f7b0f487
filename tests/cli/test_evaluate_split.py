"""`fedlstm evaluate` scores a bundle on the split it was trained with (seed, protocol, dedup
from the bundle), so a random-split model is never scored on its own training records."""

import json

from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.config import RunConfig
from fedlstm.data.splits import build_split
from fedlstm.runs.rundir import write_run
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

runner = CliRunner()


def _trained(root, tmp_path, seed=1):
    cfg = RunConfig.model_validate({
        "seed": seed, "data": {"dataset": "ids", "protocol": "random-split",
                               "data_dir": str(root), "dedup": True, "test_fraction": 0.3},
        "windows": {"window": 2}, "model": {"hidden_size": 8}, "train": {"epochs": 1}})
    result = train(task_for(cfg))
    return write_run(result, cfg, tmp_path / "run"), result


def test_evaluate_uses_the_recorded_split(id_dataset, tmp_path):
    run, result = _trained(id_dataset, tmp_path)
    split = json.loads((run / "metrics.json").read_text())
    recorded = result.bundle.metadata["split"]
    assert (recorded["seed"], recorded["protocol"], recorded["dedup"]) == (1, "random-split", True)
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run / "model.fedlstm"), "--data-dir", str(id_dataset), "--json", str(out)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    again = json.loads(out.read_text())
    assert (again["protocol"], again["seed"], again["dedup"]) == ("random-split", 1, True)
    first = split["evaluations"]["test"]["binary"]
    assert again["evaluations"]["test"]["binary"] == first  # the very same test records


def test_another_seed_is_flagged_as_scoring_training_records(id_dataset, tmp_path):
    run, result = _trained(id_dataset, tmp_path)
    done = runner.invoke(app, ["evaluate", str(run / "model.fedlstm"), "--data-dir",
                               str(id_dataset), "--seed", "0"])
    assert done.exit_code == 0 and "not the seed" in done.output
    trained_on = set(result.split.train.frame["id"]) | set(result.split.val.frame["id"])
    seed_0 = build_split(RunConfig.model_validate({"data": {
            "dataset": "ids", "protocol": "random-split", "data_dir": str(id_dataset),
            "dedup": True, "test_fraction": 0.3}}).data, seed=0)
    assert set(seed_0.tests["test"].frame["id"]) & trained_on  # what the warning is about
