"""Read dataset files (plain, .gz, .zip) into typed frames, with errors that name file, line and column.

The fast path is pandas' C parser. Only when it fails or yields missing / non-finite values do we
re-scan the file in Python to find where the problem is, so good files pay nothing for the checks.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fedlstm.data.io import BadLineError, DataFormatError, file_key, open_text
from fedlstm.data.spec import NORMAL_FAMILY, DatasetSpec

log = logging.getLogger(__name__)


# A longer line is malformed (a record is a few hundred bytes): it is read in pieces and dropped,
# never held whole, and counts as one bad line.
MAX_LINE_CHARS = 1 << 20
# Cells pandas reads as missing (its default na_values): a label or category among them is unset.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                       "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                       "nan", "null"})


def shown(value: object, limit: int = 40) -> str:
    """A value read from a file, quoted for a message: cut to `limit` characters, so that a
    message names a cell and never carries a whole record."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass
class BadLine:
    line: int  # 1-based physical line, header included
    column: str | None  # column name, or None for a wrong field count
    reason: str
    field: int | None = None  # 1-based position of `column` in the record

    def describe(self, path: Path) -> str:
        where = f"{path}:{self.line}"
        if self.column:
            where += f": column '{self.column}'" + (f" (field {self.field})" if self.field else "")
        return f"{where}: {self.reason}"


@dataclass
class ReadReport:
    path: Path
    rows: int = 0
    skipped: list[BadLine] = field(default_factory=list)


@dataclass
class Records:
    """Parsed records of one file with the labels derived from them (row order = file order)."""

    frame: pd.DataFrame  # feature columns only
    attack: np.ndarray  # attack name per row ("normal" for benign)
    family: np.ndarray  # attack family per row
    is_attack: np.ndarray  # int64 0/1
    report: ReadReport
    # Origin of each row when records of several sources are pooled: windows never cross it.
    segment: np.ndarray | None = None
    # Each row's position in arrival (file) order, where rows were regrouped (by entity);
    # None: row order is arrival order. The time-split protocol cuts on it.
    arrival: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def arrival_order(self) -> np.ndarray:
        return np.arange(len(self)) if self.arrival is None else np.asarray(self.arrival)

    def take(self, idx: np.ndarray) -> Records:
        return Records(self.frame.iloc[idx].reset_index(drop=True), self.attack[idx],
                       self.family[idx], self.is_attack[idx], self.report,
                       None if self.segment is None else self.segment[idx],
                       None if self.arrival is None else self.arrival[idx])


def concat_records(parts: list[Records]) -> Records:
    """Pool records of several sources (e.g. sites): windows never cross from one source to the
    next, nor between the segments (e.g. entities) a source already had. In arrival order the
    sources follow one another, in the order given."""
    segment = [np.full(len(p), i << 32, np.int64) if p.segment is None
               else np.asarray(p.segment, np.int64) + (i << 32) for i, p in enumerate(parts)]
    offsets = np.cumsum([0, *(len(p) for p in parts[:-1])])
    arrival = [p.arrival_order() + o for p, o in zip(parts, offsets)]
    return Records(pd.concat([p.frame for p in parts], ignore_index=True),
                   np.concatenate([p.attack for p in parts]),
                   np.concatenate([p.family for p in parts]),
                   np.concatenate([p.is_attack for p in parts]), parts[0].report,
                   np.concatenate(segment), np.concatenate(arrival))


def _dtypes(spec: DatasetSpec) -> dict[str, object]:
    text = {*spec.categorical, spec.label, *spec.ignore}
    if spec.family_column:
        text.add(spec.family_column)
    return {c: (str if c in text else np.float64) for c in spec.columns}


def _bounded_lines(fh: io.TextIOBase, limit: int) -> Iterator[str | None]:
    """The lines of `fh`; None for a line longer than `limit` characters, whose rest is read in
    pieces and dropped, so a line without an end for megabytes is never held in memory."""
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and line[-1] not in "\r\n":
            while line and line[-1] not in "\r\n":
                line = fh.readline(limit)
            yield None
        else:
            yield line


def _bad_value(spec: DatasetSpec, numeric: set[str], required: set[str], name: str, value: str,
               family: str | None) -> str | None:
    """What is wrong with one cell of a record (None: nothing); `family`: the record's
    family-column value, if the schema has one."""
    if name in numeric:
        try:  # Python's float() also takes '1_000' and non-ASCII digits; pandas does not
            number = float(value) if value.isascii() and "_" not in value else None
        except ValueError:
            number = None
        if number is None:
            return f"expected a number, found {shown(value)}"
        return None if math.isfinite(number) else f"non-finite value {shown(value)}"
    if name == spec.label and spec.family_column:  # UNSW-NB15: label 0/1, attack_cat the name
        try:
            flag = float(value)
        except ValueError:
            flag = None
        if flag not in (0.0, 1.0):
            return f"expected label 0 or 1, found {shown(value)}"
        if flag and (family or "").strip() in PANDAS_NA:
            return f"attack record (label 1) without an {spec.family_column} value"
        return None
    if name == spec.label:  # an unset label is an error, never read as "attack"
        value = value.strip().removesuffix(spec.label_suffix)
    if name in required and value.strip() in PANDAS_NA:
        return f"missing value {shown(value)}"
    return None


def find_bad_lines(path: Path, spec: DatasetSpec, limit: int | None = 1) -> list[BadLine]:
    """Scan a file line by line for field-count, number and missing-value problems."""
    bad: list[BadLine] = []
    numeric = set(spec.numeric_columns)
    required = set(spec.feature_columns) | {spec.label}
    n_fields = len(spec.columns)
    family_at = spec.columns.index(spec.family_column) if spec.family_column else None
    too_long: set[int] = set()

    def lines(fh) -> Iterator[str]:
        for n, line in enumerate(_bounded_lines(fh, MAX_LINE_CHARS), start=1):
            if line is None:
                too_long.add(n)
            yield "\n" if line is None else line

    try:
        with open_text(path) as fh:
            records = csv.reader(lines(fh))
            lineno = 0
            while True:
                lineno += 1  # one record per line, as in every supported file
                try:
                    fields = next(records)
                except StopIteration:
                    break
                except csv.Error as exc:  # its words never quote the line
                    bad.append(BadLine(lineno, None, f"malformed line ({exc})"))
                    fields = None
                if lineno == 1 and spec.has_header:
                    continue
                if lineno in too_long:
                    bad.append(BadLine(lineno, None, f"line longer than {MAX_LINE_CHARS:,} "
                                                     "characters (no line end within it)"))
                elif fields is None:
                    pass
                elif not fields or fields == [""]:
                    pass  # pandas skips empty lines: they are not why it failed
                elif len(fields) != n_fields:
                    bad.append(BadLine(lineno, None, f"expected {n_fields} fields, found {len(fields)}"))
                else:
                    family = fields[family_at] if family_at is not None else None
                    for col, (name, value) in enumerate(zip(spec.columns, fields), start=1):
                        if name in numeric:  # the common case, inline: 40 cells x 100k lines
                            try:
                                if math.isfinite(float(value)) and value.isascii() \
                                        and "_" not in value:
                                    continue
                            except ValueError:
                                pass
                        reason = _bad_value(spec, numeric, required, name, value, family)
                        if reason:
                            bad.append(BadLine(lineno, name, reason, col))
                            break
                if limit is not None and len(bad) >= limit:
                    break
    except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{path}: truncated or corrupt file ({exc}); fetch it again") from exc
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc}); a compressed file needs its .gz or "
                              ".zip suffix") from exc
    return bad


# Records already parsed in this process, by file and reading, while reads are remembered.
_remembered: dict[tuple, Records] | None = None


def remember_reads() -> None:
    """From now on, a file read again in this process (same path, size, modification time,
    spec and leniency) is handed out as a copy of its first parse. `reproduce` turns it on: its
    steps read the same benchmark files dozens of times (KDD Cup 99's two files take 4.5 s to
    parse). A copy, because callers change records in place (`federation.attacks`)."""
    global _remembered
    if _remembered is None:
        _remembered = {}


@contextmanager
def remembered_reads() -> Iterator[None]:
    """`remember_reads` for the block; afterwards reads are remembered only if they were before."""
    global _remembered
    outer = _remembered
    remember_reads()
    try:
        yield
    finally:
        _remembered = outer


def read_records(path: str | Path, spec: DatasetSpec, lenient: bool = False) -> Records:
    """Read one file of `spec`. Strict by default; `lenient` skips bad lines and reports them."""
    path = Path(path)
    if _remembered is None:
        return _parse(path, spec, lenient)
    key = (*file_key(path), spec.model_dump_json(), lenient)
    if key not in _remembered:
        _remembered[key] = _parse(path, spec, lenient)
    return _copy(_remembered[key])


def _copy(recs: Records) -> Records:
    return Records(recs.frame.copy(), recs.attack.copy(), recs.family.copy(),
                   recs.is_attack.copy(), replace(recs.report, skipped=list(recs.report.skipped)),
                   None if recs.segment is None else recs.segment.copy(),
                   None if recs.arrival is None else recs.arrival.copy())


def _parse(path: Path, spec: DatasetSpec, lenient: bool) -> Records:
    report = ReadReport(path)
    frame = _read_fast(path, spec, skip=None)
    if frame is None or not _all_valid(frame, spec):
        bad = find_bad_lines(path, spec, limit=None if lenient else 1)
        if not bad:  # pandas failed on something the scanner accepts: report pandas' own words
            _read_fast(path, spec, skip=None, raise_errors=True)
            raise DataFormatError(f"{path}: could not be parsed as {spec.name}")
        if not lenient:
            raise BadLineError(bad[0].describe(path))
        report.skipped = bad
        for b in bad[:5]:
            log.warning("skipped %s", b.describe(path))
        log.warning("%s: skipped %d malformed line(s)", path, len(bad))
        frame = _read_fast(path, spec, skip=[b.line - 1 for b in bad], raise_errors=True)
    if len(frame) == 0:
        raise DataFormatError(f"{path}: no records")
    report.rows = len(frame)
    return _to_records(frame, spec, report)


def _read_fast(path: Path, spec: DatasetSpec, skip: list[int] | None,
               raise_errors: bool = False) -> pd.DataFrame | None:
    if path.stat().st_size == 0:
        raise DataFormatError(f"{path}: file is empty")
    try:
        return pd.read_csv(
            path, header=None, names=spec.columns, dtype=_dtypes(spec), engine="c",
            skiprows=sorted({0, *(skip or [])}) if spec.has_header else skip,
            encoding="utf-8-sig", compression="infer", skipinitialspace=False, low_memory=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError(f"{path}: file is empty") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{path}: truncated or corrupt file ({exc}); fetch it again") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        if raise_errors:
            raise DataFormatError(f"{path}: {exc}") from exc
        return None


def _all_valid(frame: pd.DataFrame, spec: DatasetSpec) -> bool:
    numeric = frame[spec.numeric_columns].to_numpy()
    if not np.isfinite(numeric).all():
        return False
    required = [*spec.categorical, spec.label]
    # A row with too few fields reads as NaN in its last columns; when the last one is ignored
    # (NSL-KDD's difficulty) nothing above would notice, so check it too.
    last = spec.columns[-1]
    if last != spec.family_column and last not in required:
        required.append(last)
    if frame[required].isna().to_numpy().any():
        return False
    label = frame[spec.label]
    if spec.family_column:  # 0/1, and an attack names its category
        flag = pd.to_numeric(label, errors="coerce")
        attack_cat = frame[spec.family_column].fillna("").str.strip()
        nameless = (flag == 1) & attack_cat.isin(PANDAS_NA)
        return bool(flag.isin([0, 1]).all() and not nameless.any())
    # Blank ('  ', or KDD99's bare '.'): pandas keeps it as text, but it is no label.
    return not label.str.strip().str.removesuffix(spec.label_suffix).isin(PANDAS_NA).any()


def _to_records(frame: pd.DataFrame, spec: DatasetSpec, report: ReadReport) -> Records:
    if spec.family_column:
        # An empty attack_cat means Normal (the full UNSW-NB15 CSVs leave it empty for label 0);
        # an attack (label 1) without one is a bad line, found on reading.
        attack = frame[spec.family_column].fillna("").str.strip().to_numpy(dtype=object)
        attack[attack == ""] = spec.normal_labels[0]
        is_attack = (pd.to_numeric(frame[spec.label]) != 0).to_numpy()  # 0/1: checked on reading
        family = np.array([NORMAL_FAMILY if not a else spec.family_of(n) for n, a in
                           zip(attack, is_attack)], dtype=object)
    else:
        labels = frame[spec.label].str.strip()
        if spec.label_suffix:
            labels = labels.str.removesuffix(spec.label_suffix)
        attack = labels.to_numpy(dtype=object)
        is_attack = ~np.isin(attack, spec.normal_labels)
        lookup = {a: spec.family_of(a) for a in np.unique(attack)}
        family = np.array([lookup[a] for a in attack], dtype=object)
    features = frame[spec.feature_columns]
    features = features.astype({c: np.float32 for c in spec.numeric_columns})
    return Records(features.reset_index(drop=True), attack, family, is_attack.astype(np.int64), report)
