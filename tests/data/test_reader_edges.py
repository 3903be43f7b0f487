"""Edges of both readers: unset labels, and a line with no end for 20 MiB."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedlstm.data.flows import FlowReader, label_arrays, read_flow_file, unset_labels
from fedlstm.data.flowschemas import load_schema
from fedlstm.data.io import BadLineError
from fedlstm.data.readers import find_bad_lines, read_records
from fedlstm.data.schemas import KDD99, NSL_KDD, UNSW_NB15

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _detect_helpers import HEADER, SCHEMA_TOML, flow_lines  # noqa: E402
from test_readers import kdd_fields, unsw_fields, write_lines  # noqa: E402

LONG = 20 << 20  # 20 MiB without a line end


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEMA_TOML)
    return load_schema(path)


def with_label(line: str, label: str) -> str:
    return line.rsplit(",", 1)[0] + "," + label


# ------------------------------------------------------------------ unset labels


@pytest.mark.parametrize("label", ["", "   "])
def test_unset_label_is_a_bad_line_for_training_never_an_attack(tmp_path, spec, label):
    lines = flow_lines(30)
    lines[3] = with_label(lines[3], label)  # physical line 5 (after the header)
    path = tmp_path / "f.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    with pytest.raises(BadLineError) as info:
        read_flow_file(path, spec)
    assert info.value.where == f"{path}:5: column 'label' (field 8): missing label {label!r}"
    recs, _ = read_flow_file(path, spec, lenient=True)
    assert len(recs) == 29 and recs.report.skipped[0].line == 5


def test_unset_label_rule_and_label_arrays_refusing_one(spec):
    zeek = spec.model_copy(update={"missing_values": ["-"], "normal_labels": ["benign"]})
    labels = np.array(["benign", "", " ", "-", "dos", None], object)
    assert unset_labels(zeek, labels).tolist() == [False, True, True, True, False, True]
    # A schema that names '-' a normal label keeps it.
    assert not unset_labels(zeek.model_copy(update={"normal_labels": ["-"]}), labels)[3]
    with pytest.raises(ValueError, match="2 unset label"):
        label_arrays(spec, np.array(["benign", "", "dos", " "], object), None)


@pytest.mark.parametrize("spec,label", [(NSL_KDD, " "), (NSL_KDD, "NULL"), (KDD99, ".")])
def test_blank_label_in_a_benchmark_file_is_an_error(tmp_path, spec, label):
    difficulty = 21 if spec is NSL_KDD else None
    rows = [kdd_fields(i, difficulty=difficulty) for i in range(4)]
    rows[2][spec.columns.index("label")] = label  # KDD99's '.' is its label suffix alone
    path = write_lines(tmp_path / "KDDTest+.txt", rows)
    with pytest.raises(BadLineError) as info:
        read_records(path, spec)
    assert info.value.where.startswith(f"{path}:3: column 'label' (field 42): missing value")
    assert len(read_records(path, spec, lenient=True)) == 3


@pytest.mark.parametrize("cat,flag,reason", [
    ("Exploits", "", "expected label 0 or 1, found ''"),
    ("Exploits", "yes", "expected label 0 or 1, found 'yes'"),
    ("", "1", "attack record (label 1) without an attack_cat value"),
])
def test_unsw_label_is_0_or_1_and_an_attack_names_its_category(tmp_path, cat, flag, reason):
    rows = [unsw_fields(0, "Normal", 0), unsw_fields(1, cat, 1), unsw_fields(2, "DoS", 1)]
    rows[1][UNSW_NB15.columns.index("label")] = flag
    path = write_lines(tmp_path / "u.csv", rows, header=",".join(UNSW_NB15.columns))
    with pytest.raises(BadLineError) as info:
        read_records(path, UNSW_NB15)
    assert info.value.where.startswith(f"{path}:3: column 'label'") and reason in info.value.where
    assert read_records(path, UNSW_NB15, lenient=True).is_attack.tolist() == [0, 1]


def test_numbers_pandas_refuses_are_found_with_their_line(tmp_path):
    rows = [kdd_fields(i) for i in range(3)]
    rows[1][NSL_KDD.columns.index("src_bytes")] = "1_000"  # Python's float() takes it
    path = write_lines(tmp_path / "KDDTrain+.txt", rows)
    with pytest.raises(BadLineError, match=r":2: column 'src_bytes' \(field 5\): expected a num"):
        read_records(path, NSL_KDD)


def test_a_long_value_is_cut_in_its_message(tmp_path, spec):
    lines = flow_lines(5)
    lines[2] = "f,1,10.0.0.1," + "9" * 30 + "z" * 5000 + ",0.5,tcp,SF,benign"
    path = tmp_path / "f.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    with pytest.raises(BadLineError) as info:
        list(FlowReader(path, spec, strict=True))
    assert info.value.where == (f"{path}:4: column 'bytes' (field 4): expected a number, found "
                                f"'{'9' * 30}{'z' * 10}...'")


# ------------------------------------------------------------------ a 20 MiB line


def long_line_file(path: Path, good: list[str], at: int, tail: list[str], end: bytes = b"\n"):
    with open(path, "wb") as fh:
        fh.write(("\n".join(good[:at]) + "\n").encode())
        fh.write(b"x" * LONG + end)
        if tail:
            fh.write(("\n".join(tail) + "\n").encode())
    return path


def test_flow_reader_reports_a_20_mib_line_with_bounded_memory(tmp_path, spec):
    lines = flow_lines(12)
    # header (1), 5 records (2-6), the long line (7), 5 records (8-12), a bad one (13), 1 (14)
    path = long_line_file(tmp_path / "f.csv", [HEADER, *lines[:5]], 6,
                          [*lines[5:10], "1,2,3", lines[10]])
    tracemalloc.start()
    try:
        reader = FlowReader(path, spec)
        chunks = list(reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # never the whole line (20 MiB)
    assert sum(map(len, chunks)) == 11 and reader.report.bad == 2
    lines_read = np.concatenate([c.lines for c in chunks]).tolist()
    assert lines_read == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 14]
    assert reader.report.to_dict()["bad_examples"] == [
        f"{path}:7: line longer than 1,048,576 bytes (no line end within it)",
        f"{path}:13: expected 8 fields, found 3"]
    with pytest.raises(BadLineError, match=f"{path}:7: line longer than"):
        list(FlowReader(path, spec, strict=True))


def test_flow_reader_long_last_line_without_end(tmp_path, spec):
    lines = flow_lines(3)
    path = long_line_file(tmp_path / "f.csv", [HEADER, *lines], 4, [], end=b"")
    reader = FlowReader(path, spec, chunk_bytes=1 << 16, max_line_bytes=1 << 16)
    assert sum(map(len, reader)) == 3
    assert reader.report.to_dict()["bad_examples"] == [
        f"{path}:5: line longer than 65,536 bytes (no line end within it)"]


def test_flow_reader_line_just_over_the_limit_inside_one_read(tmp_path, spec):
    lines = flow_lines(4)
    body = "\n".join([HEADER, lines[0], "y" * 5000, *lines[1:]]) + "\n"
    path = tmp_path / "f.csv"
    path.write_text(body)
    reader = FlowReader(path, spec, max_line_bytes=4096)  # the whole file is one read
    assert [c.lines.tolist() for c in reader] == [[2, 4, 5, 6]]
    assert reader.report.to_dict()["bad_examples"] == [
        f"{path}:3: line longer than 4,096 bytes (no line end within it)"]


def test_benchmark_reader_reports_a_20_mib_line(tmp_path):
    rows = [",".join(kdd_fields(i)) for i in range(6)]
    bad = kdd_fields(9)
    bad[NSL_KDD.columns.index("count")] = "many"
    # records 1-3, the long line (4), records 5-7, a bad value (8)
    path = long_line_file(tmp_path / "KDDTrain+.txt", rows, 3, [*rows[3:], ",".join(bad)])
    with pytest.raises(BadLineError) as info:
        read_records(path, NSL_KDD)
    assert info.value.where == (f"{path}:4: line longer than 1,048,576 characters (no line end "
                                "within it)")
    recs = read_records(path, NSL_KDD, lenient=True)
    assert len(recs) == 6
    assert [(b.line, b.column) for b in recs.report.skipped] == [(4, None), (8, "count")]
    assert [b.line for b in find_bad_lines(path, NSL_KDD, limit=None)] == [4, 8]
