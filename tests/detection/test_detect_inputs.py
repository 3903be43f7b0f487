"""What `fedlstm detect` takes and gives: outputs that would destroy an input are refused, pipes
are read and written as pipes, every named input must exist, values the service refuses are
reported, and an alert says what the model really said and what pushed towards it."""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from _detect_helpers import HEADER, flow_lines, tiny, tiny_bundle, tiny_model  # noqa: F401
from typer.testing import CliRunner

from fedlstm.cli import common
from fedlstm.cli.main import app
from fedlstm.data.io import open_binary
from fedlstm.detection import ModelBundle
from fedlstm.detection.stream import AlertWriter, detect

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(common.console, "_width", 1000)


def _flows(path, n=60, extra=None):
    path.write_text("\n".join([HEADER, *flow_lines(n), *(extra or [])]) + "\n")
    return path


@pytest.mark.parametrize("which", ["--out", "--summary-json"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tiny, tmp_path, which):
    src = _flows(tmp_path / "in.csv")
    before = src.read_text()
    r = runner.invoke(app, ["detect", str(tiny[2]), str(src), which, str(src)])
    assert r.exit_code != 0 and "is an input of this command" in r.output, r.output
    assert src.read_text() == before  # it was replaced by the alerts (or the summary)


def test_two_outputs_naming_one_file_and_an_output_folder_are_refused(tiny, tmp_path):
    src = _flows(tmp_path / "in.csv")
    same = tmp_path / "x.jsonl"
    r = runner.invoke(app, ["detect", str(tiny[2]), str(src), "--out", str(same),
                            "--summary-json", str(same)])
    assert r.exit_code != 0 and "name the same file" in r.output and not same.exists()
    r = runner.invoke(app, ["detect", str(tiny[2]), str(src), "--out", str(tmp_path)])
    assert r.exit_code != 0 and "is a folder" in r.output


def test_evaluate_json_onto_the_bundle_is_refused(tiny, tmp_path):
    bundle = tmp_path / "model.fedlstm"
    bundle.write_bytes(tiny[2].read_bytes())
    r = runner.invoke(app, ["evaluate", str(bundle), "--test-file", str(tiny[1]),
                            "--json", str(bundle)])
    assert r.exit_code != 0 and "is an input of this command" in r.output, r.output
    ModelBundle.load(bundle)  # still a bundle, not metrics


def test_a_missing_input_among_several_fails_before_anything_is_scored(tiny, tmp_path):
    src = _flows(tmp_path / "in.csv")
    out = tmp_path / "alerts.jsonl"
    r = runner.invoke(app, ["detect", str(tiny[2]), str(src), str(tmp_path / "typo.csv"),
                            "--out", str(out)])
    assert r.exit_code == 2 and "typo.csv: no such file" in r.output, r.output
    assert not out.exists()


def test_a_folder_is_read_file_by_file(tiny, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    _flows(folder / "a.csv", 40)
    _flows(folder / "b.csv", 30)
    r = runner.invoke(app, ["detect", str(tiny[2]), str(folder), "--summary-json",
                            str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())["records"] == 70


def test_a_folders_files_of_another_format_are_skipped_and_named(tiny, tmp_path):
    """A log folder also holds a README and other logs (Zeek writes dns.log beside conn.log):
    the README stopped the run, after the first file, and its alerts were lost."""
    folder = tmp_path / "logs"
    folder.mkdir()
    _flows(folder / "a.csv", 40)
    (folder / "README.txt").write_text("rotated daily by cron\n")
    (folder / "dns.log").write_text("ts,query,answer\n1,example.com,192.0.2.1\n")
    _flows(folder / "z.csv", 30)
    r = runner.invoke(app, ["detect", str(tiny[2]), str(folder), "--summary-json",
                            str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["records"] == 70 and len(summary["files"]) == 2
    assert [s.split(":")[1].strip() for s in summary["skipped_files"]] == [
        str(folder / "README.txt"), str(folder / "dns.log")]
    assert "skipped, not a 'tiny-flows' flow file" in r.output
    # a file the user named is read as a flow file, or the run stops
    r = runner.invoke(app, ["detect", str(tiny[2]), str(folder / "a.csv"),
                            str(folder / "dns.log")])
    assert r.exit_code == 2 and "header lacks column(s)" in r.output, r.output
    # a folder with no flow file at all
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.txt").write_text("nothing here\n")
    r = runner.invoke(app, ["detect", str(tiny[2]), str(tmp_path / "docs")])
    assert r.exit_code == 2 and "no record parsed" in r.output, r.output


def test_the_histories_kept_are_the_users_to_bound(tiny, tmp_path):
    src = _flows(tmp_path / "a.csv", 40)  # four hosts, interleaved
    for bound, evicted in ((1, True), (4, False)):
        r = runner.invoke(app, ["detect", str(tiny[2]), str(src), "--max-entities", str(bound),
                                "--summary-json", str(tmp_path / f"s{bound}.json")])
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / f"s{bound}.json").read_text())
        assert (summary["evicted_entities"] > 0) == evicted, summary


@pytest.mark.parametrize("gz", [False, True])
def test_standard_input_is_read_once_plain_or_gzipped(tiny, tmp_path, gz):
    text = ("\n".join([HEADER, *flow_lines(50)]) + "\n").encode()
    cmd = [sys.executable, "-m", "fedlstm.cli", "detect", str(tiny[2]), "-", "--summary-json",
           str(tmp_path / "s.json")]
    done = subprocess.run(cmd, input=gzip.compress(text) if gz else text, capture_output=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "s.json").read_text())["records"] == 50


def test_open_binary_reads_a_gzipped_pipe():
    read_end, write_end = os.pipe()
    data = gzip.compress(b"a,b\n1,2\n")
    threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end))).start()
    with open_binary(f"/proc/self/fd/{read_end}") as fh:
        assert fh.read() == b"a,b\n1,2\n"
    os.close(read_end)


def test_alerts_to_a_fifo_go_through_it_and_it_stays_a_fifo(tiny, tmp_path):
    src = _flows(tmp_path / "in.csv")
    fifo = tmp_path / "alerts.fifo"
    os.mkfifo(fifo)
    got = {}

    def read():
        with open(fifo) as fh:
            got["lines"] = fh.read().splitlines()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    r = runner.invoke(app, ["detect", str(tiny[2]), str(src), "--out", str(fifo),
                            "--all-records"])
    reader.join(30)
    if reader.is_alive() and stat.S_ISFIFO(os.stat(fifo).st_mode):  # nothing wrote into it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # it was renamed over: a regular file, unread
    assert len(got["lines"]) == 60


def test_values_the_service_refuses_are_reported_with_file_and_line(tiny, tiny_model, tmp_path):
    lines = flow_lines(20)
    cells = lines[7].split(",")
    cells[3] = "-500"  # bytes: a count (never negative in training)
    lines[7] = ",".join(cells)
    src = tmp_path / "odd.csv"
    src.write_text("\n".join([HEADER, *lines]) + "\n")
    summary = detect(tiny_model, [src], None).to_dict()
    assert summary["invalid_values"] == {"bytes: negative": 1}  # the service: 422
    assert summary["invalid_examples"][0].startswith(f"{src}:9: column 'bytes': -500 is negative")
    assert summary["records"] == 20  # reported, and still scored


def test_a_hybrid_family_alert_names_the_familys_own_probability(tmp_path):
    from _detect_helpers import SCHEMA_TOML, write_flows

    from fedlstm.config import RunConfig
    from fedlstm.data.flowschemas import load_schema
    from fedlstm.data.splits import build_split_from_files
    from fedlstm.tasks import task_for
    from fedlstm.tasks.centralised import train

    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    flows = write_flows(tmp_path / "flows.csv", 600)
    cfg = RunConfig.model_validate({"data": {"dataset": str(schema)}, "detector": "hybrid",
                                    "windows": {"window": 2},
                                    "model": {"hidden_size": 8, "task": "family"},
                                    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01}})
    split = build_split_from_files(load_schema(schema), flows, None, cfg.data, seed=0)
    model = train(task_for(cfg), split).bundle
    out = tmp_path / "alerts.jsonl"
    with open(out, "w") as fh:
        detect(model, [flows], AlertWriter(fh, "jsonl", model.class_names))
    known = [a for a in map(json.loads, out.read_text().splitlines())
             if a.get("fired") == "known attack"]
    assert known
    for a in known:
        probs, family = a["probabilities"], a["predicted"]
        # "known attack: dos (p = 0.69)" read as P(dos) = 0.69 where P(dos) was 0.22
        match = re.fullmatch(rf"known attack: {family} \(p\(attack\) = ([0-9.]+), "
                             rf"p\({family}\) = ([0-9.]+)\)", a["reason"])
        assert match, a["reason"]
        assert float(match[1]) == pytest.approx(1 - probs["normal"], abs=0.006)
        assert float(match[2]) == pytest.approx(probs[family], abs=0.006)


def test_top_features_are_what_pushed_towards_the_alert(tiny_model, tiny):
    """Ranked by |contribution|, an alert could be explained by features that all argued
    against it; the first listed is now the largest push towards it."""
    from fedlstm.detection.stream import StreamScorer

    flows = tiny[1]
    import pandas as pd

    frame = pd.read_csv(flows)
    scorer = StreamScorer(tiny_model, explain_top=4)
    scores = scorer.score(frame[["bytes", "rate", "proto", "flag"]],
                          frame["src"].to_numpy(object))
    assert scores.top_features
    for top in scores.top_features.values():
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
    assert np.mean([top[0][1] > 0 for top in scores.top_features.values()]) > 0.9


def test_evaluate_names_a_dataset_of_other_columns_and_a_bad_protocol(tiny):
    """A pandas KeyError listing 41 columns, and "the bundle was trained under protocol
    'nosuch'" for the user's own typo."""
    r = runner.invoke(app, ["evaluate", str(tiny[2]), "--dataset", "nsl-kdd", "--protocol",
                            "official"])
    assert r.exit_code != 0 and "--dataset nsl-kdd: its records have other columns" in r.output
    r = runner.invoke(app, ["evaluate", str(tiny[2]), "--dataset", "nsl-kdd", "--protocol",
                            "nosuch"])
    assert r.exit_code != 0 and "--protocol 'nosuch': use official or random-split" in r.output
