"""Download a dataset's files from their publishers (or a mirror), resumable and sha256-verified.

Only the standard library is used, so fetching works in a bare install. A file reaches its final
name only after it has been verified; until then it lives next to it as `NAME.part`, which a later
run resumes with an HTTP Range request.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from fedlstm import __version__
from fedlstm.data.registry import DatasetCorrupt, DatasetNotFound, count_rows, locate, sha256_of
from fedlstm.data.spec import DatasetSpec, FileSpec

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]  # (bytes done so far, total bytes or None)
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]  # (name, total) -> advance(n)

_CHUNK = 1 << 16
# Some publishers refuse urllib's default agent string.
_USER_AGENT = f"fedlstm/{__version__} (+python-urllib)"
_MIRROR_HINT = ("if the publisher is unreachable or has moved the file, pass --mirror URL "
                "(a server or directory laid out as FOLDER/FILE, e.g. nsl-kdd/KDDTest+.txt)")


class FetchError(RuntimeError):
    """A download that failed for a network or HTTP reason; `status` is the HTTP code if any."""

    def __init__(self, url: str, reason: str, status: int | None = None,
                 hint: str = _MIRROR_HINT):
        self.url = url
        self.reason = reason
        self.status = status
        self.hint = hint
        super().__init__(f"could not download {url}: {reason}; {hint}")

    def __reduce__(self):  # keep it picklable despite the custom signature
        return (type(self), (self.url, self.reason, self.status, self.hint))

    @property
    def not_found(self) -> bool:
        return self.status in (404, 410)


class _Restart(Exception):
    """The .part cannot be resumed (server answered a different range): start from zero."""


def download(url: str, dest: Path, sha256: str | None, progress: Progress | None = None,
             timeout: float = 60) -> Path:
    """Download `url` to `dest`, resuming a previous `dest.part`; verify sha256 before renaming.

    `progress(done, total)` is called with the bytes received so far (a resumed download starts at
    the size of the .part) and the total size when the server tells it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, offset, progress, timeout)
            break
        except _Restart:
            if attempt:
                raise FetchError(url, "the server keeps answering a different byte range") from None
            log.info("%s: cannot resume %s, downloading it again from the start", url, part)
            part.unlink(missing_ok=True)
    if sha256:
        actual = sha256_of(part)
        if actual != sha256.lower():
            # A bad .part must not be resumed by the next run: it would never verify.
            part.unlink(missing_ok=True)
            raise DatasetCorrupt(
                f"{url}: downloaded file has sha256 {actual}, expected {sha256}; the transfer was "
                "corrupted or the publisher changed the file (the partial download was deleted; "
                "run again, or pass --mirror URL)")
    os.replace(part, dest)
    log.info("downloaded %s -> %s", url, dest)
    return dest


def _transfer(url: str, part: Path, offset: int, progress: Progress | None, timeout: float) -> None:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 416 and offset:
                # Nothing left after `offset`: the .part is complete, or longer than the file.
                if _content_range(exc.headers.get("Content-Range"))[1] == offset:
                    return
                raise _Restart from None
            raise FetchError(url, f"HTTP {exc.code} {exc.reason}", exc.code) from exc
    except urllib.error.URLError as exc:
        # file:// mirrors report a missing file this way; treat it like a 404.
        status = 404 if isinstance(exc.reason, FileNotFoundError) else None
        raise FetchError(url, str(exc.reason), status) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, bad URLs
        raise FetchError(url, str(exc) or type(exc).__name__) from exc

    with response:
        status = getattr(response, "status", None) or 200  # file:// responses carry no status
        length = response.headers.get("Content-Length")
        if offset and status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise _Restart
            mode = "ab"
        else:
            if offset:
                log.info("%s: server ignored the range request; restarting the download", url)
            offset, mode = 0, "wb"
            total = int(length) if length and length.isdigit() else None
        done = offset
        if progress:
            progress(done, total)
        with open(part, mode) as fh:
            try:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                # The .part stays: the next run resumes from here.
                raise FetchError(url, f"connection lost after {done:,} bytes ({exc}); "
                                      "run again to resume") from exc
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and done != total:
        raise FetchError(url, f"received {done:,} of {total:,} bytes; run again to resume")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from 'bytes 100-199/200' or 'bytes */200'."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _verifies(path: Path, fspec: FileSpec, spec: DatasetSpec) -> bool:
    try:
        if fspec.sha256:
            return sha256_of(path) == fspec.sha256
        if fspec.rows:
            return count_rows(path, spec.has_header) == fspec.rows
        return True
    except (OSError, EOFError, ValueError, zlib.error):  # unreadable or truncated: fetch it again
        return False


def _already_present(spec: DatasetSpec, fspec: FileSpec, dest: Path) -> Path | None:
    if dest.exists():
        if _verifies(dest, fspec, spec):
            return dest
        log.warning("%s does not verify against the published file; downloading it again", dest)
        return None
    if spec.identify_by_rows:
        # Partition files circulate under each other's names: a copy found under another name
        # may be the other partition, and dest must not be skipped (or clobbered) because of it.
        return None
    try:  # a renamed or decompressed copy (e.g. 'corrected' for 'corrected.gz') counts as present
        return locate(spec, fspec.role, dest.parent.parent, verify=True)
    except (DatasetNotFound, DatasetCorrupt, OSError, EOFError, ValueError, zlib.error):
        return None


class _Advance:
    """Turn download()'s (done, total) reports into advance(n) calls on a lazily made bar."""

    def __init__(self, factory: ProgressFactory, name: str):
        self.factory, self.name = factory, name
        self.bar: Callable[[int], None] | None = None
        self.last = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:  # the total is known only once the server has answered
            self.bar = self.factory(self.name, total)
        self.bar(done - self.last)
        self.last = done


def _mirror_base(mirror: str) -> str:
    if "://" not in mirror:  # a local directory
        return Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/")


def fetch_dataset(spec: DatasetSpec, root: Path, mirror: str | None = None,
                  roles: list[str] | None = None, progress_factory: ProgressFactory | None = None,
                  force: bool = False, timeout: float = 60) -> list[Path]:
    """Download the files of `spec` (or those playing `roles`) into `root/spec.folder`.

    Files already present and valid are kept unless `force`. `mirror` replaces the publishers'
    addresses with MIRROR/FOLDER/FILE (a URL or a local directory). `progress_factory(name, total)`
    must return a callable taking the number of bytes just received (a rich.progress task fits).

    Returns the paths of the requested files that are now in place, downloaded or already there.
    A file without a published checksum that the mirror lacks (the UNSW-NB15 training partition)
    is skipped with a warning unless its role was asked for explicitly. Raises FetchError for
    network and HTTP failures, DatasetCorrupt for a download that does not verify, and KeyError
    for a role the dataset does not have.
    """
    root = Path(root)
    wanted = spec.files if roles is None else [spec.file(r) for r in roles]
    folder = root / spec.folder
    base = _mirror_base(mirror) if mirror else None
    paths: list[Path] = []
    for fspec in wanted:
        if fspec.url is None and base is None:
            log.warning("%s: %s has no public download address; place it in %s yourself or pass "
                        "--mirror", spec.name, fspec.name, folder)
            continue
        dest = folder / fspec.name
        if force:
            for target in (dest, _staging(dest)):  # a forced fetch must not resume old bytes
                target.with_name(target.name + ".part").unlink(missing_ok=True)
        else:
            present = _already_present(spec, fspec, dest)
            if present is not None:
                log.info("%s: %s already present and valid", spec.name, present)
                paths.append(present)
                continue
        url = f"{base}/{spec.folder}/{fspec.name}" if base else fspec.url
        progress = _Advance(progress_factory, fspec.name) if progress_factory else None
        try:
            paths.append(_fetch_file(spec, fspec, url, dest, progress, timeout))
        except FetchError as exc:
            optional = base is not None and fspec.sha256 is None and roles is None
            if base is not None and not (exc.not_found and optional):
                # The generic hint ("pass --mirror") is no help to whoever just did.
                raise FetchError(url, exc.reason, exc.status, hint=(
                    f"the mirror {mirror} must hold {spec.folder}/{fspec.name}, laid out as "
                    "FOLDER/FILE")) from None
            if not (exc.not_found and optional):
                raise
            log.warning("%s: the mirror has no %s (%s partition, %s); skipped", spec.name,
                        fspec.name, fspec.role, exc.reason)
    return paths


def _staging(dest: Path) -> Path:
    # Keeps the real suffix so count_rows() opens a compressed file the right way.
    return dest.with_name("unverified." + dest.name)


def _fetch_file(spec: DatasetSpec, fspec: FileSpec, url: str, dest: Path,
                progress: Progress | None, timeout: float) -> Path:
    log.info("downloading %s -> %s", url, dest)
    if fspec.sha256 or not fspec.rows:
        return download(url, dest, fspec.sha256, progress, timeout)
    # No published checksum: the row count is the check, and it needs the whole file on disk,
    # so the download lands under a staging name and is renamed only once it has the right rows.
    staging = download(url, _staging(dest), None, progress, timeout)
    try:
        rows = count_rows(staging, spec.has_header)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        staging.unlink(missing_ok=True)
        raise DatasetCorrupt(f"{url}: downloaded file cannot be read ({exc})") from exc
    if rows != fspec.rows:
        staging.unlink(missing_ok=True)
        raise DatasetCorrupt(
            f"{url}: downloaded file has {rows:,} rows, expected {fspec.rows:,} for the "
            f"{fspec.role} partition of {spec.name} (the download was deleted)")
    os.replace(staging, dest)
    return dest
