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


def _trained(root, tmp_path, seed=1, **data):
    cfg = RunConfig.model_validate({
        "seed": seed, "data": {"dataset": "ids", "protocol": "random-split",
                               "data_dir": str(root), "dedup": True, "test_fraction": 0.3,
                               **data},
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


def test_evaluate_shows_gradient_boosting_trained_on_the_same_split(id_dataset, tmp_path,
                                                                   wide_consoles):
    """Every summary that shows accuracy shows gradient boosting beside it: evaluate trains it on
    the evaluated split's training records, with the run's settings (its config.json) or, for a
    bundle alone, the dataset's defaults; the bundle's window and task either way."""
    import shutil

    from fedlstm.tasks.centralised import baseline_on_split

    run, result = _trained(id_dataset, tmp_path)
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run / "model.fedlstm"), "--data-dir", str(id_dataset), "--json", str(out)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    again = json.loads(out.read_text())
    cfg = RunConfig.model_validate_json((run / "config.json").read_text())
    expected = baseline_on_split(cfg, result.split)["evaluations"]["test"]["binary"]
    assert again["baseline"]["method"] == "hgb" and "the same split" in again["baseline"]["on"]
    assert again["baseline"]["evaluations"]["test"]["binary"] == expected
    assert "test, hgb" in done.output
    alone = tmp_path / "alone" / "model.fedlstm"  # no config.json beside it
    alone.parent.mkdir()
    shutil.copy(run / "model.fedlstm", alone)
    done = runner.invoke(app, ["evaluate", str(alone), *args[2:]])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["baseline"]["evaluations"]["test"]["binary"]["n"] == \
        expected["n"]
    done = runner.invoke(app, [*args, "--no-baseline"])
    assert done.exit_code == 0, done.output
    assert "baseline" not in json.loads(out.read_text()) and "hgb" not in done.output


def test_evaluate_trains_its_baseline_on_the_runs_training_subsample(id_dataset, tmp_path):
    """A run on a subsample of the training rows (data.max_train_rows) had its bundle compared
    with gradient boosting trained on every training row."""
    from fedlstm.tasks.centralised import baseline_on_split

    run, result = _trained(id_dataset, tmp_path, max_train_rows=150)
    assert len(result.split.train) + len(result.split.val) == 150
    out = tmp_path / "eval.json"
    done = runner.invoke(app, ["evaluate", str(run / "model.fedlstm"), "--data-dir",
                               str(id_dataset), "--json", str(out)])
    assert done.exit_code == 0, done.output
    cfg = RunConfig.model_validate_json((run / "config.json").read_text())
    expected = baseline_on_split(cfg, result.split)["evaluations"]["test"]["binary"]
    assert json.loads(out.read_text())["baseline"]["evaluations"]["test"]["binary"] == expected


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


def test_evaluate_on_a_later_file_of_your_own_scores_what_a_time_split_tested(tmp_path):
    """`evaluate --test-file`: a bundle trained with --protocol time-split, scored on a file of
    the flows its split held out (the file's latest 20%), gets the run's own test scores; a
    family the model has no class for is scored as an attack, its family metrics left out."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
    from _detect_helpers import HEADER, SCHEMA_TOML, flow_lines, write_flows

    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    flows = write_flows(tmp_path / "flows.csv", 500, seed=3)
    later = tmp_path / "later.csv"
    later.write_text("\n".join([HEADER, *flow_lines(500, seed=3)[400:]]) + "\n")
    run = tmp_path / "run"
    done = runner.invoke(app, ["train", "--schema", str(schema), "--train-file", str(flows),
                               "--protocol", "time-split", "--window", "3", "--task", "family",
                               "--out", str(run), "--set", "train.epochs=1",
                               "--set", "model.hidden_size=8"])
    assert done.exit_code == 0, done.output
    trained = json.loads((run / "metrics.json").read_text())["evaluations"]["test"]
    out = tmp_path / "eval.json"
    done = runner.invoke(app, ["evaluate", str(run / "model.fedlstm"), "--test-file", str(later),
                               "--json", str(out)])
    assert done.exit_code == 0, done.output
    again = json.loads(out.read_text())
    assert again["protocol"] == "files" and again["test_files"] == [str(later)]
    assert again["evaluations"]["test"]["binary"] == trained["binary"]
    assert again["evaluations"]["test"]["family"] == trained["family"]
    assert "test: flagged by label: benign" in done.output
    assert "baseline" not in again and "no gradient-boosting reference" in done.output
    novel = tmp_path / "novel.csv"  # the same flows, the attacks renamed: a family it never saw
    novel.write_text(later.read_text().replace(",dos\n", ",exfil\n"))
    done = runner.invoke(app, ["evaluate", str(run / "model.fedlstm"), "--test-file", str(novel),
                               "--json", str(out)])
    assert done.exit_code == 0, done.output
    scored = json.loads(out.read_text())["evaluations"]["test"]
    assert scored["families_without_class"] == ["exfil"] and "family" not in scored
    assert scored["binary"] == trained["binary"]  # the model's scores do not depend on names
    assert "no class for the families ['exfil']" in done.output
    mixed = runner.invoke(app, ["evaluate", str(run / "model.fedlstm"), "--test-file",
                                str(later), "--seed", "2"])
    assert mixed.exit_code == 2 and "--seed choose a benchmark's split" in mixed.output


def test_evaluate_scores_the_runs_own_test_subsample(id_dataset, tmp_path):
    """A run with data.max_test_rows was re-evaluated on every test row, without a word: other
    numbers for 'the same' split."""
    cfg = RunConfig.model_validate({
        "seed": 1, "data": {"dataset": "ids", "data_dir": str(id_dataset), "max_test_rows": 120},
        "windows": {"window": 2}, "model": {"hidden_size": 8}, "train": {"epochs": 1}})
    run = write_run(train(task_for(cfg)), cfg, tmp_path / "run")
    first = json.loads((run / "metrics.json").read_text())["evaluations"]["test"]["binary"]
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run / "model.fedlstm"), "--data-dir", str(id_dataset), "--json", str(out)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "subsampled to at most 120 rows" in " ".join(done.output.split())
    again = json.loads(out.read_text())
    assert again["evaluations"]["test"]["binary"] == first and first["n"] == 120
    done = runner.invoke(app, [*args, "--max-test-rows", "0"])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["evaluations"]["test"]["binary"]["n"] == 300


def test_evaluate_on_a_file_with_a_bad_line_is_lenient_on_request(tmp_path):
    """evaluate --test-file stopped at a file's first malformed line, with no way to skip it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
    from _detect_helpers import HEADER, flow_lines, tiny_bundle

    _, _, bundle = tiny_bundle(tmp_path)
    later = tmp_path / "later.csv"
    later.write_text("\n".join([HEADER, *flow_lines(60, seed=4), "1,2,3",
                                *flow_lines(20, seed=5)]) + "\n")
    args = ["evaluate", str(bundle), "--test-file", str(later)]
    done = runner.invoke(app, args)
    assert done.exit_code == 2 and "pass --lenient to skip bad lines" in done.output
    out = tmp_path / "e.json"
    done = runner.invoke(app, [*args, "--lenient", "--json", str(out)])
    assert done.exit_code == 0, done.output
    assert json.loads(out.read_text())["evaluations"]["test"]["binary"]["n"] == 80
    done = runner.invoke(app, ["evaluate", str(bundle), "--lenient"])
    assert done.exit_code == 2 and "--lenient reads --test-file files" in done.output
