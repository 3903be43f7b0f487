"""Exit codes tell the truth: `fedlstm detect` and `fedlstm train` stop with a non-zero exit when
no line of a file parses (a file of another format) or when more than the allowed share of its
lines is malformed, and every hint names an option the command has."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from _detect_helpers import HEADER, flow_lines, tiny  # noqa: F401
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.config import RunConfig
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split_from_files
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import _flow_corpus as corpus_module  # noqa: E402

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_consoles")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return corpus_module.write_corpus(tmp_path_factory.mktemp("corpus"), n=200)


@pytest.fixture(scope="module")
def zeek_bundle(corpus, tmp_path_factory) -> Path:
    """A small model trained with the built-in zeek-conn schema on an IoT-23-style conn.log."""
    cfg = RunConfig.model_validate({"data": {"dataset": "zeek-conn"}, "detector": "supervised",
                                    "windows": {"window": 2}, "model": {"hidden_size": 8},
                                    "train": {"epochs": 2, "batch_size": 32}})
    split = build_split_from_files(get_spec("zeek-conn"), corpus["zeek-tsv-labelled"].path, None,
                                   cfg.data, seed=0)
    return train(task_for(cfg), split).bundle.save(tmp_path_factory.mktemp("zeek") / "z.fedlstm")


def options_named(output: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", output))


def command_options(name: str) -> set[str]:
    import typer
    command = typer.main.get_command(app).commands[name]
    return {o for p in command.params for o in p.opts}


def test_a_zeek_bundle_on_a_file_of_another_format_exits_non_zero(zeek_bundle, corpus, tmp_path):
    out, summary = tmp_path / "alerts.jsonl", tmp_path / "s.json"
    ok = runner.invoke(app, ["detect", str(zeek_bundle), str(corpus["zeek-tsv"].path),
                             "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    for other in ("cic-2017", "nfdump", "pipe"):
        r = runner.invoke(app, ["detect", str(zeek_bundle), str(corpus[other].path), "--out",
                                str(out), "--summary-json", str(summary)])
        assert r.exit_code == 2, r.output
        assert "no line reads as schema 'zeek-conn' (zeek)" in r.output
        assert f"schema infer {corpus[other].path.name}" in r.output
        assert options_named(r.output) <= command_options("detect")
    # The zeek bundle reads Zeek's JSON logs too.
    r = runner.invoke(app, ["detect", str(zeek_bundle), str(corpus["zeek-json"].path),
                            "--summary-json", str(summary)])
    assert r.exit_code == 0, r.output
    assert json.loads(summary.read_text())["records"] == 200


def test_more_than_the_allowed_share_of_bad_lines_exits_non_zero(tiny, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join([HEADER, *flow_lines(40), *["x,y"] * 60]) + "\n")
    r = runner.invoke(app, ["detect", str(tiny[2]), str(path)])
    assert r.exit_code == 2
    assert "60 of 100 lines malformed (60.0%), more than the 50% allowed" in r.output
    assert "--max-bad-share" in r.output and options_named(r.output) <= command_options("detect")
    r = runner.invoke(app, ["detect", str(tiny[2]), str(path), "--max-bad-share", "0.7"])
    assert r.exit_code == 0, r.output
    assert "40 records" in r.output


def test_detect_with_nothing_parsed_exits_non_zero(tiny, tmp_path):
    empty = tmp_path / "header-only.csv"
    empty.write_text(HEADER + "\n")
    out = tmp_path / "alerts.jsonl"
    r = runner.invoke(app, ["detect", str(tiny[2]), str(empty), "--out", str(out)])
    assert r.exit_code == 2
    assert "no record parsed in 1 input file(s) with the bundle's schema 'tiny-flows'" in r.output
    assert not out.exists()  # a failed run writes nothing


def test_train_on_a_file_of_another_format_exits_non_zero_naming_real_options(corpus, tmp_path):
    for extra in ([], ["--set", "data.lenient=true"]):
        r = runner.invoke(app, ["train", "--schema", "zeek-conn", "--train-file",
                                str(corpus["cic-2017"].path), "--out", str(tmp_path / "run"),
                                *extra])
        assert r.exit_code == 2, r.output
        assert "cic2017.csv" in r.output and not (tmp_path / "run").exists()
        assert options_named(r.output) <= command_options("train")
        assert "--strict" not in r.output
    assert "no line reads as schema 'zeek-conn'" in r.output
    strict = runner.invoke(app, ["train", "--schema", "zeek-conn", "--train-file",
                                 str(corpus["cic-2017"].path), "--out", str(tmp_path / "run")])
    assert "the first record of the file: is it a zeek file of schema 'zeek-conn'?" in \
        strict.output
    assert "--set data.lenient=true" in strict.output


def test_detect_summary_says_when_a_layout_lacks_the_host_column(tiny, corpus, tmp_path):
    import pandas as pd
    bare = tmp_path / "bare.csv"
    frame = pd.read_csv(corpus["cic-2017"].path, skipinitialspace=True)
    frame.drop(columns=[c for c in corpus_module.CIC_IDS if c in frame]).to_csv(bare, index=False)
    cfg = RunConfig.model_validate({"data": {"dataset": "cicflowmeter"}, "detector": "supervised",
                                    "windows": {"window": 2}, "model": {"hidden_size": 8},
                                    "train": {"epochs": 1}})
    # Trained with per-host windows on CICFlowMeter-V3 output, then given a CIC-IDS2017 file
    # whose layout has no identifiers: it is scored, in file order, and the summary says so.
    split = build_split_from_files(get_spec("cicflowmeter"), corpus["cic-v3"].path, None,
                                   cfg.data, seed=0)
    model = train(task_for(cfg), split).bundle
    assert model.spec.entity_column == "Src IP"
    bundle = model.save(tmp_path / "cic.fedlstm")
    summary = tmp_path / "s.json"
    r = runner.invoke(app, ["detect", str(bundle), str(bare), "--summary-json", str(summary)])
    assert r.exit_code == 0, r.output
    assert "no entity column 'Src IP' (nor 'Source IP'); windows follow file order" in r.output
    assert json.loads(summary.read_text())["files"][0]["notes"]
    r = runner.invoke(app, ["detect", str(bundle), str(corpus["cic-2017"].path)])
    assert r.exit_code == 0 and "no entity column" not in r.output  # 'Source IP': the host
