"""Opening data files and the errors of reading them: plain, gzip (also rotated logs) and
single-member zip files; numbers kept inside float32's range."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
from pathlib import Path

import numpy as np


class DataFormatError(ValueError):
    """A data file that cannot be read as its schema says; the message names file:line:column."""


class BadLineError(DataFormatError):
    """A malformed line met by a strict read. `where` (file:line, column, what was wrong) is the
    message without the hint, so a command can name its own option for skipping bad lines."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where

    def __str__(self) -> str:
        return f"{self.where} (use lenient reading to skip bad lines)"


def file_key(path: Path) -> tuple[str, int, int]:
    """A file's identity for caches of what was computed from it: its resolved path, size and
    modification time, so that a changed file is computed again."""
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def text_problem(first_line: bytes) -> str | None:
    """Why a file whose first line (up to its first line feed) is `first_line` cannot be read as
    lines of UTF-8 text, in words that say what to do; None when nothing is wrong with it."""
    if first_line[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return ("the text is UTF-16 (a byte-order mark opens it): save it as UTF-8, e.g. "
                "`iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`")
    if b"\r" in first_line.rstrip(b"\r\n"):
        return ("its lines end in a carriage return alone (classic Mac OS): convert them to "
                "line feeds, e.g. `tr '\\r' '\\n' < FILE > FILE.unix`")
    return None


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [n for n in archive.namelist() if not n.endswith("/")]
        if len(members) != 1:
            raise DataFormatError(f"{path}: a .zip must hold exactly one file, found {members}")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def finite_float32(values: np.ndarray) -> np.ndarray:
    """Numbers as float32 without overflow: finite values beyond float32's range would turn
    infinite, so they are kept at its largest value (the preprocessor clips to the training range
    anyway)."""
    limit = float(np.finfo(np.float32).max)
    return np.clip(values, -limit, limit).astype(np.float32)


# Compressed streams told by their first bytes, whatever the file's name: bz2 and xz as
# exported by rotation tools (the standard library reads both).
_STREAMS = ((b"BZh", bz2.BZ2File), (b"\xfd7zXZ\x00", lzma.LZMAFile))


def open_binary(path: Path) -> io.BufferedIOBase:
    """A file as bytes; gzip (also rotated Zeek logs), bz2, xz and single-member .zip are
    decompressed. A pipe (/dev/stdin: `fedlstm detect BUNDLE -`) is peeked at, not reopened:
    it can be read only once."""
    path = Path(path)
    fh = open(path, "rb")
    try:
        magic = fh.peek(6)[:6]
    except BaseException:
        fh.close()
        raise
    gzipped = magic[:2] == b"\x1f\x8b"
    for start, stream_type in _STREAMS:
        if magic.startswith(start):
            if fh.seekable():
                fh.close()
                return stream_type(path, "rb")
            return stream_type(fh, "rb")  # a pipe: closed with the process
    if gzipped and not fh.seekable():
        stream = gzip.GzipFile(fileobj=fh, mode="rb")
        stream.myfileobj = fh  # closed with it (GzipFile leaves a passed fileobj open)
        return stream
    if not gzipped and path.suffix != ".zip":
        return fh
    fh.close()
    if gzipped:
        return gzip.open(path, "rb")
    archive = zipfile.ZipFile(path)
    members = [n for n in archive.namelist() if not n.endswith("/")]
    if len(members) != 1:
        raise DataFormatError(f"{path}: a .zip must hold exactly one file, found {members}")
    return archive.open(members[0])
