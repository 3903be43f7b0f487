"""Who wrote a model bundle: Ed25519 signing keys, the set of trusted keys, and bundle signatures.

The sha256 members of a bundle only show that it is intact; anyone who edits a bundle can
recompute them. A signature shows who wrote it: every bundle fedlstm writes is signed with the
local key, and loading one checks the signature against the trusted keys (the own key plus the
public keys added with `fedlstm keys trust`, e.g. a federation coordinator's).

A key home (default `$FEDLSTM_KEYS`, else `$FEDLSTM_HOME/keys`, else `~/.fedlstm/keys`) holds:

    signing.key      the private key (PKCS#8 PEM, mode 0600)
    signing.pub      its public key, one OpenSSH line: the file to give to others
    trusted/*.pub    public keys of others whose bundles this host accepts, one per file

Public keys are OpenSSH lines (`ssh-ed25519 AAAA... comment`) and fingerprints are OpenSSH's
(`SHA256:...`), so `ssh-keygen -lf signing.pub` shows the same fingerprint. The signature
covers sha256(manifest.json) and sha256(weights.pt) (see `signed_message`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
TRUSTED_DIR = "trusted"
ALGORITHM = "ed25519"
SIGNATURE_VERSION = 1
# Domain separation: a signature over a bundle can never be replayed as one over anything else.
_CONTEXT = b"fedlstm-bundle-signature/1\0"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


class SignatureError(ValueError):
    """A bundle signature that is absent, by an untrusted key, or wrong; `reason` says which."""

    def __init__(self, message: str, reason: Literal["unsigned", "untrusted", "invalid"],
                 fingerprint: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.fingerprint = fingerprint


# --- public keys -------------------------------------------------------------------------------
def fingerprint(key: Ed25519PublicKey) -> str:
    """OpenSSH's fingerprint: SHA256 of the key's wire blob, base64 without padding."""
    blob = base64.b64decode(_openssh_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _openssh_line(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


@dataclass(frozen=True)
class PublicKey:
    """A public key and a label saying whose it is (the comment of its OpenSSH line)."""

    key: Ed25519PublicKey
    label: str = ""
    source: Path | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    def openssh(self) -> str:
        return f"{_openssh_line(self.key)} {self.label}".strip() + "\n"

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def read_public_key(path: str | Path, label: str | None = None) -> PublicKey:
    """An Ed25519 public key from an OpenSSH line (`ssh-ed25519 AAAA... comment`) or PEM file."""
    path = Path(path)
    try:
        data = path.read_bytes()[:64 * 1024]
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc.strerror or exc})") from exc
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: this is a private key; pass its public key (the .pub file, "
                           "or what `fedlstm keys show` prints)")
    text = data.decode("utf-8", "replace").strip()
    try:
        if text.startswith("-----BEGIN"):
            key, comment = serialization.load_pem_public_key(data), ""
        else:
            parts = text.split(None, 2)
            key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
            comment = parts[2].strip() if len(parts) > 2 else ""
    except (ValueError, IndexError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a public key in OpenSSH or PEM form ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__.removesuffix('PublicKey') or 'non'} key;"
                           " fedlstm bundles are signed with Ed25519 keys")
    # A label is shown and written back into .pub files: one line of plain words.
    return PublicKey(key, " ".join((label if label is not None else comment).split())[:80], path)


# --- the local signing key ---------------------------------------------------------------------
@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    path: Path
    public: PublicKey

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def default_home() -> Path:
    if os.environ.get("FEDLSTM_KEYS"):
        return Path(os.environ["FEDLSTM_KEYS"]).expanduser()
    if os.environ.get("FEDLSTM_HOME"):
        return Path(os.environ["FEDLSTM_HOME"]).expanduser() / "keys"
    return Path.home() / ".fedlstm" / "keys"


@dataclass(frozen=True)
class KeyHome:
    """The folder holding this host's signing key and the public keys it trusts."""

    path: Path = field(default_factory=default_home)

    @classmethod
    def default(cls) -> KeyHome:
        return cls(default_home())

    @property
    def private_path(self) -> Path:
        return self.path / PRIVATE_NAME

    @property
    def public_path(self) -> Path:
        return self.path / PUBLIC_NAME

    @property
    def trusted_dir(self) -> Path:
        return self.path / TRUSTED_DIR

    def exists(self) -> bool:
        return self.private_path.exists()

    def init(self) -> SigningKey:
        """Create the key pair; refuses to replace one (bundles signed with it would be orphaned)."""
        if self.private_path.exists():
            raise FileExistsError(f"{self.private_path} already exists (fingerprint "
                                  f"{self.signing_key(create=False).fingerprint}); remove it first "
                                  "to make a new one, and re-sign or re-train its bundles")
        key = self._create()
        if key is None:  # another process created it in the meantime
            raise FileExistsError(f"{self.private_path} already exists")
        return key

    def signing_key(self, create: bool = True) -> SigningKey:
        """The local signing key; created on first use (with a one-line notice) when `create`."""
        if not self.private_path.exists():
            if not create:
                where = "" if self.path == default_home() else f" --dir {self.path}"
                raise KeyFileError(f"no signing key in {self.path}; create one with "
                                   f"`fedlstm keys init{where}`")
            key = self._create()
            if key is not None:
                log.warning("created a signing key in %s (fingerprint %s): bundles you write are "
                            "signed with it; give %s to whoever should trust them (`fedlstm keys "
                            "trust FILE`)", self.path, key.fingerprint, key.public.source)
                return key
        return self._read_private()

    def _create(self) -> SigningKey | None:
        """Write a new key pair; None when a concurrent process won the race to create it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        # Written in full under a temporary name, then linked into place: a concurrent reader
        # never sees half a key, and os.link fails instead of replacing a key that exists.
        fd, tmp = tempfile.mkstemp(prefix=".signing-", dir=self.path)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.private_path)
            except FileExistsError:
                return None
            except OSError:  # a file system without hard links: an exclusive create instead
                try:
                    out = os.open(self.private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    return None
                with os.fdopen(out, "wb") as f:
                    f.write(pem)
        finally:
            Path(tmp).unlink(missing_ok=True)
        public = PublicKey(private.public_key(), f"fedlstm@{socket.gethostname()}",
                           self.public_path)
        _write_text_atomic(self.public_path, public.openssh())
        return SigningKey(private, self.private_path, public)

    def _read_private(self) -> SigningKey:
        path = self.private_path
        try:
            data = path.read_bytes()
            if os.name == "posix" and path.stat().st_mode & 0o077:
                log.warning("%s can be read by other users; run `chmod 600 %s`", path, path)
            private = serialization.load_pem_private_key(data, password=None)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the signing key ({exc.strerror or exc})") from exc
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        label = ""
        try:
            label = read_public_key(self.public_path).label
        except KeyFileError:
            pass  # the label is cosmetic; the key itself comes from the private file
        return SigningKey(private, path, PublicKey(private.public_key(), label, self.public_path))

    # -- trusted keys ---------------------------------------------------------------------------
    def trusted(self) -> list[PublicKey]:
        """The public keys in trusted/ (a malformed file is skipped with a warning)."""
        keys = []
        for path in sorted(self.trusted_dir.glob("*.pub")) if self.trusted_dir.is_dir() else []:
            try:
                keys.append(read_public_key(path))
            except KeyFileError as exc:
                log.warning("skipping trusted key %s", exc)
        return keys

    def trust(self, source: str | Path, label: str | None = None) -> tuple[PublicKey, bool]:
        """Add a public key to trusted/; (key, False) when it was trusted already."""
        key = read_public_key(source, label)
        if not key.label:
            key = PublicKey(key.key, Path(source).stem, key.source)
        known = {k.fingerprint for k in self.trusted()}
        own = self._own_public()
        if key.fingerprint in known or (own is not None and own.fingerprint == key.fingerprint):
            return key, False
        self.trusted_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.trusted_dir / f"{_file_stem(key.fingerprint)}.pub"
        _write_text_atomic(target, key.openssh())
        return PublicKey(key.key, key.label, target), True

    def untrust(self, fp: str) -> list[Path]:
        """Remove the trusted keys with this fingerprint; the files removed."""
        removed = []
        for key in self.trusted():
            if key.fingerprint == fp or key.fingerprint == f"SHA256:{fp}":
                key.source.unlink()
                removed.append(key.source)
        return removed

    def _own_public(self) -> PublicKey | None:
        if not self.private_path.exists():
            return None
        try:
            own = self._read_private().public
        except KeyFileError as exc:
            log.warning("own key not trusted: %s", exc)
            return None
        return PublicKey(own.key, f"own key {own.label}".strip(), self.private_path)

    def trust_store(self, extra: Iterable[str | Path] = ()) -> TrustStore:
        """Own key + trusted/ + `extra` public key files (e.g. `--trusted-key FILE`)."""
        keys = {}
        own = self._own_public()
        for key in [*([own] if own else []), *self.trusted(), *map(read_public_key, extra)]:
            keys.setdefault(key.fingerprint, key)
        return TrustStore(keys, self.path)


def _file_stem(fp: str) -> str:
    return base64.urlsafe_b64encode(base64.b64decode(fp.removeprefix("SHA256:") + "==")
                                    ).decode().rstrip("=")


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class TrustStore:
    keys: dict[str, PublicKey]
    home: Path | None = None

    @classmethod
    def default(cls) -> TrustStore:
        return KeyHome.default().trust_store()

    @classmethod
    def of(cls, keys: Iterable[PublicKey]) -> TrustStore:
        return cls({k.fingerprint: k for k in keys})

    def describe(self) -> str:
        where = f" in {self.home}" if self.home else ""
        if not self.keys:
            return f"no trusted keys{where}"
        return f"trusted{where}: " + ", ".join(f"{fp} ({k.label})" if k.label else fp
                                               for fp, k in self.keys.items())


# --- bundle signatures -------------------------------------------------------------------------
class BundleSignature(BaseModel):
    """signature.json: which key signed, and the Ed25519 signature of `signed_message`."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = SIGNATURE_VERSION
    algorithm: Literal["ed25519"] = ALGORITHM
    key_fingerprint: str = Field(pattern=r"^SHA256:[A-Za-z0-9+/]{43}$")
    signature: str = Field(max_length=200)
    covers: str = "sha256(manifest.json) || sha256(weights.pt)"


def signed_message(manifest: bytes, weights: bytes) -> bytes:
    return _CONTEXT + hashlib.sha256(manifest).digest() + hashlib.sha256(weights).digest()


def sign_bundle(key: SigningKey, manifest: bytes, weights: bytes) -> bytes:
    """The signature.json member for these manifest and weights bytes."""
    sig = key.sign(signed_message(manifest, weights))
    return BundleSignature(key_fingerprint=key.fingerprint,
                           signature=base64.b64encode(sig).decode()).model_dump_json(indent=1).encode()


def verify_bundle(where: str, signature: bytes | None, manifest: bytes, weights: bytes,
                  trust: TrustStore) -> PublicKey:
    """The trusted key that signed these bytes, or SignatureError saying why there is none."""
    fix = ("if you trust the bundle's source, pass --allow-unsigned (or re-sign it with "
           "`fedlstm keys sign`)")
    if signature is None:
        raise SignatureError(f"{where}: the bundle is not signed (written before fedlstm "
                             f"signed bundles, or its signature was removed); {fix}", "unsigned")
    try:
        sig = BundleSignature.model_validate_json(signature)
        raw = base64.b64decode(sig.signature, validate=True)
    except (ValidationError, ValueError) as exc:
        raise SignatureError(f"{where}: signature.json is malformed ({_first_error(exc)})",
                             "invalid") from exc
    key = trust.keys.get(sig.key_fingerprint)
    if key is None:
        raise SignatureError(
            f"{where}: signed by key {sig.key_fingerprint}, which is not trusted "
            f"({trust.describe()}); if it is, e.g., your federation coordinator's, get its public "
            "key from its owner (`fedlstm keys show` there) and run `fedlstm keys trust FILE` or "
            "pass --trusted-key FILE", "untrusted", sig.key_fingerprint)
    if not key.verify(raw, signed_message(manifest, weights)):
        raise SignatureError(f"{where}: the signature of key {sig.key_fingerprint} does not match "
                             "the contents: the bundle was modified after it was signed",
                             "invalid", sig.key_fingerprint)
    return key


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}"
    return str(exc)
