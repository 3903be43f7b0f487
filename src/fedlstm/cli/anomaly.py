"""`fedlstm anomaly train|federate|report`: the unsupervised (normal-only LSTM + Mahalanobis) detector.

Options not given here go through `--set anomaly.beta=0.5`, `--set train.epochs=3`, ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fedlstm.cli.common import (
    ConfigFile,
    DataDir,
    Dataset,
    Overrides,
    Protocol,
    SchemaOpt,
    TestFile,
    TrainFiles,
    Window,
    baseline_warnings,
    byo_overrides,
    command_line,
    console,
    data_label,
    fail,
    interrupted_federation,
    out_console,
    say,
)
from fedlstm.federation.audit import RunInterrupted
from fedlstm.federation.simulation import run_federated
from fedlstm.runs.rundir import check_leftovers, check_out, output_lock, write_run
from fedlstm.tasks import task_for
from fedlstm.tasks.anomaly import anomaly_config
from fedlstm.tasks.centralised import baseline_on_split
from fedlstm.tasks.centralised import train as train_detector

anomaly_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                          help="Unsupervised detection of unknown attacks: "
                          "an LSTM learns normal traffic; Mahalanobis scores of its errors.")

Model = Annotated[Optional[str], typer.Option(help="lstm-ae (autoencoder) | lstm-forecast")]
Threshold = Annotated[Optional[str], typer.Option(help="f-beta (labelled validation) | fpr (label-free)")]
Beta = Annotated[Optional[float], typer.Option(help="β of F-β (< 1 favours precision).")]


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
    baseline = metrics.get("baseline")
    if baseline:  # supervised, on the same records: what the labels alone give
        table.add_section()
        for name, ev in baseline["evaluations"].items():
            if name in metrics["evaluations"]:
                b = ev["binary"]
                table.add_row(Text(f"{name}, {baseline['method']}"), f"{b['n']:,}",
                              *(f"{b[k]:.4f}" if b.get(k) is not None else "-" for k in cols),
                              "-", "-", "-", style="dim")
        table.caption = f"{baseline['method']}: {baseline['title']} on {baseline['on']}"
    return table


def _print(metrics: dict, out: Path) -> None:
    out_console.print(_summary(metrics))
    for warning in baseline_warnings(metrics):
        console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
    say(f"run written to {out}", to=out_console)


BaselineOpt = Annotated[bool, typer.Option(help="Also train gradient boosting (supervised) on the same records and show it beside the detector (metrics.json: baseline).")]


@anomaly_app.command()
def train(dataset: Dataset = None, protocol: Protocol = None, model: Model = None,
          window: Window = None, threshold: Threshold = None, beta: Beta = None,
          epochs: Annotated[Optional[int], typer.Option()] = None,
          seed: Annotated[Optional[int], typer.Option()] = None,
          out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/anomaly"),
          config: ConfigFile = None, set_: Overrides = None, data_dir: DataDir = None,
          schema: SchemaOpt = None, train_file: TrainFiles = None, test_file: TestFile = None,
          overwrite: bool = False, baseline: BaselineOpt = True) -> None:
    """Train the normal-only LSTM centrally, fit μ, Σ and ζ on validation data; writes a run.
    Your own flow logs as `train` takes them: --schema with --train-file (and --test-file)."""
    try:
        with output_lock(out):  # what is printed below is this run's
            cfg = anomaly_config(config, set_, data__dataset=dataset, data__protocol=protocol,
                                 data__data_dir=data_dir, anomaly__model=model,
                                 windows__window=window, anomaly__threshold=threshold,
                                 anomaly__beta=beta, train__epochs=epochs, seed=seed,
                                 **byo_overrides(schema, train_file, test_file))
            check_out(out, overwrite)
            with console.status(Text.assemble(f"training {cfg.anomaly.model} on the normal "
                                              "traffic of ", data_label(cfg))):
                result = train_detector(task_for(cfg))
            reference = None
            if baseline:
                with console.status("gradient boosting on the same split..."):
                    reference = baseline_on_split(cfg, result.split)
            write_run(result, cfg, out, overwrite=overwrite, command=command_line(),
                      baseline=reference)
            metrics = json.loads((out / "metrics.json").read_text())
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc)
    _print(metrics, out)


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
             config: ConfigFile = None, set_: Overrides = None, data_dir: DataDir = None,
             overwrite: bool = False,
             resume: Annotated[bool, typer.Option(help="Continue a run stopped after a completed round (its checkpoint), with the same settings.")] = False,
             baseline: BaselineOpt = True,
             ) -> None:
    """FedAvg of the normal-only LSTM; μ, Σ and ζ from merged per-site sums and histograms."""
    try:
        with output_lock(out):  # what is printed below is this run's
            if engine not in ("flower", "inprocess"):
                raise ValueError(f"unknown engine {engine!r}; use flower or inprocess")
            cfg = anomaly_config(config, set_, data__dataset=dataset, data__protocol=protocol,
                                 data__data_dir=data_dir, anomaly__model=model,
                                 windows__window=window, anomaly__threshold=threshold,
                                 anomaly__beta=beta, federation__clients=clients,
                                 federation__partition=partition, federation__rounds=rounds,
                                 federation__local_epochs=local_epochs, seed=seed)
            check_out(out, overwrite, resume)
            check_leftovers(out, overwrite, resume)
            with console.status("federated training and calibration...") as status:
                run_federated(cfg, out, overwrite=overwrite, resume=resume,
                              command=command_line(), engine=engine, baseline=baseline,
                              progress=lambda text: status.update(Text(text)))
            metrics = json.loads((out / "metrics.json").read_text())
    except RunInterrupted as exc:
        interrupted_federation(exc, out)
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        fail(exc)
    _print(metrics, out)


@anomaly_app.command()
def report(datasets: Annotated[Optional[list[str]], typer.Option("--dataset", help="Datasets (default: all three).")] = None,
           model: Model = None, window: Window = None, threshold: Threshold = None, beta: Beta = None,
           clients: Annotated[Optional[int], typer.Option()] = None,
           rounds: Annotated[Optional[int], typer.Option()] = None,
           engine: Annotated[str, typer.Option(help="flower | inprocess")] = "flower",
           out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/anomaly"),
           config: ConfigFile = None, set_: Overrides = None, data_dir: DataDir = None) -> None:
    """Table and ROC/PR figures: centralised and federated, with supervised LSTMs at the same FPR."""
    from fedlstm.reports.anomaly import anomaly_report

    try:
        cfg = anomaly_config(config, set_, data__data_dir=data_dir, anomaly__model=model,
                                  windows__window=window, anomaly__threshold=threshold,
                                  anomaly__beta=beta, federation__clients=clients,
                                  federation__rounds=rounds)
        with console.status("anomaly report...") as status:
            path = anomaly_report(cfg, datasets or ["nsl-kdd", "kdd99", "unsw-nb15"], out, engine,
                                  command_line(), progress=lambda text: status.update(Text(text)))
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        fail(exc)
    out_console.print(Text(path.read_text()))
    say(f"report written to {path}", to=out_console)
