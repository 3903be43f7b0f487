"""`fedlstm anomaly train|federate|report`: the unsupervised (normal-only LSTM + Mahalanobis) detector.

`register(app)` adds the `anomaly` command group to the main typer app (called from fedlstm.cli).
Options not given here go through `--set anomaly.beta=0.5`, `--set train.epochs=3`, ...
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fedlstm.cli_console import error_text, make_console

console = make_console(stderr=True)
out_console = make_console()
anomaly_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                          help="Unsupervised detection of unknown attacks: "
                          "an LSTM learns normal traffic; Mahalanobis scores of its errors.")

Dataset = Annotated[Optional[str], typer.Option(help="nsl-kdd | kdd99 | unsw-nb15")]
Protocol = Annotated[Optional[str], typer.Option(help="official | random-split")]
Model = Annotated[Optional[str], typer.Option(help="lstm-ae (autoencoder) | lstm-forecast")]
Window = Annotated[Optional[int], typer.Option(help="Records per window (W).")]
Threshold = Annotated[Optional[str], typer.Option(help="f-beta (labelled validation) | fpr (label-free)")]
Beta = Annotated[Optional[float], typer.Option(help="β of F-β (< 1 favours precision).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(help="TOML or JSON run configuration.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Dataset folder (default: $FEDLSTM_DATA).")]


def register(app: typer.Typer) -> None:
    app.add_typer(anomaly_app, name="anomaly")


def _fail(exc: Exception) -> None:
    console.print(error_text(exc))
    raise typer.Exit(2)


def _command() -> str:
    return shlex.join(["fedlstm", *sys.argv[1:]])


def _summary(metrics: dict) -> Table:
    table = Table(title=Text(f"{metrics['dataset']} / {metrics['protocol']} / {metrics['mode']} "
                             f"(anomaly, ζ={metrics['threshold']:.4g})"))
    cols = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "fpr")
    for col in ("set", "n", *cols, "recall@FPR", "unseen n", "unseen recall"):
        table.add_column(col, justify="right")
    for name, ev in metrics["evaluations"].items():
        b, u = ev["binary"], ev["unseen"]
        table.add_row(Text(name), f"{b['n']:,}", *(f"{b[k]:.4f}" if b[k] is not None else "-" for k in cols),
                      f"{ev['at_fpr']['recall']:.4f}", f"{u['n']:,}",
                      f"{u['recall_at_threshold']:.4f}" if u["recall_at_threshold"] is not None else "-")
    return table


@anomaly_app.command()
def train(dataset: Dataset = None, protocol: Protocol = None, model: Model = None,
          window: Window = None, threshold: Threshold = None, beta: Beta = None,
          epochs: Annotated[Optional[int], typer.Option()] = None,
          seed: Annotated[Optional[int], typer.Option()] = None,
          out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/anomaly"),
          config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDir = None,
          overwrite: bool = False) -> None:
    """Train the normal-only LSTM centrally, fit μ, Σ and ζ on validation data; writes a run."""
    from fedlstm.anomaly_pipeline import load_anomaly_config, train_anomaly
    from fedlstm.reports.anomaly import write_anomaly_run
    from fedlstm.runs import output_lock, staged_dir

    try:
        with output_lock(out):  # what is printed below is this run's
            cfg = load_anomaly_config(config, set_, data__dataset=dataset, data__protocol=protocol,
                                      data__data_dir=data_dir, anomaly__model=model,
                                      windows__window=window, anomaly__threshold=threshold,
                                      anomaly__beta=beta, train__epochs=epochs, seed=seed)
            with staged_dir(out, overwrite=overwrite) as stage:
                with console.status(Text(f"training {cfg.anomaly.model} on normal "
                                         f"{cfg.data.dataset} traffic")):
                    result = train_anomaly(cfg)
                write_anomaly_run(stage, cfg, result.bundle, result.evaluations,
                                  {"files": result.split.files, "data_notes": result.split.notes,
                                   "history": result.history.to_dict(), "timings": result.timings},
                                  _command())
            metrics = json.loads((out / "metrics.json").read_text())
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        _fail(exc)
    out_console.print(_summary(metrics))
    out_console.print(Text(f"run written to {out}"))


@anomaly_app.command()
def federate(dataset: Dataset = None, protocol: Protocol = None, model: Model = None,
             window: Window = None, threshold: Threshold = None, beta: Beta = None,
             clients: Annotated[Optional[int], typer.Option(help="Number of simulated sites.")] = None,
             partition: Annotated[Optional[str], typer.Option(help="iid | dirichlet:ALPHA | by:COLUMN")] = None,
             rounds: Annotated[Optional[int], typer.Option()] = None,
             local_epochs: Annotated[Optional[int], typer.Option()] = None,
             seed: Annotated[Optional[int], typer.Option()] = None,
             engine: Annotated[str, typer.Option(help="flower (simulation engine) | inprocess")] = "flower",
             out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/anomaly-federated"),
             config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDir = None,
             overwrite: bool = False) -> None:
    """FedAvg of the normal-only LSTM; μ, Σ and ζ from merged per-site sums and histograms."""
    import numpy as np

    from fedlstm.anomaly_pipeline import evaluate_anomaly, load_anomaly_config
    from fedlstm.federation.anomaly import federate_anomaly
    from fedlstm.federation.simulation import federated_data
    from fedlstm.reports.anomaly import write_anomaly_run
    from fedlstm.runs import output_lock, staged_dir

    try:
        with output_lock(out):  # what is printed below is this run's
            if engine not in ("flower", "inprocess"):
                raise ValueError(f"unknown engine {engine!r}; use flower or inprocess")
            cfg = load_anomaly_config(config, set_, data__dataset=dataset, data__protocol=protocol,
                                      data__data_dir=data_dir, anomaly__model=model,
                                      windows__window=window, anomaly__threshold=threshold,
                                      anomaly__beta=beta, federation__clients=clients,
                                      federation__partition=partition, federation__rounds=rounds,
                                      federation__local_epochs=local_epochs, seed=seed)
            with staged_dir(out, overwrite=overwrite) as stage:
                with console.status("federated training and calibration..."):
                    data = federated_data(cfg)
                    server = federate_anomaly(cfg, data.spec, data.clients, data.names, data.tests,
                                              stage, engine)
                seen = np.concatenate([c.attack for c in data.clients])
                evaluations = {name: evaluate_anomaly(server.detector, recs, seen, cfg.anomaly.report_fpr)
                               for name, recs in data.tests.items()}
                write_anomaly_run(stage, server.cfg, server.detector, evaluations,
                                  {"data_notes": data.notes, "engine": engine,
                                   "rounds": [server.rounds[k] for k in sorted(server.rounds)],
                                   "answers_received": server.answers_received}, _command())
            metrics = json.loads((out / "metrics.json").read_text())
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        _fail(exc)
    out_console.print(_summary(metrics))
    out_console.print(Text(f"run written to {out}"))


@anomaly_app.command()
def report(datasets: Annotated[Optional[list[str]], typer.Option("--dataset", help="Datasets (default: all three).")] = None,
           model: Model = None, window: Window = None, threshold: Threshold = None, beta: Beta = None,
           clients: Annotated[Optional[int], typer.Option()] = None,
           rounds: Annotated[Optional[int], typer.Option()] = None,
           engine: Annotated[str, typer.Option(help="flower | inprocess")] = "flower",
           out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/anomaly"),
           config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDir = None) -> None:
    """Table and ROC/PR figures: centralised and federated, with supervised LSTMs at the same FPR."""
    from fedlstm.anomaly_pipeline import load_anomaly_config
    from fedlstm.reports.anomaly import anomaly_report

    try:
        cfg = load_anomaly_config(config, set_, data__data_dir=data_dir, anomaly__model=model,
                                  windows__window=window, anomaly__threshold=threshold,
                                  anomaly__beta=beta, federation__clients=clients,
                                  federation__rounds=rounds)
        with console.status("anomaly report...") as status:
            path = anomaly_report(cfg, datasets or ["nsl-kdd", "kdd99", "unsw-nb15"], out, engine,
                                  _command(), progress=lambda text: status.update(Text(text)))
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        _fail(exc)
    out_console.print(Text(path.read_text()))
    out_console.print(Text(f"report written to {path}"))
