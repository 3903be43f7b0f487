"""Damaged or odd input files: a gzip cut short gives every record before the cut, a repeated
header name is said, a schema's delimiter is one character, and a split of a small site works."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from fedlstm.data.flows import FlowReader, read_flow_file
from fedlstm.data.flowschemas import SchemaError, infer_schema, load_schema
from fedlstm.data.io import BadLineError, DataFormatError
from fedlstm.data.splits import stratified_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _detect_helpers import HEADER, SCHEMA_TOML, flow_lines  # noqa: E402


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEMA_TOML)
    return load_schema(path)


def test_a_cut_gzip_gives_every_record_before_the_cut(spec, tmp_path):
    """A read of a chunk that hit the cut dropped every byte it had decoded: half the records
    of a 20,000-line log, all of a small one, and the error named the wrong line."""
    text = ("\n".join([HEADER, *flow_lines(20_000)]) + "\n").encode()
    cut = gzip.compress(text)[:int(0.7 * len(gzip.compress(text)))]
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    whole_lines = readable.count(b"\n") - 1  # the header's line; the last one may be cut
    reader = FlowReader(path, spec)
    rows = sum(len(c) for c in reader)
    assert rows == whole_lines
    assert reader.report.errors and f"after line {whole_lines + 1}" in reader.report.errors[0]


def test_a_header_naming_a_column_twice_is_said(spec, tmp_path, caplog):
    """The first copy is read; nothing said so, and a port column was read as bytes."""
    header = HEADER.replace("flow_id", "bytes")  # field 1 is now also "bytes"
    path = tmp_path / "dup.csv"
    lines = [line.split(",", 1)[1] for line in flow_lines(200)]  # numbers in field 1
    path.write_text("\n".join([header, *(f"{i},{rest}" for i, rest in enumerate(lines))]) + "\n")
    with caplog.at_level(logging.WARNING):
        read_flow_file(path, spec)
    assert f"{path}:1: the header names 'bytes' 2 times (fields 1, 4)" in caplog.text


def test_a_file_without_its_header_is_named_as_such(spec, tmp_path):
    """The error listed pandas' renamings of the first record ('0', '0.1') as the header."""
    path = tmp_path / "noheader.csv"
    first = flow_lines(1)[0].split(",")
    first[4] = first[3]  # two equal fields, which pandas would rename (305.9, 305.9.1)
    path.write_text("\n".join([",".join(first), *flow_lines(50)]) + "\n")
    with pytest.raises(SchemaError) as caught:
        read_flow_file(path, spec)
    message = str(caught.value)
    assert "'305.9', '305.9'," in message and "305.9.1" not in message, message
    assert "looks like a record" in message and "header = false" in message


def test_a_schema_delimiter_is_one_character(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEMA_TOML.replace('format = "csv"', 'format = "csv"\ndelimiter = ";;"'))
    with pytest.raises(SchemaError, match="delimiter"):  # accepted, then a crash when reading
        load_schema(path)


def test_a_small_site_splits_without_stratifying_and_an_empty_one_is_named():
    """12 records of 4 kinds: scikit-learn refused a stratified 10% ("test_size = 2 should be
    greater or equal to the number of classes"), and the site failed every round."""
    strata = np.array(["normal"] * 6 + ["dos"] * 3 + ["probe"] * 2 + ["r2l"])
    rest, taken = stratified_indices(strata, 0.1, seed=0)
    assert len(taken) == 2 and len(rest) == 10 and not set(rest) & set(taken)
    rest, taken = stratified_indices(np.array(["a"] * 50 + ["b"] * 50), 0.1, seed=0)
    assert sorted(np.unique(np.array(["a"] * 50 + ["b"] * 50)[taken], return_counts=True)[1]) \
        == [5, 5]  # stratified where it can be
    with pytest.raises(ValueError, match="1 record"):
        stratified_indices(np.array(["a"]), 0.1, seed=0)


def test_a_headerless_file_for_a_schema_of_named_columns_says_so(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text('[schema]\nname = "s"\nformat = "csv"\nlabel = "Label"\n'
                      'normal = ["BENIGN"]\ncategorical = ["proto"]\nnumeric = ["dur", "bytes"]\n')
    path = tmp_path / "flows.csv"
    path.write_text("0,0,tcp,DoS\n1.5,20,udp,BENIGN\n")
    with pytest.raises(SchemaError, match=r"found \['0', '0', 'tcp', 'DoS'\]; the first line "
                                          r"looks like a record .*header = false"):
        read_flow_file(path, load_schema(schema))


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def test_a_line_with_quotes_has_its_fields_counted_too(spec, tmp_path):
    """A line holding a '"' skipped the field count: pandas dropped an extra field or padded a
    short line, and its values moved to other columns (a count became the label) unreported."""
    lines = flow_lines(30)
    fields = lines[4].split(",")
    lines[4] = ",".join([*fields[:5], f'"{fields[5]}"', "999", *fields[6:]])  # one field more
    lines[9] = '"one quoted field"'
    lines[14] = lines[14].replace(",tcp,", ',"t,cp",').replace(",udp,", ',"u,dp",')  # delimiter
    path = _csv(tmp_path / "quoted.csv", lines)
    reader = FlowReader(path, spec, strict=False)
    rows = sum(len(chunk) for chunk in reader)
    assert [b.describe(path) for b in reader.report.examples] == [
        f"{path}:6: expected 8 fields, found 9", f"{path}:11: expected 8 fields, found 1"]
    assert rows == 28 and reader.report.bad == 2
    with pytest.raises(BadLineError, match=r"quoted.csv:6: expected 8 fields, found 9"):
        read_flow_file(path, spec)


@pytest.mark.parametrize("suffix, compress", [(".bz2", bz2.compress), (".xz", lzma.compress),
                                              (".csv", bz2.compress)])  # told by their bytes
def test_bz2_and_xz_files_are_read_like_plain_ones(spec, tmp_path, suffix, compress):
    """They stopped with 'unexpected Error ... a bug' (xz) or read the compressed bytes as the
    header (bz2)."""
    text = ("\n".join([HEADER, *flow_lines(40)]) + "\n").encode()
    plain = tmp_path / "plain.csv"
    plain.write_bytes(text)
    packed = tmp_path / f"flows{suffix}"
    packed.write_bytes(compress(text))
    assert read_flow_file(packed, spec)[0].frame.equals(read_flow_file(plain, spec)[0].frame)
    assert "numeric" in infer_schema(packed)


@pytest.mark.parametrize("encode, message", [
    (lambda t: t.replace("\n", "\r").encode(), "end in a carriage return alone"),
    (lambda t: t.encode("utf-16"), "the text is UTF-16"),
])
def test_files_that_are_not_lines_of_utf8_say_what_to_do(spec, tmp_path, encode, message):
    """A classic-Mac file stopped with 'unexpected Error ... a bug' in train, detect and schema
    infer; UTF-16 crashed schema infer, which detect's own error message recommended."""
    path = tmp_path / "odd.csv"
    path.write_bytes(encode("\n".join([HEADER, *flow_lines(20)]) + "\n"))
    with pytest.raises(DataFormatError, match=f"odd.csv:1: .*{message}"):
        read_flow_file(path, spec)
    with pytest.raises(SchemaError, match=f"odd.csv:1: .*{message}"):
        infer_schema(path)


def test_schema_infer_reads_past_a_short_line(tmp_path):
    """A comment line in the middle (padded with NaN) crashed it with a TypeError."""
    lines = flow_lines(40)
    lines.insert(10, "# exported by a tool")
    assert 'label = "label"' in infer_schema(_csv(tmp_path / "c.csv", lines))


def test_a_zeek_log_with_a_byte_order_mark_is_read(tmp_path):
    """It was refused ('expected 23 fields, found 1'), TSV and JSON alike."""
    from _flow_corpus import flows, zeek_json, zeek_tsv  # noqa: PLC0415

    from fedlstm.data.schemas import get_spec

    for write in (lambda p, r: zeek_tsv(p, r, labelled=True), zeek_json):
        path = write(tmp_path / "conn.log", flows(30))  # labelled: training reads it
        n = len(read_flow_file(path, get_spec("zeek-conn"))[0])
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert len(read_flow_file(path, get_spec("zeek-conn"))[0]) == n == 30


def test_a_carriage_return_inside_a_line_is_named(spec, tmp_path):
    """pandas ended a line there, and the reason given was 'unbalanced quotes?'."""
    lines = flow_lines(20)
    lines[3] = lines[3].replace(",tcp,", ",t\rcp,").replace(",udp,", ",u\rdp,")
    path = tmp_path / "cr.csv"
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode())
    reader = FlowReader(path, spec, strict=False)
    assert sum(map(len, reader)) == 19
    assert [b.describe(path) for b in reader.report.examples] == [
        f"{path}:5: a carriage return inside the line (a file written in text mode on Windows "
        "ends its lines in \\r\\r\\n)"]


def test_normal_labels_match_whatever_their_case(spec, tmp_path):
    """'Normal', 'NORMAL' and ' normal' were counted as attacks where the schema says 'normal'
    (here 'benign'): evaluate and detect scored a good model as raising false alarms."""
    from fedlstm.data.flows import label_arrays

    _, family, is_attack = label_arrays(spec, np.array(["benign", "Benign", "BENIGN", " benign",
                                                        "dos", "DoS"], object), None)
    assert is_attack.tolist() == [0, 0, 0, 0, 1, 1]
    assert family.tolist()[:4] == ["normal"] * 4


def test_schema_infer_names_numbers_written_in_a_locale(tmp_path):
    """'1,234' and '0,125' were drafted as 'text ...: an identifier or free text'."""
    rng = np.random.default_rng(0)
    rows = [f'{i},"{int(b):,}",{d:.3f}'.replace(f"{d:.3f}", f'"{d:.3f}"'.replace(".", ","))
            + f",{'benign' if i % 3 else 'dos'}"
            for i, (b, d) in enumerate(zip(rng.integers(1, 90_000, 200), rng.random(200)))]
    path = tmp_path / "locale.csv"
    path.write_text("\n".join(["id,bytes,duration,label", *rows]) + "\n")
    text = infer_schema(path)
    assert 'bytes = "ignore: numbers written with thousands separators' in text
    assert 'duration = "ignore: numbers written with thousands separators or decimal commas' in text


def test_bytes_that_are_not_utf8_are_said_once_with_their_line(spec, tmp_path):
    """They became U+FFFD ('t\\ufffdp') without a word: a category never seen in training."""
    lines = flow_lines(30)
    path = tmp_path / "latin1.csv"
    lines[7] = lines[7].replace(",SF,", ",SF\xe9,").replace(",S0,", ",S0\xe9,")
    lines[20] = lines[20].replace(",SF,", ",SF\xe9,").replace(",S0,", ",S0\xe9,")
    body = "\n".join([HEADER, *lines]) + "\n"
    path.write_bytes(body.encode("latin-1"))
    reader = FlowReader(path, spec, strict=False)
    sum(map(len, reader))
    assert [n for n in reader.report.notes if "not UTF-8" in n] == [
        f"{path}:9: bytes that are not UTF-8 (the first of them here) are read as U+FFFD; a file "
        "exported as Latin-1 or Windows-1252 reads right once converted, e.g. `iconv -f "
        "WINDOWS-1252 -t UTF-8`"]


def test_files_joined_with_cat_read_past_their_repeated_headers(spec, tmp_path):
    """Each repeated header was a bad line: "column 'bytes' ... expected a number, found
    'bytes'"."""
    path = tmp_path / "joined.csv"
    path.write_text("\n".join([HEADER, *flow_lines(30), HEADER, *flow_lines(20, seed=2),
                               HEADER, *flow_lines(10, seed=3)]) + "\n")
    reader = FlowReader(path, spec, strict=True)
    assert sum(map(len, reader)) == 60 and reader.report.bad == 0
    assert [n for n in reader.report.notes if "header line again" in n] == [
        f"{path}:32: the header line again (files joined with cat?): skipped, as every repeat "
        "of it"]
