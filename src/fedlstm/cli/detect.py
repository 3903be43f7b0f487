"""`fedlstm detect`, `fedlstm serve`, `fedlstm schema infer|show`: scoring the user's own traffic.

`fedlstm.cli.main` adds `detect`, `serve` and the `schema` group to the main typer app.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from fedlstm import signals
from fedlstm.cli.common import (
    AllowUnsignedOpt,
    TrustedKeyOpt,
    check_outputs,
    console,
    fail,
    listening_socket,
    load_bundle,
    out_console,
    say,
)

schema_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                         help="Flow-log schemas: draft one, show one.")


MaxEntities = Annotated[int, typer.Option(min=1, help="Most host histories kept (serve: over all its streams); the least recently used beyond are evicted, and a record of an evicted host starts a new window.")]


def detect(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (model.fedlstm of a run).")],
    inputs: Annotated[list[Path], typer.Argument(help="Flow files (plain, gzip, bz2, xz, .zip) or folders of them; - reads standard input.")],
    out: Annotated[Optional[Path], typer.Option(help="Alert file (.jsonl or .csv); default: stdout.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="jsonl | csv (default: from --out's suffix).")] = None,
    follow: Annotated[bool, typer.Option(help="Keep reading as the (last) file grows; Ctrl-C or SIGTERM ends it.")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed line instead of skipping it.")] = False,
    max_bad_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fail (exit 2) when more than this share of a file's lines is malformed; a file none of whose lines parse always fails.")] = 0.5,
    all_records: Annotated[bool, typer.Option("--all-records", help="Write every scored record, not only alerts.")] = False,
    top: Annotated[int, typer.Option(min=0, help="Top contributing features per alert (0: none).")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 1,
    max_entities: MaxEntities = 10_000,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary here.")] = None,
    trusted_key: TrustedKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
) -> None:
    """Score flow logs in streaming chunks and write alerts (JSON lines or CSV).

    --out and --summary-json are written next to their final path and moved into place when
    detection ends without an error: a failed or interrupted run leaves an earlier file as it was
    and no partial file. Two runs given the same file: the second stops at once (a lock).
    With --follow the run ends on Ctrl-C or SIGTERM, and the alerts are then moved into place;
    while it runs they are in the `.NAME.*.partial` file it names (flushed after every chunk, so
    `tail -f` works), which an error leaves in place rather than losing them.

    Exit codes tell the truth: no record parsed in any input, or a file with more than
    --max-bad-share of its lines malformed (likely a file of another format), is exit 2.
    """
    import torch

    from fedlstm.data.flows import expand_inputs
    from fedlstm.data.io import DataFormatError
    from fedlstm.detection import BundleError
    from fedlstm.detection.stream import AlertWriter
    from fedlstm.detection.stream import detect as run_detect
    from fedlstm.runs.rundir import output_lock, staged_file

    torch.set_num_threads(threads)
    stopping = {"now": False}

    def stop(*_):
        stopping["now"] = True

    def terminate(*_):  # a batch run stopped by SIGTERM cleans up like one that fails
        raise SystemExit(128 + signal.SIGTERM)

    # SIGHUP (the terminal or SSH session closed) ends a run as SIGTERM does: a --follow run
    # left its alerts in the partial file, no summary and its locks
    handlers = dict.fromkeys(signals.STOP_SIGNALS, stop) if follow else \
        dict.fromkeys((signal.SIGTERM, signal.SIGHUP), terminate)
    with signals.handling(handlers):
        partial = None
        try:
            # Every input up front: a mistyped name among several was an error row in the summary
            # and exit 0; folders are read file by file, as --train-file reads them.
            inputs = [Path("/dev/stdin") if str(p) == "-" else p for p in inputs]
            # --follow may wait for its (last) file to appear
            named = inputs[:-1] if follow else inputs
            inputs = expand_inputs(named) + (inputs[-1:] if follow else [])
            in_folders = frozenset(inputs) - {Path(p) for p in named if not Path(p).is_dir()}
            check_outputs([bundle, *inputs], {"--out": out, "--summary-json": summary_json})
            with output_lock(*(p for p in (out, summary_json) if p is not None)), \
                    ExitStack() as outputs:
                model = load_bundle(bundle, trusted_key, allow_unsigned)
                kind = fmt or ("csv" if out is not None and out.suffix == ".csv" else "jsonl")
                stream = sys.stdout
                if out is not None:
                    stream = outputs.enter_context(staged_file(out, keep_on_failure=follow))
                    partial = stream.name
                writer = AlertWriter(stream, kind, model.class_names, follow=follow)
                if follow:
                    console.print(Text.assemble(
                        "following ", str(inputs[-1]), " (Ctrl-C to stop)",
                        f"; alerts go to {partial} until then, and to {out} after" if out else ""))
                # Progress on stderr (a terminal only: rich shows no spinner elsewhere); a large
                # batch printed nothing until its summary.
                status = outputs.enter_context(console.status("scoring..."))

                def on_chunk(s) -> None:
                    if follow:
                        writer.flush()
                    status.update(f"{s.records:,} records scored, {s.alerts:,} alerts")

                summary = run_detect(model, list(inputs), writer, strict=strict, follow=follow,
                                     all_records=all_records, explain_top=top,
                                     stop=lambda: stopping["now"], on_chunk=on_chunk,
                                     max_bad_share=max_bad_share,
                                     share_hint=" (--max-bad-share sets the share)",
                                     skippable=in_folders, max_entities=max_entities)
                result = summary.to_dict()
                if not summary.records and follow and stopping["now"] and not summary.bad_lines:
                    # stopped before the followed log had a record: not a format problem
                    raise DataFormatError(f"stopped before any record arrived in {inputs[-1]}")
                if not summary.records:  # a pipeline must not take "nothing" for "no alerts"
                    _render_summary(result, None)
                    spec = model.spec
                    raise DataFormatError(
                        f"no record parsed in {len(inputs)} input file(s) with the bundle's schema "
                        f"{spec.name!r} ({spec.format}): are they in its format? `fedlstm schema "
                        "infer FILE` drafts a schema for another format")
                # The alerts go into place as `outputs` closes; the summary after them, so that an
                # interrupted run never leaves a new summary beside the earlier alerts.
                outputs.close()
                if summary_json:
                    with staged_file(summary_json) as fh:
                        fh.write(json.dumps(result, indent=2))
        except (BundleError, OSError, ValueError, KeyError) as exc:
            if follow and partial and Path(partial).exists():
                say(f"alerts found before the error are kept in {partial}")
            fail(exc)
    _render_summary(result, out)


def _render_summary(s: dict, out: Path | None) -> None:
    table = Table(title="detection summary")
    table.add_column("file")
    for col in ("records", "bad lines", "filled", "errors"):
        table.add_column(col, justify="right")
    for f in s["files"]:  # file names and examples are the user's: text, never markup
        table.add_row(Text(f["file"]), f"{f['rows']:,}", f"{f['bad_lines']:,}",
                      f"{sum(f['filled'].values()):,}", str(len(f["errors"])))
    console.print(table)
    for f in s["files"]:
        for line in [*f["errors"], *f.get("notes", []), *f["bad_examples"][:5]]:
            console.print(Text(line, style="yellow"))
    for line in [*s.get("skipped_files", []), *s["unseen_examples"][:5],
                 *s.get("invalid_examples", [])[:5]]:
        console.print(Text(line, style="yellow"))
    if s.get("invalid_values"):
        console.print(Text("values the service refuses, scored here clipped into the model's "
                           f"range: {s['invalid_values']}", style="yellow"))
    rate = [f"{s['waiting_seconds']:.2f}s waiting for data"] if s.get("waiting_seconds") else []
    rate += [f"{s['records_per_second']:,} records/s"] if s["records_per_second"] else []
    rate = f" ({'; '.join(rate)})" if rate else ""
    predicted = f" {s['predicted']}" if s["predicted"] else ""
    console.print(Text.assemble(
        f"{s['records']:,} records, {s['scored']:,} scored, ",
        (f"{s['alerts']:,} alerts", "bold"), f"{predicted} in {s['seconds']:.2f}s{rate}",
        f"; alerts in {out}" if out else ""))
    if s.get("unlabelled"):
        console.print(f"{s['unlabelled']:,} scored records have no label value: they are left out "
                      "of the labelled-input figures")
    if "labelled" in s:
        lab = s["labelled"]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        console.print(f"labelled input: accuracy {fmt(lab['accuracy'])}, precision "
                      f"{fmt(lab['precision'])}, recall {fmt(lab['recall'])}, FPR "
                      f"{fmt(lab['fpr'])} (tp {lab['tp']}, fp {lab['fp']}, fn {lab['fn']}, "
                      f"tn {lab['tn']})")
        if lab["unusable"]:  # accuracy alone hid a model that flags most normal traffic
            console.print(Text(f"warning: on this input the model {lab['unusable']}: it is not "
                               "usable as it stands", style="yellow"))


def serve(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (model.fedlstm of a run).")],
    host: Annotated[str, typer.Option(help="Address to bind (default: loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8080,
    max_records: Annotated[int, typer.Option(min=1, help="Most records per request.")] = 1000,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body.")] = 1 << 20,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads.")] = 1,
    max_entities: MaxEntities = 10_000,
    trusted_key: TrustedKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = False,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File with the API key that POST /score and GET /metrics require (Authorization: Bearer KEY, or X-API-Key); default: $FEDLSTM_API_KEY, else none.")] = None,
    tls_cert: Annotated[Optional[Path], typer.Option(help="Serve HTTPS with this certificate (PEM; with --tls-key).")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="The certificate's private key (PEM).")] = None,
    read_timeout: Annotated[float, typer.Option(help="Seconds a request's head, then its body, may take to arrive (else 408).")] = 10.0,
    limit_concurrency: Annotated[int, typer.Option(min=1, help="Open connections before new requests get 503.")] = 128,
) -> None:
    """Serve the bundle over HTTP(S): POST /score, GET /healthz, GET /metrics, docs at /docs."""
    import torch
    import uvicorn

    from fedlstm.detection import BundleError
    from fedlstm.detection.service import create_app, load_api_key, server_config

    torch.set_num_threads(threads)
    try:
        if read_timeout <= 0:  # every connection was closed at once
            raise ValueError(f"--read-timeout {read_timeout}: give a number of seconds above 0")
        api_key = load_api_key(api_key_file)
        app = create_app(load_bundle(bundle, trusted_key, allow_unsigned), max_records=max_records,
                         max_body_bytes=max_body_bytes, api_key=api_key, read_timeout=read_timeout,
                         max_entities=max_entities)
        config = server_config(app, host, port, tls_cert=tls_cert, tls_key=tls_key,
                               limit_concurrency=limit_concurrency)
        # Bound here, before "serving" is said: uvicorn bound later (a taken port was announced
        # as served, then exit 1) and --port 0 never said which port it got.
        sock = listening_socket(host, port)
        port = sock.getsockname()[1]
    except (BundleError, OSError, ValueError) as exc:
        fail(exc)
    exposed = host not in ("127.0.0.1", "::1", "localhost")
    if exposed and api_key is None:
        console.print(Text(f"warning: no API key: anyone who reaches {host}:{port} can score and "
                           "read the metrics (--api-key-file or $FEDLSTM_API_KEY)"))
    if exposed and api_key is not None and tls_cert is None:
        console.print("warning: the API key crosses the network in clear text (--tls-cert, --tls-key)")
    scheme = "http" if tls_cert is None else "https"
    say(f"serving {bundle} on {scheme}://{host}:{port} (docs: /docs)"
        + (", API key required" if api_key else ""))
    server = uvicorn.Server(config)
    # SIGHUP (a closed terminal) ends the service as SIGTERM does (uvicorn handles only
    # SIGINT and SIGTERM: it died on the spot, connections cut)
    signal.signal(signal.SIGHUP, lambda *_: setattr(server, "should_exit", True))
    server.run(sockets=[sock])


@schema_app.command("infer")
def schema_infer(
    file: Annotated[Path, typer.Argument(help="A flow log (CSV, TSV or Zeek), plain or compressed (gzip, bz2, xz, .zip).")],
    out: Annotated[Optional[Path], typer.Option(help="Write the schema here (default: stdout).")] = None,
    rows: Annotated[int, typer.Option(help="Lines to sample.")] = 5000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Draft a schema TOML from a sample of FILE, for you to check and edit."""
    from fedlstm.data.flowschemas import infer_schema
    from fedlstm.runs.rundir import is_stream, output_lock, staged_file

    try:
        check_outputs([file], {"--out": out})
        if out and out.exists() and not overwrite and not is_stream(out):
            # a draft is for editing: a second run replaced the edits without a word
            raise FileExistsError(f"{out} exists (a schema you may have edited); pass "
                                  "--overwrite to replace it, or choose another --out")
        text = infer_schema(file, sample_lines=rows)
        if out:
            with output_lock(out), staged_file(out) as fh:
                fh.write(text)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: a truncated .gz
        fail(exc)
    if out:
        say(f"schema drafted to {out}: check the label, normal values and column roles")
    else:
        sys.stdout.write(text)


@schema_app.command("show")
def schema_show(
    name: Annotated[str, typer.Argument(help="zeek-conn | cicflowmeter | nsl-kdd | ... | FILE.toml")],
    file: Annotated[Optional[Path], typer.Option("--file", help="Read the schema on this flow file's header: the file's columns, the names they were found under, the columns it lacks.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document (settings and every column's role and why).")] = False,
) -> None:
    """Print a schema: every column's role (feature, label, entity, time, ignored) and why, then
    its settings."""
    from fedlstm.data.flows import FlowReader
    from fedlstm.data.flowschemas import explain_schema
    from fedlstm.data.schemas import get_spec

    try:
        spec = get_spec(name)
        match = FlowReader(file, spec).header_match() if file is not None else None
    except (KeyError, OSError, ValueError) as exc:
        fail(exc)
    roles = explain_schema(spec, match)
    if match is not None:
        spec = match.spec
    keys = ("name", "format", "delimiter", "columns", "categorical", "label", "family_column",
            "normal_labels", "ignore", "time_column", "entity_column", "missing_values",
            "fill_missing", "optional_columns", "stop_at", "defaults", "nonnegative")
    settings = {k: getattr(spec, k) for k in keys}
    if as_json:
        out_console.print_json(json.dumps({**settings, "roles": roles}))
        return
    table = Table(title=Text(f"schema {spec.name}" + (f" on {file}" if file else "")))
    for col in ("column", "role", "why"):
        table.add_column(col)
    for row in roles:  # column names are the user's: text, never markup
        table.add_row(Text(row["column"]), row["role"], Text(row["why"]))
    out_console.print(table)
    for note in (match.notes if match else []):
        out_console.print(Text(note, style="yellow"))
    out_console.print_json(json.dumps(settings))
