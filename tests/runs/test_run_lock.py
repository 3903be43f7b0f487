"""Run directories are written under a lock: a second run on the same --out fails at once and
says why, and the first run's directory stays its own."""

from __future__ import annotations

import pytest
from filelock import FileLock, Timeout
from typer.testing import CliRunner

from fedlstm.cli import common
from fedlstm.cli.main import app
from fedlstm.runs.rundir import OutputBusy, output_lock, staged_dir

runner = CliRunner()


@pytest.fixture
def other_run(tmp_path):
    """`runs/r` as another process holds it: its lock taken, its earlier results in place."""
    out = tmp_path / "runs" / "r"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("theirs")
    with FileLock(tmp_path / "runs" / ".r.lock", timeout=0):
        yield out


def test_staged_dir_refuses_a_run_directory_another_run_holds(other_run):
    with pytest.raises(OutputBusy, match=f"{other_run} is being written by another fedlstm run"):
        with staged_dir(other_run, overwrite=True) as stage:
            (stage / "metrics.json").write_text("ours")
    assert (other_run / "metrics.json").read_text() == "theirs"
    assert sorted(p.name for p in other_run.parent.iterdir()) == [".r.lock", "r"]


def test_train_stops_before_training_when_its_out_is_held(other_run, monkeypatch):
    monkeypatch.setattr(common.console, "_width", 1000)
    r = runner.invoke(app, ["train", "--out", str(other_run), "--overwrite"])
    assert r.exit_code == 2
    assert r.output.splitlines() == [
        f"error: {other_run} is being written by another fedlstm run (it holds "
        f"{other_run.parent / '.r.lock'}); wait for it to finish, or choose another output"]
    assert (other_run / "metrics.json").read_text() == "theirs"


def test_the_lock_is_reentrant_in_a_process_and_leaves_no_file(tmp_path):
    out = tmp_path / "r"
    with output_lock(out):
        with staged_dir(out) as stage:  # takes the same lock again
            (stage / "x").write_text("1")
        with pytest.raises(Timeout):  # another process (here: another descriptor) cannot
            with FileLock(tmp_path / ".r.lock", timeout=0):
                raise AssertionError("acquired a held lock")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    assert (out / "x").read_text() == "1"
