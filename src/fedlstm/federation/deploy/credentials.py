"""Credentials of a deployed federation: TLS certificates, SuperNode keys and app signatures.

- `generate_certificates`: a CA and the SuperLink's TLS server certificate (the front door
  serves the same certificate to sites);
- `generate_supernode_keys`: ECDSA P-384 key pairs in OpenSSH format, which SuperNodes sign
  with and the SuperLink checks against its list of registered public keys;
- `sign_app` / `verify_app`: an Ed25519 signature of the Flower app bundle (FAB) that sites run.
  The coordinator signs the app with its fedlstm key (`fedlstm keys`, the key that also signs
  its model bundles); a site runs a ClientApp only when the FAB's signature verifies against a
  key it trusts. Flower's own FAB verification (`--trusted-entities`) checks signatures that only
  Flower Hub issues, so an app submitted to our own SuperLink could never pass it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlstm.detection.signing import PublicKey, SigningKey

log = logging.getLogger(__name__)

# Domain separation: an app signature can never be replayed as a bundle signature or vice versa.
_APP_CONTEXT = b"fedlstm-app-signature/1\0"


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path  # give this to every SuperNode and every `flwr` CLI (--root-certificates)
    ca_key: Path  # keep private: it signs server certificates
    server_cert: Path  # server.pem: the SuperLink's certificate, with the hosts as SANs
    server_key: Path


def _write_private(path: Path, data: bytes) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate_certificates(out_dir: str | Path, hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                          days: int = 365) -> Certificates:
    """A CA (ca.crt, ca.key) and a SuperLink certificate (server.pem, server.key) it signed.

    `hosts` are every name and address SuperNodes and the CLI use to reach the SuperLink: they
    go into the certificate's subject alternative names, which TLS clients check. The keys are
    ECDSA P-384 and the extensions satisfy strict verifiers (key identifiers, key usage).
    """
    hosts = list(dict.fromkeys(hosts))
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    # The SuperLink itself listens on the coordinator's loopback, behind the front door: the
    # coordinator's `flwr` CLI and the front door reach it there and check these names too.
    hosts = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlstm"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fedlstm federation CA")])
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlstm"),
                             x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = (x509.CertificateBuilder()
                   .subject_name(server_name).issuer_name(ca_name)
                   .public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hosts)),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                                key_cert_sign=False, crl_sign=False,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA384()))

    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    paths = Certificates(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    _write_private(paths.ca_key, ca_key.private_bytes(pem, pkcs8, plain))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(paths.server_key, server_key.private_bytes(pem, pkcs8, plain))
    log.info("certificates for %s written to %s", ", ".join(hosts), out)
    return paths


def generate_supernode_keys(out_dir: str | Path, n: int,
                            prefix: str = "supernode") -> list[tuple[Path, Path]]:
    """`n` (private, public) key pairs `PREFIX-i`, `PREFIX-i.pub`: ECDSA P-384, OpenSSH format.

    That is what `ssh-keygen -t ecdsa -b 384` writes and what Flower accepts (a NIST curve in
    OpenSSH format); generated here so that no ssh-keygen is needed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP384R1())
        private = _write_private(out / f"{prefix}-{i}", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
        public = out / f"{prefix}-{i}.pub"
        public.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + f" {prefix}-{i}\n".encode())
        pairs.append((private, public))
    return pairs



# --- app signatures ----------------------------------------------------------------------------
class UntrustedApp(PermissionError):
    """A site was asked to run an app that no trusted key signed."""


def _app_message(fab: bytes) -> bytes:
    return _APP_CONTEXT + hashlib.sha256(fab).digest()


def sign_app(fab: bytes, key: SigningKey) -> str:
    """`FINGERPRINT:SIGNATURE` for the FAB's exact bytes: what `flwr run` passes as the run
    config's `app-signature` (the FAB cannot carry its own signature)."""
    signature = base64.b64encode(key.sign(_app_message(fab))).decode()
    return f"{key.fingerprint}:{signature}"


def verify_app(fab: bytes, token: object, trusted: Iterable[PublicKey]) -> str:
    """The fingerprint of the trusted key that signed this FAB, or UntrustedApp saying why not."""
    digest = hashlib.sha256(fab).hexdigest()[:16]
    if not isinstance(token, str) or ":" not in token:
        raise UntrustedApp(f"app {digest}… is not signed; this site runs only apps signed by a "
                           "key it trusts")
    fp, _, signature = token.rpartition(":")
    key = {k.fingerprint: k for k in trusted}.get(fp)
    if key is None:
        raise UntrustedApp(f"app {digest}… is signed by {fp}, a key this site does not trust")
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raw = b""
    if not key.verify(raw, _app_message(fab)):
        raise UntrustedApp(f"app {digest}… does not match its signature by {fp}: it was modified")
    return fp
