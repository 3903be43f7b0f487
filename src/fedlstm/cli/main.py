"""The `fedlstm` command: a thin layer over the library, rendering with rich."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.logging import RichHandler
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

from fedlstm import __version__
from fedlstm.cli import anomaly, deploy, detect, keys
from fedlstm.cli.common import (
    KEPT_RUNS,
    KEPT_STEPS,
    AlertBudgetOpt,
    AllowUnsignedOpt,
    Attack,
    Clients,
    Compress,
    ConfigFile,
    DataDir,
    Dataset,
    Defence,
    DetectorOpt,
    LocalEpochs,
    Malicious,
    Overrides,
    Partition,
    Protocol,
    RichReporter,
    Rounds,
    SchemaOpt,
    SchemasOpt,
    SecAgg,
    Seed,
    Strategy,
    TaskOpt,
    TestFile,
    TrainFiles,
    TrustedKeyOpt,
    Window,
    byo_overrides,
    check_outputs,
    comma_list,
    command_line,
    comparison_warnings,
    console,
    data_label,
    fail,
    federation_options,
    interrupted_federation,
    load_bundle,
    load_run_config,
    n_sites,
    number_list,
    out_console,
    print_rounds,
    print_summary,
    say,
    stop_signals_interrupt,
    traffic_label,
)


class FedlstmApp(typer.Typer):
    """The `fedlstm` app. An unexpected error prints one line saying what and where, not a
    traceback: its message, and typer's rich traceback with local variables, would echo the
    records being read. `fedlstm -v ...` prints Python's traceback (no local variables)."""

    verbose = False

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # expected errors end in fail() (exit 2) before reaching here
            _report_unexpected(exc, self.verbose)
            sys.exit(1)


def _report_unexpected(exc: BaseException, verbose: bool) -> None:
    if verbose:
        console.print(Text("".join(traceback.format_exception(exc)).rstrip()))
    package = Path(__file__).resolve().parents[1]  # fedlstm/: where its innermost frame of ours
    ours = [f for f in traceback.extract_tb(exc.__traceback__)
            if Path(f.filename).resolve().is_relative_to(package)]
    where = (f" in {Path(ours[-1].filename).resolve().relative_to(package.parent)}:"
             f"{ours[-1].lineno}") if ours else ""
    console.print(Text.assemble(
        ("error:", "bold red"), f" unexpected {type(exc).__name__}{where}, a bug or an input "
        "fedlstm does not handle yet. " + ("" if verbose else "Its message is not shown, as it "
        "may quote your records; `fedlstm -v ...` prints it with the traceback.")))


app = FedlstmApp(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                 help="Federated LSTM intrusion and anomaly detection.")
data_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                       help="Find, fetch and describe datasets.")
app.add_typer(data_app, name="data")
app.add_typer(deploy.deploy_app, name="deploy")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(anomaly.anomaly_app, name="anomaly")
app.add_typer(detect.schema_app, name="schema")
app.command()(detect.detect)
app.command()(detect.serve)

@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    FedlstmApp.verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    flwr_log = logging.getLogger("flwr")  # Flower logs every message exchange at INFO/DEBUG
    flwr_log.setLevel(logging.INFO if verbose else logging.WARNING)
    flwr_log.propagate = False


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
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} B"),
                      TimeRemainingColumn(), console=console) as progress:
            def factory(name: str, total: int | None):
                task = progress.add_task(name, total=total)
                return lambda n: progress.advance(task, n)

            for name in names or list(DATASETS):
                for path in fetch_dataset(get_spec(name), root, mirror=mirror,
                                          progress_factory=factory, force=force):
                    console.print(Text.assemble(("ok", "green"), f" {path}"))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc)


@data_app.command("info")
def data_info(name: str, data_dir: DataDir = None, lenient: Annotated[bool, typer.Option(
        help="Skip (and count) malformed lines instead of stopping at the first.")] = False,
) -> None:
    """Files, rows, class and attack-family distribution of a dataset (exit 2 when none of its
    files is in the data folder)."""
    from fedlstm.data.readers import read_records
    from fedlstm.data.registry import data_dir as resolve
    from fedlstm.data.registry import locate
    from fedlstm.data.schemas import get_spec

    try:
        spec = get_spec(name)
        root = resolve(data_dir)
        out_console.print(Text.assemble(
            (spec.title, "bold"), f" ({spec.name}): {len(spec.feature_columns)} features "
            f"({len(spec.categorical)} categorical); order: {spec.order_note}"))
        found = 0
        for fspec in spec.files:
            try:
                path = locate(spec, fspec.role, root)
            except FileNotFoundError as exc:
                out_console.print(Text.assemble((fspec.role, "yellow"), f": {exc}"))
                continue
            found += 1
            recs = read_records(path, spec, lenient=lenient)
            table = Table(title=Text(f"{fspec.role}: {path} ({len(recs):,} rows)"))
            table.add_column("family")
            table.add_column("rows", justify="right")
            table.add_column("share", justify="right")
            for fam, n in Counter(recs.family).most_common():
                table.add_row(Text(fam), f"{n:,}", f"{n / len(recs):.2%}")
            out_console.print(table)
            out_console.print(f"attack types: {len(set(recs.attack)) - 1}; duplicate records: "
                              f"{int(recs.frame.assign(a=recs.attack).duplicated().sum()):,}")
        if not found:  # a script checking for the data must not read "described" here
            raise FileNotFoundError(f"no file of {spec.name} in {root / spec.folder}: run "
                                    f"`fedlstm data fetch {spec.name} --data-dir {root}`")
    except (KeyError, OSError, ValueError) as exc:
        fail(exc)


@app.command()
def train(
    dataset: Dataset = None,
    protocol: Protocol = None,
    window: Window = None,
    task: TaskOpt = None,
    detector: DetectorOpt = None,
    alert_budget: AlertBudgetOpt = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    seed: Seed = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    schema: SchemaOpt = None,
    train_file: TrainFiles = None,
    test_file: TestFile = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/latest"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
    overwrite: bool = False,
    baseline: Annotated[bool, typer.Option(help="Also train gradient boosting on the same split and show it beside the detector (metrics.json: baseline).")] = True,
) -> None:
    """Train and evaluate the centralised detector; writes a run directory."""
    from fedlstm.runs.rundir import check_out, output_lock, write_run
    from fedlstm.tasks import task_for
    from fedlstm.tasks.centralised import baseline_on_split
    from fedlstm.tasks.centralised import train as train_detector

    try:
        # Held from the start: a second run on the same --out stops now, not after training,
        # and what is printed below is this run's.
        with output_lock(out):
            cfg = load_run_config(config, set_, detector, alert_budget, data__dataset=dataset,
                                  data__protocol=protocol, data__data_dir=data_dir,
                                  windows__window=window, model__task=task, train__epochs=epochs,
                                  seed=seed, train__device=device,
                                  **byo_overrides(schema, train_file, test_file))
            check_out(out, overwrite)
            console.print(Text.assemble(f"fedlstm {__version__}: {cfg.detector} detector on ",
                                        data_label(cfg), f", W={cfg.windows.window}, task "
                                        f"{cfg.model.task}, {cfg.train.epochs} epochs"))
            result = train_detector(task_for(cfg), reporter=RichReporter("train"))
            reference = None
            if baseline:
                with console.status("gradient boosting on the same split..."):
                    reference = baseline_on_split(cfg, result.split)
            write_run(result, cfg, out, overwrite=overwrite,
                      command=command_line(), baseline=reference)
            metrics = json.loads((out / "metrics.json").read_text())
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc)
    print_summary(metrics)
    say(f"run written to {out}", to=out_console)


@app.command()
def federate(
    dataset: Dataset = None,
    protocol: Protocol = None,
    clients: Clients = None,
    partition: Partition = None,
    strategy: Strategy = None,
    rounds: Rounds = None,
    local_epochs: LocalEpochs = None,
    window: Window = None,
    task: TaskOpt = None,
    seed: Seed = None,
    detector: DetectorOpt = None,
    alert_budget: AlertBudgetOpt = None,
    schema: SchemasOpt = None,
    train_file: TrainFiles = None,
    test_file: TestFile = None,
    out: Annotated[Path, typer.Option(help="Run directory to create.")] = Path("runs/federated"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
    overwrite: bool = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    compare: Annotated[bool, typer.Option(help="Also train local-only LSTMs per client and a centralised LSTM on the pooled clients, and compare all on the same test sets.")] = False,
    dp: Annotated[bool, typer.Option("--dp", help="Record-level DP-SGD on every client.")] = False,
    epsilon: Annotated[Optional[float], typer.Option(help="With --dp: target ε per flow record over all planned rounds (calibrates the noise; δ = 1/(10 n) for n training records).")] = None,
    client_dp: Annotated[bool, typer.Option("--client-dp", help="Client-level DP: clipped updates + server Gaussian noise.")] = False,
    secagg: SecAgg = False,
    compress: Compress = None,
    defence: Defence = None,
    attack: Attack = None,
    malicious: Malicious = None,
    baseline: Annotated[bool, typer.Option(help="Also train gradient boosting on the sites' pooled shares (what a simulation can do and no real federation can) and show it beside Fed-LSTM; with --compare, as one more method.")] = True,
) -> None:
    """Train Fed-LSTM with Flower's simulation engine (1 CPU and 1 torch thread per client)."""
    from fedlstm.federation.audit import RunInterrupted
    from fedlstm.federation.compare import run_comparison
    from fedlstm.federation.simulation import run_federated
    from fedlstm.runs.rundir import check_leftovers, check_out, output_lock

    if partition is None and train_file and len(train_file) > 1:
        partition = "files"  # several sites' logs: each file (or folder) is one client
    try:
        if compare and resume:  # it was ignored, and the comparison started over
            raise typer.BadParameter("--resume continues a single federation, not a --compare "
                                     "run (which keeps nothing of an unfinished run)")
        with output_lock(out):  # as in `train`: a second run on --out stops now
            cfg = load_run_config(config, set_, detector, alert_budget, **federation_options(
                                  dataset, protocol, data_dir, clients, partition, strategy, rounds,
                                  local_epochs, window, seed, compress),
                              model__task=task,
                              train__dp=dp or None, train__dp_target_epsilon=epsilon,
                              federation__client_dp=client_dp or None,
                              federation__secagg=secagg or None,
                              federation__defences=defence or None,
                              federation__attack=attack, federation__malicious=malicious,
                              **byo_overrides(schema, train_file, test_file))
            check_out(out, overwrite, resume)
            if not compare:  # a comparison keeps no checkpoints
                check_leftovers(out, overwrite, resume)
            f = cfg.federation
            console.print(Text.assemble(
                f"fedlstm {__version__}: Fed-LSTM ({cfg.detector}) on ", data_label(cfg),
                f", {n_sites(cfg)} clients, partition {f.partition}, "
                f"{f.strategy}, {f.rounds} rounds x {f.local_epochs} local epochs"
                + (f" (more where a site has fewer than {cfg.train.min_steps:,} batches over the "
                   "rounds)" if cfg.train.min_steps else "")
                + (", DP-SGD" if cfg.train.dp else "") + (", client-level DP" if f.client_dp else "")
                + (f", inputs {f.inputs} (private encoders where schemas differ)"
                   if f.partition == "networks" else "")
                + traffic_label(f)
                + (f", defences {'+'.join(f.defences)}" if f.defences else "")
                + (f", simulated attack {f.attack} by {f.malicious:.0%} of the sites"
                   if f.attack else "")))
            command = command_line()
            with console.status("federated training (Flower simulation engine)...") as status:
                if compare:
                    summary = run_comparison(cfg, out, overwrite=overwrite, command=command,
                                             progress=lambda text: status.update(Text(text)),
                                             baseline=baseline)
                else:
                    run_federated(cfg, out, overwrite=overwrite, resume=resume, command=command,
                                  baseline=baseline,
                                  progress=lambda text: status.update(Text(text)))
            report = (out / "comparison.md").read_text() if compare else None
            metrics = None if compare else json.loads((out / "metrics.json").read_text())
    except RunInterrupted as exc:
        if compare:  # the comparison's stage goes with it (run_comparison keeps nothing)
            fail(exc, stopped=": a comparison keeps nothing of an unfinished run; run it again")
        interrupted_federation(exc, out)
    except (KeyError, OSError, ValueError, RuntimeError, TimeoutError) as exc:
        fail(exc)
    if compare:
        out_console.print(Text(report))
        for warning in comparison_warnings(summary):
            console.print(Text.assemble(("warning:", "bold yellow"), f" {warning}"))
        say(f"comparison written to {out}", to=out_console)
        return
    print_rounds(metrics["rounds"])
    print_summary(metrics)
    say(f"run written to {out}", to=out_console)


@app.command("privacy-utility")
def privacy_utility(
    epsilons: Annotated[str, typer.Option(help="Comma-separated target ε values; inf = no DP.")] = "1,3,8,inf",
    dataset: Annotated[Optional[str], typer.Option()] = None,
    clients: Annotated[Optional[int], typer.Option()] = None,
    rounds: Rounds = None,
    out: Annotated[Path, typer.Option(help="Output folder (runs are cached there, reused only under the same settings).")] = Path("reports/privacy"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
) -> None:
    """Fed-LSTM accuracy against record-level ε (DP-SGD on every site): table and figure."""
    from fedlstm.config import load_config
    from fedlstm.reports.privacy import sweep

    try:
        values = number_list(epsilons, "--epsilons", valid=lambda e: e > 0,
                             rule=" above 0, or inf (no DP)")
        cfg = load_config(config, set_, data__dataset=dataset, data__data_dir=data_dir,
                          federation__clients=clients, federation__rounds=rounds)
        with console.status("privacy-utility sweep...") as status:
            path = sweep(cfg, values, out, command=command_line(),
                         progress=lambda text: status.update(Text(text)))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc, stopped=KEPT_RUNS)
    out_console.print(Text(path.read_text()))


@app.command()
def robustness(
    dataset: Annotated[Optional[str], typer.Option()] = None,
    clients: Annotated[int, typer.Option(help="Sites (10: shares of 10%).")] = 10,
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks.")] = "label-flip,sign-flip,scale:10,noise,backdoor,free-rider",
    defences: Annotated[str, typer.Option(help="Comma-separated defences: fedavg, median, multikrum, trimmed-mean, robust (trimmed mean + norm bound + reputation + robust calibration).")] = "fedavg,median,robust",
    shares: Annotated[str, typer.Option(help="Comma-separated shares of malicious sites.")] = "0,0.1,0.2,0.3,0.4",
    # Every row by default: at 40,000 rows the novelty part's μ, Σ rest on about 1,000 normal
    # windows, and the robust calibration leaving sites out costs points by itself (README).
    max_train_rows: Annotated[Optional[int], typer.Option(help="Stratified subsample of the training data (default or 0: every row; a smaller sample leaves the novelty part's calibration few windows).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (runs are cached there).")] = Path("reports/robust"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
) -> None:
    """Fed-LSTM under simulated attacks: attack x defence x share of malicious sites, table and figure."""
    from fedlstm.reports.robustness import sweep

    try:
        cfg = load_run_config(config, set_, data__dataset=dataset, data__data_dir=data_dir,
                              federation__clients=clients,
                              data__max_train_rows=max_train_rows or None)
        with console.status("robustness sweep...") as status:
            path = sweep(cfg, out, attacks=comma_list(attacks), defences=comma_list(defences),
                         shares=number_list(shares, "--shares", valid=lambda x: 0 <= x < 1,
                                            rule=" in [0, 1)"), command=command_line(),
                         progress=lambda text: status.update(Text(text)))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc, stopped=KEPT_RUNS)
    out_console.print(Text(path.read_text()))


@app.command()
def networks(
    networks: Annotated[str, typer.Option(help="Comma-separated networks (datasets), any schemas.")] = "nsl-kdd,kdd99,unsw-nb15",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (the table shows mean ± sd).")] = "0,1,2",
    inputs: Annotated[str, typer.Option(help="Comma-separated input modes of the cross-schema federation: encoders, harmonised.")] = "encoders,harmonised",
    starve: Annotated[str, typer.Option(help="Networks starved in turn (all: every one of --networks; empty: none).")] = "all",
    starve_fraction: Annotated[float, typer.Option(help="Share of its training rows a starved network keeps.")] = 0.02,
    detector: Annotated[str, typer.Option(help="supervised (the study's LSTM) or hybrid (each site adds its own model of normal traffic; centralised: the hybrid too).")] = "supervised",
    max_train_rows: Annotated[Optional[int], typer.Option(help="Stratified subsample of each network's training data (every row: 0).")] = 20_000,
    out: Annotated[Path, typer.Option(help="Output folder (seeds are cached there).")] = Path("reports/networks"),
    config: ConfigFile = None,
    set_: Overrides = None,
    data_dir: DataDir = None,
) -> None:
    """Networks A, B, C in one Fed-LSTM: each network's accuracy local-only, in a same-schema
    and a cross-schema federation, centralised, and next to gradient boosting; table and figure."""
    from fedlstm.reports.networks import study

    try:
        # Every option checked before the first federation (they failed after all of them).
        if detector not in ("supervised", "hybrid"):
            raise ValueError(f"--detector {detector!r}: the study compares supervised or hybrid "
                             "detectors")
        chosen = comma_list(networks)
        starved = chosen if starve.strip() == "all" else comma_list(starve)
        if set(starved) - set(chosen):
            raise typer.BadParameter(f"--starve {','.join(sorted(set(starved) - set(chosen)))}: "
                                     f"not among --networks {','.join(chosen)}")
        modes = comma_list(inputs)
        if not modes or set(modes) - {"encoders", "harmonised"}:
            raise typer.BadParameter(f"--inputs {inputs!r}: encoders and/or harmonised")
        if not 0 < starve_fraction <= 1:
            raise typer.BadParameter(f"--starve-fraction {starve_fraction}: in (0, 1]")
        seed_list = number_list(seeds, "--seeds", kind=int)
        cfg = load_run_config(config, set_, detector, data__data_dir=data_dir,
                              data__max_train_rows=max_train_rows or None,
                              federation__partition="networks",
                              federation__networks=comma_list(networks))
        with console.status("networks study...") as status:
            path = study(cfg, out, networks=chosen, seeds=seed_list, modes=modes,
                         starved=tuple(starved), starve_fraction=starve_fraction,
                         command=command_line(), progress=lambda text: status.update(Text(text)))
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc, stopped=KEPT_RUNS)
    out_console.print(Text(path.read_text()))


@app.command()
def reproduce(
    profile: Annotated[str, typer.Option(help="quick (smoke test, 1.5-3 min) | full (every row, 3 seeds; 25-40 min on 2 cores)")] = "full",
    out: Annotated[Path, typer.Option(help="Report folder (steps are cached there).")] = Path("reports/paper"),
    datasets: Annotated[Optional[list[str]], typer.Option("--dataset", help="Limit to these datasets.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--method", help="Limit to these methods.")] = None,
    data_dir: DataDir = None,
    mirror: Annotated[Optional[str], typer.Option(help="Fetch missing datasets from this base URL or folder (<folder>/<file>) instead of their publishers.")] = None,
    jobs: Annotated[Optional[int], typer.Option(min=1, help="Centralised steps run side by side (default: one per core, at most 4).")] = None,
) -> None:
    """Reproduce the paper: all datasets x methods x protocols; writes report.md and report.html.
    Datasets missing from the data folder (default ~/.cache/fedlstm/datasets) are fetched."""
    from fedlstm.reports.reproduce import PROFILES
    from fedlstm.reports.reproduce import reproduce as run
    from fedlstm.runs.rundir import output_lock

    if profile not in PROFILES:
        fail(ValueError(f"unknown profile {profile!r}; use {' or '.join(PROFILES)}"))
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("reproduce", total=None)

        def report(done: int, total: int, text: str) -> None:
            progress.update(task, completed=done, total=total, description=text)

        try:
            # Two runs on one folder wrote the same step and report files (fixed temp names);
            # SIGTERM and SIGHUP stop it as Ctrl-C does (the process died on the spot, and its
            # workers ran on as orphans)
            with output_lock(out), stop_signals_interrupt():
                path = run(out, profile, data_dir, datasets, methods, progress=report,
                           command=command_line(), mirror=mirror, jobs=jobs)
        except KeyboardInterrupt:
            from fedlstm.federation.audit import RunInterrupted

            fail(RunInterrupted("reproduce was stopped on request"), stopped=KEPT_STEPS)
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            fail(exc, stopped=KEPT_STEPS)
    say(f"report written to {path} and {path.with_suffix('.html')}", to=out_console)


@app.command()
def evaluate(
    bundle: Path,
    dataset: Annotated[Optional[str], typer.Option()] = None,
    protocol: Annotated[Optional[str], typer.Option(help="Default: the bundle's own.")] = None,
    data_dir: DataDir = None,
    seed: Annotated[Optional[int], typer.Option(help="Random-split seed; default: the bundle's own.")] = None,
    dedup: Annotated[Optional[bool], typer.Option("--dedup/--no-dedup", help="Default: the bundle's own.")] = None,
    max_test_rows: Annotated[Optional[int], typer.Option(min=0, help="Stratified subsample of each test set, 0: every row; default: the run's own (data.max_test_rows).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics here.")] = None,
    test_file: Annotated[Optional[list[Path]], typer.Option(
        "--test-file", help="A labelled flow file or folder of your own, in the bundle's schema "
                            "(repeatable): score the bundle on it, e.g. a later day's log.")] = None,
    lenient: Annotated[bool, typer.Option(help="With --test-file: skip (and count) malformed lines instead of stopping at the first, unless more than half of a file's are.")] = False,
    trusted_key: TrustedKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
    baseline: Annotated[bool, typer.Option(help="On a benchmark's split: also train gradient boosting on its training records and show it beside the bundle (--json: baseline). --test-file has no training records, so no baseline.")] = True,
) -> None:
    """Re-evaluate a model bundle on a dataset's test set(s), split as the bundle records, or on
    labelled files of your own (--test-file)."""
    from fedlstm.data.flows import DEFAULT_MAX_BAD_SHARE
    from fedlstm.data.schemas import get_spec
    from fedlstm.data.splits import build_split, read_labelled_files
    from fedlstm.runs.rundir import baseline_metrics, public
    from fedlstm.tasks.base import evaluate_detector
    from fedlstm.tasks.centralised import baseline_on_split

    try:
        check_outputs([bundle, *(test_file or [])], {"--json": json_out})
        split_options = {"--dataset": dataset, "--protocol": protocol, "--data-dir": data_dir,
                         "--seed": seed, "--dedup/--no-dedup": dedup,
                         "--max-test-rows": max_test_rows}
        if lenient and not test_file:  # a benchmark's split is read as its run read it
            raise ValueError("--lenient reads --test-file files; give one, or leave it out")
        if test_file and any(v is not None for v in split_options.values()):
            given = [k for k, v in split_options.items() if v is not None]
            raise ValueError(f"--test-file scores the bundle on your own file; {', '.join(given)} "
                             "choose a benchmark's split instead: give one or the other")
        model = load_bundle(bundle, trusted_key, allow_unsigned)
        if test_file:
            metrics = {"dataset": model.spec.name, "protocol": "files",
                       "test_files": [str(f) for f in test_file]}
            tests = {"test": read_labelled_files(test_file, model.spec, lenient=lenient,
                                                 max_bad_share=DEFAULT_MAX_BAD_SHARE)[0]}
        else:
            cfg, seed = bundle_split(model.metadata, dataset or model.spec.name, protocol, seed,
                                     dedup, data_dir, max_test_rows)
            if cfg.max_test_rows:  # the run's scores were on a subsample: say which one this is
                console.print(Text(f"each test set subsampled to at most {cfg.max_test_rows:,} "
                                   f"rows (stratified, seed {seed}"
                                   + (", as in the run" if max_test_rows is None else "")
                                   + "); --max-test-rows 0 scores every row"))
            other = get_spec(cfg.dataset)
            if not set(model.spec.feature_columns) <= set(other.feature_columns):
                # it failed in pandas: "None of [Index(['duration', ...])] are in the [columns]"
                raise ValueError(f"--dataset {cfg.dataset}: its records have other columns than "
                                 f"the bundle's schema {model.spec.name!r} reads; evaluate it on "
                                 f"a dataset of that schema")
            if cfg.protocol == "random-split" and seed != _recorded_split(model.metadata)["seed"]:
                console.print(Text.assemble(("warning:", "yellow"), f" seed {seed} is not the "
                                            "seed this model was trained with: its random-split "
                                            "test set holds records the model trained on"))
            metrics = {"dataset": cfg.dataset, "protocol": cfg.protocol, "seed": seed,
                       "dedup": cfg.dedup, "max_test_rows": cfg.max_test_rows}
            split = build_split(cfg, seed=seed)
            tests = split.tests
        evaluations = {name: public(evaluate_detector(model, recs)) for name, recs in tests.items()}
        if baseline and not test_file:
            with console.status("gradient boosting on the split's training records..."):
                base = baseline_config(bundle, model, cfg, seed)
                reference = baseline_on_split(
                    base, split if base.data == cfg else build_split(base.data, seed=seed),
                    on="the same split (its training records, the bundle's window and task)")
            if reference:
                metrics["baseline"] = baseline_metrics(reference)
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        fail(exc)
    metrics.update({"mode": model.metadata.get("mode", "?"), "bundle": str(bundle),
                    "evaluations": evaluations})
    print_summary(metrics)
    if test_file and baseline:
        say("no gradient-boosting reference: --test-file gives test records only, none to train "
            "it on (train and federate show one on their own split)")
    for name, ev in evaluations.items():
        flagged = ", ".join(f"{attack} {g['flagged']:.0%} of {g['n']:,}"
                            for attack, g in sorted(ev["flagged_by_attack"].items()))
        say(f"{name}: flagged by label: {flagged}")
        if ev.get("families_without_class"):
            say(f"{name}: the model has no class for the families "
                f"{ev['families_without_class']} (scored as attacks, so family metrics are "
                "left out)")
    if json_out:
        json_out.write_text(json.dumps(metrics, indent=2))


def baseline_config(bundle: Path, model, data, seed: int):
    """The settings gradient boosting is trained with beside a re-evaluated bundle: its run's
    (config.json beside it, as `train` trained its own baseline) where there is one, else the
    dataset's defaults; the split evaluated, the bundle's window and task either way. A run
    that trained on a subsample of the dataset's training rows (`data.max_train_rows`) has its
    baseline trained on the same subsample (it changes no test set)."""
    from fedlstm.config import RunConfig, load_config

    run_config = Path(bundle).parent / "config.json"
    cfg = None
    if run_config.is_file():
        try:
            cfg = RunConfig.model_validate_json(run_config.read_text())
        except ValueError:  # another version's, or not fedlstm's: the defaults will do
            cfg = None
    if cfg is not None and cfg.data.dataset == data.dataset and cfg.data.max_train_rows:
        data = data.model_copy(update={"max_train_rows": cfg.data.max_train_rows})
    cfg = cfg or load_config(overrides=[f"data.dataset={data.dataset}"])
    return cfg.model_copy(update={
        "data": data, "seed": seed,
        "windows": cfg.windows.model_copy(update={"window": model.window}),
        "model": cfg.model.model_copy(update={"task": model.task})})


def _recorded_split(metadata: dict) -> dict:
    """The split a bundle was trained on (bundles written before it was recorded: protocol and
    seed from the metadata's top level)."""
    recorded = dict(metadata.get("split") or {})
    recorded.setdefault("protocol", metadata.get("protocol", "official"))
    recorded.setdefault("seed", metadata.get("seed", 0))
    return recorded


def bundle_split(metadata: dict, dataset: str, protocol: str | None, seed: int | None,
                 dedup: bool | None, data_dir: str | None, max_test_rows: int | None = None):
    """(data configuration, seed) of the split to evaluate on: the bundle's recorded split,
    with whatever the command line gives instead."""
    from fedlstm.config import DataConfig

    recorded = _recorded_split(metadata)
    if protocol is not None and protocol not in ("official", "random-split"):
        raise ValueError(f"--protocol {protocol!r}: use official or random-split")
    protocol = protocol or recorded["protocol"]
    if protocol not in ("official", "random-split"):  # e.g. a run on the user's own files
        raise ValueError(f"the bundle was trained under protocol {protocol!r}; give --protocol "
                         "official or random-split and --dataset")
    fields = {k: recorded[k] for k in ("test_fraction", "val_fraction", "split_file")
              if recorded.get(k) is not None}
    rows = recorded.get("max_test_rows") if max_test_rows is None else max_test_rows or None
    cfg = DataConfig(dataset=dataset, protocol=protocol, data_dir=data_dir, max_test_rows=rows,
                     dedup=recorded.get("dedup", False) if dedup is None else dedup, **fields)
    return cfg, recorded["seed"] if seed is None else seed


if __name__ == "__main__":
    app()
