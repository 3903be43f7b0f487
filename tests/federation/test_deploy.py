"""Deployment on localhost: TLS, SuperNode authentication, a real `flwr run`, nothing left behind.

One SuperLink (module fixture) serves both the deployment and the unregistered SuperNode, to save
its start-up; the fixture stops every process it started and checks that none survived.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedlstm.config import load_config
from fedlstm.detection import ModelBundle
from fedlstm.federation.deploy import (FINISHED, LocalFederation, deploy_on, generate_certificates,
                                       generate_supernode_keys, marked_processes, tail)


def _tls_handshake(certs, server_name: str) -> str:
    """A TLS handshake between the generated server certificate and a client trusting the CA."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    left, right = socket.socketpair()
    errors = []

    def serve():
        try:
            with server_ctx.wrap_socket(left, server_side=True) as conn:
                conn.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=server_name) as conn:
            version = conn.version()
            conn.sendall(b"x")
    finally:
        right.close()
        thread.join(timeout=10)
    assert not errors, errors
    return version


def test_certificates_and_supernode_keys(tmp_path):
    certs = generate_certificates(tmp_path, hosts=["localhost", "127.0.0.1", "link.example.org"])
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert certs.server_key.stat().st_mode & 0o777 == 0o600
    assert certs.ca_key.stat().st_mode & 0o777 == 0o600
    assert _tls_handshake(certs, "localhost").startswith("TLS")
    assert _tls_handshake(certs, "link.example.org").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(certs, "elsewhere.example.org")

    pairs = generate_supernode_keys(tmp_path / "keys", 2)
    assert [p.name for pair in pairs for p in pair] == ["supernode-0", "supernode-0.pub",
                                                        "supernode-1", "supernode-1.pub"]
    for private_path, public_path in pairs:
        assert private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert public_path.read_bytes().startswith(b"ecdsa-sha2-nistp384 ")
        private = load_ssh_private_key(private_path.read_bytes(), password=None)
        public = load_ssh_public_key(public_path.read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP384R1)  # what `flwr supernode register` wants
        assert private.public_key().public_numbers() == public.public_numbers()
        assert private_path.stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = LocalFederation(tmp_path_factory.mktemp("deploy"), tls=True, auth=True)
    try:
        with fed:
            yield fed
    finally:
        left = marked_processes(fed.marker)
        assert not left, f"processes left behind: {left}"


def test_deployment_with_tls_and_supernode_auth(federation, datasets_dir, tmp_path):
    # No federated evaluation: it costs every SuperNode one more ClientApp process (Flower starts
    # one per message), and its message path is that of fit, which this test covers.
    cfg = load_config(None, ["data.max_train_rows=3000", "model.hidden_size=16",
                             "federation.evaluate_clients=false"],
                      data__dataset="nsl-kdd", data__data_dir=str(datasets_dir),
                      federation__clients=2, federation__rounds=1, federation__local_epochs=1)
    out = tmp_path / "run"
    start = time.perf_counter()
    result = deploy_on(federation, cfg, out, timeout=240)
    wall = time.perf_counter() - start
    print(f"\ndeployment wall time: {wall:.1f} s for 1 round on 2 SuperNodes "
          f"(timings {json.dumps({k: round(v, 1) for k, v in result.timings.items()})})")

    assert result.status == FINISHED
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["deployment"]["status"] == FINISHED
    assert metrics["deployment"]["tls"] and metrics["deployment"]["supernode_auth"]
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    # both sites trained, each on the share its node config pointed at
    assert set(metrics["rounds"][1]["clients_fit"]) == {"client-0", "client-1"}
    assert [p["client"] for p in metrics["partitions"]] == ["client-0", "client-1"]
    assert set(metrics["evaluations"]) == {"test", "test-21"}
    bundle = ModelBundle.load(out / "model.fedlstm")
    assert bundle.metadata["mode"] == "federated" and bundle.metadata["rounds"] == 1
    for name in ("config.json", "round_curves.png", "roc.png", "confusion_test.png",
                 "checkpoints/last.pt"):
        assert (out / name).exists(), name
    assert not (out / "deployment.json").exists()


def test_unregistered_supernode_is_rejected(federation, tmp_path):
    (private, _), = generate_supernode_keys(tmp_path, 1, prefix="intruder")  # never registered
    node = federation.start_supernode("intruder", {"name": "intruder"}, private)
    returncode = node.popen.wait(timeout=60)
    assert returncode != 0
    assert "Failed to activate SuperNode" in tail(node.log_path, 50)
    superlink_log = tail(federation.superlink.log_path, 400)
    assert "No SuperNode found with the given public key" in superlink_log
    assert federation.superlink.running  # the SuperLink itself carries on
