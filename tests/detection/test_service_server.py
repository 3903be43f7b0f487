"""The scoring service behind a real uvicorn server on loopback, configured as `fedlstm serve`
configures it: TLS, read deadlines for slow senders, streamed bodies over the size limit."""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from _detect_helpers import HEADER, flow_lines, tiny, tiny_model  # noqa: F401
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedlstm.detection.service import create_app, server_config

COLUMNS = HEADER.split(",")


def records(n: int, seed: int = 0) -> list[dict]:
    return [dict(zip(COLUMNS, line.split(","))) for line in flow_lines(n, seed)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, **options):
    """`app` served on a free loopback port in a thread; yields the port."""
    port = _free_port()
    server = uvicorn.Server(server_config(app, port=port, log_level="error", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_with_the_given_certificate(tiny_model, tmp_path):
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with serving(create_app(tiny_model), tls_cert=cert, tls_key=key) as port:
        r = httpx.post(f"https://127.0.0.1:{port}/score", json=records(12), verify=trust,
                       timeout=10)
        assert r.status_code == 200 and r.json()["scored"] == 12
        with pytest.raises(httpx.HTTPError):  # no plain-text fallback on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


# Both of uvicorn's parsers get the guards; httptools is used when installed.
parsers = pytest.mark.parametrize("parser", ["httptools", "h11"])

HEAD = (b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")


def _until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t, data = time.perf_counter(), b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.perf_counter() - t


@parsers
@pytest.mark.parametrize("sent", [HEAD, HEAD + b"Content-Length: 100\r\n\r\n[{\"bytes\": 1"],
                         ids=["head-unfinished", "body-unfinished"])
def test_a_half_sent_request_gets_408_and_is_closed_at_the_read_timeout(tiny_model, sent, parser):
    with serving(create_app(tiny_model, read_timeout=0.5), parser=parser) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(sent)
            reply, waited = _until_closed(sock, limit=30)
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        # closed by the 0.5 s deadline, not by the client giving up at 30 s (wide: CI is noisy)
        assert 0.3 < waited < 10
        r = httpx.post(f"http://127.0.0.1:{port}/score", json=records(12), timeout=10)
        assert r.status_code == 200  # the server is still there for everyone else


@parsers
def test_a_trickled_head_does_not_extend_the_deadline(tiny_model, parser):
    with serving(create_app(tiny_model, read_timeout=0.5), parser=parser) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            t = time.perf_counter()
            for byte in HEAD * 10:  # a byte every 20 ms: 15 s for the whole head
                if select.select([sock], [], [], 0.02)[0]:
                    break  # the server answered
                sock.sendall(bytes([byte]))
            reply, _ = _until_closed(sock, limit=1)
        assert reply.startswith(b"HTTP/1.1 408 ") and time.perf_counter() - t < 8  # not 15 s


@parsers
def test_many_slow_senders_are_all_released(tiny_model, parser):
    with serving(create_app(tiny_model, read_timeout=0.5), parser=parser) as port:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(HEAD if i % 2 else HEAD + b"Content-Length: 50\r\n\r\n[")
            t = time.perf_counter()
            for sock in socks:
                _until_closed(sock, limit=5)
            assert time.perf_counter() - t < 30  # held: 5 s each
        finally:
            for sock in socks:
                sock.close()


@parsers
def test_an_idle_connection_is_closed(tiny_model, parser):
    with serving(create_app(tiny_model, read_timeout=0.5), parser=parser) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            reply, waited = _until_closed(sock, limit=30)
        assert reply == b"" and waited < 10  # by the 0.5 s deadline, not the client's 30 s


def _send_chunked(sock: socket.socket, total: int, chunk: int = 8000) -> None:
    sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    try:
        for _ in range(0, total, chunk):
            sock.sendall(b"%x\r\n%s\r\n" % (chunk, b" " * chunk))
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before the end: the reply says why


@parsers
def test_a_chunked_body_over_the_limit_is_413(tiny_model, parser):
    with serving(create_app(tiny_model, max_body_bytes=20_000), parser=parser) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            _send_chunked(sock, 48_000)
            reply, _ = _until_closed(sock, limit=5)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert b"connection: close" in reply.lower()

        def body():  # httpx streams a generator with Transfer-Encoding: chunked
            yield b"["
            for _ in range(30):
                yield b" " * 1000
            yield b"]"

        try:
            r = httpx.post(f"http://127.0.0.1:{port}/score", content=body(),
                           headers={"content-type": "application/json"}, timeout=10)
            assert r.status_code == 413
        except httpx.WriteError:
            pass  # the server answered and closed while the client was still sending
        small = httpx.post(f"http://127.0.0.1:{port}/score", content=iter([b"[", b"]"]),
                           headers={"content-type": "application/json"}, timeout=10)
        assert small.status_code == 200 and small.json()["records"] == 0


@parsers
def test_an_endless_head_is_refused(tiny_model, parser):
    """httptools buffers any amount of an unfinished head: the service's protocol refuses one
    over MAX_HEAD_BYTES with 431, under either parser, also when the head comes whole in one
    read (both admitted it: httptools parsed it at once, h11 bounds only incomplete heads)."""
    with serving(create_app(tiny_model), parser=parser) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: a\r\n" * 4000)
            reply, _ = _until_closed(sock, limit=5)
        assert reply.startswith(b"HTTP/1.1 431 "), \
            reply[:200]
        r = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Fine": "a" * 8000})
        assert r.status_code == 200  # a large but bounded head is fine
        # a whole oversized head in one read was admitted (httptools parsed it at once)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000
                         + b"\r\n\r\n")
            reply, _ = _until_closed(sock, limit=5)
        assert reply.startswith(b"HTTP/1.1 431 "), \
            reply[:200]


# ---------------------------------------------------------------------- `fedlstm serve`

KEY = "k3y-" + "x" * 28


@pytest.fixture
def served(monkeypatch):
    """`fedlstm serve`'s arguments -> the uvicorn configuration it would run (nothing served)."""
    from typer.testing import CliRunner

    from fedlstm.cli.main import app as cli

    ran: list[uvicorn.Config] = []

    def run(self, sockets=None):
        [sock] = sockets  # bound by the command before it said "serving"
        self.config.bound_port = sock.getsockname()[1]
        sock.close()
        ran.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "run", run)

    def serve(*args: str):
        result = CliRunner().invoke(cli, ["serve", "--port", "0", *map(str, args)])
        return result, ran[-1] if ran and result.exit_code == 0 else None

    return serve


def test_serve_wires_api_key_tls_and_limits(served, tiny, tmp_path):
    from fastapi.testclient import TestClient

    cert, key = _self_signed(tmp_path)
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY + "\n")
    result, config = served(tiny[2], "--api-key-file", key_file, "--tls-cert", cert,
                            "--tls-key", key, "--read-timeout", 3, "--limit-concurrency", 64)
    assert result.exit_code == 0, result.output
    assert f"https://127.0.0.1:{config.bound_port} " in result.output  # --port 0: the real one
    assert config.bound_port > 0 and "API key required" in result.output
    assert (config.ssl_certfile, config.ssl_keyfile) == (str(cert), str(key))
    assert config.limit_concurrency == 64 and config.timeout_keep_alive <= 5
    assert config.app.state.read_timeout == 3
    with TestClient(config.app) as c:
        assert c.post("/score", json=records(3)).status_code == 401
        assert c.post("/score", json=records(3), headers={"X-API-Key": KEY}).status_code == 200


def test_serve_takes_the_key_from_the_environment(served, tiny, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("FEDLSTM_API_KEY", KEY)
    result, config = served(tiny[2])
    assert result.exit_code == 0, result.output
    with TestClient(config.app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


@pytest.mark.parametrize("problem", ["cert-without-key", "empty-key-file", "short-key",
                                     "missing-cert"])
def test_serve_refuses_a_broken_setup(served, tiny, tmp_path, problem):
    cert, key = _self_signed(tmp_path)
    key_file = tmp_path / "api.key"
    key_file.write_text({"empty-key-file": "\n", "short-key": "abc"}.get(problem, KEY))
    args = {"cert-without-key": ["--tls-cert", cert],
            "empty-key-file": ["--api-key-file", key_file],
            "short-key": ["--api-key-file", key_file],
            "missing-cert": ["--tls-cert", tmp_path / "nope.pem", "--tls-key", key]}[problem]
    result, config = served(tiny[2], *args)
    assert result.exit_code == 2 and config is None, result.output
    assert "error" in result.output


def test_serve_on_a_taken_port_fails_before_saying_it_serves(served, tiny):
    """It printed 'serving ... on http://127.0.0.1:PORT', then uvicorn's bind error, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, config = served(tiny[2], "--port", port)
    assert result.exit_code == 2 and config is None
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "serving" not in result.output
