"""Flow logs of any schema: chunked, bounded-memory reading of the user's own files.

`FlowReader` reads a file in chunks of a bounded number of lines, so memory stays bounded
whatever the file size (and `follow=True` tails a growing log). Each chunk takes pandas' C parser
when its lines are clean; lines that are not (wrong field count, text in a number, NaN/Inf where
the schema allows no fill, binary garbage) are found with vectorised checks, counted, and reported
as `file:line: column '...'`, or stop the read at the first one when `strict`. One record per
physical line is assumed, which holds for Zeek logs (TSV or JSON), JSON-lines exports and
flow-exporter CSVs. A line longer than `max_line_bytes` is one bad line; its bytes are dropped as
they arrive, never held. A file's header is matched to the schema's column names through
`flowschemas.match_header` (case, spacing and the schema's aliases), so the rest of the pipeline
sees the schema's names whatever the tool's spelling.

Failing loudly: with `max_bad_share`, a file none of whose lines parse, or in which more than that
share of lines is malformed, stops the read with `TooManyBadLines` (early, once `share_after`
lines have been seen, so a large file of another format is not read to its end).

Labels: a record whose label is unset (empty, or one of the schema's missing tokens such as '-')
is a bad line when the label is required (training, `require_label=True`); when scoring, it is
scored like any record and left out of the labelled-input metrics. It is never read as "attack".
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import lzma
import os
import re
import select
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedlstm.data.flowschemas import (
    HeaderMatch,
    SchemaError,
    json_text,
    match_header,
    unique_names,
)
from fedlstm.data.io import (
    BadLineError,
    DataFormatError,
    finite_float32,
    open_binary,
    text_problem,
)
from fedlstm.data.readers import BadLine, ReadReport, Records, shown
from fedlstm.data.spec import NORMAL_FAMILY, UNKNOWN_FAMILY, DatasetSpec

log = logging.getLogger(__name__)
_NAN_TOKENS = ["", "NaN", "nan", "NA", "null", "None"]
_CORRUPT = (EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile, lzma.LZMAError)
_STRAY_CR = ("a carriage return inside the line (a file written in text mode on Windows ends "
             "its lines in \\r\\r\\n)")
_TOO_LONG = object()  # a block-stream marker: one line longer than max_line_bytes ended here
TAIL_BYTES = 256  # follow mode: the last bytes read, to see a file rewritten under the reader
DEFAULT_MAX_BAD_SHARE = 0.5  # training with lenient reading: most malformed lines per file


def _file_positions(fh) -> bool:
    """Whether `fh`'s positions are the file's own: not decompressed data, not a pipe."""
    return isinstance(fh, io.BufferedReader) and fh.seekable()


class TooManyBadLines(DataFormatError):
    """A file none of whose lines parse, or with more malformed lines than allowed: most likely a
    file of another format than the schema's."""


@dataclass
class FlowReport:
    """What reading a file met: good rows, bad lines (count and first examples), filled values."""

    path: Path
    rows: int = 0
    bad: int = 0
    examples: list[BadLine] = field(default_factory=list)
    filled: Counter = field(default_factory=Counter)  # column -> unset/NaN/Inf values filled
    errors: list[str] = field(default_factory=list)  # file-level: empty, truncated, bad header
    rotations: int = 0  # follow mode: times the path was replaced (rotated) or truncated
    blank: int = 0  # empty lines, skipped: an export's trailing or double-spaced line ends
    notes: list[str] = field(default_factory=list)  # e.g. a column this file's layout lacks
    waited: float = 0.0  # follow mode: seconds spent waiting for the log to grow
    max_examples: int = 20

    def add_bad(self, bad: BadLine) -> None:
        self.bad += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(bad)
            log.warning("skipped %s", bad.describe(self.path))

    def to_dict(self) -> dict:
        return {"file": str(self.path), "rows": self.rows, "bad_lines": self.bad,
                "bad_examples": [b.describe(self.path) for b in self.examples],
                "filled": dict(self.filled), "errors": list(self.errors),
                **({"notes": list(self.notes)} if self.notes else {}),
                **({"blank_lines": self.blank} if self.blank else {}),
                **({"rotations": self.rotations} if self.rotations else {})}


@dataclass
class Chunk:
    """Parsed rows of one chunk: features typed as the schema says, with their physical lines."""

    frame: pd.DataFrame  # feature columns: numeric float32, categorical str
    lines: np.ndarray  # 1-based physical line of each row
    entity: np.ndarray | None = None
    label: np.ndarray | None = None  # raw label values, where the file has the label column
    family_label: np.ndarray | None = None
    rotation: int = 0  # follow mode: the file's rotations before it (its lines count from 1)

    def __len__(self) -> int:
        return len(self.frame)


class FlowReader:
    """Iterate over a flow file of `spec` in chunks of about `chunk_bytes` bytes."""

    def __init__(self, path: str | Path, spec: DatasetSpec, chunk_bytes: int = 1 << 20,
                 strict: bool = False, follow: bool = False, poll_seconds: float = 0.5,
                 stop: Callable[[], bool] | None = None, max_examples: int = 20,
                 max_line_bytes: int = 1 << 20, require_label: bool = False,
                 max_bad_share: float | None = None, share_after: int = 1000,
                 share_hint: str = ""):
        self.path = Path(path)
        self.max_bad_share = max_bad_share
        self.share_after = share_after
        self.share_hint = share_hint  # how the calling command changes max_bad_share
        self._json = spec.format == "json"  # also set for a Zeek log written as JSON
        self._ended = False  # the schema's stop_at line was met
        self._corrupt: BaseException | None = None  # compressed data cut short (`_read_upto`)
        self._tail = b""  # follow mode: the last bytes read (`_rewritten`)
        self._first_data_line = 1
        self.require_label = require_label
        self.base_spec = spec
        self.spec = spec  # resolved against the file's header when reading starts
        self.chunk_bytes = chunk_bytes
        self.max_line_bytes = max_line_bytes
        self._space_split = False
        self.strict = strict
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.stop = stop or (lambda: False)
        self.report = FlowReport(self.path, max_examples=max_examples)
        self._rotated = False
        self._not_utf8_noted = False
        self._header_line = None  # a CSV's header, as bytes: met again where files were joined
        self._repeats = 0

    # ------------------------------------------------------------------ header
    def _set_columns(self, names: list[str], header_line: int) -> None:
        base = self.base_spec
        if base.has_header or base.format in ("zeek", "json") or not base.columns:
            self.match = match_header(base, names, where=str(self.path))
            for note in self.match.notes:
                if note not in self.report.notes:
                    self.report.notes.append(note)
                    log.warning("%s", note)
        else:
            self.match = HeaderMatch(unique_names(names), base)
        names, self.spec = self.match.names, self.match.spec
        spec = self.spec
        missing = [c for c in spec.feature_columns if c not in names]
        if missing:
            raise SchemaError(f"{self.path}:{header_line}: no column(s) {missing} in the file; "
                              f"schema {spec.name!r} needs them")
        self.names = names
        self.n_fields = len(names)
        self.entity_col = spec.entity_column if spec.entity_column in names else None
        self.label_col = spec.label if spec.label and spec.label in names else None
        self.family_col = spec.family_column if spec.family_column in names else None
        self.numeric = spec.numeric_columns
        self.categorical = spec.categorical
        text = [*self.categorical, *(c for c in (self.entity_col, self.label_col,
                                                 self.family_col) if c)]
        self.usecols = list(dict.fromkeys([*self.numeric, *text]))
        self.dtypes = {c: (np.float64 if c in self.numeric else object) for c in self.usecols}
        tokens = list(dict.fromkeys([*_NAN_TOKENS, *spec.missing_values]))
        self.na_values = {c: tokens for c in self.numeric}
        self.sep = spec.delimiter.encode()

    def _read_header(self, fh) -> tuple[int, bytes]:
        """Consume header lines; returns the number of lines read and the first data line."""
        spec = self.base_spec
        if spec.format == "json":
            first = fh.readline(self.max_line_bytes + 1)
            self._set_columns(spec.columns or self._json_keys(first), 1)
            return 0, first
        if spec.format == "zeek":
            lineno, names = 0, None
            # Bounded reads: a data line too long comes back cut, and _blocks drops the rest.
            for raw in iter(lambda: self._whole_line(fh), b""):
                lineno += 1
                if lineno == 1:  # a byte-order mark hid the '#' or '{' that says the layout
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                if not raw.startswith(b"#"):
                    # Zeek's JSON writer (LogAscii::use_json): one object a line, no header.
                    self._json = names is None and raw.lstrip().startswith(b"{")
                    self._zeek_header(names or spec.columns, lineno)
                    return lineno - 1, raw
                names = self._zeek_meta(raw, names)
            self._zeek_header(names or spec.columns, lineno + 1)
            return lineno, b""
        if spec.has_header or not spec.columns:
            raw = self._whole_line(fh)
            problem = text_problem(raw)
            if problem:
                raise DataFormatError(f"{self.path}:1: {problem}")
            if len(raw) > self.max_line_bytes:
                raise DataFormatError(f"{self.path}:1: header line longer than "
                                      f"{self.max_line_bytes:,} bytes; is this a flow log?")
            if not raw:
                self._set_columns(spec.columns, 1)
                return 0, b""
            text = raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
            self._header_line = raw.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
            self._set_columns(next(csv.reader([text], delimiter=spec.delimiter)), 1)
            return 1, b""
        self._set_columns(spec.columns, 1)
        return 0, b""

    def _whole_line(self, fh) -> bytes:
        """A header line, bounded; when following, waited for until its line end arrives: a
        rotated log's half-written header was read as the whole one (and the run stopped)."""
        line = fh.readline(self.max_line_bytes + 1)
        while self.follow and line and not line.endswith(b"\n") \
                and len(line) <= self.max_line_bytes and not self.stop():
            self._idle()
            line += fh.readline(self.max_line_bytes + 1 - len(line))
        return line

    def header_match(self) -> HeaderMatch:
        """The schema read on the file's header alone: the columns under the schema's names,
        the resolved spec, and what the file lacks (`fedlstm schema show --file`)."""
        if self.path.stat().st_size == 0:
            raise DataFormatError(f"{self.path}: file is empty")
        with open_binary(self.path) as fh:
            self._read_header(fh)
        return self.match

    def _json_keys(self, first: bytes) -> list[str]:
        """A JSON-lines file whose schema lists no columns: the keys of its first record."""
        try:
            record = json.loads(first)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise SchemaError(f"{self.path}:1: not a JSON object; a `json` schema reads one "
                              "object per line (name the keys with `columns` otherwise)")
        return [*record, *(c for c in self.base_spec.optional_columns if c not in record)]

    def _zeek_meta(self, raw: bytes, names: list[str] | None) -> list[str] | None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if text.startswith("#separator"):
            sep = text.split(" ", 1)[1] if " " in text else "\\x09"
            self.base_spec = self.base_spec.model_copy(
                update={"delimiter": sep.encode().decode("unicode_escape")})
        elif text.startswith("#fields"):
            fields = text.split(self.base_spec.delimiter)[1:]
            # Labelled research logs (IoT-23) separate the appended label fields by spaces.
            self._space_split = any(" " in f.strip() for f in fields)
            return [n for f in fields for n in f.split()]
        return names

    def _zeek_header(self, names: list[str], lineno: int) -> None:
        self._set_columns(names, max(lineno - 1, 1))

    # ------------------------------------------------------------------ blocks of lines
    def _blocks(self, fh, first: bytes) -> Iterator[bytes | None | object]:
        """Byte blocks ending at a line end (None: the log is idle, flush what you hold;
        _TOO_LONG: a line longer than max_line_bytes ended, its bytes dropped as they came)."""
        pending, skipping = first, False
        self._tail, waited = b"", False
        pipe = self.follow and not fh.seekable()
        if pipe:  # read what has come, never block: the stop is checked between reads
            os.set_blocking(fh.fileno(), False)
        while True:
            self._rotated = waited and self.follow and self._rewritten(fh)
            if self._rotated:
                data = b""
            elif pipe:
                data = self._read_pipe(fh)
            else:
                data = self._read_upto(fh, self.chunk_bytes)
            ended = pipe and data == b""  # its writer closed the pipe: nothing more can come
            data, waited = data or b"", False
            if data:
                if self.follow:  # a few hundred bytes, not a copy of every chunk
                    self._tail = (self._tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]
                if skipping:  # inside a line too long: drop bytes up to its end
                    end = data.find(b"\n")
                    if end < 0:
                        continue
                    yield _TOO_LONG
                    skipping, data = False, data[end + 1:]
                pending += data
                cut = pending.rfind(b"\n")
                if cut >= 0:
                    block, pending = pending[:cut + 1], pending[cut + 1:]
                    yield block
                if len(pending) > self.max_line_bytes:  # no line end in sight
                    skipping, pending = True, b""
                # A log that never pauses would never reach the stop check below: Ctrl-C and
                # SIGTERM went unheeded while a busy sensor kept writing.
                if not (self.follow and self.stop()):
                    continue
            # Checked before `stop`, so a log rotated just before the stop is still read.
            elif self.follow and not self._rotated and self._replaced(fh):
                self._rotated = True
            if self._rotated or not self.follow or ended or self.stop():
                if skipping:
                    yield _TOO_LONG
                elif pending and self.follow and not (self._rotated or ended):
                    # stopped while its writer was mid-line: a cut value ('987' of '9876543210')
                    # was scored as if whole
                    note = (f"{self.path}: stopped while a line was being written "
                            f"({len(pending):,} bytes without a line end): left unscored")
                    self.report.notes.append(note)
                    log.warning("%s", note)
                elif pending:
                    yield pending + b"\n"
                return
            yield None
            self._idle()
            waited = True

    def _read_pipe(self, fh) -> bytes | None:
        """A followed pipe (its file made non-blocking): what it holds now, else what comes
        within one poll; b"" at its end (readable, yet empty); None: nothing came. A blocking
        read waited for a whole chunk (alerts late by up to 1 MB of flows) and could not be
        stopped while the pipe was quiet."""
        data = fh.read1(self.chunk_bytes)
        if data:
            return data
        if select.select([fh.fileno()], [], [], self.poll_seconds)[0]:
            return fh.read1(self.chunk_bytes)
        return None

    def _read_upto(self, fh, n: int) -> bytes:
        """Up to `n` bytes. Compressed data cut short raises, and a plain `read(n)` dropped every
        byte it had decoded in that call (up to a chunk of records, all of a small file); here
        they come first, and the next call raises."""
        if self._corrupt is not None:
            raise self._corrupt
        read1 = getattr(fh, "read1", None)
        if read1 is None:
            return fh.read(n)
        parts, got = [], 0
        while got < n:
            try:
                piece = read1(n - got)
            except _CORRUPT as exc:
                if not parts:
                    raise
                self._corrupt = exc
                break
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def _replaced(self, fh) -> bool:
        """The path now names another file (moved away and recreated, as log rotation does) or
        was truncated in place (copytruncate); a path missing for now is waited for."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        if now.st_ino != os.fstat(fh.fileno()).st_ino:
            return True
        return _file_positions(fh) and now.st_size < fh.tell()

    def _rewritten(self, fh) -> bool:
        """Truncated in place (copytruncate) while this reader waited, and perhaps written past
        its position again, which the size cannot tell: the bytes before the position are not
        the ones it read last. Asked after each wait, before reading on from mid-way into the
        new records; a file moved away is read to its end first (`_replaced`)."""
        if not self._tail or not _file_positions(fh):
            return False
        position = fh.tell()
        return os.pread(fh.fileno(), len(self._tail), position - len(self._tail)) != self._tail

    def __iter__(self) -> Iterator[Chunk]:
        """Chunks of the file; in follow mode, across rotations: when the path is replaced, the
        old file is read to its end and the new one from its start (line numbers restart)."""
        if self.follow and not self._wait_for_data():  # --follow may start before its log
            return
        while True:
            self._rotated = False
            yield from self._read_once()
            if not self._rotated:
                return
            self.report.rotations += 1
            log.info("%s: rotated; reading the new file from its start", self.path)
            if not self._wait_for_data():  # the new one is empty
                return

    def _idle(self) -> None:
        t = time.perf_counter()
        time.sleep(self.poll_seconds)
        self.report.waited += time.perf_counter() - t

    def _wait_for_data(self) -> bool:
        """Wait until the followed path exists and holds bytes; False: stopped before. A pipe
        (`tail -F log | fedlstm detect BUNDLE - --follow`) has no size: it is read at once (a
        size of 0 kept it waiting for ever, its records unread)."""
        while not (self.path.exists() and (self.path.stat().st_size or not self.path.is_file())):
            if self.stop():
                return False
            self._idle()
        return True

    def _read_once(self) -> Iterator[Chunk]:
        self._ended, self._corrupt = False, None
        try:
            if self.path.is_file() and self.path.stat().st_size == 0:  # a pipe has no size
                return self._file_error(f"{self.path}: file is empty")
            fh = open_binary(self.path)
        except OSError as exc:
            return self._file_error(f"{self.path}: cannot read ({exc})")
        except _CORRUPT as exc:
            return self._file_error(f"{self.path}: corrupt file ({exc})")
        with fh:
            lineno = 0
            try:
                lineno, first = self._read_header(fh)
                self._first_data_line = lineno + 1
                for block in self._blocks(fh, first):
                    if block is None:
                        continue
                    if block is _TOO_LONG:
                        lineno += 1
                        self._bad(BadLine(lineno, None, self._too_long))
                        continue
                    yield from self._block(block, lineno + 1)
                    lineno += block.count(b"\n")
                    self._check_share(final=False)
                    if self._ended:
                        break
            except _CORRUPT as exc:
                self._file_error(f"{self.path}: truncated or corrupt compressed data after "
                                 f"line {lineno} ({exc}); no record after it is read")
                return
            except OSError as exc:  # also bz2's corrupt data ("Invalid data stream")
                self._file_error(f"{self.path}: cannot read after line {lineno} ({exc}); no "
                                 "record after it is read")
                return
        self._check_share(final=True)
        if self.report.rows == 0 and not self.report.errors and not self._rotated:
            self._file_error(f"{self.path}: no records")

    def _check_share(self, final: bool) -> None:
        """Stop a read that is not reading (see TooManyBadLines): at the end of the file, or once
        `share_after` lines have been seen."""
        r = self.report
        seen = r.rows + r.bad
        if self.max_bad_share is None or not r.bad or (not final and seen < self.share_after):
            return
        share = r.bad / seen
        example = f"; first: {r.examples[0].describe(self.path)}" if r.examples else ""
        spec = self.spec
        if r.rows == 0:
            raise TooManyBadLines(
                f"{self.path}: no line reads as schema {spec.name!r} ({spec.format}): "
                f"{'all' if final else 'the first'} {r.bad:,} line(s) malformed{example}. Is it "
                f"a file of another format? `fedlstm schema infer {self.path.name}` drafts a "
                "schema for it")
        if share > self.max_bad_share:
            raise TooManyBadLines(
                f"{self.path}: {r.bad:,} of {seen:,} lines malformed ({share:.1%}), more than "
                f"the {self.max_bad_share:.0%} allowed{self.share_hint}{example}")

    def _file_error(self, message: str):
        if self.strict:
            raise DataFormatError(message)
        self.report.errors.append(message)
        log.warning("%s", message)
        return iter(())

    def _bad(self, bad: BadLine) -> None:
        if self.strict:
            first = "" if self.report.rows or bad.line != self._first_data_line else \
                f"; the first record of the file: is it a {self.spec.format} file of schema " \
                f"{self.spec.name!r}?"
            raise BadLineError(bad.describe(self.path) + first)
        self.report.add_bad(bad)

    @property
    def _too_long(self) -> str:
        return f"line longer than {self.max_line_bytes:,} bytes (no line end within it)"

    # ------------------------------------------------------------------ parsing
    def _block(self, block: bytes, first_line: int) -> Iterator[Chunk]:
        """Vectorised line checks on a block; clean lines go to pandas' C parser in one call."""
        if not block:
            return
        if self.spec.stop_at:
            block = self._cut_at_stop(block, first_line)
        if self._json:
            yield from self._json_block(block, first_line)
            return
        if self._space_split:
            block = block.replace(b"   ", self.sep)
        if not self._not_utf8_noted and not block.isascii():  # isascii: the cheap common case
            self._note_not_utf8(block, first_line)
        arr = np.frombuffer(block, np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        lines = first_line + np.arange(len(ends))
        length = ends - starts - (arr[np.maximum(ends - 1, 0)] == 13) * (ends > starts)
        comment = (arr[np.minimum(starts, len(arr) - 1)] == 35) & (length > 0) \
            if self.spec.format == "zeek" else np.zeros(len(ends), bool)
        fields_at = np.flatnonzero(comment)
        for k in fields_at:  # a rotated Zeek part restarts its header mid-file
            if block[starts[k]:starts[k] + 7] == b"#fields":
                yield from self._block(block[:starts[k]], first_line)
                line = block[starts[k]:ends[k]].rstrip(b"\r")
                self._zeek_header(self._zeek_meta(line + b"\n", None), int(lines[k]))
                rest = block[ends[k] + 1:]
                if rest:
                    yield from self._block(rest, int(lines[k]) + 1)
                return

        def per_line(mask: np.ndarray) -> np.ndarray:
            at = np.flatnonzero(mask)
            if not len(at):
                return np.zeros(len(ends), np.int64)
            return np.searchsorted(at, ends) - np.searchsorted(at, starts)

        seps = per_line(arr == self.sep[0]) if len(self.sep) == 1 else \
            np.array([block[a:b].count(self.sep) for a, b in zip(starts, ends)])
        nul = per_line(arr == 0) > 0
        empty = length == 0
        long = length > self.max_line_bytes  # began in the last bytes of a read: caught here
        if self.spec.format != "zeek":  # Zeek is read unquoted: a quote is a plain character
            # A quoted field may hold the delimiter: such lines (rare) are counted by the csv
            # module. Left uncounted, pandas padded a short line or dropped a long one's extra
            # fields, and its values moved to other columns without a word.
            quoted = (per_line(arr == 34) > 0) & ~empty & ~nul & ~long
            for i in np.flatnonzero(quoted):
                seps[i] = self._quoted_fields(block[starts[i]:ends[i]]) - 1
        # A carriage return before a line's end: pandas ends a line there, which shifted the
        # lines after it ('\r\r\n': a CSV written in text mode on Windows).
        stray_cr = np.zeros(len(ends), bool)
        if b"\r" in block:  # one more pass over the block only where a CR is in it
            trailing_cr = (arr[np.maximum(ends - 1, 0)] == 13) & (ends > starts)
            stray_cr = (per_line(arr == 13) > trailing_cr) & ~empty & ~nul & ~long
        wrong = ((seps + 1 != self.n_fields) | stray_cr) & ~empty & ~nul & ~comment & ~long
        good = ~(empty | nul | wrong | comment | long)
        self.report.blank += int(empty.sum())
        for i in np.flatnonzero(~good & ~comment & ~empty):
            reason = self._too_long if long[i] else \
                "binary data (NUL byte)" if nul[i] else \
                _STRAY_CR if stray_cr[i] else \
                "a quote that does not close" if seps[i] < 0 else \
                f"expected {self.n_fields} fields, found {seps[i] + 1}"
            self._bad(BadLine(int(lines[i]), None, reason))
        if not good.any():
            return
        if good.all():
            text = block
        else:  # keep the bytes of good lines only
            sizes = ends - starts + 1
            text = arr[np.repeat(good, sizes)].tobytes()
        lines = lines[good]
        frame = self._read(text)
        if frame is None or len(frame) != len(lines):  # find the culprits in text
            raw = [block[a:b] for a, b in zip(starts[good], ends[good])]
            if self._header_line is not None:
                raw, lines = self._without_repeated_headers(raw, lines)
            frame, lines = self._read_text(raw, lines)
        yield from self._checked(frame, lines)

    def _note_not_utf8(self, block: bytes, first_line: int) -> None:
        """Say once per file where bytes that are not UTF-8 were read as U+FFFD ('ic\ufffdp'):
        values that then match no category seen in training, without a word."""
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = first_line + block.count(b"\n", 0, exc.start)
            note = (f"{self.path}:{line}: bytes that are not UTF-8 (the first of them here) are "
                    "read as U+FFFD; a file exported as Latin-1 or Windows-1252 reads right "
                    "once converted, e.g. `iconv -f WINDOWS-1252 -t UTF-8`")
            self.report.notes.append(note)
            log.warning("%s", note)
            self._not_utf8_noted = True

    def _quoted_fields(self, line: bytes) -> int:
        """Fields of a line holding quotes; 0 where the csv module cannot read it (a stray
        carriage return, a quote that does not close)."""
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        try:
            return len(next(csv.reader([text], delimiter=self.spec.delimiter, strict=True),
                            [""]))
        except csv.Error:
            return 0

    def _checked(self, frame: pd.DataFrame, lines: np.ndarray) -> Iterator[Chunk]:
        """The rows of `frame` whose values pass the schema's checks, as one chunk (if any)."""
        keep, values = self._check_values(frame, lines)
        if not keep.all():
            frame, lines, values = frame[keep].reset_index(drop=True), lines[keep], values[keep]
        if len(frame):
            self.report.rows += len(frame)
            yield self._chunk(frame, values, lines)

    def _cut_at_stop(self, block: bytes, first_line: int) -> bytes:
        """The block up to the schema's `stop_at` line (nfdump's "Summary"), which ends the
        records: what follows is a summary, read past without counting it as bad lines."""
        found = re.search(rb"(?:^|\n)" + re.escape(self.spec.stop_at.encode()) + rb"\r?\n", block)
        if found is None:
            return block
        start = found.start() + (block[found.start():found.start() + 1] == b"\n")
        self._ended = True
        line = first_line + block.count(b"\n", 0, start)
        self.report.notes.append(f"{self.path}:{line}: {self.spec.stop_at!r} ends the records "
                                 "(stop_at); the lines after it are not flows")
        return block[:start]

    def _json_block(self, block: bytes, first_line: int) -> Iterator[Chunk]:
        """One JSON object per line (Zeek's JSON logs, JSON-lines exports): a field left out or
        null is unset, like Zeek's '-'."""
        records, lines = [], []
        for k, raw in enumerate(block.split(b"\n")[:-1]):
            line = first_line + k
            text = raw.strip()
            if not text:  # as in CSV: an empty line is no record and nothing wrong
                self.report.blank += 1
                continue
            reason = self._too_long if len(raw) > self.max_line_bytes else None
            if reason is None:
                try:
                    record = json.loads(text)
                    reason = None if isinstance(record, dict) else \
                        f"a JSON {type(record).__name__}, not an object"
                except ValueError as exc:  # also invalid UTF-8
                    reason = f"not JSON ({str(exc).split(':')[0]})"
            if reason is not None:
                self._bad(BadLine(line, None, reason))
                continue
            records.append(record)
            lines.append(line)
        if not records:
            return
        yield from self._checked(*self._json_frame(records, np.array(lines, np.int64)))

    def _json_frame(self, records: list[dict], lines: np.ndarray
                    ) -> tuple[pd.DataFrame, np.ndarray]:
        """The fields the schema reads, typed: numbers as float64 (NaN where unset), the rest as
        the text a TSV writer would have written."""
        zeek = self.base_spec.format == "zeek"
        tokens = {*_NAN_TOKENS, *self.spec.missing_values}
        keep = np.ones(len(records), bool)
        data: dict[str, np.ndarray] = {}
        for c in self.numeric:
            out = np.full(len(records), np.nan)
            for i, record in enumerate(records):
                value = record.get(c)
                if value is None or not keep[i]:
                    continue
                if isinstance(value, str) and value.strip() in tokens:
                    continue
                try:
                    if isinstance(value, (bool, list, dict)):
                        raise TypeError(value)
                    out[i] = float(value)
                except OverflowError:  # an integer beyond float64: out of any range
                    out[i] = np.inf
                except (TypeError, ValueError):
                    keep[i] = False
                    self._bad(BadLine(int(lines[i]), c, "expected a number, found "
                                      f"{shown(json.dumps(value))}", self.names.index(c) + 1))
            data[c] = out
        unset = "-" if zeek else ""  # what Zeek's TSV writer shows for an unset field
        for c in self.usecols:
            if c not in data:
                fill = "" if c in (self.label_col, self.family_col, self.entity_col) else unset
                data[c] = np.array([fill if r.get(c) is None else json_text(r[c], zeek)
                                    for r in records], object)
        frame = pd.DataFrame(data, columns=self.usecols)
        return frame[keep].reset_index(drop=True), lines[keep]

    def _read(self, raw: bytes | list[bytes], text: bool = False) -> pd.DataFrame | None:
        zeek = self.spec.format == "zeek"
        if isinstance(raw, list):
            raw = b"\n".join(raw) + b"\n"
        try:
            return pd.read_csv(
                io.BytesIO(raw), sep=self.spec.delimiter, header=None,
                names=self.names, usecols=self.usecols, engine="c",
                dtype=str if text else self.dtypes, na_values=None if text else self.na_values,
                keep_default_na=False, encoding="utf-8", encoding_errors="replace",
                quoting=csv.QUOTE_NONE if zeek else csv.QUOTE_MINIMAL, skip_blank_lines=False)
        except (ValueError, pd.errors.ParserError):
            if text:
                raise
            return None

    def _without_repeated_headers(self, raw: list[bytes], lines: np.ndarray):
        """The lines that are not the header again (files joined with `cat`): skipped, and said
        once, at the first; they read as bad values ('expected a number, found 'duration'')."""
        again = np.array([r.rstrip(b"\r") == self._header_line for r in raw], bool)
        if not again.any():
            return raw, lines
        if not self._repeats:
            note = (f"{self.path}:{int(lines[again][0])}: the header line again (files joined "
                    "with cat?): skipped, as every repeat of it")
            self.report.notes.append(note)
            log.warning("%s", note)
        self._repeats += int(again.sum())
        return [r for r, a in zip(raw, again) if not a], lines[~again]

    def _read_text(self, raw: list[bytes], lines: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        """Slow path for a chunk the typed parse refused: every cell as text, checked here."""
        try:
            frame = self._read(raw, text=True)
            if len(frame) != len(raw):
                raise ValueError("quoted fields span lines")
        except (ValueError, pd.errors.ParserError):  # quoting trouble: one line at a time
            parts, ok = [], np.zeros(len(raw), bool)
            for i, line in enumerate(raw):
                try:
                    part = self._read([line], text=True)
                    ok[i] = len(part) == 1 and not part.isna().any(axis=None)
                except (ValueError, pd.errors.ParserError):
                    ok[i] = False
                if ok[i]:
                    parts.append(part)
                else:
                    self._bad(BadLine(int(lines[i]), None,
                                      f"expected {self.n_fields} fields (unbalanced quotes?)"))
            lines = lines[ok]
            frame = pd.concat(parts, ignore_index=True) if parts else \
                pd.DataFrame({c: pd.Series([], dtype=object) for c in self.usecols})
        keep = np.ones(len(frame), bool)
        tokens = list(dict.fromkeys([*_NAN_TOKENS, *self.spec.missing_values]))
        converted = {}
        for c in self.numeric:
            values = frame[c].fillna("").astype(str).str.strip()
            number = pd.to_numeric(values, errors="coerce")
            wrong = number.isna().to_numpy() & ~values.isin(tokens).to_numpy()
            for i in np.flatnonzero(wrong & keep):
                keep[i] = False
                self._bad(BadLine(int(lines[i]), c,
                                  f"expected a number, found {shown(values.iloc[i])}",
                                  self.names.index(c) + 1))
            converted[c] = number.to_numpy(np.float64)
        frame = frame.assign(**converted)
        return frame[keep].reset_index(drop=True), lines[keep]

    def _check_values(self, frame: pd.DataFrame, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows to keep, and the numeric block (float32) with unset values filled if allowed."""
        keep = np.ones(len(frame), bool)
        values = frame[self.numeric].to_numpy(np.float64) if self.numeric else \
            np.zeros((len(frame), 0))
        finite = np.isfinite(values)
        if not finite.all():
            if self.spec.fill_missing is not None:
                for j in np.flatnonzero(~finite.all(axis=0)):
                    self.report.filled[self.numeric[j]] += int((~finite[:, j]).sum())
                values = np.where(finite, values, self.spec.fill_missing)
            else:
                for i in np.flatnonzero(~finite.all(axis=1)):
                    j = int(np.argmin(finite[i]))
                    col = self.numeric[j]
                    keep[i] = False
                    self._bad(BadLine(int(lines[i]), col,
                                      f"missing or non-finite value ({values[i, j]})",
                                      self.names.index(col) + 1))
        if self.require_label and self.label_col:
            unset = unset_labels(self.spec, frame[self.label_col].to_numpy(object))
            for i in np.flatnonzero(unset & keep):
                keep[i] = False
                self._bad(BadLine(int(lines[i]), self.label_col,
                                  f"missing label {shown(frame[self.label_col].iat[i])}",
                                  self.names.index(self.label_col) + 1))
        allow_empty = self.spec.fill_missing is not None or "" in self.spec.missing_values
        for c in [*self.categorical, *([self.entity_col] if self.entity_col else [])]:
            column = frame[c].to_numpy(object)
            empty = pd.isna(column) | (column == "")
            if not empty.any():
                continue
            if allow_empty:
                frame[c] = np.where(empty, "", column)
            else:
                for i in np.flatnonzero(empty & keep):
                    keep[i] = False
                    self._bad(BadLine(int(lines[i]), c, "missing value ''",
                                      self.names.index(c) + 1))
        return keep, finite_float32(values)

    def _chunk(self, frame: pd.DataFrame, values: np.ndarray, lines: np.ndarray) -> Chunk:
        features = pd.DataFrame(values, columns=self.numeric, copy=False)
        for c in self.categorical:
            features[c] = frame[c].to_numpy(object)
        label = family = entity = None
        if self.label_col:
            label = frame[self.label_col].fillna("").to_numpy(object).astype(str)
            label = np.char.strip(label).astype(object)
        if self.family_col:
            family = frame[self.family_col].fillna("").to_numpy(object).astype(str)
            family = np.char.strip(family).astype(object)
        if self.entity_col:
            entity = frame[self.entity_col].fillna("").to_numpy(object)
        return Chunk(features, lines, entity, label, family, self.report.rotations)


# ---------------------------------------------------------------------- labels and records

def family_of(spec: DatasetSpec, attack: str) -> str:
    """Attack family; a schema that declares no families uses the attack name itself. Names
    are matched whatever their case ('Exploits' and 'exploits' are one attack)."""
    if _folded(attack) in {_folded(n) for n in spec.normal_labels}:
        return NORMAL_FAMILY
    if spec.families:
        folded = {_folded(k): v for k, v in spec.families.items()}
        return spec.families.get(attack, folded.get(_folded(attack), UNKNOWN_FAMILY))
    return attack.lower()


def _folded(value) -> str:
    return str(value).strip().casefold()


def is_normal(spec: DatasetSpec, label: np.ndarray) -> np.ndarray:
    """Rows whose label is one of the schema's normal values, whatever its case: an export's
    'Normal' or 'NORMAL' was counted as an attack where the schema says 'normal'."""
    normal = {_folded(n) for n in spec.normal_labels}
    codes, values = pd.factorize(np.asarray(label, object))  # each distinct value once
    return np.array([_folded(v) in normal for v in values], bool)[codes] if len(codes) else \
        np.zeros(0, bool)


def unset_labels(spec: DatasetSpec, label: np.ndarray) -> np.ndarray:
    """Rows whose label is unset: empty, blank, NaN, or one of the schema's missing tokens
    (unless the schema names that token a normal label)."""
    label = pd.Series(np.asarray(label, object), dtype=object)
    text = label.fillna("").astype(str).str.strip()
    if spec.label_suffix:
        text = text.str.removesuffix(spec.label_suffix)
    unset = {"", *spec.missing_values} - set(spec.normal_labels)
    return (label.isna() | text.isin(unset)).to_numpy()


def label_arrays(spec: DatasetSpec, label: np.ndarray,
                 family_label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attack name, family, is_attack) per row from the label and optional family columns.

    Every label must be set (see `unset_labels`): an unset one is refused, never taken for an
    attack."""
    label = np.asarray(label, object)
    unset = int(unset_labels(spec, label).sum())
    if unset:
        raise ValueError(f"{unset} unset label value(s): report or leave out those rows before "
                         "deriving attack labels")
    if spec.label_suffix:
        label = np.array([v.removesuffix(spec.label_suffix) for v in label], object)
    numeric = pd.to_numeric(pd.Series(label), errors="coerce") if family_label is not None \
        else None
    if numeric is not None and numeric.notna().all():  # UNSW-NB15 style: 0/1 + category
        is_attack = numeric.to_numpy() != 0
        attack = np.where(is_attack, family_label, spec.normal_labels[0]).astype(object)
    else:
        is_attack = ~is_normal(spec, label)
        attack = label.copy()
        if family_label is not None:  # a detailed label refines the attack name
            detailed = ~np.isin(family_label, ["", "-", *spec.missing_values]) & is_attack
            attack[detailed] = family_label[detailed]
    lookup = {a: family_of(spec, a) for a in pd.unique(attack)}
    family = np.array([lookup[a] if t else NORMAL_FAMILY for a, t in zip(attack, is_attack)],
                      object)
    return attack, family, is_attack.astype(np.int64)


def read_flow_file(path: str | Path, spec: DatasetSpec, lenient: bool = False,
                   chunk_bytes: int = 8 << 20, max_bad_share: float | None = None
                   ) -> tuple[Records, DatasetSpec]:
    """A whole labelled file as Records (for training), and the spec resolved on its header.

    Strict unless `lenient`; lenient reading skips malformed lines, but fails (TooManyBadLines)
    when none parse or more than `max_bad_share` of them are malformed (default: the schema's
    `max_bad_share`, else DEFAULT_MAX_BAD_SHARE).

    Where the schema has an entity key, records are grouped by entity (arrival order kept inside
    each) and `segment` holds the entity, so training windows are per entity, like detection's.
    """
    share = next((s for s in (max_bad_share, spec.max_bad_share) if s is not None),
                 DEFAULT_MAX_BAD_SHARE)
    reader = FlowReader(path, spec, chunk_bytes=chunk_bytes, strict=not lenient,
                        require_label=True, max_bad_share=share,
                        share_hint=" (`--set data.max_bad_share=...` or a schema file's "
                                   "`max_bad_share` sets the share)")
    chunks = list(reader)
    if not chunks:
        raise DataFormatError("; ".join(reader.report.errors) or f"{path}: no records")
    if reader.label_col is None:
        raise DataFormatError(f"{path}:1: no label column {reader.spec.label!r}; training and "
                              "evaluation need labelled records (`fedlstm detect` scores "
                              "unlabelled ones)")
    frame = pd.concat([c.frame for c in chunks], ignore_index=True)[reader.spec.feature_columns]
    label = np.concatenate([c.label for c in chunks])
    family_label = np.concatenate([c.family_label for c in chunks]) \
        if reader.family_col else None
    attack, family, is_attack = label_arrays(reader.spec, label, family_label)
    report = ReadReport(Path(path), rows=len(frame),
                        skipped=list(reader.report.examples))
    segment = arrival = None
    if reader.entity_col:  # windows per entity, as `fedlstm detect` forms them
        codes, _ = pd.factorize(pd.Series(np.concatenate([c.entity for c in chunks]), dtype=object))
        order = np.argsort(codes, kind="stable")
        frame, attack, family, is_attack = (frame.iloc[order].reset_index(drop=True),
                                            attack[order], family[order], is_attack[order])
        segment, arrival = codes[order], order
    for note in reader.report.notes:  # e.g. a repeated column name, an absent optional column
        log.warning("%s", note)
    if reader.report.bad:
        log.warning("%s: skipped %d malformed line(s)", path, reader.report.bad)
    if reader.report.filled:
        log.warning("%s: filled unset/NaN/Inf values with %s: %s", path, reader.spec.fill_missing,
                    dict(reader.report.filled))
    return Records(frame, attack, family, is_attack, report, segment, arrival), reader.spec


def with_families(spec: DatasetSpec, *parts: Records) -> DatasetSpec:
    if spec.family_order:
        return spec
    counts = Counter(f for p in parts for f in p.family if f != NORMAL_FAMILY)
    return spec.model_copy(update={"family_order": [NORMAL_FAMILY, *sorted(counts)]})


def expand_inputs(entries: str | Path | list) -> list[Path]:
    """Files named directly, and the files of named folders (sorted by name; hidden ones skipped),
    e.g. a folder of rotated Zeek logs `conn.00:00:00-01:00:00.log.gz`, ..."""
    out: list[Path] = []
    for entry in [entries] if isinstance(entries, (str, Path)) else entries:
        path = Path(entry)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not inside:
                raise DataFormatError(f"{path}: folder holds no flow files")
            out += inside
        elif path.exists():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out
