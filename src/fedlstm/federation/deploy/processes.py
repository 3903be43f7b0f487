"""Processes of a federation on this machine: the SuperLink behind its front door, SuperNodes,
and the `flwr` CLI that registers keys and starts runs.

`LocalFederation` runs them as child processes, each in a session of its own, all stopped on
exit (also on Ctrl-C or SIGTERM); stragglers that Flower detaches are found by a marker in their
environment. It serves `fedlstm deploy local` (everything on 127.0.0.1, as if on separate
hosts) and `fedlstm deploy superlink` (the coordinator of a real federation).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import tomli_w

from fedlstm import signals
from fedlstm.detection.signing import KeyHome, SigningKey
from fedlstm.federation.deploy.credentials import Certificates, generate_certificates
from fedlstm.federation.deploy.frontdoor import nginx_command
from fedlstm.federation.deploy.site import site_environment, write_clientapp_shim

log = logging.getLogger(__name__)

CONNECTION = "fedlstm-local"  # the SuperLink connection name in $FLWR_HOME/config.toml
MARKER_ENV = "FEDLSTM_DEPLOYMENT"  # set in every child's environment, to find stragglers
FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # How often a SuperExec looks for an app to start (Flower's default: 1 s, per message).
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}
# Flower's SuperNode, waiting less between polls when idle (`fedlstm.federation.deploy.supernode`).
SUPERNODE = [sys.executable, "-m", "fedlstm.federation.deploy.supernode"]
FINISHED = "finished:completed"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DeploymentError(RuntimeError):
    """A deployed run failed; the message carries the status and the tails of the logs."""


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
    including children Flower detaches into sessions of their own."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER_ENV) == marker:
                pids.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return pids


def _parse_json(text: str) -> dict:
    """The JSON object in a CLI's output (which may print notes before it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in: {text.strip()[:500]}")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def started_run(result: subprocess.CompletedProcess) -> int:
    """The run id in the answer of `flwr run ... --format json`."""
    try:
        reply = _parse_json(result.stdout)
    except ValueError:
        reply = {}
    # `flwr run` exits 0 even when the SuperLink refused the run: read its answer.
    if result.returncode != 0 or not reply.get("success") or not reply.get("run-id"):
        output = _ANSI.sub("", result.stdout + result.stderr)
        raise DeploymentError(f"flwr run failed:\n{output[-3000:]}")
    return int(reply["run-id"])


def run_status(run_id: int, result: subprocess.CompletedProcess) -> dict:
    """The run in the answer of `flwr ls --run-id ID --format json`: status, status-details,
    elapsed, network-traffic, ..."""
    try:
        return dict(_parse_json(result.stdout)["runs"][0])
    except (ValueError, KeyError, IndexError):
        raise DeploymentError(f"cannot read the status of run {run_id}:\n"
                              f"{_ANSI.sub('', result.stdout + result.stderr)[-2000:]}")


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string of plain text is a valid TOML basic string


def write_run_config(path: Path, values: Mapping[str, object]) -> Path:
    """A run-config file for `flwr run --run-config FILE.toml`: values of any text (the JSON of a
    configuration, paths with quotes), which the `k=v` command-line form cannot carry."""
    path.write_text(tomli_w.dumps(dict(values)))
    return path


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
    """A SuperLink (on 127.0.0.1, behind its front door) and SuperNodes as child processes.

    Everything lives in `work_dir`: certificates, keys, logs, FLWR_HOME (the CLI's config.toml
    with the connection `fedlstm-local`, installed apps) and one FLWR_HOME per SuperNode, as on
    separate hosts. The SuperLink always listens on loopback: the `flwr` CLI of this machine
    uses its Control API there. Sites reach it only through the front door (nginx on
    `public_host:public_port`, passing the Fleet API alone), or, with `front_door=False`, only
    from this machine. SuperNodes started here run only apps signed by `app_key` (the user's
    fedlstm key by default).
    """

    def __init__(self, work_dir: str | Path, *, tls: bool = True, auth: bool = True,
                 front_door: bool = True, public_host: str = "127.0.0.1",
                 public_port: int | None = None, certificates: Certificates | None = None,
                 app_key: SigningKey | None = None, superlink_port: int | None = None,
                 database: str | None = None, startup_timeout: float = 60.0):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
        if front_door and not tls:
            raise ValueError("the front door serves the sites over TLS: it needs --tls")
        if public_host not in ("127.0.0.1", "localhost", "::1") and not front_door:
            raise ValueError("the SuperLink's Control API has no credentials: expose it to other "
                             "hosts only through the front door")
        self.work_dir = Path(work_dir).resolve()
        self.tls, self.auth, self.front_door = tls, auth, front_door
        self.host = "127.0.0.1"  # the SuperLink's own address: loopback, always
        self.public_host, self.public_port = public_host, public_port
        self.superlink_port, self.database = superlink_port, database
        self.startup_timeout = startup_timeout
        self.marker = uuid.uuid4().hex
        self.flwr_home = self.work_dir / "flwr-home"
        self.logs = self.work_dir / "logs"
        self.keys_dir = self.work_dir / "keys"
        self.certificates = certificates
        self.app_key = app_key
        self.port: int | None = None
        self.processes: list[ManagedProcess] = []
        self.superlink: ManagedProcess | None = None
        self.door: ManagedProcess | None = None
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
        if not signals.in_main_thread():
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
        self.port = self.superlink_port or free_port(self.host)
        if self.tls and self.certificates is None:
            self.certificates = generate_certificates(self.work_dir / "certs",
                                                      hosts=["localhost", self.host])
        if self.app_key is None:
            self.app_key = KeyHome.default().signing_key()
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
        if self.database:
            args += ["--database", self.database]
        self.superlink = self._start_listening("superlink", args, self.host, self.port)
        if self.front_door:
            self.public_port = self.public_port or free_port(self.public_host)
            command = nginx_command(self.work_dir / "front-door", self.public_host,
                                    self.public_port, self.port, self.certificates)
            self.door = self._start_listening("front-door", command, self.public_host,
                                              self.public_port)
        log.info("SuperLink on %s (tls=%s, auth=%s); sites connect to %s", self.address,
                 self.tls, self.auth, self.fleet_address)

    def _start_listening(self, name: str, args: list[str], host: str, port: int
                         ) -> ManagedProcess:
        proc = self.spawn(name, args)
        deadline = time.monotonic() + self.startup_timeout
        while not _port_open(host, port):
            if not proc.running:
                raise DeploymentError(f"{name} exited with code {proc.popen.returncode}"
                                      f"\n{tail(proc.log_path)}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"{name} did not listen on {host}:{port} within "
                                      f"{self.startup_timeout:.0f} s\n{tail(proc.log_path)}")
            time.sleep(0.2)
        return proc

    @property
    def address(self) -> str:
        """Where the SuperLink listens (loopback): the `flwr` CLI of this machine uses it."""
        return f"{self.host}:{self.port}"

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes connect: the front door, or loopback without one."""
        if self.front_door:
            return f"{self.public_host}:{self.public_port}"
        return self.address

    def write_cli_config(self) -> Path:
        """$FLWR_HOME/config.toml: where `flwr` finds the SuperLink (Flower >= 1.42)."""
        connection: dict = {"address": self.address}
        if self.tls:
            connection["root-certificates"] = str(self.certificates.ca_cert)
        else:
            connection["insecure"] = True
        path = self.flwr_home / "config.toml"
        path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                     CONNECTION: connection}}))
        return path

    def spawn(self, name: str, args: list[str], flwr_home: Path | None = None,
              env: dict[str, str] | None = None) -> ManagedProcess:
        log_path = self.logs / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        popen = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.work_dir,
                                 env=env or self.env(flwr_home), start_new_session=True)
        proc = ManagedProcess(name, popen, log_path, log_file)
        self.processes.append(proc)
        log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group we started, SIGKILL what is left after `grace` seconds."""
        self.stop_processes(self.processes, grace)
        self._stop_stragglers()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    @staticmethod
    def stop_processes(processes: list[ManagedProcess], grace: float = 10.0) -> None:
        """SIGTERM these process groups, SIGKILL what is left after `grace` seconds (a stopped
        (SIGSTOP) process is continued first, so that it can exit)."""
        active = [p for p in processes if not p.stopped]
        running = [p for p in active if p.running]
        for proc in running:
            _signal_group(proc.popen.pid, signal.SIGTERM)
            _signal_group(proc.popen.pid, signal.SIGCONT)
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
        """A SuperNode with its own runtime port, FLWR_HOME and node config (e.g. data-path),
        connected through the front door, running only apps signed by `app_key`."""
        home = self.work_dir / "nodes" / name / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        args = [*SUPERNODE, "--superlink", self.fleet_address,
                "--host", self.host, "--port", str(free_port(self.host)),
                "--isolation", "subprocess", "--node-config", config_args(node_config)]
        if self.tls:
            args += ["--root-certificates", str(self.certificates.ca_cert)]
        else:
            args.append("--insecure")
        if private_key is not None:
            args += ["--auth-supernode-private-key", str(private_key)]
        shim = write_clientapp_shim(self.work_dir / "site-bin")
        env = site_environment(self.env(home), shim, [self.app_key.public.source])
        return self.spawn(f"supernode-{name}", args, env=env)

    # -- runs -----------------------------------------------------------------------------------
    def submit(self, app_dir: Path, run_config: Mapping[str, object]) -> int:
        """`flwr run APP fedlstm-local --run-config FILE.toml`: returns the run id at once."""
        overrides = write_run_config(self.work_dir / f"run-config-{uuid.uuid4().hex[:8]}.toml",
                                     run_config)
        return started_run(self.flwr("run", str(app_dir), CONNECTION, "--run-config",
                                     str(overrides), "--format", "json"))

    def run_info(self, run_id: int) -> dict:
        """`flwr ls --run-id ID --format json`: status, status-details, elapsed, traffic, ..."""
        return run_status(run_id, self.flwr("ls", CONNECTION, "--run-id", str(run_id),
                                            "--format", "json"))

    def wait(self, run_id: int, timeout: float | None = None,
             watch: list[ManagedProcess] | None = None, min_sites: int | None = None) -> dict:
        """Block until the run finishes; return its `run_info` (status `finished:...`).

        `flwr log --stream` ends when the run does, so no polling CLI competes with training for
        the CPUs; its output (the ServerApp's log) goes to logs/serverapp-RUN.log. Fails early
        when the SuperLink dies, or when fewer than `min_sites` of the watched SuperNodes are left
        (default: all of them); a SuperNode that dies while enough are left is logged, and the
        run goes on without it (the ServerApp leaves it out of the next rounds).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        sites = list(watch or [])
        min_sites = len(sites) if min_sites is None else min_sites
        lost: set[str] = set()
        watch = [self.superlink, *([self.door] if self.door else [])]
        stream = self.spawn(f"serverapp-{run_id}", [self.executable("flwr"), "log", str(run_id),
                                                    CONNECTION, "--stream"])
        while True:
            for proc in watch:  # first: a dead SuperLink also ends the stream
                if not proc.running:
                    raise DeploymentError(f"{proc.name} exited with code {proc.popen.returncode} "
                                          f"during run {run_id}\n{self.report()}")
            if not stream.running:
                info = self.run_info(run_id)
                if str(info.get("status", "")).startswith("finished"):
                    return info
                # the stream ended early (a dropped connection): poll instead, gently
                time.sleep(3.0)
            for proc in sites:
                if not proc.running and proc.name not in lost:
                    lost.add(proc.name)
                    left = len(sites) - len(lost)
                    if left < min_sites:
                        raise DeploymentError(
                            f"{proc.name} exited with code {proc.popen.returncode} during run "
                            f"{run_id}: {left} site(s) left, {min_sites} needed "
                            f"(federation.min_fit_clients)\n{self.report()}")
                    log.warning("%s exited with code %s during run %s; going on with the %d "
                                "site(s) left", proc.name, proc.popen.returncode, run_id, left)
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


class FlwrCli:
    """The `flwr` CLI on a user's connection ($FLWR_HOME/config.toml; its default when None)."""

    def __init__(self, connection: str | None):
        self.executable = LocalFederation.executable("flwr")
        self.connection = [connection] if connection else []

    def _call(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.executable, *args], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)

    def start(self, app: Path, run_config: Path) -> int:
        return started_run(self._call("run", str(app), *self.connection, "--run-config",
                                      str(run_config), "--format", "json"))

    def status(self, run_id: int) -> dict:
        return run_status(run_id, self._call("ls", *self.connection, "--run-id", str(run_id),
                                             "--format", "json"))

    def follow(self, run_id: int) -> dict:
        """Stream the run's log to this terminal until it ends; return its status."""
        subprocess.run([self.executable, "log", str(run_id), *self.connection, "--stream"],
                       stdin=subprocess.DEVNULL)
        info = self.status(run_id)
        while not str(info.get("status", "")).startswith("finished"):
            # the stream ended early (a dropped connection): poll instead, gently
            time.sleep(3.0)
            info = self.status(run_id)
        return info


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


