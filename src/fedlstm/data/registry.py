"""Find a dataset's files in the user's data directory and check them before anything reads them."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from fedlstm.data.io import file_key, open_text
from fedlstm.data.spec import DatasetSpec, FileSpec

DATA_ENV = "FEDLSTM_DATA"


class DatasetNotFound(FileNotFoundError):
    pass


class DatasetCorrupt(ValueError):
    pass


# Where commands that fetch what they miss (`reproduce`) put datasets when no folder is named.
DEFAULT_DATA = Path("~/.cache/fedlstm/datasets")


def data_dir(explicit: str | Path | None = None, default: Path | None = None) -> Path:
    value = explicit or os.environ.get(DATA_ENV) or default
    if not value:
        raise DatasetNotFound(
            f"no data directory: pass --data-dir or set {DATA_ENV} "
            "(then `fedlstm data fetch NAME` downloads the files there)")
    return Path(value).expanduser()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _cached_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def file_sha256(path: Path) -> str:
    """`sha256_of`, computed once per file content (`file_key`) in this process."""
    return _cached_sha(*file_key(path))


def count_rows(path: Path, has_header: bool) -> int:
    with open_text(path) as fh:
        n = sum(1 for line in fh if line.strip())
    return n - int(has_header)


@lru_cache(maxsize=64)
def _cached_rows(path: str, size: int, mtime_ns: int, has_header: bool) -> int:
    return count_rows(Path(path), has_header)


def locate(spec: DatasetSpec, role: str, root: Path, verify: bool = True) -> Path:
    """Path of the file playing `role`; raises with the fetch command when it is missing or corrupt."""
    fspec = spec.file(role)
    folder = root / spec.folder
    fetch_hint = f"run `fedlstm data fetch {spec.name} --data-dir {root}`"
    if spec.identify_by_rows:
        return _locate_by_rows(spec, fspec, folder, fetch_hint)
    for name in [fspec.name, *fspec.alternatives]:
        path = folder / name
        if path.exists():
            if verify:
                check_file(path, fspec, spec, fetch_hint)
            return path
    raise DatasetNotFound(f"{spec.name}: missing {folder / fspec.name} ({role} file"
                          f"{f', {fspec.rows:,} rows' if fspec.rows else ''}); {fetch_hint}")


def _locate_by_rows(spec: DatasetSpec, fspec: FileSpec, folder: Path, hint: str) -> Path:
    names = {n for f in spec.files for n in [f.name, *f.alternatives]}
    found = {}
    for name in sorted(names):
        path = folder / name
        if path.exists():
            rows = _cached_rows(*file_key(path), spec.has_header)
            found[name] = rows
            if rows == fspec.rows:
                if fspec.sha256:
                    check_file(path, fspec, spec, hint)
                return path
    seen = ", ".join(f"{n}: {r:,} rows" for n, r in found.items()) or "no partition file"
    raise DatasetNotFound(
        f"{spec.name}: no file with the {fspec.rows:,} rows of the {fspec.role} partition in {folder} "
        f"(found {seen}; the partitions are told apart by row count because their published names "
        f"are swapped); {hint}")


def check_file(path: Path, fspec: FileSpec, spec: DatasetSpec, hint: str) -> None:
    if fspec.sha256 and path.name == fspec.name:
        actual = file_sha256(path)
        if actual != fspec.sha256:
            raise DatasetCorrupt(f"{path}: sha256 {actual} does not match the published "
                                 f"{fspec.sha256}; the file is corrupt or a different version; {hint}")
    elif fspec.rows:  # a decompressed or renamed copy: the row count is what we can check
        rows = _cached_rows(*file_key(path), spec.has_header)
        if rows != fspec.rows:
            raise DatasetCorrupt(f"{path}: {rows:,} rows, expected {fspec.rows:,}; {hint}")


def available_roles(spec: DatasetSpec, root: Path) -> list[str]:
    roles = []
    for f in spec.files:
        try:
            locate(spec, f.role, root, verify=False)
            roles.append(f.role)
        except DatasetNotFound:
            pass
    return roles
