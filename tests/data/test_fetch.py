"""fetch.py against a localhost HTTP server that serves the shared benchmark files (with Range)."""

from __future__ import annotations

import functools
import logging
import os
import pickle
import random
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedlstm.data import registry
from fedlstm.data.fetch import FetchError, download, fetch_dataset
from fedlstm.data.registry import DatasetCorrupt
from fedlstm.data.schemas import KDD99, NSL_KDD, UNSW_NB15

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _shared_datasets() -> Path | None:
    candidates = [PROJECT_ROOT.parent / "shared" / "datasets"]
    if os.environ.get(registry.DATA_ENV):
        candidates.append(Path(os.environ[registry.DATA_ENV]).expanduser())
    for path in candidates:
        if (path / NSL_KDD.folder).is_dir():
            return path
    return None


SHARED = _shared_datasets()


@pytest.fixture
def shared() -> Path:
    if SHARED is None:
        pytest.skip(f"benchmark files not found in {PROJECT_ROOT.parent / 'shared' / 'datasets'} "
                    f"nor in ${registry.DATA_ENV}")
    return SHARED


@dataclass
class Served:
    url: str
    server: ThreadingHTTPServer
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def gets(self, name: str) -> list[str | None]:
        """Range headers of the GETs whose path ends with `name`."""
        return [rng for path, rng in self.requests if path.endswith("/" + name)]


class _RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus 'Range: bytes=N-' (206 / 416), like a real file server."""

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        self.server.served.requests.append((self.path, rng))
        match = re.fullmatch(r"bytes=(\d+)-", (rng or "").strip())
        path = Path(self.translate_path(self.path))
        if match and self.server.honour_range and path.is_file():
            self._send_from(path, int(match[1]))
        elif self.server.cut_after is not None and path.is_file():
            self._send_cut(path, self.server.cut_after)
        else:
            super().do_GET()

    def _send_cut(self, path: Path, cut: int) -> None:
        """Promise the whole file, send `cut` bytes and hang up: a dropped connection."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as fh:
            self.wfile.write(fh.read(cut))

    def _send_from(self, path: Path, start: int) -> None:
        size = path.stat().st_size
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with open(path, "rb") as fh:
            fh.seek(start)
            self.wfile.write(fh.read())


@pytest.fixture
def serve():
    """serve(directory, honour_range=True) -> Served; every server is shut down after the test."""
    started: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(directory: Path, honour_range: bool = True) -> Served:
        handler = functools.partial(_RangeHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.honour_range = honour_range
        server.cut_after = None  # set to N to drop plain GETs after N bytes
        served = Served(f"http://127.0.0.1:{server.server_address[1]}", server)
        server.served = served
        # A short poll keeps shutdown() (and so each test) fast.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread))
        return served

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def mirror(serve, shared) -> Served:
    return serve(shared)


class Bars:
    """A progress_factory that records what a rich progress bar would be told."""

    def __init__(self):
        self.totals: dict[str, int | None] = {}
        self.advances: dict[str, list[int]] = {}

    def __call__(self, name, total):
        self.totals[name] = total
        self.advances[name] = []
        return self.advances[name].append


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def test_nsl_kdd_test21_from_mirror(mirror, shared, tmp_path):
    bars = Bars()
    fspec = NSL_KDD.file("test-21")
    paths = fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url + "/", roles=["test-21"],
                          progress_factory=bars)
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    assert paths == [dest]
    assert registry.sha256_of(dest) == fspec.sha256
    assert registry.locate(NSL_KDD, "test-21", tmp_path) == dest
    assert not _part(dest).exists()
    assert mirror.gets("KDDTest-21.txt") == [None]  # one plain GET, at MIRROR/FOLDER/FILE
    size = (shared / "nsl-kdd" / "KDDTest-21.txt").stat().st_size
    assert bars.totals == {"KDDTest-21.txt": size}
    assert sum(bars.advances["KDDTest-21.txt"]) == size
    assert sorted(p.name for p in (tmp_path / "nsl-kdd").iterdir()) == ["KDDTest-21.txt"]


def test_kdd99_from_mirror(mirror, tmp_path):
    paths = fetch_dataset(KDD99, tmp_path, mirror=mirror.url)
    assert [p.name for p in paths] == ["kddcup.data_10_percent.gz", "corrected.gz"]
    for fspec, path in zip(KDD99.files, paths):
        assert registry.sha256_of(path) == fspec.sha256
        assert registry.locate(KDD99, fspec.role, tmp_path) == path


def test_a_mirror_without_the_file_is_named_with_its_layout(tmp_path):
    """The hint was "pass --mirror URL", to a user who had just passed one."""
    empty = tmp_path / "mirror"
    empty.mkdir()
    with pytest.raises(FetchError) as caught:
        fetch_dataset(NSL_KDD, tmp_path / "data", mirror=str(empty), roles=["test-21"])
    assert f"the mirror {empty} must hold nsl-kdd/KDDTest-21.txt" in str(caught.value)
    assert "pass --mirror" not in str(caught.value)
    assert pickle.loads(pickle.dumps(caught.value)).hint == caught.value.hint


def test_publisher_url_without_mirror(mirror, tmp_path):
    spec = NSL_KDD.model_copy(deep=True)
    fspec = spec.file("test-21")
    fspec.url = f"{mirror.url}/nsl-kdd/{fspec.name}"
    [path] = fetch_dataset(spec, tmp_path, roles=["test-21"])
    assert registry.sha256_of(path) == fspec.sha256


def test_resume_sends_range_and_verifies(mirror, shared, tmp_path):
    data = (shared / "nsl-kdd" / "KDDTest-21.txt").read_bytes()
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    dest.parent.mkdir(parents=True)
    half = len(data) // 2
    _part(dest).write_bytes(data[:half])
    bars = Bars()

    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"], progress_factory=bars)

    assert mirror.gets("KDDTest-21.txt") == [f"bytes={half}-"]
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256
    assert not _part(dest).exists()
    advances = bars.advances["KDDTest-21.txt"]
    assert advances[0] == half and sum(advances) == len(data)
    assert bars.totals["KDDTest-21.txt"] == len(data)


def test_dropped_connection_keeps_part_and_next_run_resumes(mirror, shared, tmp_path):
    size = (shared / "nsl-kdd" / "KDDTest-21.txt").stat().st_size
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    mirror.server.cut_after = 300_000
    with pytest.raises(FetchError, match=r"received 300,000 of .* run again to resume"):
        fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert not dest.exists() and _part(dest).stat().st_size == 300_000
    mirror.server.cut_after = None
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert mirror.gets("KDDTest-21.txt") == [None, "bytes=300000-"]
    assert dest.stat().st_size == size
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256


def test_complete_part_answered_416_is_kept(mirror, shared, tmp_path):
    src = shared / "nsl-kdd" / "KDDTest-21.txt"
    dest = tmp_path / "KDDTest-21.txt"
    _part(dest).write_bytes(src.read_bytes())
    download(f"{mirror.url}/nsl-kdd/KDDTest-21.txt", dest, NSL_KDD.file("test-21").sha256)
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256
    assert mirror.gets("KDDTest-21.txt") == [f"bytes={src.stat().st_size}-"]


def test_server_ignoring_range_restarts_from_zero(serve, shared, tmp_path):
    mirror = serve(shared, honour_range=False)
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    dest.parent.mkdir(parents=True)
    stale = b"stale bytes from some other file\n" * 1000
    _part(dest).write_bytes(stale)
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert mirror.gets("KDDTest-21.txt") == [f"bytes={len(stale)}-"]  # got a 200: started over
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256


def test_corrupt_part_is_deleted_so_the_next_run_heals(mirror, shared, tmp_path):
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    dest.parent.mkdir(parents=True)
    _part(dest).write_bytes(b"x" * 1000)  # resumable, but the result cannot verify
    with pytest.raises(DatasetCorrupt):
        fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert not dest.exists() and not _part(dest).exists()
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256


def test_wrong_bytes_raise_corrupt_and_leave_nothing(serve, tmp_path):
    fake = tmp_path / "mirror" / "nsl-kdd"
    fake.mkdir(parents=True)
    (fake / "KDDTest-21.txt").write_bytes(random.Random(0).randbytes(50_000))
    mirror = serve(tmp_path / "mirror")
    root = tmp_path / "data"
    with pytest.raises(DatasetCorrupt) as info:
        fetch_dataset(NSL_KDD, root, mirror=mirror.url, roles=["test-21"])
    message = str(info.value)
    assert f"{mirror.url}/nsl-kdd/KDDTest-21.txt" in message
    assert NSL_KDD.file("test-21").sha256 in message
    assert registry.sha256_of(fake / "KDDTest-21.txt") in message
    assert list((root / "nsl-kdd").iterdir()) == []


def test_missing_required_file_raises_fetch_error(serve, tmp_path):
    (tmp_path / "mirror" / "nsl-kdd").mkdir(parents=True)
    mirror = serve(tmp_path / "mirror")
    with pytest.raises(FetchError) as info:
        fetch_dataset(NSL_KDD, tmp_path / "data", mirror=mirror.url, roles=["test"])
    url = f"{mirror.url}/nsl-kdd/KDDTest+.txt"
    assert info.value.url == url and info.value.status == 404
    assert url in str(info.value) and "404" in str(info.value)
    assert f"the mirror {mirror.url} must hold nsl-kdd/KDDTest+.txt" in str(info.value)
    assert list((tmp_path / "data" / "nsl-kdd").iterdir()) == []


def test_unreachable_server_raises_fetch_error(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nsl-kdd/KDDTest+.txt"
    with pytest.raises(FetchError, match=re.escape(url)):
        download(url, tmp_path / "x.txt", None, timeout=5)
    assert not (tmp_path / "x.txt").exists()


def test_present_valid_file_is_not_downloaded_again(mirror, tmp_path):
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert len(mirror.requests) == 1
    bars = Bars()
    [path] = fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"],
                           progress_factory=bars)
    assert path == tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    assert len(mirror.requests) == 1 and bars.totals == {}
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"], force=True)
    assert len(mirror.requests) == 2


def test_present_corrupt_file_is_replaced(mirror, tmp_path):
    dest = tmp_path / "nsl-kdd" / "KDDTest-21.txt"
    dest.parent.mkdir(parents=True)
    dest.write_text("not the published file\n")
    fetch_dataset(NSL_KDD, tmp_path, mirror=mirror.url, roles=["test-21"])
    assert registry.sha256_of(dest) == NSL_KDD.file("test-21").sha256


def test_unsw_training_partition_missing_on_mirror_is_skipped(mirror, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fedlstm.data.fetch"):
        paths = fetch_dataset(UNSW_NB15, tmp_path, mirror=mirror.url)
    dest = tmp_path / "unsw-nb15" / "UNSW_NB15_testing-set.csv"
    assert paths == [dest]
    assert registry.locate(UNSW_NB15, "test", tmp_path) == dest
    assert "UNSW_NB15_training-set.csv" in caplog.text
    # Asked for by name, the missing partition is an error, not a warning.
    with pytest.raises(FetchError, match="UNSW_NB15_training-set.csv"):
        fetch_dataset(UNSW_NB15, tmp_path, mirror=mirror.url, roles=["train"])


def test_unsw_partition_without_checksum_is_checked_by_rows(serve, tmp_path):
    fake = tmp_path / "mirror" / "unsw-nb15"
    fake.mkdir(parents=True)
    header = ",".join(UNSW_NB15.columns)
    # The 'training' name holding a tiny file: the row count, not the name, must decide.
    (fake / "UNSW_NB15_training-set.csv").write_text(header + "\n" + "1,2\n" * 10)
    mirror = serve(tmp_path / "mirror")
    root = tmp_path / "data"
    with pytest.raises(DatasetCorrupt, match=r"10 rows, expected 175,341"):
        fetch_dataset(UNSW_NB15, root, mirror=mirror.url, roles=["train"])
    assert list((root / "unsw-nb15").iterdir()) == []


def test_unsw_partition_with_right_row_count_is_kept(serve, tmp_path):
    spec = UNSW_NB15.model_copy(deep=True)
    spec.file("train").rows = 10  # stand-in for the real 175,341-row file
    fake = tmp_path / "mirror" / "unsw-nb15"
    fake.mkdir(parents=True)
    (fake / "UNSW_NB15_training-set.csv").write_text(",".join(spec.columns) + "\n" + "1,2\n" * 10)
    mirror = serve(tmp_path / "mirror")
    [path] = fetch_dataset(spec, tmp_path / "data", mirror=mirror.url, roles=["train"])
    assert path.name == "UNSW_NB15_training-set.csv"
    assert sorted(p.name for p in path.parent.iterdir()) == ["UNSW_NB15_training-set.csv"]
    # Present with the right count: not fetched again.
    fetch_dataset(spec, tmp_path / "data", mirror=mirror.url, roles=["train"])
    assert len(mirror.requests) == 1


def test_local_directory_as_mirror(shared, tmp_path):
    [path] = fetch_dataset(NSL_KDD, tmp_path, mirror=str(shared), roles=["test-21"])
    assert registry.sha256_of(path) == NSL_KDD.file("test-21").sha256
    with pytest.raises(FetchError) as info:
        fetch_dataset(NSL_KDD, tmp_path, mirror=str(tmp_path / "nowhere"), roles=["test"])
    assert info.value.not_found
