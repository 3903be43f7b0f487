"""Deployment: the same ServerApp and ClientApp as real processes (a SuperLink and SuperNodes).

Three parts, usable apart:

- credentials: `generate_certificates` (a CA and a TLS server certificate for the SuperLink) and
  `generate_supernode_keys` (ECDSA P-384 key pairs in OpenSSH format, which SuperNodes sign
  with and the SuperLink checks against its list of registered public keys);
- the server side of a deployed run: `write_deployed_run`, called inside the ServerApp process
  after the last round, writes the same run directory a simulated run has;
- a local federation for one machine: `LocalFederation` starts `flower-superlink`, registers
  keys, starts `flower-supernode`s and submits the app with `flwr run`, every process in its
  own process group and all of them stopped on exit; `run_local_deployment` uses it to run a
  configuration end to end, partitioning the data exactly as the simulation does.

Across real hosts the same commands run by hand (see the README); only the certificates'
host names, the addresses and each site's `data-path` differ.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlstm import __version__

if TYPE_CHECKING:
    from fedlstm.config import RunConfig
    from fedlstm.federation.server import ServerTask

log = logging.getLogger(__name__)

# Written by the launcher into the ServerApp's out-dir before the run: what only the launcher
# knows (how the data was split, which attack types the sites trained on, the command).
DEPLOYMENT_FILE = "deployment.json"
CONNECTION = "fedlstm-local"  # the SuperLink connection name in $FLWR_HOME/config.toml
APP_DIR_NAME = "fedlstm-app"
MARKER_ENV = "FEDLSTM_DEPLOYMENT"  # set in every child's environment, to find stragglers
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
FINISHED = "finished:completed"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DeploymentError(RuntimeError):
    """A deployed run failed; the message carries the status and the tails of the logs."""


# --- credentials -------------------------------------------------------------------------------
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


# --- the Flower app to submit ------------------------------------------------------------------
def write_app_dir(parent: str | Path) -> Path:
    """A minimal Flower app folder (just a pyproject.toml) pointing at the installed apps.

    Why not the project root: `flwr run` bundles every *.py/*.toml/*.md/*.json of the app folder
    (walking .venv and runs/ to filter them), requires the folder's name to be a valid app name
    (letters, digits, hyphens: a checkout called `fedlstm_main` fails) and rewrites the
    pyproject when it finds federations in it. This folder is tiny and the same wherever fedlstm
    is installed (editable or from a wheel): the FAB carries only the entry points, and the
    ServerApp/ClientApp processes import `fedlstm` from the environment, which every host needs
    anyway (runtime dependency installation is off). Run settings reach the apps through the run
    config: `config-file` (absolute path of a resolved RunConfig JSON on the coordinator) and
    `out-dir` (absolute folder on the coordinator for the run directory).
    """
    app = Path(parent) / APP_DIR_NAME
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(f"""\
# Generated by fedlstm: the Flower app `flwr run` submits. The code is the installed
# `fedlstm` package; every host of the federation needs it installed.
[project]
name = "fedlstm"
version = "{__version__}"
description = "Federated LSTM intrusion and anomaly detection (deployment entry points)"
dependencies = []

[tool.flwr.app]
publisher = "fedlstm"

[tool.flwr.app.components]
serverapp = "fedlstm.federation.apps:server_app"
clientapp = "fedlstm.federation.apps:client_app"

[tool.flwr.app.config]
config-file = ""
out-dir = ""
""")
    return app


# --- server side: the run directory ------------------------------------------------------------
def write_deployed_run(task: ServerTask, run_config: Mapping) -> Path:
    """Inside the ServerApp: turn the finished federation into a run directory at `out-dir`.

    The files are those of a simulated run (config.json, metrics.json with the rounds,
    model.fedlstm, round_curves.png, roc.png, confusion plots, checkpoints/). They are written
    into a staging folder that replaces `out-dir` only when complete; the checkpoints the
    ServerTask wrote into `out-dir` during the rounds move along. Partitions, data notes and
    the sites' attack types are known only to whoever split the data: they are read from
    `out-dir/deployment.json` when the launcher wrote one, and left empty otherwise.
    """
    import numpy as np

    from fedlstm.federation.server import CHECKPOINT
    from fedlstm.pipeline import evaluate_bundle
    from fedlstm.reports import plots
    from fedlstm.runs import run_title, staged_dir, unseen_attack_recall, write_results

    out = Path(str(run_config["out-dir"]))
    if task.weights is None or not task.rounds:
        raise RuntimeError("the federation finished without producing a model; see the log")
    info_file = out / DEPLOYMENT_FILE
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    cfg = task.cfg
    bundle = task.bundle()
    t = time.perf_counter()
    evaluations = {name: evaluate_bundle(bundle, recs) for name, recs in task.tests.items()}
    timings = {"evaluate_seconds": time.perf_counter() - t}
    rounds = [task.rounds[k] for k in sorted(task.rounds)]
    train_attacks = info.get("train_attacks")
    unseen = (unseen_attack_recall(np.asarray(train_attacks, dtype=object), task.spec, evaluations)
              if train_attacks is not None else {})
    extra = {"federation": cfg.federation.model_dump(), "runtime": "deployment",
             "partitions": info.get("partitions"), "data_notes": info.get("data_notes", {}),
             "deployment": info.get("deployment", {}), "rounds": rounds,
             "unseen_attacks": unseen, "timings": timings}
    with staged_dir(out, overwrite=True) as stage:
        write_results(stage, cfg, bundle, evaluations, extra, info.get("command") or "flwr run")
        plots.learning_curves([r for r in rounds if r["round"] > 0], stage / "round_curves.png",
                              run_title(bundle), x_key="round")
        checkpoints = (out / CHECKPOINT).parent
        if checkpoints.is_dir():
            shutil.move(str(checkpoints), str(stage / checkpoints.name))
    log.info("run directory written to %s", out)
    return out


# --- processes -------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it; bound to `host` only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, without terminal colour codes."""
    try:
        text = _ANSI.sub("", path.read_text(errors="replace"))
    except OSError:
        return f"({path}: no log)"
    return "\n".join(text.splitlines()[-lines:])


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries MARKER_ENV=marker: everything one federation started,
    including children Flower detaches into sessions of their own (Linux /proc; else empty)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return [p for p in pids if p != os.getpid()]


def _parse_json(text: str) -> dict:
    """The JSON object in a CLI's output (which may print notes before it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in: {text.strip()[:500]}")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string of plain text is a valid TOML basic string


def config_args(values: Mapping[str, object]) -> str:
    """`k=v k2="text"`: the syntax of --node-config and --run-config (values are TOML)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = _toml_string(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO = field(repr=False)
    stopped: bool = False

    @property
    def running(self) -> bool:
        return self.popen.poll() is None


class LocalFederation:
    """A SuperLink on 127.0.0.1 and SuperNodes as child processes, all stopped on exit.

    Everything lives in `work_dir`: certificates, keys, logs, FLWR_HOME (the CLI's config.toml
    with the connection `fedlstm-local`, installed apps) and one FLWR_HOME per SuperNode, as on
    separate hosts. Each process runs in a session of its own, so stopping signals its whole
    group; stragglers Flower detaches are found by a marker in their environment.
    """

    def __init__(self, work_dir: str | Path, *, tls: bool = True, auth: bool = True,
                 host: str = "127.0.0.1", startup_timeout: float = 60.0):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
        self.work_dir = Path(work_dir).resolve()
        self.tls, self.auth, self.host = tls, auth, host
        self.startup_timeout = startup_timeout
        self.marker = uuid.uuid4().hex
        self.flwr_home = self.work_dir / "flwr-home"
        self.logs = self.work_dir / "logs"
        self.keys_dir = self.work_dir / "keys"
        self.certificates: Certificates | None = None
        self.port: int | None = None
        self.processes: list[ManagedProcess] = []
        self.superlink: ManagedProcess | None = None
        self._previous_sigterm = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        self._catch_sigterm()
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _catch_sigterm(self) -> None:
        """A SIGTERM to the launcher (CI cancelling a job) must still run `stop`."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def _exit(signum, frame):
                raise SystemExit(128 + signum)
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit)

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)  # the venv's bin: flower-superexec & co.
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env.update(FLWR_ENV)
        env.update({"FLWR_HOME": str(flwr_home or self.flwr_home), MARKER_ENV: self.marker,
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        return env

    @staticmethod
    def executable(name: str) -> str:
        local = Path(sys.executable).parent / name
        found = str(local) if local.exists() else shutil.which(name)
        if not found:
            raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; "
                                    "install flwr in this environment")
        return found

    def start(self) -> None:
        for folder in (self.logs, self.keys_dir, self.flwr_home):
            folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        if self.tls:
            self.certificates = generate_certificates(self.work_dir / "certs",
                                                      hosts=["localhost", self.host])
        self.write_cli_config()
        args = [self.executable("flower-superlink"), "--host", self.host, "--port", str(self.port),
                "--isolation", "subprocess", "--disable-runtime-dependency-installation"]
        if self.tls:
            c = self.certificates
            args += ["--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
                     "--ssl-keyfile", str(c.server_key)]
        else:
            args.append("--insecure")
        if self.auth:
            args.append("--enable-supernode-auth")
        self.superlink = superlink = self.spawn("superlink", args)
        deadline = time.monotonic() + self.startup_timeout
        while not _port_open(self.host, self.port):
            if not superlink.running:
                raise DeploymentError(f"flower-superlink exited with code {superlink.popen.returncode}"
                                      f"\n{tail(superlink.log_path)}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"flower-superlink did not listen on {self.address} within "
                                      f"{self.startup_timeout:.0f} s\n{tail(superlink.log_path)}")
            time.sleep(0.2)
        log.info("SuperLink listening on %s (tls=%s, auth=%s)", self.address, self.tls, self.auth)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def write_cli_config(self) -> Path:
        """$FLWR_HOME/config.toml: where `flwr` finds the SuperLink (Flower >= 1.42)."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f"address = {_toml_string(self.address)}"]
        if self.tls:
            lines.append(f"root-certificates = {_toml_string(self.certificates.ca_cert)}")
        else:
            lines.append("insecure = true")
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def spawn(self, name: str, args: list[str], flwr_home: Path | None = None) -> ManagedProcess:
        log_path = self.logs / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        popen = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.work_dir,
                                 env=self.env(flwr_home), start_new_session=True)
        proc = ManagedProcess(name, popen, log_path, log_file)
        self.processes.append(proc)
        log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group we started, SIGKILL what is left after `grace` seconds."""
        active = [p for p in self.processes if not p.stopped]
        running = [p for p in active if p.running]
        for proc in running:
            _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", proc.name, grace)
        for proc in active:
            _signal_group(proc.popen.pid, signal.SIGKILL)  # whatever is left in its group
            if proc.popen.poll() is None:
                proc.popen.wait(timeout=5)
            proc.log_file.close()
            proc.stopped = True
        self._stop_stragglers()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _stop_stragglers(self, grace: float = 5.0) -> None:
        pids = marked_processes(self.marker)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = marked_processes(self.marker)
        for pid in pids:
            log.warning("killing leftover process %d", pid)
            _signal(pid, signal.SIGKILL)

    # -- SuperNodes -----------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the `flwr` CLI against this federation's FLWR_HOME."""
        return subprocess.run([self.executable("flwr"), *args], capture_output=True, text=True,
                              env=self.env(), cwd=self.work_dir, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def register(self, public_keys: list[Path]) -> list[int]:
        """`flwr supernode register` each key (in parallel: each CLI call takes seconds)."""
        calls = [subprocess.Popen([self.executable("flwr"), "supernode", "register", str(key),
                                   CONNECTION, "--format", "json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=self.env(), cwd=self.work_dir, stdin=subprocess.DEVNULL)
                 for key in public_keys]
        node_ids = []
        for key, call in zip(public_keys, calls):
            output, _ = call.communicate(timeout=120)
            try:
                reply = _parse_json(output)
            except ValueError:
                reply = {}
            if call.returncode != 0 or not reply.get("success", False):
                raise DeploymentError(f"could not register {key}:\n{_ANSI.sub('', output)[-2000:]}")
            node_ids.append(int(reply.get("node-id", 0)))
        return node_ids

    def start_supernode(self, name: str, node_config: Mapping[str, object],
                        private_key: Path | None = None) -> ManagedProcess:
        """A SuperNode with its own runtime port, FLWR_HOME and node config (e.g. data-path)."""
        home = self.work_dir / "nodes" / name / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        args = [self.executable("flower-supernode"), "--superlink", self.address,
                "--host", self.host, "--port", str(free_port(self.host)),
                "--isolation", "subprocess", "--node-config", config_args(node_config)]
        if self.tls:
            args += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            args.append("--insecure")
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        return self.spawn(f"supernode-{name}", args, flwr_home=home)

    # -- runs -----------------------------------------------------------------------------------
    def submit(self, app_dir: Path, run_config: Mapping[str, object]) -> int:
        """`flwr run APP fedlstm-local --run-config ...`: returns the run id at once."""
        result = self.flwr("run", str(app_dir), CONNECTION, "--run-config", config_args(run_config),
                           "--format", "json")
        output = _ANSI.sub("", result.stdout + result.stderr)
        try:
            reply = _parse_json(result.stdout)
        except ValueError:
            reply = {}
        # `flwr run` exits 0 even when the SuperLink refused the run: read its answer.
        if result.returncode != 0 or not reply.get("success") or not reply.get("run-id"):
            raise DeploymentError(f"flwr run failed:\n{output[-3000:]}")
        return int(reply["run-id"])

    def run_info(self, run_id: int) -> dict:
        """`flwr ls --run-id ID --format json`: status, status-details, elapsed, traffic, ..."""
        result = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            return dict(_parse_json(result.stdout)["runs"][0])
        except (ValueError, KeyError, IndexError):
            raise DeploymentError(f"cannot read the status of run {run_id}:\n"
                                  f"{_ANSI.sub('', result.stdout + result.stderr)[-2000:]}")

    def wait(self, run_id: int, timeout: float | None = None,
             watch: list[ManagedProcess] | None = None) -> dict:
        """Block until the run finishes; return its `run_info` (status `finished:...`).

        `flwr log --stream` ends when the run does, so no polling CLI competes with training for
        the CPUs; its output (the ServerApp's log) goes to logs/serverapp-RUN.log. Fails early
        when the SuperLink or a watched SuperNode dies.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = [self.superlink, *(watch or [])]
        stream = self.spawn(f"serverapp-{run_id}", [self.executable("flwr"), "log", str(run_id),
                                                    CONNECTION, "--stream"])
        while True:
            if not stream.running:
                info = self.run_info(run_id)
                if str(info.get("status", "")).startswith("finished"):
                    return info
                # the stream ended early (a dropped connection): poll instead, gently
                time.sleep(3.0)
            for proc in watch:
                if not proc.running:
                    raise DeploymentError(f"{proc.name} exited with code {proc.popen.returncode} "
                                          f"during run {run_id}\n{self.report()}")
            if deadline is not None and time.monotonic() > deadline:
                self.flwr("stop", str(run_id), CONNECTION, timeout=60)
                raise DeploymentError(f"run {run_id} did not finish within {timeout:.0f} s; "
                                      f"stopped it\n{self.report()}")
            time.sleep(0.5)

    def report(self, lines: int = 12) -> str:
        """The tails of every log (longer for the ServerApp's, where tracebacks land)."""
        parts = []
        for proc in self.processes:
            n = 3 * lines if proc.name.startswith("serverapp") else lines
            parts.append(f"--- {proc.log_path} (last {n} lines)\n{tail(proc.log_path, n)}")
        return "\n".join(parts)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session=True: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- a whole run on one machine ----------------------------------------------------------------
@dataclass
class DeploymentResult:
    out: Path
    run_id: int
    status: str
    work_dir: Path
    timings: dict


def _resolved(cfg: RunConfig) -> RunConfig:
    """Absolute data folder: the ServerApp runs in another process with another cwd."""
    from fedlstm.data.registry import DatasetNotFound, data_dir

    try:
        root = data_dir(cfg.data.data_dir)
    except DatasetNotFound:  # no folder configured: the split below says so
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"data_dir": str(root.expanduser().resolve())})})


def deploy_on(federation: LocalFederation, cfg: RunConfig, out: str | Path, *,
              overwrite: bool = False, timeout: float | None = None, command: str | None = None,
              progress: Callable[[str], None] | None = None) -> DeploymentResult:
    """Partition like the simulation, start one SuperNode per share, run, collect into `out`.

    Uses a started `federation` (its TLS/auth settings apply) and leaves it running, so that
    callers (tests) can share one SuperLink; `run_local_deployment` is the one-shot version.
    """
    import numpy as np

    from fedlstm.federation.partitions import describe, save_records
    from fedlstm.federation.simulation import federated_data
    from fedlstm.runs import RunExists, staged_dir

    say = progress or (lambda message: None)
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise RunExists(f"{out} already exists; choose another --out or pass --overwrite")
    work = federation.work_dir
    timings: dict[str, float] = {}

    say("partitioning the data")
    t = time.perf_counter()
    cfg = _resolved(cfg)
    data = federated_data(cfg)
    n = len(data.clients)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"clients": n})})
    shares = work / "shares"
    shutil.rmtree(shares, ignore_errors=True)
    shares.mkdir(parents=True)
    paths = [save_records(recs, shares / f"{name}.parquet", data.spec)
             for name, recs in zip(data.names, data.clients)]
    config_file = work / "config.json"
    config_file.write_text(cfg.model_dump_json(indent=2))
    run_dir = work / "run"  # the ServerApp's out-dir; moved to `out` once complete
    shutil.rmtree(run_dir, ignore_errors=True)  # a stale checkpoint there would be resumed
    run_dir.mkdir()
    (run_dir / DEPLOYMENT_FILE).write_text(json.dumps({
        "partitions": describe(data.clients, data.names), "data_notes": data.notes,
        "train_attacks": sorted(set(np.concatenate([c.attack for c in data.clients]).astype(str))),
        "command": command,
        "deployment": {"supernodes": n, "tls": federation.tls, "supernode_auth": federation.auth,
                       "superlink": federation.address, "flwr_version": _flwr_version()},
    }, indent=2, default=str))
    timings["partition_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    keys: list[Path | None] = [None] * n
    if federation.auth:
        say(f"registering {n} SuperNode keys")
        pairs = generate_supernode_keys(federation.keys_dir, n)
        federation.register([public for _, public in pairs])
        keys = [private for private, _ in pairs]
    say(f"starting {n} SuperNodes")
    nodes = [federation.start_supernode(name, {"partition-id": i, "num-partitions": n,
                                               "data-path": str(path), "name": name}, key)
             for i, (name, path, key) in enumerate(zip(data.names, paths, keys))]
    app_dir = write_app_dir(work)
    run_id = federation.submit(app_dir, {"config-file": str(config_file), "out-dir": str(run_dir)})
    say(f"run {run_id}: {cfg.federation.rounds} rounds on {n} SuperNodes")
    info = federation.wait(run_id, timeout=timeout, watch=nodes)
    timings["deployment_seconds"] = time.perf_counter() - t
    status = str(info.get("status"))
    if status != FINISHED or not (run_dir / "metrics.json").exists():
        details = info.get("status-details") or "no metrics.json was written"
        raise DeploymentError(f"run {run_id} ended with status {status!r}: {details}\n"
                              f"{federation.report()}")

    say("collecting the results")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["timings"] = {**timings, **metrics.get("timings", {})}
    metrics["deployment"] = {**metrics.get("deployment", {}), "run_id": str(run_id), "status": status,
                             **{k: info[k] for k in ("elapsed", "network-traffic", "compute-time")
                                if k in info}}
    metrics_path.write_text(json.dumps(metrics, indent=2))
    with staged_dir(out, overwrite=overwrite) as stage:
        for item in run_dir.iterdir():
            shutil.move(str(item), str(stage / item.name))
        shutil.copytree(federation.logs, stage / "logs")
    return DeploymentResult(out, run_id, status, work, metrics["timings"])


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def run_local_deployment(cfg: RunConfig, out: str | Path, work_dir: str | Path | None = None, *,
                         tls: bool = True, auth: bool = True, overwrite: bool = False,
                         timeout: float | None = None, command: str | None = None,
                         progress: Callable[[str], None] | None = None) -> DeploymentResult:
    """A SuperLink and one SuperNode per client on this machine; the run ends up in `out`.

    `work_dir` (default: `.NAME.deploy` next to `out`) holds the data shares, certificates,
    keys and logs; a default one is removed after success and kept after a failure, to read the
    logs. Every process started is stopped before this returns or raises.
    """
    out = Path(out).resolve()
    default_work = work_dir is None
    work = Path(work_dir).resolve() if work_dir else out.parent / f".{out.name}.deploy"
    federation = LocalFederation(work, tls=tls, auth=auth)  # checks the options first
    if default_work:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    say("starting the SuperLink")
    try:
        with federation:
            result = deploy_on(federation, cfg, out, overwrite=overwrite, timeout=timeout,
                               command=command, progress=progress)
            say("stopping the federation")
    except DeploymentError as exc:
        raise DeploymentError(f"{exc}\n(shares, certificates, keys and logs kept in {work})") from exc
    if default_work:
        shutil.rmtree(work, ignore_errors=True)
    return result
