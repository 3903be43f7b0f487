"""`fedlstm schema infer` drafts a schema whose every column carries why it got its role, and
`fedlstm schema show` explains each decision, also on a given file's header."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _flow_corpus import write_corpus  # noqa: E402

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_consoles")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=80)


def test_infer_drafts_the_pipe_export_without_leaking_its_labels(corpus, tmp_path):
    out = tmp_path / "psv.toml"
    r = runner.invoke(app, ["schema", "infer", str(corpus["pipe"].path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "Zeek conn.log's columns in a delimited export" in text  # the tool is recognised
    s = tomllib.loads(text)["schema"]
    assert (s["delimiter"], s["label"], s["family"], s["normal"]) == \
        ("|", "label", "detailed-label", ["Benign"])
    features = {*s["categorical"], *s["numeric"]}
    assert not features & {"label", "detailed-label", "ts", "uid", "id.orig_h", "id.orig_p",
                           "id.resp_h", "id.resp_p"}
    assert s["why"]["id.orig_p"].startswith("ignore: named like a port")


def test_show_explains_every_column_of_a_drafted_schema(corpus, tmp_path):
    out = tmp_path / "cic.toml"
    runner.invoke(app, ["schema", "infer", str(corpus["cic-2017"].path), "--out", str(out)])
    r = runner.invoke(app, ["schema", "show", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    row = next(ln for ln in lines if ln.startswith("│ Flow ID "))
    assert "ignore" in row and "named like a flow or record id" in row
    row = next(ln for ln in lines if ln.startswith("│ Source IP "))
    assert "entity" in row and "windows are formed per host" in row
    assert '"entity_column": "Source IP"' in r.output
    r = runner.invoke(app, ["schema", "show", str(out), "--json"])
    roles = {x["column"]: x for x in json.loads(r.output)["roles"]}
    assert roles["Label"]["role"] == "label" and roles["Destination Port"]["role"] == "ignore"
    assert roles["Flow Bytes/s"]["role"] == "numeric"


def test_show_on_a_file_names_the_spelling_found_and_what_is_missing(corpus, tmp_path):
    r = runner.invoke(app, ["schema", "show", "cicflowmeter", "--file",
                            str(corpus["cic-2017"].path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    roles = {x["column"]: x for x in doc["roles"]}
    assert doc["entity_column"] == "Src IP"
    assert "the file spells it 'Source IP'" in roles["Src IP"]["why"]
    bare = tmp_path / "bare.csv"
    bare.write_text("Flow Duration,Total Fwd Packets,Label\n1,2,BENIGN\n")
    r = runner.invoke(app, ["schema", "show", "cicflowmeter", "--file", str(bare)])
    assert r.exit_code == 0, r.output
    assert "no entity column 'Src IP' (nor 'Source IP'); windows follow file order" in r.output
    assert any(ln.startswith("│ Src IP ") and "absent" in ln for ln in r.output.splitlines())
    custom = tmp_path / "s.toml"
    custom.write_text('[schema]\nlabel = "Label"\nentity = "host"\n')
    r = runner.invoke(app, ["schema", "show", str(custom), "--file", str(bare)])
    assert r.exit_code == 2
    assert f"error: {bare}:1: no entity column 'host' in the file" in r.output


def test_infer_never_replaces_an_edited_draft_without_overwrite(corpus, tmp_path):
    """A second `schema infer --out` replaced the user's edits without a word."""
    out = tmp_path / "s.toml"
    args = ["schema", "infer", str(corpus["pipe"].path), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    out.write_text(out.read_text() + "# my edits\n")
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "pass --overwrite to replace it" in r.output
    assert out.read_text().endswith("# my edits\n")
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0 and "# my edits" not in out.read_text()
