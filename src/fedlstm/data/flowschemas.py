"""Schemas for the user's own flow logs: Zeek conn.log, CICFlowMeter CSV, and custom TOML schemas.

A flow schema is a `DatasetSpec` like the benchmark ones. Where a schema leaves `columns` empty
(CICFlowMeter, whose column names vary between tool versions) they are taken from the header of
the training file by `resolve_spec`; the resolved spec is what a model bundle stores, so scoring
needs neither the training file nor this module.

A custom schema file (`fedlstm schema infer FILE` drafts one):

    [schema]
    name = "site-flows"
    format = "csv"                # csv | zeek
    delimiter = ","
    header = true                 # columns come from the file's header when `columns` is absent
    label = "Label"               # optional for scoring, required for training
    normal = ["BENIGN"]           # label values that mean benign traffic
    family = "attack_cat"         # optional column naming the attack family
    categorical = ["proto"]
    numeric = ["bytes", "pkts"]   # optional: default = every column not named elsewhere
    time = "ts"                   # never a feature
    entity = "src_ip"             # windows are formed per entity; never a feature
    ignore = ["flow_id"]
    missing = ["-", ""]           # tokens meaning "unset"
    fill_missing = 0.0            # value for unset/NaN/Inf numbers (counted); omit: bad line
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError

from fedlstm.data.io import open_binary
from fedlstm.data.spec import DatasetSpec

# Zeek's conn.log fields (Zeek 3-6). Research datasets (IoT-23, CTU) append label columns.
ZEEK_CONN_FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "tunnel_parents",
]
ZEEK_LABEL_FIELDS = ["label", "detailed-label"]

ZEEK_CONN = DatasetSpec(
    name="zeek-conn", folder="", title="Zeek conn.log",
    columns=[*ZEEK_CONN_FIELDS, *ZEEK_LABEL_FIELDS],
    categorical=["proto", "service", "conn_state", "history"],
    label="label", family_column="detailed-label",
    # Host addresses and ports identify hosts, not behaviour; uid is a random id.
    ignore=["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "local_orig",
            "local_resp", "tunnel_parents"],
    normal_labels=["Benign", "benign", "BENIGN", "normal"],
    time_column="ts", entity_column="id.orig_h",
    format="zeek", delimiter="\t", missing_values=["-", "(empty)"],
    fill_missing=0.0,  # '-' in duration/bytes means "not seen" (e.g. no reply): zero
    optional_columns=list(ZEEK_LABEL_FIELDS),
    order_note="arrival order per originating host",
)

# Identifier columns of CICFlowMeter's native output (CIC-IDS2017/2018 spell them two ways).
_CIC_IDS = ["Flow ID", "Src IP", "Source IP", "Src Port", "Source Port", "Dst IP",
            "Destination IP", "Timestamp"]
CICFLOWMETER = DatasetSpec(
    name="cicflowmeter", folder="", title="CICFlowMeter flows (CSV)",
    columns=[],  # from the file's header: names differ between CICFlowMeter versions
    categorical=["Protocol"], label="Label", ignore=list(_CIC_IDS),
    normal_labels=["BENIGN", "Benign", "benign"],
    time_column="Timestamp", entity_column="Src IP", has_header=True,
    # Flow Bytes/s is Infinity/NaN for zero-duration flows; read as 0 and counted.
    missing_values=["Infinity", "-Infinity", "inf", "-inf"], fill_missing=0.0,
    optional_columns=["Label"],
    order_note="file order (CICFlowMeter writes flows as they end)",
)

FLOW_SCHEMAS: dict[str, DatasetSpec] = {s.name: s for s in (ZEEK_CONN, CICFLOWMETER)}
FLOW_ALIASES = {"zeek": "zeek-conn", "conn": "zeek-conn", "cic": "cicflowmeter",
                "cicids": "cicflowmeter"}
for _alias, _name in FLOW_ALIASES.items():
    FLOW_SCHEMAS[_alias] = FLOW_SCHEMAS[_name]


class SchemaError(ValueError):
    """A schema file or a file header that does not fit its schema; names the file."""


class _SchemaFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    format: Literal["csv", "zeek"] = "csv"
    delimiter: str | None = None
    header: bool = True
    columns: list[str] = []
    label: str | None = None
    normal: list[str] = ["normal", "BENIGN", "benign", "Benign"]
    family: str | None = None
    categorical: list[str] = []
    numeric: list[str] | None = None
    time: str | None = None
    entity: str | None = None
    ignore: list[str] = []
    missing: list[str] = []
    fill_missing: float | None = None
    families: dict[str, str] = {}


def load_schema(path: str | Path) -> DatasetSpec:
    """Read a custom schema (TOML, table `[schema]`) into a DatasetSpec."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read schema ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{path}: not valid TOML ({exc})") from exc
    try:
        s = _SchemaFile.model_validate(data.get("schema", data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SchemaError(f"{path}: invalid schema: {problems}") from exc
    if not s.columns and not s.header and s.format != "zeek":
        raise SchemaError(f"{path}: a file without a header needs `columns`")
    ignore = [*s.ignore, *(c for c in (s.time, s.entity) if c)]
    labels = [c for c in (s.label, s.family) if c]
    columns = list(s.columns)
    if s.numeric is not None:  # every column not named is ignored
        named = [*s.numeric, *s.categorical, *labels, *ignore]
        if columns:
            ignore += [c for c in columns if c not in named]
        else:  # read by header name: columns not named are never read
            columns = list(dict.fromkeys(named))
    spec = DatasetSpec(
        name=s.name, folder="", title=f"custom schema {path.name}", columns=columns,
        categorical=s.categorical, label=s.label or "", family_column=s.family,
        ignore=ignore, has_header=s.header, normal_labels=s.normal, families=s.families,
        time_column=s.time, entity_column=s.entity, format=s.format,
        delimiter=s.delimiter or ("\t" if s.format == "zeek" else ","),
        missing_values=s.missing or (["-", "(empty)"] if s.format == "zeek" else []),
        fill_missing=s.fill_missing, optional_columns=labels)
    return spec


def unique_names(header: list[str]) -> list[str]:
    """Strip names and make repeats unique the way pandas does ('X', 'X.1'): CIC-IDS2017 repeats one."""
    seen: dict[str, int] = {}
    out = []
    for raw in header:
        name = raw.strip()
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def resolve_spec(spec: DatasetSpec, header: list[str], where: str = "") -> DatasetSpec:
    """The spec for a file with this header: header-driven schemas take their columns from it.

    Columns the schema names but the file lacks are dropped from categorical/ignore lists; a
    missing feature column of a fixed schema is an error naming the file.
    """
    header = unique_names(header)
    if spec.columns:
        required = [c for c in spec.feature_columns if c not in spec.optional_columns]
        missing = [c for c in required if c not in header]
        if missing:
            raise SchemaError(f"{where}:1: header lacks column(s) {missing} of schema "
                              f"{spec.name!r}; found {header}")
        return spec
    present = set(header)
    ignore = [c for c in spec.ignore if c in present]
    for c in (spec.time_column, spec.entity_column):
        if c and c in present and c not in ignore:
            ignore.append(c)
    return spec.model_copy(update={
        "columns": header, "ignore": ignore,
        "categorical": [c for c in spec.categorical if c in present],
        "entity_column": spec.entity_column if spec.entity_column in present else None,
        "time_column": spec.time_column if spec.time_column in present else None,
    })


# ---------------------------------------------------------------- schema inference

_LABEL_NAMES = ("label", "class", "attack", "attack_cat", "detailed-label", "category", "target")
_BENIGN = ("benign", "normal", "legitimate", "background")
_TIME_HINT = re.compile(r"(^ts$|time|date)", re.I)
_ENTITY_HINT = re.compile(r"^((src|source|orig|sender)([ _.-]*(ip|addr|address|host))?|id\.orig_h)$",
                          re.I)


def _sniff(path: Path, sample_lines: int) -> tuple[str, str, list[str] | None, list[str]]:

    lines: list[str] = []
    with open_binary(path) as fh:
        for raw in fh:
            lines.append(raw.decode("utf-8-sig", errors="replace").rstrip("\r\n"))
            if len(lines) >= sample_lines:
                break
    if not lines:
        raise SchemaError(f"{path}: file is empty")
    if lines[0].startswith("#separator"):
        fields = next((ln.split("\t")[1:] for ln in lines if ln.startswith("#fields")), None)
        if fields is None:
            raise SchemaError(f"{path}: Zeek log without a #fields line")
        space_split = any(" " in f.strip() for f in fields)  # IoT-23's appended labels
        fields = [f for part in fields for f in part.split()]
        data = [ln.replace("   ", "\t") if space_split else ln
                for ln in lines if not ln.startswith("#")]
        return "zeek", "\t", fields, data
    dialect = csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",;\t|")
    header = None
    try:
        has_header = csv.Sniffer().has_header("\n".join(lines[:50]))
    except csv.Error:
        has_header = True
    if has_header:
        header = next(csv.reader([lines[0]], delimiter=dialect.delimiter))
        lines = lines[1:]
    return "csv", dialect.delimiter, header, lines


def infer_schema(path: str | Path, sample_lines: int = 5000) -> str:
    """Draft a custom schema (TOML text) from a sample of `path`, for the user to check."""
    path = Path(path)
    fmt, delimiter, header, data = _sniff(path, sample_lines)
    missing = ["-", "(empty)"] if fmt == "zeek" else []
    frame = pd.read_csv(io.StringIO("\n".join(data)), sep=delimiter, header=None, dtype=str,
                        keep_default_na=False, engine="python" if fmt == "csv" else "c",
                        quoting=csv.QUOTE_NONE if fmt == "zeek" else csv.QUOTE_MINIMAL)
    names = unique_names(header) if header else [f"col{i + 1}" for i in range(frame.shape[1])]
    if len(names) != frame.shape[1]:
        raise SchemaError(f"{path}: header names {len(names)} columns, rows have {frame.shape[1]}")
    frame.columns = names
    label = next((c for c in names if c.strip().lower() in _LABEL_NAMES), None)
    family = None
    if fmt == "zeek" and "detailed-label" in names:
        label, family = "label", "detailed-label"
    time = next((c for c in names if _TIME_HINT.search(c)), None)
    entity = next((c for c in names if _ENTITY_HINT.search(c)), None)
    categorical, numeric, ignore, notes = [], [], [], []
    for c in names:
        if c in (label, family, time, entity):
            continue
        values = frame[c].str.strip()
        values = values[~values.isin(missing)]
        as_num = pd.to_numeric(values, errors="coerce")
        if len(values) == 0 or as_num.notna().mean() >= 0.99:
            numeric.append(c)
        elif values.nunique() <= 64:
            categorical.append(c)
        else:
            ignore.append(c)
            notes.append(f"{c}: {values.nunique()} distinct text values (an identifier?)")
    normal: list[str] = []
    if label:
        counts = frame[label].str.strip().value_counts()
        normal = [v for v in counts.index if v.lower() in _BENIGN] or [str(counts.index[0])]
        notes.append(f"label values seen: { {str(k): int(v) for k, v in counts.head(12).items()} }")
    else:
        notes.append("no label column found: fine for scoring, training needs one")

    schema: dict = {"name": re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-"),
                    "format": fmt, "delimiter": delimiter, "header": bool(header)}
    if not header:
        schema["columns"] = names
    if label:
        schema.update(label=label, normal=normal)
    if family:
        schema["family"] = family
    schema.update(categorical=categorical, numeric=numeric)
    if time:
        schema["time"] = time
    if entity:
        schema["entity"] = entity
    schema["ignore"] = ignore
    if missing:
        schema.update(missing=missing, fill_missing=0.0)
    numeric_values = frame[numeric].apply(pd.to_numeric, errors="coerce") if numeric else None
    if numeric_values is not None and not np.isfinite(numeric_values.to_numpy(float)).all():
        schema["fill_missing"] = 0.0
        notes.append("fill_missing = 0.0: the sample holds NaN/Infinity values")
    head = [f"# Drafted by `fedlstm schema infer {path.name}` from {len(frame)} rows: CHECK IT.",
            *(f"# {n}" for n in notes)]
    return "\n".join(head) + "\n" + tomli_w.dumps({"schema": schema})
