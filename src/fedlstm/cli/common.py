"""What every `fedlstm` command shares: the consoles, how an error is told, the options several
commands take, progress and summary tables.

What the user controls (file names, values read from files, error messages that quote them,
schema and class names) is printed as text, never as rich markup or emoji codes: a file named
`a[red]b.csv` prints as `a[red]b.csv`, `file:100:` stays `file:100:` (`:100:` is an emoji code),
and a value `[/]` cannot crash a command. Our own words keep their styling: pass user values
through `Text` / `Text.assemble` (plain strings there are never parsed) or `escape`.
"""

from __future__ import annotations

import shlex
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from click.core import ParameterSource
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fedlstm import signals
from fedlstm.config import RunConfig, raw_config
from fedlstm.data.io import BadLineError
from fedlstm.data.splits import run_protocol
from fedlstm.tasks.anomaly import anomaly_config
from fedlstm.training.loop import Reporter


def make_console(stderr: bool = False) -> Console:
    """A console that prints `:name:` as it stands (no emoji codes)."""
    return Console(stderr=stderr, emoji=False)


def skip_hint() -> str | None:
    """How the running command skips malformed lines, in its own options (None: it cannot)."""
    ctx = click.get_current_context(silent=True)
    names = {p.name for p in ctx.command.params} if ctx is not None else set()
    if "strict" in names:
        return "drop --strict to skip bad lines"
    if "lenient" in names:
        return "pass --lenient to skip bad lines"
    if "set_" in names:
        return "pass --set data.lenient=true to skip bad lines"
    return None


def _where(loc: tuple) -> str:
    """A setting as the user gave it: `--epochs (train.epochs)` when the running command's option
    of that name was typed, else the dotted key alone."""
    key = ".".join(map(str, loc))
    ctx = click.get_current_context(silent=True)
    if ctx is None or not loc:
        return key
    for param in ctx.command.params:
        if (isinstance(param, click.Option) and param.name == loc[-1]
                and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE):
            return f"{max(param.opts, key=len)} ({key})"
    return key


def error_message(exc: BaseException) -> str:
    """The words of an expected error. A malformed line gets the running command's own option to
    skip it; a pydantic error lists where and what, without the offending input (a record)."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{_where(tuple(e['loc'])) or exc.title}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        return f"invalid {exc.title}: {problems}"
    if isinstance(exc, BadLineError):
        hint = skip_hint()
        return f"{exc.where} ({hint})" if hint else exc.where
    if isinstance(exc, KeyError) and len(exc.args) == 1:  # str() quotes it: "unknown dataset..."
        return str(exc.args[0])
    return str(exc)


def error_text(exc: BaseException) -> Text:
    """`error: <message>`, the message as plain text."""
    return Text.assemble(("error:", "bold red"), " ", error_message(exc))


console = make_console(stderr=True)  # messages, progress, tables of what is going on
out_console = make_console()  # results


def say(text: str, to: Console = console) -> None:
    """A line that echoes user data (a path, a fingerprint, a label): plain text, never wrapped,
    so a path stays whole for whoever copies it or greps the log."""
    to.print(Text(text), soft_wrap=True)


# What a study keeps when it is stopped: the runs (or steps) it finished.
KEPT_RUNS = "; the runs it finished are kept, and the same command reuses them"
KEPT_STEPS = "; the steps it finished are kept, and the same command reuses them"


def fail(exc: BaseException, stopped: str = "") -> None:
    """An expected error: one line naming what was wrong, exit code 2. Never wrapped, so a path
    stays whole for whoever greps the log. A federation stopped by Ctrl-C is no error: its
    words and `stopped` (what was kept), exit code 130, as for `train`."""
    audit = sys.modules.get("fedlstm.federation.audit")  # loaded wherever it can be raised
    if audit is not None and isinstance(exc, audit.RunInterrupted):
        console.print(Text(f"{exc}{stopped}", style="yellow"), soft_wrap=True)
        raise typer.Exit(130)
    console.print(error_text(exc), soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager, CI cancelling a job) and SIGHUP (the terminal closed) raise
    KeyboardInterrupt in the main thread, as Ctrl-C does, so a run stops the same way whatever
    asked it to: the default handlers ended the process without its clean-up. Ctrl-C gets the
    same handler, set from Python, so that `signals.put_back` has one to put back after Ray's
    shutdown left SIGINT at its default action (seen in /proc/PID/status SigCgt)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    with signals.handling(dict.fromkeys(signals.STOP_SIGNALS, interrupt)):
        yield


def interrupted_federation(exc: BaseException, out: Path) -> None:
    """Ctrl-C in a federation that keeps its checkpoint: say whether a round completed."""
    from fedlstm.federation.server import CHECKPOINT
    from fedlstm.runs.rundir import partial_dir

    if (partial_dir(out) / CHECKPOINT).exists():
        fail(exc, stopped=": the last completed round is checkpointed; continue with the same "
                          "command and --resume")
    fail(exc, stopped=": no round had completed, so nothing is kept; run the command again")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free one), as uvicorn would bind it
    (`serve`; `deploy superlink` checks its ports with it before starting anything)."""
    sock = socket.socket(family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def command_line() -> str:
    """The command as typed, for a run's metrics.json and reports."""
    return shlex.join(["fedlstm", *sys.argv[1:]])


# --- options several commands take -------------------------------------------------------------
Dataset = Annotated[Optional[str], typer.Option(help="nsl-kdd | kdd99 | unsw-nb15")]
Protocol = Annotated[Optional[str], typer.Option(
    help="official | random-split | time-split (your own files: train on the earlier records, "
         "test on the latest; default for them: random-split)")]
Clients = Annotated[Optional[int], typer.Option(help="Number of sites (simulated clients or SuperNodes).")]
Partition = Annotated[Optional[str], typer.Option(help="iid | dirichlet:ALPHA | by:COLUMN | networks | files (each --train-file or folder is one client; the default with several --train-file)")]
DeployPartition = Annotated[Optional[str], typer.Option(
    "--partition", help="iid | dirichlet:ALPHA | by:COLUMN | networks: the sites' shares, dealt "
                        "as `fedlstm federate` deals them")]
Strategy = Annotated[Optional[str], typer.Option(
    help="fedavg | fedprox | fedadam, or robust to malicious sites: krum | multikrum | bulyan | "
         "median | trimmed-mean (sized for federation.tolerate, default 30% of the sites)")]
Defence = Annotated[Optional[list[str]], typer.Option(
    "--defence", help="Around any strategy (repeatable): norm-bound (clip each update to 2x "
                      "the round's median norm, or federation.norm_bound) | cap-counts | "
                      "reputation (down-weight sites that keep sending outlying updates) | "
                      "robust-calibration (the detector's normal-traffic statistics leave out "
                      "sites that disagree with the majority: label flippers).")]
Attack = Annotated[Optional[str], typer.Option(
    help="Simulate malicious sites: label-flip | sign-flip | scale:K | noise[:SIGMA] | "
         "backdoor[:SHARE] | free-rider (with --malicious).")]
Malicious = Annotated[Optional[float], typer.Option(
    help="Share of the sites that run --attack (seeded; recorded in metrics.json).")]
Rounds = Annotated[Optional[int], typer.Option()]
LocalEpochs = Annotated[Optional[int], typer.Option(
    help="E: local epochs per round (own flow logs, unless set: more where a site would take "
         "fewer than train.min_steps batches over the rounds).")]
Compress = Annotated[Optional[str], typer.Option(
    help="Compress model updates: none | q8 (8-bit) | topk:RATIO (largest RATIO of each array, "
         "with error feedback) | topk:RATIO+q8. Bytes per round are always measured.")]
SecAgg = Annotated[bool, typer.Option(
    "--secagg", help="Flower SecAgg+: the server sees only the sum of updates.")]
Window = Annotated[Optional[int], typer.Option(help="Records per window (W).")]
TaskOpt = Annotated[Optional[str], typer.Option(
    "--task", help="binary | family (attack families; across schemas, the shared taxonomy).")]
Seed = Annotated[Optional[int], typer.Option()]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML or JSON run configuration.")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Dataset folder (default: $FEDLSTM_DATA).")]
SchemaOpt = Annotated[Optional[str], typer.Option(
    help="Flow-log schema for your own files: zeek-conn | cicflowmeter | FILE.toml")]
SchemasOpt = Annotated[Optional[list[str]], typer.Option(
    "--schema", help="Flow-log schema for your own files: zeek-conn | cicflowmeter | FILE.toml; "
                     "repeat it, one per --train-file, for sites whose logs differ in format")]
TrainFiles = Annotated[Optional[list[Path]], typer.Option(
    "--train-file", help="Your own labelled flow file or folder (repeatable; federate: one per "
                        "client); needs --schema.")]
TestFile = Annotated[Optional[Path], typer.Option(
    help="Held-out file of your own; without it, a random split of the training files (or "
         "--protocol time-split: their latest records).")]
TrustedKeyOpt = Annotated[Optional[list[Path]], typer.Option(
    "--trusted-key", help="Also accept bundles signed by this public key file (repeatable).")]
AllowUnsignedOpt = Annotated[bool, typer.Option(
    "--allow-unsigned", help="Load a bundle that no trusted key signed (prints a warning); only "
                             "for bundles whose source you trust.")]


def check_outputs(inputs: list[Path], outputs: dict[str, Path | None]) -> None:
    """Refuse an output file (by option name) that is an input, another output or a folder:
    each was overwritten without a word (a flow log by its alerts, a bundle by its metrics)."""
    given = {p.resolve(): p for p in inputs}
    taken: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"{option} {path} is a folder; name the file to write")
        where = path.resolve()
        if where in given:
            raise ValueError(f"{option} {path} is an input of this command: writing it would "
                             "replace it; name another file")
        if where in taken:
            raise ValueError(f"{option} and {taken[where]} name the same file {path}; one would "
                             "replace the other")
        taken[where] = option


def comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]: the comma-separated values of a study option."""
    return [x.strip() for x in text.split(",") if x.strip()]


def number_list(text: str, option: str, kind=float, valid=lambda v: True,
                rule: str = "") -> list:
    """The comma-separated numbers of a study option, checked before any work: a bad one was
    "could not convert string to float", or a traceback from every site minutes later."""
    out = []
    for item in comma_list(text):
        try:
            value = kind(item)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise typer.BadParameter(f"{option} {item!r}: expected "
                                     f"{'an integer' if kind is int else 'a number'}{rule}")
        out.append(value)
    if not out:
        raise typer.BadParameter(f"{option}: no value given")
    return out


def byo_overrides(schema: str | list[str] | None, train_file: list[Path] | None,
                  test_file: Path | None) -> dict:
    """Load-config overrides for bring-your-own flow files. Several schemas (federate): one per
    --train-file, in order: sites whose logs have different formats."""
    schemas = [schema] if isinstance(schema, str) else list(schema or [])
    if train_file and not schemas:
        raise typer.BadParameter("--train-file needs --schema (zeek-conn, cicflowmeter or FILE.toml)")
    if (schemas or test_file) and not train_file:  # both were ignored: the benchmark ran instead
        given = " and ".join(o for o, v in (("--schema", schemas), ("--test-file", test_file)) if v)
        raise typer.BadParameter(f"{given} go with your own training files: add --train-file "
                                 "(to score a bundle on a file: `fedlstm evaluate BUNDLE "
                                 "--test-file FILE`)")
    if len(schemas) > 1 and len(schemas) != len(train_file or []):
        raise typer.BadParameter(f"{len(schemas)} --schema for {len(train_file or [])} "
                                 "--train-file: give one schema for all files, or one per file")
    return {"data__schema": schemas[0] if schemas else None,
            "data__site_schemas": schemas if len(schemas) > 1 else None,
            "data__train_files": [str(p.resolve()) for p in train_file] if train_file else None,
            "data__test_file": str(test_file.resolve()) if test_file else None}


DetectorOpt = Annotated[Optional[str], typer.Option(
    help="hybrid (default: known attacks + novelty) | supervised | anomaly")]
AlertBudgetOpt = Annotated[Optional[float], typer.Option(
    help="Hybrid: share of normal validation traffic its anomaly part may flag (default 0.05).")]


def load_run_config(config: Path | None, overrides: list[str] | None, detector: str | None = None,
                    alert_budget: float | None = None, **top) -> RunConfig:
    """What a command runs: the hybrid detector unless the command line or the configuration
    names another kind (the supervised one with --dp: DP-SGD is implemented for it alone)."""
    data = raw_config(config, overrides, anomaly__alert_budget=alert_budget, **top)
    kind = detector or data.get("detector") or \
        ("supervised" if data.get("train", {}).get("dp") else "hybrid")
    if kind == "anomaly":
        return anomaly_config(config, overrides, anomaly__alert_budget=alert_budget, **top)
    return RunConfig.model_validate({**data, "detector": kind})


def traffic_label(fed) -> str:
    """The banner's note of how updates travel: `, SecAgg+, compress q8`."""
    return ((", SecAgg+" if fed.secagg else "")
            + (f", compress {fed.compress}" if fed.compress != "none" else ""))


def federation_options(dataset, protocol, data_dir, clients, partition, strategy, rounds,
                       local_epochs, window, seed, compress=None) -> dict:
    """`load_config` keywords shared by `federate` and `deploy local`."""
    kind = (partition or "").split(":")[0]
    if clients is not None and kind in ("by", "networks", "files"):  # it was ignored
        raise typer.BadParameter(f"--clients {clients} does not apply to --partition "
                                 f"{partition}, which makes one site per "
                                 f"{'value of its column' if kind == 'by' else kind[:-1]}")
    return dict(data__dataset=dataset, data__protocol=protocol, data__data_dir=data_dir,
                federation__clients=clients, federation__partition=partition,
                federation__strategy=strategy, federation__rounds=rounds,
                federation__local_epochs=local_epochs, windows__window=window, seed=seed,
                federation__compress=compress)


def print_rounds(rounds: list[dict]) -> None:
    # *_accuracy is the classifier's (argmax over windows), not the detector's decision, which
    # is scored once, after the last round: a hybrid's summary accuracy differs from these.
    table = Table(title="rounds: accuracy of the classifier alone (argmax over windows); the "
                        "detector is scored after the last round (test columns: reporting only)")
    keys = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    keys += sorted({k for r in rounds for k in r if k.startswith("test_accuracy/")})
    table.add_column("round", justify="right")
    for k in keys:  # test_accuracy/<site name>: the site may be named after a file
        table.add_column(Text(k), justify="right")
    traffic = any("bytes_up" in r for r in rounds)
    if traffic:  # what each round's training sent, as serialised for the wire
        table.add_column("kB down", justify="right")
        table.add_column("kB up", justify="right")
    failures = any("clients_failed" in r for r in rounds)
    if failures:
        table.add_column("failed (left out)")
    for r in rounds:
        row = [f"{r[k]:.4f}" if k in r else "-" for k in keys]
        if traffic:  # training and evaluation messages of the round
            row += [f"{(r.get(k, 0) + r.get('eval_' + k, 0)) / 1e3:,.1f}" if k in r else "-"
                    for k in ("bytes_down", "bytes_up")]
        if failures:
            row.append(Text(", ".join(r.get("clients_failed", {})) or "-"))
        table.add_row(str(r["round"]), *row)
    out_console.print(table)


def load_bundle(path: Path, trusted_keys: list[Path] | None = None, allow_unsigned: bool = False):
    """The bundle at `path`, checked against the own key, the trusted ones and `trusted_keys`."""
    from fedlstm.detection import ModelBundle
    from fedlstm.detection.signing import KeyHome

    if allow_unsigned:
        console.print(Text.assemble(
            ("warning:", "yellow"), f" --allow-unsigned: {path} is loaded even if no trusted key "
            "signed it; anyone who could write that file decides what it detects"))
    trust = KeyHome.default().trust_store(trusted_keys or [])
    return ModelBundle.load(path, trust=trust, allow_unsigned=allow_unsigned)


# --- progress and tables ---------------------------------------------------------------------
class RichReporter(Reporter):
    def __init__(self, label: str):
        self.label = label
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
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


def summary_table(metrics: dict) -> Table:
    """Accuracy never alone: precision, recall, F1, ROC-AUC, FPR and the confusion matrix."""
    table = Table(title=Text(f"{metrics['dataset']} / protocol {metrics['protocol']} / "
                             f"{metrics['mode']}"))
    scores = ("accuracy", "precision", "recall", "f1", "roc_auc", "fpr")
    for col in ("set", "n", *scores, "tn / fp / fn / tp"):
        table.add_column(col, justify="right")
    def rows(evaluations: dict, suffix: str = "", style: str = "") -> None:
        for name, ev in evaluations.items():
            b = ev["binary"]
            (tn, fp), (fn, tp) = b["confusion_matrix"]
            table.add_row(Text(name + suffix), f"{b['n']:,}",
                          *(f"{b[k]:.4f}" if b[k] is not None else "-" for k in scores),
                          f"{tn:,} / {fp:,} / {fn:,} / {tp:,}", style=style)

    rows(metrics["evaluations"])
    baseline = metrics.get("baseline")
    if baseline:  # the same split: what the detector must beat
        table.add_section()
        rows({k: v for k, v in baseline["evaluations"].items() if k in metrics["evaluations"]},
             f", {baseline['method']}", "dim")
        table.caption = f"{baseline['method']}: {baseline['title']} on {baseline['on']}"
    return table


def baseline_warnings(metrics: dict, margin: float = 0.005) -> list[str]:
    """Test sets on which gradient boosting, trained on the same split, is more accurate than
    the detector by more than `margin`: the summary says so rather than leave it to a reader."""
    baseline = metrics.get("baseline")
    if not baseline:
        return []
    out = []
    for name, ev in metrics["evaluations"].items():
        ref = baseline["evaluations"].get(name)
        if name == "val" or ref is None:
            continue
        ours, theirs = ev["binary"], ref["binary"]
        if theirs["accuracy"] - ours["accuracy"] > margin:
            out.append(f"{baseline['title']} on {baseline['on']} is more accurate on '{name}': "
                       f"{theirs['accuracy']:.4f} against {ours['accuracy']:.4f} (FPR "
                       f"{theirs['fpr']:.4f} against {ours['fpr']:.4f})")
    return out


def useless_model_warnings(metrics: dict) -> list[str]:
    """What a summary must not hide: a model that flags most normal traffic, or no attack."""
    from fedlstm.training.metrics import unusable

    out = []
    for name, ev in metrics["evaluations"].items():
        (tn, fp), (fn, tp) = ev["binary"]["confusion_matrix"]
        reason = unusable(tn, fp, fn, tp)
        if reason:
            out.append(f"the model {reason} of '{name}': it is not usable as it stands")
    return out


def overlap_warnings(metrics: dict, above: float = 0.5) -> list[str]:
    """Test sets most of whose records also occur in the training data (the same file given
    twice; KDD99's official split): it was only recorded in metrics.json."""
    overlap = (metrics.get("data_notes") or {}).get("test_overlap_with_train") or {}
    return [f"{share:.0%} of the records of '{name}' also occur in the training data: its scores "
            "partly measure memorised records" for name, share in overlap.items()
            if share is not None and share > above]


def comparison_warnings(summary: dict) -> list[str]:
    """`useless_model_warnings` of every model of a `--compare` run, each named."""
    return [f"{method}: {warning}" for method, scores in summary["methods"].items()
            for warning in useless_model_warnings(
                {"evaluations": {t: {"binary": sc} for t, sc in scores.items()}})]


def unseen_attack_lines(metrics: dict, shown: int = 5) -> list[str]:
    """How much of the attack types absent from training a run's test sets caught: what the
    novelty part is for, and what a time split or the official splits test."""
    out = []
    for name, u in (metrics.get("unseen_attacks") or {}).items():
        names = ", ".join(u["attacks"][:shown])
        if len(u["attacks"]) > shown:
            names += f" and {len(u['attacks']) - shown} more"
        out.append(f"{name}: {u['recall']:.0%} of the {u['n']:,} records of attack types unseen "
                   f"in training flagged ({names})")
    return out


def print_summary(metrics: dict) -> None:
    out_console.print(summary_table(metrics))
    for line in unseen_attack_lines(metrics):
        say(line)
    for warning in [*useless_model_warnings(metrics), *overlap_warnings(metrics),
                    *baseline_warnings(metrics)]:
        console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))


def n_sites(cfg) -> int:
    """How many sites a federated run has: one per file or network, else `federation.clients`."""
    f = cfg.federation
    return len(cfg.data.train_files) if f.partition == "files" else \
        len(f.networks) if f.partition == "networks" else f.clients


def data_label(cfg) -> Text:
    d = cfg.data
    if d.train_files:
        protocol = run_protocol(d)  # the protocol the split will run, with what it holds out
        protocol = {"files": "files (held-out test file)",
                    "time-split": f"time-split (the latest {d.test_fraction:.0%} of records)"
                    }.get(protocol, protocol)
        schemas = ", ".join(Path(x).name for x in d.site_schemas or [d.spec_name])
        encoders = " (private encoders)" if len(set(d.site_schemas)) > 1 else ""
        plural = "s" if len(d.site_schemas) > 1 else ""
        return Text.assemble(f"{len(d.train_files)} file(s) of yours, schema{plural} "
                             f"{schemas}{encoders}, protocol ", (protocol, "bold"))
    if cfg.federation.partition == "networks":
        return Text.assemble(f"networks {' + '.join(cfg.federation.networks)}, protocol ",
                             (d.protocol, "bold"), " (each network's own test set)")
    return Text.assemble(f"{d.dataset}, protocol ", (d.protocol, "bold"))
