"""Mistakes a user makes on the command line get a clear error before any work, naming what to
change, and never cost them a file: each case below used to crash with "unexpected X ... a bug",
run something else than asked, or delete or overwrite a file."""

from __future__ import annotations

import gzip
import os

import pytest
from typer.testing import CliRunner

from fedlstm.cli import common
from fedlstm.cli.main import app
from fedlstm.config import load_config
from fedlstm.runs.rundir import RunExists, check_out, staged_dir

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(common.console, "_width", 1000)


def _train(tmp_path, *args):
    return runner.invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "run"), *args])


@pytest.mark.parametrize("overrides, message", [
    (["--seed", "3", "--set", "seed.x=1"], "seed is a value, not a section"),
    (["--set", "train=3", "--set", "train.lr=0.1"], "train is a value, not a section"),
    (["--set", "train=3"], "train is a section of settings"),
    (["--set", "model.hidden_size=0"], "model.hidden_size"),
    (["--epochs", "0"], "--epochs (train.epochs): Input should be greater"),  # the typed option
    (["--set", "model.dropout=2"], "model.dropout"),
    (["--set", "train.fixed_threshold=5"], "train.fixed_threshold"),  # failed after training
    (["--set", "data.max_train_rows=-5"], "data.max_train_rows"),
    (["--set", "preprocess.feature_range=[1,0]"], "min < max"),  # trained inverted, silently
    (["--schema", "zeek-conn"], "--schema go with your own training files"),
    (["--detector", "hybrid", "--set", "train.dp=true"], "DP-SGD (train.dp, --dp) trains the "
                                                         "supervised LSTM only"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, overrides, message):
    r = _train(tmp_path, *overrides)
    assert r.exit_code != 0 and message in r.output, r.output
    assert "unexpected" not in r.output and not (tmp_path / "run").exists()


def test_a_test_file_without_training_files_is_refused_not_ignored(tmp_path):
    """It was ignored, and the run trained and tested on NSL-KDD instead."""
    flows = tmp_path / "flows.csv"
    flows.write_text("a,b\n1,2\n")
    r = _train(tmp_path, "--test-file", str(flows))
    assert r.exit_code != 0 and "add --train-file" in r.output, r.output
    with pytest.raises(ValueError, match="test_file .* train_files"):
        load_config(None, [f"data.test_file={flows}"])


@pytest.mark.parametrize("name, text, message", [
    ("bad.toml", "a = \n", "bad.toml: not valid TOML"),
    ("bad.json", '{"a":,}', "bad.json:1:6: not valid JSON"),
    ("list.json", "[1, 2]", "list.json: a configuration is a table of sections"),
    ("int.json", '{"train": 5}', "train is a"),  # then --epochs: train.epochs of a number
])
def test_a_broken_config_file_is_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    r = _train(tmp_path, "--config", str(path))
    assert r.exit_code != 0 and message in r.output, r.output


def test_clients_that_a_partition_would_ignore_are_refused(tmp_path):
    r = runner.invoke(app, ["federate", "--partition", "by:protocol_type", "--clients", "5",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--clients 5 does not apply" in r.output, r.output


@pytest.mark.parametrize("option", [["--read-timeout", "0"], ["--port", "99999"],
                                    ["--threads", "0"], ["--max-records", "0"]])
def test_serve_options_out_of_range_are_refused(tmp_path, option):
    r = runner.invoke(app, ["serve", str(tmp_path / "missing.fedlstm"), *option])
    assert r.exit_code != 0, r.output
    assert any(s in r.output for s in ("Invalid value", "--read-timeout 0")), r.output


def test_schema_infer_never_writes_over_its_input_and_names_a_truncated_file(tmp_path):
    flows = tmp_path / "flows.csv"
    flows.write_text("a,b,label\n1,x,benign\n2,y,dos\n")
    before = flows.read_text()
    r = runner.invoke(app, ["schema", "infer", str(flows), "--out", str(flows)])
    assert r.exit_code != 0 and "is an input of this command" in r.output
    assert flows.read_text() == before  # it was replaced by the draft
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(before.encode())[:12])
    r = runner.invoke(app, ["schema", "infer", str(cut)])
    assert r.exit_code != 0 and "cut.csv.gz: the compressed file is cut short" in r.output, \
        r.output  # was a bare "Aborted."
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,label\n")
    r = runner.invoke(app, ["schema", "infer", str(header_only)])
    assert r.exit_code != 0 and "header.csv: a header and no data rows" in r.output


def test_overwrite_replaces_only_a_run_directory(tmp_path, monkeypatch):
    """--overwrite deleted whatever folder --out named: the one holding the input files too."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.log").write_text("flows")
    with pytest.raises(RunExists, match="not a fedlstm run directory"):
        with staged_dir(data, overwrite=True):
            pass
    assert (data / "train.log").read_text() == "flows"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with staged_dir(run, overwrite=True) as stage:
        (stage / "metrics.json").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    monkeypatch.chdir(run)  # `--out .`: renaming the current folder failed after training
    with pytest.raises(RunExists, match="current folder"):
        check_out(run, overwrite=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunExists, match="is a file"):
        check_out(a_file, overwrite=True)
    assert os.path.exists(a_file)


def test_train_refuses_to_overwrite_a_folder_of_inputs_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["train", "--epochs", "1", "--out", str(data), "--overwrite"])
    assert r.exit_code != 0 and "not a fedlstm run directory" in r.output, r.output
    assert (data / "notes.txt").read_text() == "mine"


def test_an_unknown_name_is_printed_without_python_quotes(tmp_path):
    r = _train(tmp_path, "--dataset", "foo")
    assert r.exit_code != 0 and "error: unknown dataset 'foo'" in r.output, r.output
    assert "\"unknown" not in r.output  # str(KeyError) quoted the message


@pytest.mark.parametrize("args, message", [
    (["privacy-utility", "--epsilons", "0,inf"], "--epsilons '0': expected a number above 0"),
    (["privacy-utility", "--epsilons", "1,abc"], "--epsilons 'abc'"),
    (["robustness", "--shares", "0,1.5"], "--shares '1.5': expected a number in [0, 1)"),
    (["networks", "--networks", "nsl-kdd,kdd99", "--starve", "cic"], "--starve cic: not among"),
    (["networks", "--inputs", "nosuch"], "--inputs 'nosuch'"),
    (["networks", "--starve-fraction", "1.5"], "--starve-fraction 1.5"),
    (["networks", "--seeds", "a"], "--seeds 'a': expected an integer"),
    (["reproduce", "--profile", "quick", "--method", "nosuch"], "unknown method(s) nosuch; "
                                                                "methods: lstm"),
])
def test_study_options_are_checked_before_any_run(tmp_path, args, message):
    """Each of these ran federations first, then failed with a traceback from every site, a bare
    "'cic' is not in list", or "could not convert string to float"."""
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o" / "runs").exists()


def test_data_info_on_a_folder_without_the_dataset_exits_non_zero(tmp_path):
    """It listed every file as missing and exited 0, so a script checking for the data went on."""
    r = runner.invoke(app, ["data", "info", "nsl-kdd", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "no file of nsl-kdd in" in r.output and "fedlstm data fetch nsl-kdd --data-dir" in r.output


def test_two_reproduce_runs_on_one_folder_do_not_write_it_together(tmp_path):
    """reproduce took no lock: two runs wrote the same step and report files."""
    from filelock import FileLock

    from fedlstm.runs.rundir import lock_file

    out = tmp_path / "paper"
    with FileLock(lock_file(out), timeout=0):  # as another process would hold it
        r = runner.invoke(app, ["reproduce", "--profile", "quick", "--out", str(out)])
    assert r.exit_code == 2 and "is being written by another fedlstm run" in r.output, r.output
    assert not out.exists()
