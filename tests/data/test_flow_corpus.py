"""Schema inference and reading on a corpus of small real-format flow logs (tests/data/_flow_corpus):
no label-like column and no identifier is ever drafted as a feature, missing tokens are
recognised, every file reads, and the built-in schemas find their columns under the tools'
header spellings or say which column is missing and where."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest
from _flow_corpus import CIC_IDS, write_corpus

from fedlstm.data.flows import FlowReader, TooManyBadLines, read_flow_file
from fedlstm.data.flowschemas import (
    SchemaError,
    draft_schema,
    explain_schema,
    infer_schema,
    load_schema,
)
from fedlstm.data.io import DataFormatError
from fedlstm.data.schemas import get_spec

N = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=N)


NAMES = ["zeek-tsv", "zeek-tsv-labelled", "zeek-json", "pipe", "cic-2017", "cic-v3", "nfdump",
         "argus", "netflow"]


@pytest.mark.parametrize("name", NAMES)
def test_inference_drafts_no_label_or_identifier_as_a_feature(corpus, name):
    f = corpus[name]
    schema, _ = draft_schema(f.path)
    features = {*schema["categorical"], *schema["numeric"]}
    assert not features & {c.strip() for c in f.labels}, "a label-like column became a feature"
    assert not features & {c.strip() for c in f.identifiers}, "an identifier became a feature"
    assert schema.get("entity") == f.entity
    if f.labels:
        assert schema["label"] == f.labels[0]
    assert set(schema["why"]) == {*schema["categorical"], *schema["numeric"], *schema["ignore"],
                                  *(schema[k] for k in ("label", "family", "time", "entity")
                                    if k in schema)}


@pytest.mark.parametrize("name", NAMES)
def test_every_corpus_file_reads_with_its_drafted_schema(corpus, name, tmp_path):
    f = corpus[name]
    toml = tmp_path / "s.toml"
    toml.write_text(infer_schema(f.path))
    spec = load_schema(toml)
    reader = FlowReader(f.path, spec)
    assert sum(map(len, reader)) == N and reader.report.bad == 0
    if f.labels:  # strict, labelled: as training reads it
        recs, resolved = read_flow_file(f.path, spec)
        assert len(recs) == N and 0 < recs.is_attack.sum() < N
        assert resolved.entity_column == f.entity


def test_missing_tokens_are_recognised_not_taken_for_text(corpus):
    # The pipe export writes '-' for an unset duration or byte count: still numbers.
    schema, notes = draft_schema(corpus["pipe"].path)
    assert {"duration", "orig_bytes", "resp_bytes"} <= set(schema["numeric"])
    # Zeek's columns, not Zeek's layout: `zeek-conn` is not offered for it (it was, "as it is")
    assert not [n for n in notes if "--schema zeek-conn" in n]
    assert any("delimited export" in n for n in notes)
    assert any("--schema zeek-conn" in n for n in draft_schema(corpus["zeek-tsv"].path)[1])
    assert schema["missing"] == ["-"] and schema["fill_missing"] == 0.0
    assert schema["family"] == "detailed-label" and "detailed-label" not in schema["ignore"]
    # Zeek's '(empty)' set and CICFlowMeter's NaN / Infinity rates.
    zeek, _ = draft_schema(corpus["zeek-tsv"].path)
    assert "tunnel_parents" in zeek["ignore"] and "(empty)" in zeek["missing"]
    cic, _ = draft_schema(corpus["cic-2017"].path)
    assert {"NaN", "Infinity"} <= set(cic["missing"]) and "Flow Bytes/s" in cic["numeric"]


def test_inference_on_a_file_with_empty_nan_and_infinity_cells(tmp_path):
    path = tmp_path / "f.csv"
    rows = [f"10.0.0.{i % 3},{i},{'' if i % 5 == 0 else i * 10},"
            f"{'NaN' if i % 7 == 0 else ('Infinity' if i % 11 == 0 else 0.5 * i)},tcp,benign"
            for i in range(1, 60)]
    path.write_text("src_ip,flow_id,bytes,rate,proto,class\n" + "\n".join(rows) + "\n")
    schema, _ = draft_schema(path)
    assert schema["numeric"] == ["bytes", "rate"] and schema["categorical"] == ["proto"]
    assert (schema["entity"], schema["label"], schema["ignore"]) == ("src_ip", "class", ["flow_id"])
    assert {"NaN", "Infinity"} <= set(schema["missing"]) and schema["fill_missing"] == 0.0
    toml = tmp_path / "s.toml"
    toml.write_text(infer_schema(path))
    recs, _ = read_flow_file(path, load_schema(toml))
    assert len(recs) == 59 and np.isfinite(recs.frame[["bytes", "rate"]].to_numpy()).all()


def test_zeek_json_reads_like_zeek_tsv_with_the_builtin_schema(corpus):
    spec = get_spec("zeek-conn")
    tsv = list(FlowReader(corpus["zeek-tsv"].path, spec))
    reader = FlowReader(corpus["zeek-json"].path, spec)
    json_chunks = list(reader)
    pd.testing.assert_frame_equal(pd.concat([c.frame for c in tsv], ignore_index=True),
                                  pd.concat([c.frame for c in json_chunks], ignore_index=True))
    assert (np.concatenate([c.entity for c in json_chunks]) ==
            np.concatenate([c.entity for c in tsv])).all()
    assert reader.report.filled["duration"] > 0  # left out of the JSON: unset, filled, counted
    recs, _ = read_flow_file(corpus["zeek-json"].path, spec)
    assert len(recs) == N and {"partofahorizontalportscan", "c&c"} <= set(recs.family)


def test_builtin_cicflowmeter_finds_the_host_under_either_spelling(corpus):
    spec = get_spec("cicflowmeter")
    for name, host in (("cic-2017", "Source IP"), ("cic-v3", "Src IP")):
        reader = FlowReader(corpus[name].path, spec)
        chunks = list(reader)
        assert reader.spec.entity_column == "Src IP" and reader.spec.time_column == "Timestamp"
        assert reader.match.renamed.get(host, "Src IP") == "Src IP"
        assert chunks[0].entity[0].startswith("192.168.1.")
        assert not set(CIC_IDS) & set(reader.spec.feature_columns)  # ids never features
        assert reader.report.notes == []
    # A bundle's spec, resolved on one tool version's header, reads the other's.
    _, resolved = read_flow_file(corpus["cic-v3"].path, spec)
    reader = FlowReader(corpus["cic-2017"].path, resolved)
    assert sum(map(len, reader)) == N and reader.spec.feature_columns == resolved.feature_columns


def test_an_absent_entity_or_time_column_is_an_error_naming_file_and_column(corpus, tmp_path):
    frame = pd.read_csv(corpus["cic-2017"].path, skipinitialspace=True)
    no_host = tmp_path / "no-host.csv"
    frame.drop(columns=["Source IP"]).to_csv(no_host, index=False)
    with pytest.raises(SchemaError, match=r"no-host\.csv.*no entity column 'Src IP'.*Source IP"):
        list(FlowReader(no_host, get_spec("cicflowmeter")))
    no_time = tmp_path / "no-time.csv"
    frame.drop(columns=["Timestamp"]).to_csv(no_time, index=False)
    with pytest.raises(SchemaError, match=r"no-time\.csv.*no time column 'Timestamp'"):
        read_flow_file(no_time, get_spec("cicflowmeter"))
    # A layout without any identifier column (CIC-IDS2017's MachineLearningCVE CSVs) reads, in
    # file order, and the report says so.
    bare = tmp_path / "bare.csv"
    frame.drop(columns=[c for c in CIC_IDS if c in frame]).to_csv(bare, index=False)
    reader = FlowReader(bare, get_spec("cicflowmeter"))
    assert sum(map(len, reader)) == N and reader.spec.entity_column is None
    assert any("no entity column 'Src IP'" in n for n in reader.report.notes)
    # A custom schema's entity column is required.
    toml = tmp_path / "s.toml"
    toml.write_text('[schema]\nlabel = "Label"\nentity = "host"\ntime = "Timestamp"\n')
    with pytest.raises(SchemaError, match=r"cic2017\.csv:1: no entity column 'host'"):
        list(FlowReader(corpus["cic-2017"].path, load_schema(toml)))


def test_nfdump_summary_trailer_ends_the_records(corpus, tmp_path):
    toml = tmp_path / "nf.toml"
    toml.write_text(infer_schema(corpus["nfdump"].path))
    spec = load_schema(toml)
    assert spec.stop_at == "Summary"
    recs, _ = read_flow_file(corpus["nfdump"].path, spec)  # strict: the trailer is no bad line
    assert len(recs) == N
    without = spec.model_copy(update={"stop_at": None})
    with pytest.raises(DataFormatError, match=f"nfcapd.csv:{N + 2}"):
        read_flow_file(corpus["nfdump"].path, without)


def test_explanations_name_each_column_role_and_why(corpus, tmp_path):
    rows = {r["column"]: r for r in explain_schema(get_spec("cicflowmeter"),
                                                   FlowReader(corpus["cic-2017"].path,
                                                              get_spec("cicflowmeter"))
                                                   .header_match())}
    assert rows["Src IP"]["role"] == "entity" and "'Source IP'" in rows["Src IP"]["why"]
    assert rows["Label"]["role"] == "label" and rows["Dst Port"]["role"] == "ignore"
    assert rows["Flow Duration"]["role"] == "numeric"
    toml = tmp_path / "pipe.toml"
    toml.write_text(infer_schema(corpus["pipe"].path))
    drafted = {r["column"]: r for r in explain_schema(load_schema(toml))}
    assert drafted["detailed-label"]["role"] == "family"
    assert "port" in drafted["id.resp_p"]["why"] and "unset" in drafted["duration"]["why"]
    assert list(drafted)[:3] == ["ts", "uid", "id.orig_h"]  # the file's order


def test_a_schema_naming_a_label_as_a_feature_is_refused(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('[schema]\nlabel = "label"\nnumeric = ["bytes", "label"]\n')
    with pytest.raises(SchemaError, match="'label' is the `label` column and also in `numeric`"):
        load_schema(toml)


def test_training_reads_fail_when_too_many_lines_are_bad(corpus, tmp_path):
    spec = get_spec("zeek-conn")
    with pytest.raises(TooManyBadLines, match="no line reads as schema 'zeek-conn'"):
        read_flow_file(corpus["cic-2017"].path, spec, lenient=True)
    lines = corpus["zeek-tsv-labelled"].path.read_text().splitlines()
    mixed = tmp_path / "mixed.log"
    head = [ln for ln in lines if ln.startswith("#")]
    data = [ln for ln in lines if not ln.startswith("#")]
    mixed.write_text("\n".join([*head[:-1], *data[:40], *["garbage"] * 60]) + "\n")
    with pytest.raises(TooManyBadLines, match=r"60 of 100 lines malformed.*`max_bad_share`"):
        read_flow_file(mixed, spec, lenient=True)
    recs, _ = read_flow_file(mixed, spec, lenient=True, max_bad_share=0.7)
    assert len(recs) == 40
    toml = tmp_path / "s.toml"
    toml.write_text(infer_schema(corpus["zeek-tsv-labelled"].path).replace(
        "[schema]", "[schema]\nmax_bad_share = 0.7"))
    assert tomllib.loads(toml.read_text())["schema"]["max_bad_share"] == 0.7
    assert len(read_flow_file(mixed, load_schema(toml), lenient=True)[0]) == 40
