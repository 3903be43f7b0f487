"""Flow schemas and the chunked reader: Zeek, CICFlowMeter, custom TOML, and every kind of bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from _detect_helpers import HEADER, SCHEMA_TOML, flow_lines, write_flows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlstm.config import DataConfig
from fedlstm.data.flows import FlowReader, read_flow_file
from fedlstm.data.flowschemas import SchemaError, infer_schema, load_schema
from fedlstm.data.io import DataFormatError
from fedlstm.data.readers import read_records
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split_from_files

ZEEK_HEADER = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#open\t2024-01-01-00-00-00
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents{labels}
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]{label_types}
"""


def zeek_row(i: int, label: str | None = None) -> str:
    host = f"192.168.1.{i % 3 + 1}"
    unset = i % 4 == 0  # no reply: duration and byte counts unset
    dur, ob, rb = ("-", "-", "-") if unset else (f"{0.1 * i:.3f}", str(40 * i), str(7 * i))
    row = "\t".join([f"{1.7e9 + i:.6f}", f"C{i}", host, str(40000 + i), "10.0.0.9", "80", "tcp",
                     "http" if i % 2 else "-", dur, ob, rb, "SF", "-", "-", "0", "ShADadFf",
                     str(i), str(60 * i), str(i), str(50 * i), "(empty)"])
    if label is not None:  # IoT-23 separates its appended label fields by three spaces
        row += f"   {label}   {'-' if label == 'Benign' else 'PartOfAHorizontalPortScan'}"
    return row


def write_zeek(path, n: int, labelled: bool, gz: bool = False, close: bool = True):
    labels = "   label   detailed-label" if labelled else ""
    text = ZEEK_HEADER.format(labels=labels, label_types="   string   string" if labelled else "")
    text += "".join(zeek_row(i, ("Malicious" if i % 3 == 0 else "Benign") if labelled else None)
                    + "\n" for i in range(n))
    if close:
        text += "#close\t2024-01-01-01-00-00\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_builtin_schemas_are_found_by_name_and_alias():
    assert get_spec("zeek-conn").format == "zeek" and get_spec("zeek").name == "zeek-conn"
    assert get_spec("cicflowmeter").label == "Label"
    assert get_spec("nsl-kdd").name == "nsl-kdd"  # the benchmark specs are untouched
    with pytest.raises(KeyError, match="zeek-conn"):
        get_spec("no-such-thing")


def test_labelled_zeek_log_gz_with_unset_fields(tmp_path):
    path = write_zeek(tmp_path / "conn.log.labeled.gz", 40, labelled=True, gz=True)
    recs, spec = read_flow_file(path, get_spec("zeek-conn"))
    assert len(recs) == 40
    assert spec.entity_column == "id.orig_h"
    assert set(recs.family) == {"normal", "partofahorizontalportscan"}
    assert recs.is_attack.sum() == 14  # i % 3 == 0 for i < 40
    assert recs.frame.loc[0, "duration"] == 0.0  # '-' read as 0, and counted
    reader = FlowReader(path, get_spec("zeek-conn"))
    chunks = list(reader)
    assert reader.report.filled["orig_bytes"] == 10 and reader.report.bad == 0
    assert chunks[0].lines[0] == 9  # 8 header lines before the first record
    assert chunks[0].entity[0] == "192.168.1.1"


def test_unlabelled_zeek_log_reads_for_scoring_but_not_training(tmp_path):
    path = write_zeek(tmp_path / "conn.log", 12, labelled=False, close=False)
    reader = FlowReader(path, get_spec("zeek-conn"))
    chunks = list(reader)
    assert sum(map(len, chunks)) == 12 and chunks[0].label is None
    with pytest.raises(DataFormatError, match="no label column"):
        read_flow_file(path, get_spec("zeek-conn"))


def test_concatenated_rotated_zeek_logs_restart_their_header(tmp_path):
    a = write_zeek(tmp_path / "a.log", 5, labelled=False)
    b = write_zeek(tmp_path / "b.log", 7, labelled=True)
    both = tmp_path / "both.log"
    both.write_text(a.read_text() + b.read_text())
    reader = FlowReader(both, get_spec("zeek-conn"))
    assert sum(map(len, reader)) == 12 and reader.report.bad == 0


def test_cicflowmeter_sample_resolves_columns_from_its_header(datasets_dir):
    path = datasets_dir / "cicids2017-sample" / "CICIDS2017_sample.csv"
    recs, spec = read_flow_file(path, get_spec("cicflowmeter"))
    assert len(recs) == 6311 and len(spec.feature_columns) == 77
    assert np.isfinite(recs.frame[spec.numeric_columns].to_numpy()).all()  # Infinity filled
    assert (recs.is_attack == 0).sum() == 227  # BENIGN


def test_custom_toml_schema_and_its_errors(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA_TOML)
    spec = get_spec(str(schema))
    assert spec.entity_column == "src" and "ts" in spec.ignore and spec.categorical == ["proto", "flag"]
    recs, resolved = read_flow_file(write_flows(tmp_path / "f.csv", 50), spec)
    assert resolved.feature_columns == ["bytes", "rate", "proto", "flag"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[schema]\nlabel = 3\n")
    with pytest.raises(SchemaError, match="bad.toml.*label"):
        load_schema(bad)
    bad.write_text("[schema\n")
    with pytest.raises(SchemaError, match="not valid TOML"):
        load_schema(bad)


def test_inferred_schema_loads_and_reads_its_file(tmp_path, datasets_dir):
    path = datasets_dir / "cicids2017-sample" / "CICIDS2017_sample.csv"
    out = tmp_path / "cic.toml"
    out.write_text(infer_schema(path))
    spec = load_schema(out)
    assert spec.label == "Label" and spec.normal_labels == ["BENIGN"]
    assert spec.fill_missing == 0.0  # the sample holds Infinity
    recs, resolved = read_flow_file(path, spec)
    assert len(recs) == 6311 and len(resolved.numeric_columns) == 77
    zeek = tmp_path / "z.toml"
    zeek.write_text(infer_schema(write_zeek(tmp_path / "conn.log", 30, labelled=True)))
    zspec = load_schema(zeek)
    assert (zspec.format, zspec.label, zspec.family_column, zspec.entity_column) == \
        ("zeek", "label", "detailed-label", "id.orig_h")
    assert len(read_flow_file(tmp_path / "conn.log", zspec)[0]) == 30


def test_split_from_files_carves_validation_from_training_only(tmp_path):
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    train, test = write_flows(tmp_path / "a.csv", 300), write_flows(tmp_path / "b.csv", 100, seed=1)
    split = build_split_from_files(spec, train, test, DataConfig(), seed=0)
    assert split.protocol == "files" and len(split.tests["test"]) == 100
    assert len(split.train) + len(split.val) == 300
    assert split.spec.family_order == ["normal", "dos", "scan"]
    random = build_split_from_files(spec, train, None, DataConfig(), seed=0)
    assert random.protocol == "random-split"
    assert len(random.train) + len(random.val) + len(random.tests["test"]) == 300


def test_reader_matches_read_records_on_nsl_kdd(datasets_dir):
    path = datasets_dir / "nsl-kdd" / "KDDTest-21.txt"
    spec = get_spec("nsl-kdd")
    expected = read_records(path, spec)
    got, _ = read_flow_file(path, spec, chunk_bytes=200_000)  # several chunks
    pd.testing.assert_frame_equal(got.frame, expected.frame, check_dtype=False)
    assert (got.family == expected.family).all() and (got.is_attack == expected.is_attack).all()


# ------------------------------------------------------------------ bad input

BAD_LINES = {
    "1,2,3": "expected 8 fields, found 3",
    "f,1,10.0.0.1,notanumber,0.5,tcp,SF,benign": "column 'bytes'",
    "f,1,10.0.0.1,NaN,0.5,tcp,SF,benign": "column 'bytes'",
    "f,1,10.0.0.1,inf,0.5,tcp,SF,benign": "column 'bytes'",
    "f,1,10.0.0.1,5,0.5,,SF,benign": "column 'proto'",
    "\x00\x01\x02garbage,,,,,,,": "binary data",
}


@pytest.mark.parametrize("line,reason", list(BAD_LINES.items()))
def test_bad_line_is_skipped_and_reported_or_fails_fast(tmp_path, line, reason):
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    lines = flow_lines(20)
    path = tmp_path / "f.csv"
    path.write_bytes(("\n".join([HEADER, *lines[:10], line, *lines[10:]]) + "\n").encode("latin-1"))
    reader = FlowReader(path, spec)
    assert sum(map(len, reader)) == 20
    assert reader.report.bad == 1
    described = reader.report.to_dict()["bad_examples"][0]
    assert described.startswith(f"{path}:12") and reason in described
    with pytest.raises(DataFormatError, match=f"{path}:12"):
        list(FlowReader(path, spec, strict=True))


def test_empty_truncated_and_binary_files_are_reported_never_crash(tmp_path):
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    reader = FlowReader(empty, spec)
    assert list(reader) == [] and "empty" in reader.report.errors[0]
    whole = write_flows(tmp_path / "f.csv.gz", 3000, gz=True).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    reader = FlowReader(cut, spec, chunk_bytes=4096)
    rows = sum(map(len, reader))
    assert 0 < rows < 3000 and "truncated" in reader.report.errors[0]
    with pytest.raises(DataFormatError, match="truncated"):
        list(FlowReader(cut, spec, strict=True))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)))
    reader = FlowReader(garbage, load_schema(tmp_path / "s.toml").model_copy(
        update={"columns": HEADER.split(","), "has_header": False}))
    assert sum(map(len, reader)) == 0 and reader.report.bad > 0


def test_chunking_does_not_change_what_is_read(tmp_path):
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    path = write_flows(tmp_path / "f.csv", 500, extra=["broken"] + flow_lines(5, seed=3))
    big = list(FlowReader(path, spec))
    small = list(FlowReader(path, spec, chunk_bytes=300))
    assert len(small) > 10
    pd.testing.assert_frame_equal(pd.concat([c.frame for c in big], ignore_index=True),
                                  pd.concat([c.frame for c in small], ignore_index=True))
    assert (np.concatenate([c.lines for c in big]) == np.concatenate([c.lines for c in small])).all()


_field = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-5, 10**12).map(str), st.sampled_from(["tcp", "udp", "", "-", '"', "x,y"]),
                   st.text(max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(st.lists(_field, min_size=0, max_size=10).map(",".join),
                               st.sampled_from(flow_lines(8))), max_size=25))
def test_reader_never_crashes_and_accounts_for_every_line(tmp_path, rows):
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    rows = [r.replace("\n", " ").replace("\r", " ") for r in rows]
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8", errors="replace")
    reader = FlowReader(path, spec, chunk_bytes=256)
    chunks = list(reader)
    n = sum(map(len, chunks))
    assert n + reader.report.bad + reader.report.blank == len(rows) or (not rows and reader.report.errors)
    for c in chunks:
        values = c.frame[["bytes", "rate"]].to_numpy()
        assert np.isfinite(values).all()  # never a silently wrong (NaN/Inf) feature


def test_empty_lines_are_skipped_not_malformed(tmp_path):
    """A trailing empty line stopped a strict read (train) with 'empty line'; a double-spaced
    export was refused as half malformed."""
    spec = load_schema((tmp_path / "s.toml").write_text(SCHEMA_TOML) and tmp_path / "s.toml")
    lines = flow_lines(20)
    path = tmp_path / "f.csv"
    path.write_text("\n\n".join([HEADER, *lines]) + "\n\n")
    reader = FlowReader(path, spec, strict=True)
    assert sum(map(len, reader)) == 20 and reader.report.bad == 0
    assert reader.report.to_dict()["blank_lines"] == 21
