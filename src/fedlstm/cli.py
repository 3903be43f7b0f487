"""The `fedlstm` command: a thin layer over the library, rendering with rich."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from fedlstm import __version__
from fedlstm import cli_options as opt
from fedlstm.cli_deploy import deploy_app
from fedlstm.cli_anomaly import register as register_anomaly_commands
from fedlstm.cli_detect import register as register_detect_commands
from fedlstm.training.loop import Reporter

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated LSTM intrusion and anomaly detection.")
data_app = typer.Typer(no_args_is_help=True, help="Find, fetch and describe datasets.")
app.add_typer(data_app, name="data")
app.add_typer(deploy_app, name="deploy")
register_detect_commands(app)
register_anomaly_commands(app)
console = Console(stderr=True)
out_console = Console()

SchemaOpt = Annotated[Optional[str], typer.Option(
    help="Flow-log schema for your own files: zeek-conn | cicflowmeter | FILE.toml")]
TrainFiles = Annotated[Optional[list[Path]], typer.Option(
    "--train-file", help="Your own labelled flow file or folder (repeatable; federate: one per "
                        "client); needs --schema.")]
TestFile = Annotated[Optional[Path], typer.Option(
    help="Held-out file of your own; without it, a random split of the training files.")]
DataDir = opt.DataDir


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    flwr_log = logging.getLogger("flwr")  # Flower logs every message exchange at INFO/DEBUG
    flwr_log.setLevel(logging.INFO if verbose else logging.WARNING)
    flwr_log.propagate = False


def _byo(schema: str | None, train_file: list[Path] | None, test_file: Path | None) -> dict:
    """Load-config overrides for bring-your-own flow files."""
    if train_file and not schema:
        raise typer.BadParameter("--train-file needs --schema (zeek-conn, cicflowmeter or FILE.toml)")
    return {"data__schema": schema,
            "data__train_files": [str(p.resolve()) for p in train_file] if train_file else None,
            "data__test_file": str(test_file.resolve()) if test_file else None}


def _data_label(cfg) -> str:
    d = cfg.data
    if d.train_files:
        protocol = "files (held-out test file)" if d.test_file else "random-split"
        return (f"{len(d.train_files)} file(s) of yours, schema {Path(d.spec_name).name}, "
                f"protocol [bold]{protocol}[/]")
    return f"{d.dataset}, protocol [bold]{d.protocol}[/]"


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


class RichReporter(Reporter):
    def __init__(self, label: str):
        self.label = label
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False)

    def start(self, epochs: int, batches_per_epoch: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"{self.label} epoch 1/{epochs}",
                                           total=epochs * batches_per_epoch)
        self.epochs = epochs

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def epoch_end(self, record: dict) -> None:
        e = record["epoch"]
        val = f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else ""
        val += f" val_acc {record['val_accuracy']:.4f}" if "val_accuracy" in record else ""
        acc = f" train_acc {record['train_accuracy']:.4f}" if "train_accuracy" in record else ""
        self.progress.console.print(f"epoch {e}: train_loss {record['train_loss']:.4f}{acc}{val}")
        self.progress.update(self.task, description=f"{self.label} epoch {min(e + 1, self.epochs)}/{self.epochs}")

    def finish(self) -> None:
        self.progress.stop()


@data_app.command("fetch")
def data_fetch(names: Annotated[Optional[list[str]], typer.Argument(help="Datasets (default: all).")] = None,
               data_dir: DataDir = None,
               mirror: Annotated[Optional[str], typer.Option(help="Base URL serving <folder>/<file>.")] = None,
               force: bool = False) -> None:
    """Download datasets from their publishers (or a mirror), verifying sha256."""
    from fedlstm.data.fetch import fetch_dataset
    from fedlstm.data.registry import data_dir as resolve
    from fedlstm.data.schemas import DATASETS, get_spec

    try:
        root = resolve(data_dir)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} B"),
                      TimeRemainingColumn(), console=console) as progress:
            def factory(name: str, total: int | None):
                task = progress.add_task(name, total=total)
                return lambda n: progress.advance(task, n)

            for name in names or list(DATASETS):
                for path in fetch_dataset(get_spec(name), root, mirror=mirror,
                                          progress_factory=factory, force=force):
                    console.print(f"[green]ok[/] {path}")
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        _fail(exc)


@data_app.command("info")
def data_info(name: str, data_dir: DataDir = None, lenient: bool = False) -> None:
    """Files, rows, class and attack-family distribution of a dataset."""
    from fedlstm.data.readers import read_records
    from fedlstm.data.registry import data_dir as resolve
    from fedlstm.data.registry import locate
    from fedlstm.data.schemas import get_spec

    try:
        spec = get_spec(name)
        root = resolve(data_dir)
        out_console.print(f"[bold]{spec.title}[/] ({spec.name}): {len(spec.feature_columns)} features "
                          f"({len(spec.categorical)} categorical); order: {spec.order_note}")
        for fspec in spec.files:
            try:
                path = locate(spec, fspec.role, root)
            except FileNotFoundError as exc:
                out_console.print(f"[yellow]{fspec.role}[/]: {exc}")
                continue
            recs = read_records(path, spec, lenient=lenient)
            table = Table(title=f"{fspec.role}: {path} ({len(recs):,} rows)")
            table.add_column("family")
            table.add_column("rows", justify="right")
            table.add_column("share", justify="right")
            for fam, n in Counter(recs.family).most_common():
                table.add_row(fam, f"{n:,}", f"{n / len(recs):.2%}")
            out_console.print(table)
            out_console.print(f"attack types: {len(set(recs.attack)) - 1}; duplicate records: "
                              f"{int(recs.frame.assign(a=recs.attack).duplicated().sum()):,}")
    except (KeyError, OSError, ValueError) as exc:
        _fail(exc)


def _summary_table(metrics: dict) -> Table:
    table = Table(title=f"{metrics['dataset']} / protocol {metrics['protocol']} / {metrics['mode']}")
    for col in ("set", "n", "accuracy", "precision", "recall", "f1", "roc_auc", "fpr"):
        table.add_column(col, justify="right")
    for name, ev in metrics["evaluations"].items():
        b = ev["binary"]
        table.add_row(name, f"{b['n']:,}", *(f"{b[k]:.4f}" if b[k] is not None else "-"
                                             for k in ("accuracy", "precision", "recall", "f1",
                                                       "roc_auc", "fpr")))
    return table


@app.command()
def train(
    dataset: opt.Dataset = None,
    protocol: opt.Protocol = None,
    window: opt.Window = None,
    task: Annotated[Optional[str], typer.Option(help="binary | family")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    seed: opt.Seed = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    schema: SchemaOpt = None,
    train_file: TrainFiles = None,
    test_file: TestFile = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/latest"),
    config: opt.ConfigFile = None,
    set_: opt.Overrides = None,
    data_dir: DataDir = None,
    overwrite: bool = False,
) -> None:
    """Train and evaluate the centralised LSTM detector; writes a run directory."""
    from fedlstm.config import load_config
    from fedlstm.pipeline import train_centralised
    from fedlstm.runs import write_run

    try:
        cfg = load_config(config, set_, data__dataset=dataset, data__protocol=protocol,
                          data__data_dir=data_dir, windows__window=window, model__task=task,
                          train__epochs=epochs, seed=seed, train__device=device,
                          **_byo(schema, train_file, test_file))
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
        console.print(f"fedlstm {__version__}: {_data_label(cfg)}, "
                      f"W={cfg.windows.window}, task {cfg.model.task}")
        result = train_centralised(cfg, reporter=RichReporter("train"))
        write_run(result, cfg, out, overwrite=overwrite, command=shlex.join(["fedlstm", *sys.argv[1:]]))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        _fail(exc)
    metrics = json.loads((out / "metrics.json").read_text())
    out_console.print(_summary_table(metrics))
    out_console.print(f"run written to {out}")


@app.command()
def federate(
    dataset: opt.Dataset = None,
    protocol: opt.Protocol = None,
    clients: opt.Clients = None,
    partition: opt.Partition = None,
    strategy: opt.Strategy = None,
    rounds: opt.Rounds = None,
    local_epochs: opt.LocalEpochs = None,
    window: opt.Window = None,
    seed: opt.Seed = None,
    schema: SchemaOpt = None,
    train_file: TrainFiles = None,
    test_file: TestFile = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/federated"),
    config: opt.ConfigFile = None,
    set_: opt.Overrides = None,
    data_dir: DataDir = None,
    overwrite: bool = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    compare: Annotated[bool, typer.Option(help="Also train local-only LSTMs per client and a centralised LSTM on the pooled clients, and compare all on the same test sets.")] = False,
    dp: Annotated[bool, typer.Option("--dp", help="Record-level DP-SGD on every client.")] = False,
    epsilon: Annotated[Optional[float], typer.Option(help="With --dp: target ε over all planned rounds (calibrates the noise; δ = 1/n).")] = None,
    client_dp: Annotated[bool, typer.Option("--client-dp", help="Client-level DP: clipped updates + server Gaussian noise.")] = False,
    secagg: Annotated[bool, typer.Option("--secagg", help="Flower SecAgg+: the server sees only the sum of updates.")] = False,
) -> None:
    """Train Fed-LSTM with Flower's simulation engine (1 CPU and 1 torch thread per client)."""
    from fedlstm.config import load_config
    from fedlstm.federation.compare import run_comparison
    from fedlstm.federation.simulation import run_federated

    if partition is None and train_file and len(train_file) > 1:
        partition = "files"  # several sites' logs: each file (or folder) is one client
    try:
        cfg = load_config(config, set_, **federation_options(
                              dataset, protocol, data_dir, clients, partition, strategy, rounds,
                              local_epochs, window, seed),
                          train__dp=dp or None, train__dp_target_epsilon=epsilon,
                          federation__client_dp=client_dp or None,
                          federation__secagg=secagg or None,
                          **_byo(schema, train_file, test_file))
        if out.exists() and not (overwrite or resume):
            raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
        f = cfg.federation
        clients = len(cfg.data.train_files) if f.partition == "files" else f.clients
        console.print(f"fedlstm {__version__}: Fed-LSTM on {_data_label(cfg)}, "
                      f"{clients} clients, partition {f.partition}, "
                      f"{f.strategy}, {f.rounds} rounds x {f.local_epochs} local epochs"
                      + (", DP-SGD" if cfg.train.dp else "") + (", client-level DP" if f.client_dp else "")
                      + (", SecAgg+" if f.secagg else ""))
        command = shlex.join(["fedlstm", *sys.argv[1:]])
        with console.status("federated training (Flower simulation engine)...") as status:
            if compare:
                run_comparison(cfg, out, overwrite=overwrite, command=command,
                               progress=lambda text: status.update(text))
            else:
                run_federated(cfg, out, overwrite=overwrite, resume=resume, command=command)
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        _fail(exc)
    if compare:
        out_console.print((out / "comparison.md").read_text())
        out_console.print(f"comparison written to {out}")
        return
    metrics = json.loads((out / "metrics.json").read_text())
    _print_rounds(metrics["rounds"])
    out_console.print(_summary_table(metrics))
    out_console.print(f"run written to {out}")


def federation_options(dataset, protocol, data_dir, clients, partition, strategy, rounds,
                       local_epochs, window, seed) -> dict:
    """`load_config` keywords shared by `federate` and `deploy local`."""
    return dict(data__dataset=dataset, data__protocol=protocol, data__data_dir=data_dir,
                federation__clients=clients, federation__partition=partition,
                federation__strategy=strategy, federation__rounds=rounds,
                federation__local_epochs=local_epochs, windows__window=window, seed=seed)


def _print_rounds(rounds: list[dict]) -> None:
    table = Table(title="rounds (test columns: reporting only)")
    keys = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    keys += sorted({k for r in rounds for k in r if k.startswith("test_accuracy/")})
    table.add_column("round", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    for r in rounds:
        table.add_row(str(r["round"]), *(f"{r[k]:.4f}" if k in r else "-" for k in keys))
    out_console.print(table)


@app.command("privacy-utility")
def privacy_utility(
    epsilons: Annotated[str, typer.Option(help="Comma-separated target ε values; inf = no DP.")] = "1,3,8,inf",
    dataset: Annotated[Optional[str], typer.Option()] = None,
    clients: Annotated[Optional[int], typer.Option()] = None,
    rounds: opt.Rounds = None,
    out: Annotated[Path, typer.Option(help="Output folder (runs are cached there).")] = Path("reports/privacy"),
    config: opt.ConfigFile = None,
    set_: opt.Overrides = None,
    data_dir: DataDir = None,
) -> None:
    """Fed-LSTM accuracy against record-level ε (DP-SGD on every site): table and figure."""
    from fedlstm.config import load_config
    from fedlstm.reports.privacy import sweep

    try:
        values = [float(e) for e in epsilons.split(",")]
        cfg = load_config(config, set_, data__dataset=dataset, data__data_dir=data_dir,
                          federation__clients=clients, federation__rounds=rounds)
        with console.status("privacy-utility sweep...") as status:
            path = sweep(cfg, values, out, command=shlex.join(["fedlstm", *sys.argv[1:]]),
                         progress=lambda text: status.update(text))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        _fail(exc)
    out_console.print(path.read_text())


@app.command()
def reproduce(
    profile: Annotated[str, typer.Option(help="quick (smoke test, <= 3 min) | full (<= 15 min)")] = "full",
    out: Annotated[Path, typer.Option(help="Report folder (steps are cached there).")] = Path("reports/paper"),
    datasets: Annotated[Optional[list[str]], typer.Option("--dataset", help="Limit to these datasets.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--method", help="Limit to these methods.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Reproduce the paper: all datasets x methods x protocols; writes report.md and report.html."""
    from fedlstm.reports.reproduce import PROFILES, reproduce as run

    if profile not in PROFILES:
        _fail(ValueError(f"unknown profile {profile!r}; use {' or '.join(PROFILES)}"))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("reproduce", total=None)

        def report(done: int, total: int, text: str) -> None:
            progress.update(task, completed=done, total=total, description=text)

        try:
            path = run(out, profile, data_dir, datasets, methods, progress=report,
                       command=shlex.join(["fedlstm", *sys.argv[1:]]))
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            _fail(exc)
    out_console.print(f"report written to {path} and {path.with_suffix('.html')}")


@app.command()
def evaluate(
    bundle: Path,
    dataset: Annotated[Optional[str], typer.Option()] = None,
    protocol: Annotated[str, typer.Option()] = "official",
    data_dir: DataDir = None,
    seed: int = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics here.")] = None,
) -> None:
    """Re-evaluate a model bundle on a dataset's test set(s) under a protocol."""
    from fedlstm.config import DataConfig
    from fedlstm.data.splits import build_split
    from fedlstm.detection import ModelBundle
    from fedlstm.pipeline import evaluate_bundle
    from fedlstm.runs import public

    try:
        model = ModelBundle.load(bundle)
        cfg = DataConfig(dataset=dataset or model.spec.name, protocol=protocol, data_dir=data_dir)
        split = build_split(cfg, seed=seed)
        evaluations = {name: public(evaluate_bundle(model, recs)) for name, recs in split.tests.items()}
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        _fail(exc)
    metrics = {"dataset": cfg.dataset, "protocol": protocol, "mode": model.metadata.get("mode", "?"),
               "bundle": str(bundle), "evaluations": evaluations}
    out_console.print(_summary_table(metrics))
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    app()
