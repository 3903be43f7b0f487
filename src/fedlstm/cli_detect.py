"""`fedlstm detect`, `fedlstm serve`, `fedlstm schema infer|show`: scoring the user's own traffic.

`register(app)` adds these commands to the main typer app (called from fedlstm.cli).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out_console = Console()
schema_app = typer.Typer(no_args_is_help=True, help="Flow-log schemas: draft one, show one.")


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def detect(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (model.fedlstm of a run).")],
    inputs: Annotated[list[Path], typer.Argument(help="Flow files (plain, .gz, .zip).")],
    out: Annotated[Optional[Path], typer.Option(help="Alert file (.jsonl or .csv); default: stdout.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="jsonl | csv (default: from --out's suffix).")] = None,
    follow: Annotated[bool, typer.Option(help="Keep reading as the (last) file grows; Ctrl-C ends.")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed line instead of skipping it.")] = False,
    all_records: Annotated[bool, typer.Option("--all-records", help="Write every scored record, not only alerts.")] = False,
    top: Annotated[int, typer.Option(help="Top contributing features per alert (0: none).")] = 3,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary here.")] = None,
) -> None:
    """Score flow logs in streaming chunks and write alerts (JSON lines or CSV)."""
    import torch

    from fedlstm.detection import BundleError, ModelBundle
    from fedlstm.detection.stream import AlertWriter
    from fedlstm.detection.stream import detect as run_detect

    torch.set_num_threads(threads)
    stopping = {"now": False}

    def stop(*_):
        stopping["now"] = True

    previous = signal.signal(signal.SIGINT, stop) if follow else None
    stream = None
    try:
        model = ModelBundle.load(bundle)
        kind = fmt or ("csv" if out is not None and out.suffix == ".csv" else "jsonl")
        stream = open(out, "w", newline="") if out is not None else sys.stdout
        writer = AlertWriter(stream, kind, model.class_names)
        if follow:
            console.print(f"following {inputs[-1]} (Ctrl-C to stop)")
        summary = run_detect(model, list(inputs), writer, strict=strict, follow=follow,
                             all_records=all_records, explain_top=top,
                             stop=lambda: stopping["now"])
    except (BundleError, OSError, ValueError, KeyError) as exc:
        _fail(exc)
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    result = summary.to_dict()
    if summary_json:
        summary_json.write_text(json.dumps(result, indent=2))
    _render_summary(result, out)


def _render_summary(s: dict, out: Path | None) -> None:
    table = Table(title="detection summary")
    table.add_column("file")
    for col in ("records", "bad lines", "filled", "errors"):
        table.add_column(col, justify="right")
    for f in s["files"]:
        table.add_row(f["file"], f"{f['rows']:,}", f"{f['bad_lines']:,}",
                      f"{sum(f['filled'].values()):,}", str(len(f["errors"])))
    console.print(table)
    for f in s["files"]:
        for line in [*f["errors"], *f["bad_examples"][:5]]:
            console.print(f"[yellow]{line}[/]")
    for line in s["unseen_examples"][:5]:
        console.print(f"[yellow]{line}[/]")
    rate = f" ({s['records_per_second']:,} records/s)" if s["records_per_second"] else ""
    console.print(f"{s['records']:,} records, {s['scored']:,} scored, {s['warming_up']:,} warming "
                  f"up, [bold]{s['alerts']:,} alerts[/] {s['predicted'] or ''} in "
                  f"{s['seconds']:.2f}s{rate}" + (f"; alerts in {out}" if out else ""))
    if "labelled" in s:
        lab = s["labelled"]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        console.print(f"labelled input: accuracy {fmt(lab['accuracy'])}, precision "
                      f"{fmt(lab['precision'])}, recall {fmt(lab['recall'])} "
                      f"(tp {lab['tp']}, fp {lab['fp']}, fn {lab['fn']}, tn {lab['tn']})")


def serve(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (model.fedlstm of a run).")],
    host: Annotated[str, typer.Option(help="Address to bind (default: loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    max_records: Annotated[int, typer.Option(help="Most records per request.")] = 1000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1 << 20,
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
) -> None:
    """Serve the bundle over HTTP: POST /score, GET /healthz, GET /metrics, docs at /docs."""
    import torch
    import uvicorn

    from fedlstm.detection import BundleError, ModelBundle
    from fedlstm.detection.service import create_app

    torch.set_num_threads(threads)
    try:
        app = create_app(ModelBundle.load(bundle), max_records=max_records,
                         max_body_bytes=max_body_bytes)
    except (BundleError, OSError, ValueError) as exc:
        _fail(exc)
    console.print(f"serving {bundle} on http://{host}:{port} (docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@schema_app.command("infer")
def schema_infer(
    file: Annotated[Path, typer.Argument(help="A flow log (CSV, TSV or Zeek), plain or .gz.")],
    out: Annotated[Optional[Path], typer.Option(help="Write the schema here (default: stdout).")] = None,
    rows: Annotated[int, typer.Option(help="Lines to sample.")] = 5000,
) -> None:
    """Draft a schema TOML from a sample of FILE, for you to check and edit."""
    from fedlstm.data.flowschemas import infer_schema

    try:
        text = infer_schema(file, sample_lines=rows)
    except (OSError, ValueError) as exc:
        _fail(exc)
    if out:
        out.write_text(text)
        console.print(f"schema drafted to {out}: check the label, normal values and column roles")
    else:
        sys.stdout.write(text)


@schema_app.command("show")
def schema_show(name: Annotated[str, typer.Argument(help="zeek-conn | cicflowmeter | nsl-kdd | ... | FILE.toml")]) -> None:
    """Print a schema's columns and roles."""
    from fedlstm.data.schemas import get_spec

    try:
        spec = get_spec(name)
    except (KeyError, OSError, ValueError) as exc:
        _fail(exc)
    keys = ("name", "format", "delimiter", "columns", "categorical", "label", "family_column",
            "normal_labels", "ignore", "time_column", "entity_column", "missing_values",
            "fill_missing", "optional_columns")
    out_console.print_json(json.dumps({k: getattr(spec, k) for k in keys}))


def register(app: typer.Typer) -> None:
    """Add `detect`, `serve` and `schema` to the main `fedlstm` app."""
    app.command()(detect)
    app.command()(serve)
    app.add_typer(schema_app, name="schema")
