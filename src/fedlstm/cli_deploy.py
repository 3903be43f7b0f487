"""`fedlstm deploy ...`: certificates, keys and a local multi-process Flower federation."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from fedlstm import cli_options as opt
from rich.table import Table

deploy_app = typer.Typer(no_args_is_help=True,
                         help="Run the federation as real processes (SuperLink + SuperNodes).")


def _fail(exc: BaseException) -> None:
    """Like cli._fail, but the message (log tails) is printed as text, not rich markup."""
    from fedlstm.cli import console

    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


@deploy_app.command("certs")
def certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for ca.crt, server.pem, server.key and keys/.")],
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="Name or address SuperNodes use to reach the SuperLink (repeat; "
                       "default: localhost and 127.0.0.1).")] = None,
    supernodes: Annotated[int, typer.Option("--supernodes", "-n", min=0,
                                            help="SuperNode key pairs to generate.")] = 2,
    days: Annotated[int, typer.Option(min=1, help="Validity of the certificates.")] = 365,
) -> None:
    """Generate a CA, the SuperLink's TLS certificate and SuperNode key pairs (ECDSA P-384)."""
    from fedlstm.cli import out_console
    from fedlstm.federation.deploy import generate_certificates, generate_supernode_keys

    try:
        paths = generate_certificates(out_dir, hosts=host or ["localhost", "127.0.0.1"], days=days)
        keys = generate_supernode_keys(out_dir / "keys", supernodes)
    except (OSError, ValueError) as exc:
        _fail(exc)
    table = Table(title=f"credentials in {out_dir}")
    table.add_column("file")
    table.add_column("goes to")
    table.add_row(str(paths.ca_cert), "every SuperNode and `flwr` user (--root-certificates)")
    table.add_row(str(paths.ca_key), "nobody: keep it private (signs certificates)")
    table.add_row(f"{paths.server_cert}, {paths.server_key}", "the SuperLink (--ssl-certfile, --ssl-keyfile)")
    for private, public in keys:
        table.add_row(str(private), "its site's SuperNode (--auth-supernode-private-key)")
        table.add_row(str(public), "the coordinator: `flwr supernode register`")
    out_console.print(table)


@deploy_app.command("app")
def app_folder(
    out_dir: Annotated[Path, typer.Argument(help="Where to create the fedlstm-app folder.")],
) -> None:
    """Write the small Flower app folder that `flwr run` submits (entry points only)."""
    from fedlstm.cli import out_console
    from fedlstm.federation.deploy import write_app_dir

    try:
        app = write_app_dir(out_dir)
    except OSError as exc:
        _fail(exc)
    out_console.print(f"Flower app written to {app}: flwr run {app} CONNECTION --run-config "
                      "'config-file=\"/abs/config.json\" out-dir=\"/abs/runs/NAME\"'")


@deploy_app.command("local")
def local(
    dataset: opt.Dataset = None,
    protocol: opt.Protocol = None,
    clients: opt.Clients = None,
    partition: opt.Partition = None,
    strategy: opt.Strategy = None,
    rounds: opt.Rounds = None,
    local_epochs: opt.LocalEpochs = None,
    window: opt.Window = None,
    seed: opt.Seed = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/deployed"),
    config: opt.ConfigFile = None,
    set_: opt.Overrides = None,
    data_dir: opt.DataDir = None,
    work_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for shares, certificates, keys and logs (kept; default: a temporary "
             ".NAME.deploy next to --out, removed after success).")] = None,
    tls: Annotated[bool, typer.Option(help="TLS between SuperNodes, CLI and SuperLink.")] = True,
    auth: Annotated[bool, typer.Option(help="SuperNode authentication (needs TLS).")] = True,
    timeout: Annotated[Optional[float], typer.Option(help="Give up (and stop the run) after this many seconds.")] = None,
    overwrite: bool = False,
) -> None:
    """Run Fed-LSTM as local processes: a SuperLink and one SuperNode per client, via `flwr run`."""
    # Partitions exactly as `fedlstm federate` does; each SuperNode gets its share through its
    # node config; every process started is stopped, also on failure or Ctrl-C.
    from fedlstm.cli import _print_rounds, _summary_table, console, federation_options, out_console
    from fedlstm.config import load_config
    from fedlstm.federation.deploy import run_local_deployment

    try:
        cfg = load_config(config, set_, **federation_options(
            dataset, protocol, data_dir, clients, partition, strategy, rounds, local_epochs,
            window, seed))
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
        f = cfg.federation
        security = ("TLS + SuperNode authentication" if tls and auth else "TLS" if tls
                    else "insecure (no TLS)")
        console.print(f"Fed-LSTM deployment on {cfg.data.dataset}: {f.clients} SuperNodes, partition "
                      f"{f.partition}, {f.strategy}, {f.rounds} rounds x {f.local_epochs} local "
                      f"epochs, {security}")
        start = time.perf_counter()
        with console.status("starting...") as status:
            def progress(message: str) -> None:
                console.print(f"[dim]{time.perf_counter() - start:6.1f}s[/] {escape(message)}")
                status.update(f"{escape(message)}...")

            result = run_local_deployment(cfg, out, work_dir, tls=tls, auth=auth,
                                          overwrite=overwrite, timeout=timeout,
                                          command=shlex.join(["fedlstm", *sys.argv[1:]]),
                                          progress=progress)
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError,
            subprocess.SubprocessError) as exc:
        _fail(exc)
    wall = time.perf_counter() - start
    metrics = json.loads((result.out / "metrics.json").read_text())
    _print_rounds(metrics["rounds"])
    out_console.print(_summary_table(metrics))
    elapsed = metrics.get("deployment", {}).get("elapsed")
    server = f", ServerApp {elapsed:.1f} s" if isinstance(elapsed, (int, float)) else ""
    out_console.print(f"run {result.run_id}: {result.status} in {wall:.1f} s "
                      f"({result.timings['deployment_seconds']:.1f} s from SuperNode start to the "
                      f"end of the run{server})")
    out_console.print(f"run written to {out}")
