"""`fedlstm detect` outputs: staged and moved into place, locked against a second run, and unset
labels kept out of the labelled-input figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _detect_helpers import HEADER, flow_lines, tiny, tiny_model  # noqa: F401
from filelock import FileLock
from typer.testing import CliRunner

from fedlstm.cli import common
from fedlstm.cli.main import app
from fedlstm.detection.stream import detect

runner = CliRunner()


def flows(path: Path, n: int = 60, seed: int = 0, extra: list[str] | None = None) -> Path:
    path.write_text("\n".join([HEADER, *flow_lines(n, seed), *(extra or [])]) + "\n")
    return path


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Messages on one line each, so that they can be compared whole."""
    monkeypatch.setattr(common.console, "_width", 1000)


@pytest.fixture
def earlier(tmp_path):
    """An output folder holding the alerts and summary of an earlier run."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "alerts.jsonl").write_text("EARLIER\n")
    (folder / "summary.json").write_text('{"earlier": true}')
    return folder


def detect_args(bundle, inputs, folder):
    return ["detect", str(bundle), *map(str, inputs), "--out", str(folder / "alerts.jsonl"),
            "--summary-json", str(folder / "summary.json"), "--all-records"]


def test_success_replaces_both_files_and_leaves_nothing_else(tiny, tmp_path, earlier):
    src = flows(tmp_path / "in.csv")
    os.chmod(earlier / "alerts.jsonl", 0o640)
    r = runner.invoke(app, detect_args(tiny[2], [src], earlier))
    assert r.exit_code == 0, r.output
    alerts = [json.loads(x) for x in (earlier / "alerts.jsonl").read_text().splitlines()]
    assert len(alerts) == json.loads((earlier / "summary.json").read_text())["scored"] > 0
    assert {a["file"] for a in alerts} == {str(src)}
    assert os.stat(earlier / "alerts.jsonl").st_mode & 0o777 == 0o640  # its mode is kept
    assert sorted(p.name for p in earlier.iterdir()) == ["alerts.jsonl", "summary.json"]


def test_a_failed_run_leaves_the_earlier_files_and_no_partial_one(tiny, tmp_path, earlier):
    src = flows(tmp_path / "in.csv", 200, extra=["1,2,3"])  # alerts are written before line 202
    r = runner.invoke(app, [*detect_args(tiny[2], [src], earlier), "--strict"])
    assert r.exit_code == 2 and f"{src}:202: expected 8 fields" in r.output
    assert (earlier / "alerts.jsonl").read_text() == "EARLIER\n"
    assert (earlier / "summary.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in earlier.iterdir()) == ["alerts.jsonl", "summary.json"]


def test_an_interrupted_run_leaves_the_earlier_files(tiny, tmp_path, earlier, monkeypatch):
    def interrupted(model, inputs, writer, **kwargs):
        writer.write({"file": "x", "alert": True})
        writer.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr("fedlstm.detection.stream.detect", interrupted)
    r = runner.invoke(app, detect_args(tiny[2], [flows(tmp_path / "in.csv")], earlier))
    assert r.exit_code in (1, 130)  # click: Aborted!
    assert (earlier / "alerts.jsonl").read_text() == "EARLIER\n"
    assert sorted(p.name for p in earlier.iterdir()) == ["alerts.jsonl", "summary.json"]


@pytest.mark.parametrize("held", ["alerts.jsonl", "summary.json"])
def test_an_output_another_run_is_writing_is_refused(tiny, tmp_path, earlier, held):
    other = FileLock(earlier / f".{held}.lock", timeout=0)  # what the other run holds
    with other:
        r = runner.invoke(app, detect_args(tiny[2], [flows(tmp_path / "in.csv")], earlier))
    assert r.exit_code == 2
    assert (f"error: {earlier / held} is being written by another fedlstm run (it holds "
            f"{earlier / f'.{held}.lock'}); wait for it to finish, or choose another output"
            ) in r.output
    assert (earlier / "alerts.jsonl").read_text() == "EARLIER\n"
    assert (earlier / "summary.json").read_text() == '{"earlier": true}'


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_follow_writes_a_partial_file_and_moves_it_into_place_when_stopped(tiny, tmp_path, earlier,
                                                                           stop):
    """A real second process: it follows a log until SIGTERM (a service manager's stop) or
    SIGHUP (its terminal closed: the alerts stayed in the partial file) while another run on
    the same --out is refused; its alerts then replace the earlier ones."""
    src = flows(tmp_path / "live.csv", 40)
    follower = subprocess.Popen(
        [sys.executable, "-m", "fedlstm.cli", *detect_args(tiny[2], [src], earlier), "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "1000"})
    try:
        deadline = time.monotonic() + 120
        partial: list[Path] = []
        while time.monotonic() < deadline and follower.poll() is None:
            partial = list(earlier.glob(".alerts.jsonl.*.partial"))
            if partial and partial[0].stat().st_size:  # flushed after every chunk
                break
            time.sleep(0.2)
        assert partial, follower.communicate(timeout=10)
        assert (earlier / "alerts.jsonl").read_text() == "EARLIER\n"  # not yet moved

        second = runner.invoke(app, detect_args(tiny[2], [flows(tmp_path / "b.csv")], earlier))
        assert second.exit_code == 2 and "is being written by another fedlstm run" in second.output

        with src.open("a") as fh:  # the log grows; the follower scores it
            fh.write("\n".join(flow_lines(20, seed=5)) + "\n")
        time.sleep(2)
        follower.send_signal(stop)
        _, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert f"following {src} (Ctrl-C to stop); alerts go to {partial[0]} until then, and to " \
           f"{earlier / 'alerts.jsonl'} after" in err
    alerts = [json.loads(x) for x in (earlier / "alerts.jsonl").read_text().splitlines()]
    assert {a["file"] for a in alerts} == {str(src)} and max(a["line"] for a in alerts) == 61
    assert json.loads((earlier / "summary.json").read_text())["records"] == 60
    assert sorted(p.name for p in earlier.iterdir()) == ["alerts.jsonl", "summary.json"]


def test_unset_labels_are_scored_but_left_out_of_the_labelled_figures(tiny_model, tmp_path):
    lines = flow_lines(80)
    for i in (10, 11, 40):
        lines[i] = lines[i].rsplit(",", 1)[0] + ","  # no label
    path = tmp_path / "f.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    summary = detect(tiny_model, [path], None).to_dict()
    assert summary["records"] == 80 and summary["unlabelled"] == 3
    counts = summary["labelled"]
    assert counts["tp"] + counts["fp"] + counts["tn"] + counts["fn"] == summary["scored"] - 3


def test_follow_tails_the_last_file_and_reads_the_others_first(tiny_model, tmp_path):
    """--follow tailed every input: the first file was followed until the stop, and the files
    after it were read only then (the help says: the last file)."""
    first, last = flows(tmp_path / "a.csv", seed=1), flows(tmp_path / "b.csv", seed=2)
    live, files_read_when_stop_asked = [], []

    def stop() -> bool:  # asked only while a followed file is at its end
        files_read_when_stop_asked.append(len(live[-1].files) if live else 0)
        return True

    summary = detect(tiny_model, [first, last], None, follow=True, stop=stop, poll_seconds=0.01,
                     on_chunk=live.append)
    assert files_read_when_stop_asked[0] == 1  # the first file was read whole, not followed
    assert [f["file"] for f in summary.files] == [str(first), str(last)]


def test_the_labelled_summary_gives_the_fpr_and_names_an_unusable_model(tiny, tmp_path):
    """It gave accuracy, precision and recall only, and no warning for a model that flags most
    normal traffic (which `train` and `evaluate` call unusable)."""
    _, _, bundle = tiny
    swapped = []  # every attack labelled benign and every benign record an attack
    for line in flow_lines(300, seed=4):
        rest, label = line.rsplit(",", 1)
        swapped.append(f"{rest},{'dos' if label == 'benign' else 'benign'}")
    path = tmp_path / "swapped.csv"
    path.write_text("\n".join([HEADER, *swapped]) + "\n")
    summary = tmp_path / "s.json"
    r = runner.invoke(app, ["detect", str(bundle), str(path), "--summary-json", str(summary)])
    assert r.exit_code == 0, r.output
    lab = json.loads(summary.read_text())["labelled"]
    assert lab["fpr"] == lab["fp"] / (lab["fp"] + lab["tn"]) > 0.5
    out = " ".join(r.output.split())
    assert f"FPR {lab['fpr']:.4f}" in out
    assert f"the model flags {lab['fpr']:.0%} of the normal traffic: it is not usable" in out


def test_the_summary_goes_into_place_after_the_alerts(tiny, tmp_path, monkeypatch):
    """The summary was renamed into place while the alerts were still being written: an
    interrupted run could leave a new summary beside the earlier alerts."""
    from fedlstm.runs import rundir

    _, _, bundle = tiny
    order, real = [], os.replace
    monkeypatch.setattr(rundir.os, "replace", lambda a, b: (order.append(Path(b).name),
                                                            real(a, b)))
    r = runner.invoke(app, ["detect", str(bundle), str(flows(tmp_path / "f.csv")),
                            "--out", str(tmp_path / "a.jsonl"),
                            "--summary-json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert order == ["a.jsonl", "s.json"]
