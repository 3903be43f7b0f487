"""`fedlstm deploy ...`: certificates, keys and a local multi-process Flower federation."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fedlstm.cli.common import (
    AlertBudgetOpt,
    Clients,
    Compress,
    ConfigFile,
    DataDir,
    Dataset,
    DeployPartition,
    DetectorOpt,
    LocalEpochs,
    Overrides,
    Protocol,
    Rounds,
    SecAgg,
    Seed,
    Strategy,
    TaskOpt,
    Window,
    command_line,
    console,
    data_label,
    fail,
    federation_options,
    listening_socket,
    load_run_config,
    n_sites,
    out_console,
    print_rounds,
    print_summary,
    say,
    traffic_label,
)

deploy_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                         help="Run the federation as real processes (SuperLink + SuperNodes).")


@deploy_app.command("certs")
def certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for ca.crt, server.pem, server.key and keys/.")],
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="Name or address SuperNodes use to reach the coordinator (repeat; "
                       "localhost and 127.0.0.1 are always included).")] = None,
    supernodes: Annotated[int, typer.Option("--supernodes", "-n", min=0,
                                            help="SuperNode key pairs to generate.")] = 2,
    days: Annotated[int, typer.Option(min=1, help="Validity of the certificates.")] = 365,
    overwrite: Annotated[bool, typer.Option(help="Replace the credentials OUT_DIR holds (every site then needs the new ca.crt and keys).")] = False,
) -> None:
    """Generate a CA, the coordinator's TLS certificate, SuperNode key pairs (ECDSA P-384) and
    the public key sites trust apps from (this host's fedlstm key, `fedlstm keys`)."""
    import shutil

    from fedlstm.detection.signing import KeyHome
    from fedlstm.federation.deploy.credentials import generate_certificates, generate_supernode_keys

    try:
        if (out_dir / "ca.crt").exists() and not overwrite:
            # a rerun (to add a site) replaced the CA and every key: each site was cut off
            raise FileExistsError(f"{out_dir} holds a federation's credentials (ca.crt); new "
                                  "ones cut off every site that has the old: pass --overwrite "
                                  "to replace them, or choose another folder")
        paths = generate_certificates(out_dir, hosts=host or ["localhost", "127.0.0.1"], days=days)
        keys = generate_supernode_keys(out_dir / "keys", supernodes)
        signer = KeyHome.default().signing_key()
        app_key = Path(shutil.copyfile(signer.public.source, out_dir / "coordinator.pub"))
    except (OSError, ValueError) as exc:
        fail(exc)
    table = Table(title=Text(f"credentials in {out_dir}"))
    table.add_column("file")
    table.add_column("goes to")
    table.add_row(Text(str(paths.ca_cert)), "every site and every `flwr` user (--root-certificates)")
    table.add_row(Text(str(paths.ca_key)), "nobody: keep it private (signs certificates)")
    table.add_row(Text(f"{paths.server_cert}, {paths.server_key}"),
                  "the coordinator (`fedlstm deploy superlink --creds`)")
    table.add_row(Text(str(app_key)), Text(f"every site (--trusted-app-key): apps and bundles "
                                           f"signed by {signer.fingerprint}"))
    for private, public in keys:
        table.add_row(Text(str(private)), "its site's SuperNode (--auth-key)")
        table.add_row(Text(str(public)), "the coordinator: `flwr supernode register`")
    out_console.print(table)


@deploy_app.command("app")
def app_folder(
    out_dir: Annotated[Path, typer.Argument(help="Where to create the fedlstm-app folder.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an app folder's pyproject.toml that differs from this fedlstm's (another version's, or edited).")] = False,
) -> None:
    """Write the Flower app folder that `flwr run` submits, signed with this host's key."""
    from fedlstm.detection.signing import KeyFileError, KeyHome
    from fedlstm.federation.deploy.app import write_signed_app

    try:
        app = write_signed_app(out_dir, KeyHome.default().signing_key(), overwrite)
    except (OSError, KeyFileError) as exc:
        fail(exc)
    out_console.print(Text(
        f"Flower app written to {app.folder}, signed by {app.signature.rpartition(':')[0]} "
        f"(signature in {app.signature_file}). Start a run with: fedlstm deploy run --app "
        f"{app.folder} --config CONFIG.json --out-dir runs/NAME"))


@deploy_app.command("superlink")
def superlink(
    creds: Annotated[Path, typer.Option(help="Folder written by `fedlstm deploy certs`.")] = Path("creds"),
    host: Annotated[str, typer.Option(help="Address the sites' port binds to.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="The sites' port (the front door: Fleet API only).")] = 9093,
    control_port: Annotated[int, typer.Option(
        help="The SuperLink's own port, on 127.0.0.1 only: the coordinator's `flwr` CLI.")] = 9091,
    database: Annotated[Path, typer.Option(help="SuperLink state (registered keys, runs).")] = Path("superlink.db"),
    work_dir: Annotated[Path, typer.Option(help="Logs and the front door's files.")] = Path(".fedlstm-superlink"),
) -> None:
    """The coordinator: the SuperLink on loopback, and nginx on HOST:PORT passing only the
    Fleet API to the sites. Runs until Ctrl-C."""
    from fedlstm.federation.deploy.credentials import Certificates
    from fedlstm.federation.deploy.processes import DeploymentError, LocalFederation
    from fedlstm.runs.rundir import output_lock

    creds = creds.resolve()  # the SuperLink and nginx run in the work folder
    c = Certificates(creds / "ca.crt", creds / "ca.key", creds / "server.pem", creds / "server.key")
    try:
        for path in (c.ca_cert, c.server_cert, c.server_key):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: run `fedlstm deploy certs {creds} "
                                        "--host NAME` first")
        # Taken ports fail here: the SuperLink's own bind error came after the start banner
        check_ports_free([(host, port, "--port"), ("127.0.0.1", control_port, "--control-port")])
        federation = LocalFederation(work_dir, public_host=host, public_port=port,
                                     superlink_port=control_port, certificates=c,
                                     database=str(database.resolve()))
        # one coordinator per folder: a second one rewrote the first's front door and logs
        with output_lock(work_dir), federation:
            console.print(Text(
                f"SuperLink on {federation.address} (Control API: this host only); sites connect "
                f"to {host}:{port} (Fleet API only). In $FLWR_HOME/config.toml, use address = "
                f"\"{federation.address}\" and root-certificates = \"{c.ca_cert.resolve()}\". "
                "Ctrl-C stops both."))
            while federation.superlink.running and federation.door.running:
                time.sleep(1)
            raise DeploymentError(f"a process stopped:\n{federation.report()}")
    except KeyboardInterrupt:
        console.print("stopped")
    except (OSError, ValueError, RuntimeError) as exc:
        fail(exc)


def check_ports_free(ports: list[tuple[str, int, str]]) -> None:
    """Refuse ports another program listens on, naming the option that set each."""
    for host, port, option in ports:
        try:
            listening_socket(host, port).close()
        except OSError as exc:
            raise OSError(f"{host}:{port} ({option}) is in use ({exc}); choose another port, "
                          "or stop what listens there") from None


@deploy_app.command("supernode")
def supernode(
    superlink_address: Annotated[str, typer.Option("--superlink", help="The coordinator's front door, HOST:PORT.")],
    root_certificates: Annotated[Path, typer.Option(help="The federation's ca.crt.")],
    auth_key: Annotated[Path, typer.Option(help="This site's private key (registered by the coordinator).")],
    trusted_app_key: Annotated[list[Path], typer.Option(
        help="Public key whose signed apps this site runs (coordinator.pub; repeatable).")],
    data_path: Annotated[Path, typer.Option(help="This site's training data (its own format, or a share).")],
    name: Annotated[str, typer.Option(help="This site's name in the run's metrics.")],
    port: Annotated[int, typer.Option(help="The SuperNode's local runtime port.")] = 9094,
    out_dir: Annotated[Optional[Path], typer.Option(
        help="Where this site keeps its own detector (a federation across schemas, "
             "--partition networks: each site's detector never leaves it).")] = None,
) -> None:
    """A site: Flower's SuperNode, running only apps signed by a trusted key."""
    import os
    import tempfile

    from fedlstm.federation.deploy.processes import FLWR_ENV, SUPERNODE, config_args
    from fedlstm.federation.deploy.site import site_environment, write_clientapp_shim

    try:
        # Checked before the SuperNode starts: a missing key was a traceback, missing data a
        # site that went online and failed at its first run
        for path, option in ((root_certificates, "--root-certificates"),
                             (auth_key, "--auth-key"), (data_path, "--data-path")):
            if not path.exists():
                raise FileNotFoundError(f"{path} ({option}) not found")
        shim = write_clientapp_shim(tempfile.mkdtemp(prefix="fedlstm-site-"))
        env = site_environment({**os.environ, **FLWR_ENV}, shim, list(trusted_app_key))
        node_config = config_args({"data-path": str(data_path.resolve()), "name": name,
                                   **({"out-dir": str(out_dir.resolve())} if out_dir else {})})
        args = [*SUPERNODE, "--superlink", superlink_address, "--root-certificates",
                str(root_certificates), "--auth-supernode-private-key", str(auth_key),
                "--host", "127.0.0.1", "--port", str(port), "--isolation", "subprocess",
                "--node-config", node_config]
    except (OSError, ValueError) as exc:
        fail(exc)
    os.execve(SUPERNODE[0], args, env)  # the SuperNode replaces this process


@deploy_app.command("run")
def run(
    config: Annotated[Path, typer.Option(help="The run's configuration (TOML or JSON, e.g. a "
                                              "simulated run's config.json).")],
    out_dir: Annotated[Path, typer.Option(help="Run directory the ServerApp writes, on this host.")],
    app: Annotated[Path, typer.Option(help="Folder written by `fedlstm deploy app`.")] = Path("fedlstm-app"),
    connection: Annotated[Optional[str], typer.Option(
        help="SuperLink connection in $FLWR_HOME/config.toml (default: its default).")] = None,
    set_: Overrides = None,
) -> None:
    """Start a run of the signed app on the coordinator's SuperLink, stream its log, and exit
    non-zero unless it completed (`flwr run` exits 0 even when a run fails)."""
    import shutil
    import tempfile

    from fedlstm.federation.deploy.app import CONFIG_KEY, SIGNATURE_FILE, SIGNATURE_KEY
    from fedlstm.federation.deploy.processes import (
        FINISHED,
        DeploymentError,
        FlwrCli,
        write_run_config,
    )
    from fedlstm.runs.rundir import check_leftovers, check_out

    folder, run_id = None, None
    try:
        # Two runs into one --out-dir both ran and both wrote it, the last one winning
        check_out(out_dir)
        check_leftovers(out_dir)
        cfg = load_run_config(config, set_)  # the hybrid unless the configuration names a kind
        signature = (app.parent / SIGNATURE_FILE).read_text().strip()
        folder = Path(tempfile.mkdtemp(prefix="fedlstm-run-"))
        overrides = write_run_config(folder / "run-config.toml", {
            CONFIG_KEY: cfg.model_dump_json(), "out-dir": str(out_dir.resolve()),
            SIGNATURE_KEY: signature})
        flwr = FlwrCli(connection)
        run_id = flwr.start(app, overrides)
        console.print(Text(f"run {run_id} started; its log follows (Ctrl-C stops following, "
                           "not the run)"))
        info = flwr.follow(run_id)
    except KeyboardInterrupt:  # flwr stops streaming; the run goes on at the SuperLink
        which = f"run {run_id}" if run_id else "the run, if it started,"
        console.print(Text(f"stopped following {which}; it goes on at the SuperLink: `flwr ls` "
                           f"shows it, `flwr stop {run_id or 'RUN_ID'}` stops it",
                           style="yellow"))
        raise typer.Exit(130)
    except (OSError, ValueError, DeploymentError, subprocess.SubprocessError) as exc:
        fail(exc)
    finally:  # it holds the configuration and the app's signature
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    status, details = str(info.get("status", "")), info.get("status-details") or ""
    if status == FINISHED and (out_dir / "metrics.json").exists():
        console.print(Text(f"run {run_id} completed; its run directory is {out_dir}"))
        return
    why = (f"ended with status {status!r}" + (f": {details}" if details else "")
           if status != FINISHED else f"completed but wrote no run directory at {out_dir} "
           "(the ServerApp writes it on the SuperLink's host)")
    console.print(Text(f"run {run_id} {why}; the ServerApp's log above says why "
                       f"(`flwr log {run_id}` shows it again)", style="red"), soft_wrap=True)
    raise typer.Exit(1)


def _stopped_deployment(out: Path, work_dir: Path | None, code: int) -> None:
    """What a stopped `deploy local` kept: it said nothing of the checkpoint --resume uses."""
    from fedlstm.federation.deploy.launch import resumable

    work = work_dir or out.parent / f".{out.name}.deploy"
    kept = (f"the last completed round is checkpointed in {work}; continue with the same "
            "command and --resume") if resumable(work) else \
        "no round had completed, so nothing is kept; run the command again"
    console.print(Text(f"the deployment was stopped: {kept}", style="yellow"), soft_wrap=True)
    raise typer.Exit(code)


@deploy_app.command("local")
def local(
    dataset: Dataset = None,
    protocol: Protocol = None,
    clients: Clients = None,
    partition: DeployPartition = None,
    strategy: Strategy = None,
    rounds: Rounds = None,
    local_epochs: LocalEpochs = None,
    window: Window = None,
    task: TaskOpt = None,
    seed: Seed = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/deployed"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
    work_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for shares, certificates, keys and logs (kept; default: a temporary "
             ".NAME.deploy next to --out, removed after success).")] = None,
    tls: Annotated[bool, typer.Option(help="TLS between SuperNodes, CLI and SuperLink.")] = True,
    auth: Annotated[bool, typer.Option(help="SuperNode authentication (needs TLS).")] = True,
    front_door: Annotated[bool, typer.Option(
        help="Sites reach the SuperLink through nginx, which passes only the Fleet API.")] = True,
    timeout: Annotated[Optional[float], typer.Option(
        help="Give up (and stop the run) after this many seconds (default: twice a round "
             "timeout per round).")] = None,
    detector: DetectorOpt = None,
    alert_budget: AlertBudgetOpt = None,
    compress: Compress = None,
    secagg: SecAgg = False,
    overwrite: bool = False,
    resume: Annotated[bool, typer.Option(
        help="Continue a deployment that stopped (SuperLink, ServerApp or this command killed) "
             "from the last round checkpointed in its work folder.")] = False,
) -> None:
    """Run Fed-LSTM as local processes: a SuperLink and one SuperNode per client, via `flwr run`."""
    # Partitions exactly as `fedlstm federate` does; each SuperNode gets its share through its
    # node config; every process started is stopped, also on failure or Ctrl-C.
    from fedlstm.federation.deploy.launch import run_local_deployment
    from fedlstm.runs.rundir import check_out

    try:
        cfg = load_run_config(config, set_, detector, alert_budget, **federation_options(
            dataset, protocol, data_dir, clients, partition, strategy, rounds, local_epochs,
            window, seed, compress), model__task=task, federation__secagg=secagg or None)
        check_out(out, overwrite)
        f = cfg.federation
        security = ("TLS + SuperNode authentication" if tls and auth else "TLS" if tls
                    else "insecure (no TLS)") + (", front door" if front_door and tls else "")
        console.print(Text.assemble(f"Fed-LSTM ({cfg.detector}) deployment on ", data_label(cfg),
                                    f": {n_sites(cfg)} SuperNodes, "
                           f"partition {f.partition}, {f.strategy}, {f.rounds} rounds x "
                           f"{f.local_epochs} local epochs, {security}"
                           + traffic_label(f)))
        start = time.perf_counter()
        with console.status("starting...") as status:
            def progress(message: str) -> None:
                console.print(Text.assemble((f"{time.perf_counter() - start:6.1f}s", "dim"),
                                            f" {message}"))
                status.update(Text(f"{message}..."))

            result = run_local_deployment(cfg, out, work_dir, tls=tls, auth=auth,
                                          front_door=front_door and tls,
                                          overwrite=overwrite, resume=resume,
                                          timeout=timeout, command=command_line(),
                                          progress=progress)
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (LocalFederation)
        code = 130 if isinstance(exc, KeyboardInterrupt) else exc.code
        if code not in (130, 143):
            raise
        _stopped_deployment(out, work_dir, code)
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError,
            subprocess.SubprocessError) as exc:
        fail(exc)
    wall = time.perf_counter() - start
    metrics = json.loads((result.out / "metrics.json").read_text())
    print_rounds(metrics["rounds"])
    print_summary(metrics)
    elapsed = metrics.get("deployment", {}).get("elapsed")
    server = f", ServerApp {elapsed:.1f} s" if isinstance(elapsed, (int, float)) else ""
    out_console.print(Text(f"run {result.run_id}: {result.status} in {wall:.1f} s "
                           f"({result.timings['deployment_seconds']:.1f} s from SuperNode start to "
                           f"the end of the run{server})"))
    say(f"run written to {out}", to=out_console)
