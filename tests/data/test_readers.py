"""read_records / find_bad_lines on tiny files generated here in the real column layouts."""

from __future__ import annotations

import gzip
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedlstm.data import readers
from fedlstm.data.io import DataFormatError
from fedlstm.data.readers import find_bad_lines, read_records, remembered_reads
from fedlstm.data.schemas import KDD99, KDD_CATEGORICAL, KDD_FEATURES, NSL_KDD, UNSW_NB15

_CATEGORIES = {"protocol_type": ["tcp", "udp", "icmp"], "service": ["http", "private", "smtp"],
               "flag": ["SF", "S0", "REJ"]}


def kdd_fields(i: int, label: str = "normal", difficulty: int | None = 21) -> list[str]:
    """One valid KDD record: 41 features, the label and (NSL-KDD only) the difficulty."""
    fields = []
    for j, name in enumerate(KDD_FEATURES):
        if name in KDD_CATEGORICAL:
            fields.append(_CATEGORIES[name][i % 3])
        elif name.endswith("rate"):
            fields.append(f"{(i + j) % 100 / 100:.2f}")
        else:
            fields.append(str(i * 10 + j))
    fields.append(label)
    if difficulty is not None:
        fields.append(str(difficulty))
    return fields


def write_lines(path: Path, rows: list[list[str] | str], newline: str = "\n",
                header: str | None = None) -> Path:
    lines = ([header] if header is not None else []) + [
        r if isinstance(r, str) else ",".join(r) for r in rows]
    text = newline.join(lines) + newline
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_bytes(text.encode("utf-8-sig" if header is not None else "utf-8"))
    return path


def nsl_file(path: Path, labels: list[str]) -> Path:
    return write_lines(path, [kdd_fields(i, label) for i, label in enumerate(labels)])


LABELS = ["normal", "neptune", "satan", "guess_passwd", "buffer_overflow", "apache2", "mystery"]


def test_remembered_reads_parse_a_file_once_and_hand_out_copies(tmp_path, monkeypatch):
    path = nsl_file(tmp_path / "KDDTest+.txt", LABELS)
    parses = []
    parse = readers._parse
    monkeypatch.setattr(readers, "_parse", lambda *a: parses.append(a[0]) or parse(*a))
    monkeypatch.setattr(readers, "_remembered", None)  # the suite's own remembered reads (conftest)
    with remembered_reads():
        first = read_records(path, NSL_KDD)
        first.frame.iloc[0, 0] = -1.0  # callers change records in place (federation.attacks)
        first.is_attack[:] = 0
        with remembered_reads():  # nested: still the same memory
            second = read_records(path, NSL_KDD)
        assert len(parses) == 1
        assert second.frame.iloc[0, 0] != -1.0 and second.is_attack.sum() == len(LABELS) - 1
        read_records(path, NSL_KDD, lenient=True)  # another way of reading it: parsed again
        nsl_file(path, LABELS[:3])  # the file changed: parsed again
        assert len(read_records(path, NSL_KDD)) == 3 and len(parses) == 3
    read_records(path, NSL_KDD)  # after the block every read parses again
    read_records(path, NSL_KDD)
    assert len(parses) == 5


def test_nsl_kdd_round_trip(tmp_path):
    path = nsl_file(tmp_path / "KDDTest+.txt", LABELS)
    rec = read_records(path, NSL_KDD)

    assert len(rec) == len(LABELS) and rec.report.rows == len(LABELS)
    assert rec.report.skipped == [] and rec.report.path == path
    assert list(rec.frame.columns) == NSL_KDD.feature_columns  # no label, no difficulty
    assert "difficulty" not in rec.frame.columns and "label" not in rec.frame.columns
    for col in NSL_KDD.numeric_columns:
        assert rec.frame[col].dtype == np.float32
    assert list(rec.frame["protocol_type"]) == ["tcp", "udp", "icmp"] * 2 + ["tcp"]
    assert rec.frame["duration"].tolist() == [i * 10 for i in range(len(LABELS))]
    assert rec.frame["serror_rate"].iloc[1] == pytest.approx(0.25)
    assert list(rec.attack) == LABELS
    assert list(rec.family) == ["normal", "dos", "probe", "r2l", "u2r", "dos", "unknown"]
    assert rec.is_attack.dtype == np.int64
    assert rec.is_attack.tolist() == [0, 1, 1, 1, 1, 1, 1]


def test_take_keeps_rows_aligned(tmp_path):
    rec = read_records(nsl_file(tmp_path / "a.txt", LABELS), NSL_KDD)
    sub = rec.take(np.array([4, 1]))
    assert list(sub.attack) == ["buffer_overflow", "neptune"]
    assert sub.frame["duration"].tolist() == [40, 10] and list(sub.frame.index) == [0, 1]


@pytest.mark.parametrize("suffix", [".gz", ".zip"])
def test_compressed_inputs_read_transparently(tmp_path, suffix):
    plain = nsl_file(tmp_path / "KDDTest+.txt", LABELS)
    if suffix == ".gz":
        path = tmp_path / "KDDTest+.txt.gz"
        path.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        path = tmp_path / "KDDTest+.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(plain, "KDDTest+.txt")
    rec, ref = read_records(path, NSL_KDD), read_records(plain, NSL_KDD)
    assert rec.frame.equals(ref.frame)
    assert list(rec.attack) == LABELS and rec.is_attack.tolist() == ref.is_attack.tolist()
    assert find_bad_lines(path, NSL_KDD) == []


def test_zip_with_several_members_is_refused(tmp_path):
    path = tmp_path / "both.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", ",".join(kdd_fields(0)) + "\n")
        zf.writestr("b.txt", ",".join(kdd_fields(1)) + "\n")
    with pytest.raises(DataFormatError):
        read_records(path, NSL_KDD)


def test_kdd99_label_suffix_is_stripped(tmp_path):
    labels = ["normal.", "smurf.", "ipsweep.", "snmpgetattack.", "normal."]
    path = write_lines(tmp_path / "corrected.gz",
                       [kdd_fields(i, label, difficulty=None) for i, label in enumerate(labels)])
    rec = read_records(path, KDD99)
    assert list(rec.attack) == ["normal", "smurf", "ipsweep", "snmpgetattack", "normal"]
    assert list(rec.family) == ["normal", "dos", "probe", "r2l", "normal"]
    assert rec.is_attack.tolist() == [0, 1, 1, 1, 0]
    assert list(rec.frame.columns) == KDD99.feature_columns


def unsw_fields(i: int, cat: str, label: int) -> list[str]:
    fields = []
    for name in UNSW_NB15.columns:
        if name == "id":
            fields.append(str(i + 1))
        elif name in UNSW_NB15.categorical:
            fields.append({"proto": "tcp", "service": "-", "state": "FIN"}[name])
        elif name == "attack_cat":
            fields.append(cat)
        elif name == "label":
            fields.append(str(label))
        else:
            fields.append(f"{i}.{len(fields)}")
    return fields


UNSW_ROWS = [("Normal", 0), ("Exploits", 1), ("Reconnaissance", 1), (" Fuzzers ", 1), ("", 0)]


def unsw_file(path: Path, rows=UNSW_ROWS, extra: dict[int, list[str] | str] | None = None) -> Path:
    lines: list[list[str] | str] = [unsw_fields(i, c, lab) for i, (c, lab) in enumerate(rows)]
    for index, line in (extra or {}).items():
        lines.insert(index, line)
    # As published: UTF-8 BOM, a header row, CRLF line ends.
    return write_lines(path, lines, newline="\r\n", header=",".join(UNSW_NB15.columns))


def test_unsw_header_bom_and_attack_cat(tmp_path):
    path = unsw_file(tmp_path / "UNSW_NB15_testing-set.csv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfid,dur,")
    rec = read_records(path, UNSW_NB15)
    assert len(rec) == len(UNSW_ROWS)
    assert list(rec.frame.columns) == UNSW_NB15.feature_columns
    assert not {"id", "attack_cat", "label"} & set(rec.frame.columns)
    assert list(rec.attack) == ["Normal", "Exploits", "Reconnaissance", "Fuzzers", "Normal"]
    assert list(rec.family) == ["normal", "exploits", "reconnaissance", "fuzzers", "normal"]
    assert rec.is_attack.tolist() == [0, 1, 1, 1, 0]
    assert rec.frame["dur"].iloc[2] == pytest.approx(2.1)


def test_unsw_bad_line_number_counts_the_header(tmp_path):
    bad = unsw_fields(9, "DoS", 1)
    bad[UNSW_NB15.columns.index("sbytes")] = "lots"
    path = unsw_file(tmp_path / "u.csv", extra={2: bad})  # third record: physical line 4
    with pytest.raises(DataFormatError) as info:
        read_records(path, UNSW_NB15)
    assert f"{path}:4: column 'sbytes'" in str(info.value)


def test_wrong_field_count_names_file_and_line(tmp_path):
    rows = [kdd_fields(i) for i in range(5)]
    rows[2] = rows[2][:-1]
    path = write_lines(tmp_path / "KDDTrain+.txt", rows)
    with pytest.raises(DataFormatError) as info:
        read_records(path, NSL_KDD)
    message = str(info.value)
    assert f"{path}:3" in message
    assert "expected 43 fields, found 42" in message
    assert "lenient" in message


def test_record_cut_mid_line_is_an_error(tmp_path):
    text = "\n".join(",".join(kdd_fields(i)) for i in range(3))
    path = tmp_path / "KDDTrain+.txt"
    path.write_text(text[:-6])  # an interrupted copy: the last record stops mid-field
    with pytest.raises(DataFormatError, match=r":3: expected 43 fields"):
        read_records(path, NSL_KDD)


def test_extra_field_is_an_error_too(tmp_path):
    rows = [kdd_fields(i) for i in range(4)]
    rows[3] = rows[3] + ["7"]
    path = write_lines(tmp_path / "KDDTrain+.txt", rows)
    with pytest.raises(DataFormatError, match=r":4: expected 43 fields, found 44"):
        read_records(path, NSL_KDD)


def test_text_in_numeric_field_names_line_and_column(tmp_path):
    rows = [kdd_fields(i) for i in range(4)]
    rows[1][KDD_FEATURES.index("src_bytes")] = "abc"
    path = write_lines(tmp_path / "KDDTest+.txt", rows)
    with pytest.raises(DataFormatError) as info:
        read_records(path, NSL_KDD)
    message = str(info.value)
    assert f"{path}:2: column 'src_bytes' (field 5): expected a number, found 'abc'" in message
    [bad] = find_bad_lines(path, NSL_KDD)
    assert (bad.line, bad.column) == (2, "src_bytes")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", ""])
def test_missing_or_non_finite_number_is_an_error(tmp_path, value):
    rows = [kdd_fields(i) for i in range(4)]
    rows[3][KDD_FEATURES.index("count")] = value
    path = write_lines(tmp_path / "KDDTest+.txt", rows)
    with pytest.raises(DataFormatError) as info:
        read_records(path, NSL_KDD)
    assert f"{path}:4" in str(info.value) and "'count'" in str(info.value)


@pytest.mark.parametrize("column", ["service", "label"])
def test_missing_category_or_label_is_an_error(tmp_path, column):
    rows = [kdd_fields(i) for i in range(3)]
    rows[1][NSL_KDD.columns.index(column)] = ""
    path = write_lines(tmp_path / "KDDTest+.txt", rows)
    with pytest.raises(DataFormatError, match=rf":2: column '{column}'.*missing value"):
        read_records(path, NSL_KDD)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty"):
        read_records(path, NSL_KDD)


def test_header_only_file_has_no_records(tmp_path):
    path = write_lines(tmp_path / "u.csv", [], newline="\r\n", header=",".join(UNSW_NB15.columns))
    with pytest.raises(DataFormatError, match=r"no records|empty"):
        read_records(path, UNSW_NB15)


def test_truncated_gzip_is_reported(tmp_path):
    rng = random.Random(1)
    rows = [kdd_fields(rng.randrange(10**6), rng.choice(LABELS)) for _ in range(300)]
    whole = gzip.compress(("\n".join(",".join(r) for r in rows) + "\n").encode())
    assert len(whole) > 1000
    path = tmp_path / "KDDTrain+.txt.gz"
    path.write_bytes(whole[:-100])
    with pytest.raises(DataFormatError, match="truncated or corrupt") as info:
        read_records(path, NSL_KDD)
    assert str(path) in str(info.value)
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        find_bad_lines(path, NSL_KDD)


def test_gzip_bytes_under_a_text_name_are_reported(tmp_path):
    path = tmp_path / "KDDTest+.txt"  # compressed, but named as plain text
    path.write_bytes(gzip.compress(("\n".join(",".join(kdd_fields(i)) for i in range(50))).encode()))
    with pytest.raises(DataFormatError) as info:
        read_records(path, NSL_KDD)
    assert str(path) in str(info.value)


def test_lenient_skips_and_reports_bad_lines(tmp_path, caplog):
    rows: list[list[str]] = [kdd_fields(i, LABELS[i % len(LABELS)]) for i in range(8)]
    rows[1] = rows[1][:40]  # line 2: too few fields
    rows[4][KDD_FEATURES.index("dst_bytes")] = "inf"  # line 5
    rows[6][KDD_FEATURES.index("duration")] = "x"  # line 7
    path = write_lines(tmp_path / "KDDTest+.txt", rows)

    assert len(find_bad_lines(path, NSL_KDD)) == 1  # strict scan stops at the first
    assert [b.line for b in find_bad_lines(path, NSL_KDD, limit=None)] == [2, 5, 7]
    with pytest.raises(DataFormatError, match=":2:"):
        read_records(path, NSL_KDD)

    rec = read_records(path, NSL_KDD, lenient=True)
    skipped = rec.report.skipped
    assert [(b.line, b.column) for b in skipped] == [(2, None), (5, "dst_bytes"), (7, "duration")]
    assert "found 40" in skipped[0].reason and "inf" in skipped[1].reason
    assert rec.report.rows == len(rec) == 5
    assert rec.frame["duration"].tolist() == [0, 20, 30, 50, 70]
    assert list(rec.attack) == [LABELS[i] for i in (0, 2, 3, 5, 7 % len(LABELS))]
    assert "skipped 3 malformed line(s)" in caplog.text
    assert skipped[2].describe(path).startswith(f"{path}:7: column 'duration'")


def test_lenient_with_header_skips_the_right_lines(tmp_path):
    bad = unsw_fields(9, "DoS", 1)[:-3]
    path = unsw_file(tmp_path / "u.csv", extra={1: bad})  # physical line 3
    rec = read_records(path, UNSW_NB15, lenient=True)
    assert [b.line for b in rec.report.skipped] == [3]
    assert list(rec.attack) == ["Normal", "Exploits", "Reconnaissance", "Fuzzers", "Normal"]
