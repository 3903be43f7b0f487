"""Schemas for the user's own flow logs: Zeek conn.log (TSV or JSON), CICFlowMeter CSV, custom
TOML schemas, and `infer_schema`, which drafts a TOML schema from a sample of a file.

A flow schema is a `DatasetSpec` like the benchmark ones. Where a schema leaves `columns` empty
(CICFlowMeter, whose column names vary between tool versions) they are taken from the header of
the training file by `resolve_spec`; the resolved spec is what a model bundle stores, so scoring
needs neither the training file nor this module.

Headers are matched to the schema's column names ignoring case, spaces and punctuation, and
through the schema's aliases, so ' Label', 'Source IP' and 'src_ip' all find their column
(`match_header`). An entity or time column the schema names but the file lacks is an error
naming the file and the column, never a quiet switch to file-order windows.

Every key of a TOML schema, with a worked example, is in docs/schemas.md. In short:

    [schema]
    name = "site-flows"
    format = "csv"                # csv | zeek (TSV with #fields, or Zeek JSON) | json (one object a line)
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
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedlstm.data.io import open_binary, text_problem
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
    name="zeek-conn", folder="", title="Zeek conn.log (TSV or JSON)",
    columns=[*ZEEK_CONN_FIELDS, *ZEEK_LABEL_FIELDS],
    categorical=["proto", "service", "conn_state", "history"],
    label="label", family_column="detailed-label",
    # Host addresses and ports identify hosts, not behaviour; uid is a random id; local_orig/resp
    # depend on the sensor's Site::local_nets, not on the traffic.
    ignore=["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "local_orig",
            "local_resp", "tunnel_parents"],
    normal_labels=["Benign", "benign", "BENIGN", "normal"],
    time_column="ts", entity_column="id.orig_h",
    format="zeek", delimiter="\t", missing_values=["-", "(empty)"],
    fill_missing=0.0,  # '-' in duration/bytes means "not seen" (e.g. no reply): zero
    optional_columns=list(ZEEK_LABEL_FIELDS),
    # Zeek's JSON writer leaves unset fields out: what the TSV writer shows as '-'.
    defaults={"duration": 0.0, "orig_bytes": 0.0, "resp_bytes": 0.0, "service": "-",
              "history": "-"},
    nonnegative=["duration", "orig_bytes", "resp_bytes", "missed_bytes", "orig_pkts",
                 "orig_ip_bytes", "resp_pkts", "resp_ip_bytes"],
    order_note="arrival order per originating host",
)

# CICFlowMeter's identifier columns, as CICFlowMeter-V3/V4 and CSE-CIC-IDS2018 spell them; the
# CIC-IDS2017 CSVs spell them out ('Source IP'), the Python port in snake_case ('src_ip').
_CIC_IDS = ["Flow ID", "Src IP", "Src Port", "Dst IP", "Dst Port", "Timestamp"]
# CIC-IDS2017 feature names (the canonical ones) -> CICFlowMeter-V3's (CSE-CIC-IDS2018), so a
# bundle trained on either kind of file reads the other.
_CIC_FEATURE_ALIASES = {
    "Total Fwd Packets": "Tot Fwd Pkts", "Total Backward Packets": "Tot Bwd Pkts",
    "Total Length of Fwd Packets": "TotLen Fwd Pkts",
    "Total Length of Bwd Packets": "TotLen Bwd Pkts",
    **{f"{d} Packet Length {s}": f"{d} Pkt Len {s}" for d in ("Fwd", "Bwd")
       for s in ("Max", "Min", "Mean", "Std")},
    "Flow Bytes/s": "Flow Byts/s", "Flow Packets/s": "Flow Pkts/s",
    "Fwd IAT Total": "Fwd IAT Tot", "Bwd IAT Total": "Bwd IAT Tot",
    "Fwd Header Length": "Fwd Header Len", "Bwd Header Length": "Bwd Header Len",
    "Fwd Packets/s": "Fwd Pkts/s", "Bwd Packets/s": "Bwd Pkts/s",
    "Min Packet Length": "Pkt Len Min", "Max Packet Length": "Pkt Len Max",
    "Packet Length Mean": "Pkt Len Mean", "Packet Length Std": "Pkt Len Std",
    "Packet Length Variance": "Pkt Len Var",
    **{f"{f} Flag Count": f"{f} Flag Cnt" for f in ("FIN", "SYN", "RST", "PSH", "ACK", "URG",
                                                  "ECE")},
    "Average Packet Size": "Pkt Size Avg", "Avg Fwd Segment Size": "Fwd Seg Size Avg",
    "Avg Bwd Segment Size": "Bwd Seg Size Avg",
    **{f"{d} Avg Bytes/Bulk": f"{d} Byts/b Avg" for d in ("Fwd", "Bwd")},
    **{f"{d} Avg Packets/Bulk": f"{d} Pkts/b Avg" for d in ("Fwd", "Bwd")},
    **{f"{d} Avg Bulk Rate": f"{d} Blk Rate Avg" for d in ("Fwd", "Bwd")},
    **{f"Subflow {d} Packets": f"Subflow {d} Pkts" for d in ("Fwd", "Bwd")},
    **{f"Subflow {d} Bytes": f"Subflow {d} Byts" for d in ("Fwd", "Bwd")},
    "Init_Win_bytes_forward": "Init Fwd Win Byts", "Init_Win_bytes_backward": "Init Bwd Win Byts",
    "act_data_pkt_fwd": "Fwd Act Data Pkts", "min_seg_size_forward": "Fwd Seg Size Min",
}
CICFLOWMETER = DatasetSpec(
    name="cicflowmeter", folder="", title="CICFlowMeter flows (CSV)",
    columns=[],  # from the file's header: names differ between CICFlowMeter versions
    categorical=["Protocol"], label="Label", ignore=list(_CIC_IDS),
    normal_labels=["BENIGN", "Benign", "benign"],
    time_column="Timestamp", entity_column="Src IP", has_header=True,
    column_aliases={"Src IP": ["Source IP"], "Src Port": ["Source Port"],
                    "Dst IP": ["Destination IP"], "Dst Port": ["Destination Port"],
                    **{k: [v] for k, v in _CIC_FEATURE_ALIASES.items()}},
    # CIC-IDS2017's MachineLearningCVE CSVs drop every identifier column: windows then follow
    # file order (said in the read report). A file with identifiers must have the host column.
    identifiers_optional=True,
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
    """The keys of a TOML schema (docs/schemas.md explains each)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    format: Literal["csv", "zeek", "json"] = "csv"
    delimiter: str | None = Field(None, min_length=1, max_length=1)  # one character
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
    optional: list[str] = []  # columns that may be absent (the label and family always may)
    aliases: dict[str, list[str]] = {}  # column -> its other header spellings
    defaults: dict[str, float | str] = {}  # service: the value of a field a record leaves out
    nonnegative: list[str] | None = None  # numeric columns that cannot be negative
    stop_at: str | None = None  # a line equal to this ends the records ("Summary": nfdump)
    max_bad_share: float | None = Field(None, ge=0, le=1)  # training with data.lenient
    why: dict[str, str] = {}  # why each column has its role (written by `schema infer`)


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
    if not s.columns and not s.header and s.format == "csv":
        raise SchemaError(f"{path}: a file without a header needs `columns`")
    _check_roles(path, s)
    ignore = [*s.ignore, *(c for c in (s.time, s.entity) if c and c not in s.ignore)]
    labels = [c for c in (s.label, s.family) if c]
    columns = list(s.columns)
    if s.numeric is not None:  # every column not named is ignored
        named = [*s.numeric, *s.categorical, *labels, *ignore]
        if columns:
            ignore += [c for c in columns if c not in named]
        else:  # read by header name: columns not named are never read
            columns = list(dict.fromkeys(named))
    return DatasetSpec(
        name=s.name, folder="", title=f"custom schema {path.name}", columns=columns,
        categorical=s.categorical, label=s.label or "", family_column=s.family,
        ignore=ignore, has_header=s.header and s.format == "csv", normal_labels=s.normal,
        families=s.families, time_column=s.time, entity_column=s.entity, format=s.format,
        delimiter=s.delimiter or ("\t" if s.format == "zeek" else ","),
        missing_values=s.missing or (["-", "(empty)"] if s.format == "zeek" else []),
        fill_missing=s.fill_missing, optional_columns=list(dict.fromkeys([*labels, *s.optional])),
        column_aliases=s.aliases, defaults=s.defaults, nonnegative=s.nonnegative,
        stop_at=s.stop_at, max_bad_share=s.max_bad_share, column_notes=s.why)


def _check_roles(path: Path, s: _SchemaFile) -> None:
    """A column has one role: a label, family, entity or time column is never also a feature."""
    keys = {"label": s.label, "family": s.family, "entity": s.entity, "time": s.time}
    features = {"categorical": s.categorical, "numeric": s.numeric or []}
    for key, column in keys.items():
        for where, names in features.items():
            if column and column in names:
                raise SchemaError(f"{path}: column {column!r} is the `{key}` column and also in "
                                  f"`{where}`; a {key} column is never a feature: remove it from "
                                  f"`{where}`")
    both = set(s.categorical) & set(s.numeric or [])
    if both:
        raise SchemaError(f"{path}: column(s) {sorted(both)} in both `categorical` and `numeric`")
    stray = set(s.defaults) & {c for c in keys.values() if c}
    if stray:
        raise SchemaError(f"{path}: `defaults` for {sorted(stray)}, which are not features")


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


# ---------------------------------------------------------------- matching a file's header


def normalized(name: str) -> str:
    """A column name compared without case, spaces or punctuation: 'Src IP' ~ 'src_ip'."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def _named_columns(spec: DatasetSpec) -> list[str]:
    """Every column name the spec refers to, in a stable order."""
    names = [*spec.columns, spec.label, spec.family_column, spec.entity_column, spec.time_column,
             *spec.categorical, *spec.ignore, *spec.optional_columns, *spec.column_aliases,
             *spec.defaults, *(spec.nonnegative or [])]
    return list(dict.fromkeys(n for n in names if n))


@dataclass
class HeaderMatch:
    """A file's header read through a schema: the columns under the schema's names, the spec
    resolved on it, which header names were read as another (file name -> schema name), and
    notes worth telling the user (a column the layout lacks)."""

    names: list[str]
    spec: DatasetSpec
    renamed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


def canonical_names(spec: DatasetSpec, header: list[str]) -> tuple[list[str], dict[str, str]]:
    """The header with each name the schema knows under another spelling replaced by the
    schema's name; and {file name: schema name} for those replaced."""
    header = unique_names(header)
    known = _named_columns(spec)
    index: dict[str, str] = {}
    for name in known:
        for spelling in [name, *spec.column_aliases.get(name, [])]:
            if normalized(spelling):
                index.setdefault(normalized(spelling), name)
    used = set(header) & set(known)
    out, renamed = [], {}
    for name in header:
        target = index.get(normalized(name)) if name not in used else None
        if target and target not in used:
            used.add(target)
            renamed[name] = target
            name = target
        out.append(name)
    return out, renamed


# Repeated on purpose by a tool, with the same values: CICFlowMeter (CIC-IDS2017) writes it
# twice. Any other repeated column the schema reads is noted: the first copy is the one read.
KNOWN_REPEATS = frozenset({"Fwd Header Length"})


def _no_header_hint(fields: list[str]) -> str:
    """What to do when the first line holds numbers: a record, not column names."""
    numbers = []
    for value in fields:
        try:
            if math.isfinite(float(value)):
                numbers.append(value)
        except ValueError:
            pass
    if not numbers:
        return ""
    return (f"; the first line looks like a record (it holds numbers: {_shorten(numbers, 3)}): "
            "a file without a header needs `header = false` and `columns = [...]` in the "
            "schema (docs/schemas.md)")


def match_header(spec: DatasetSpec, header: list[str], where: str = "") -> HeaderMatch:
    """The spec for a file with this header: header-driven schemas take their columns from it.

    A missing feature column of a fixed schema is an error naming the file, and so is a missing
    entity or time column (unless the schema allows a layout without identifiers, and the file
    has none). Other columns the schema names but the file lacks are dropped from its lists."""
    names, renamed = canonical_names(spec, header)
    present = set(names)
    match = HeaderMatch(names, spec, renamed)
    used = set(_named_columns(spec)) | set(spec.feature_columns)
    stripped = [h.strip() for h in header]
    for name in dict.fromkeys(n for n in stripped if stripped.count(n) > 1
                              and (n in used or not spec.columns)  # header-driven: all read
                              and n not in KNOWN_REPEATS):
        fields = [i + 1 for i, n in enumerate(stripped) if n == name]
        match.notes.append(f"{where}:1: the header names {name!r} {len(fields)} times (fields "
                           f"{', '.join(map(str, fields))}): field {fields[0]} is read as it, "
                           f"the others as {name!r}.1, ... Check the header if they differ")
    if spec.columns:
        required = [c for c in spec.feature_columns if c not in spec.optional_columns]
        missing = [c for c in required if c not in present]
        if missing:
            # The header as written: `names` has pandas' renamings of repeats ('0', '0.1').
            raise SchemaError(f"{where}:1: header lacks column(s) {missing} of schema "
                              f"{spec.name!r}; found {stripped}{_no_header_hint(stripped)}")
    update: dict = {}
    no_ids = spec.identifiers_optional and not present & set(spec.ignore)
    for key, role in (("entity_column", "entity"), ("time_column", "time")):
        column = getattr(spec, key)
        if not column or column in present:
            continue
        if column in spec.optional_columns or no_ids:
            update[key] = None
            match.absent.append(column)
            match.notes.append(
                f"{where}: no {role} column {column!r}" + _spellings(spec, column) +
                ("; windows follow file order" if role == "entity" else "") +
                (" (this layout has no identifier columns)" if no_ids else ""))
            continue
        raise SchemaError(
            f"{where}:1: no {role} column {column!r}{_spellings(spec, column)} in the file, which "
            f"schema {spec.name!r} names (`{role}`); its columns: {_shorten(stripped)}. Name the "
            f"file's {role} column in a schema file (`{role} = \"...\"`, docs/schemas.md), or "
            f"draft one with `fedlstm schema infer {Path(where).name or 'FILE'}`"
            f"{_no_header_hint(stripped)}")
    if not spec.columns:
        update.update(
            columns=names, ignore=[c for c in spec.ignore if c in present],
            categorical=[c for c in spec.categorical if c in present])
        ignore = update["ignore"]
        for key in ("time_column", "entity_column"):
            c = update.get(key, getattr(spec, key))
            if c and c in present and c not in ignore:
                ignore.append(c)
        match.absent += [c for c in [*spec.ignore, *spec.categorical] if c not in present]
    match.spec = spec.model_copy(update=update) if update else spec
    return match


def resolve_spec(spec: DatasetSpec, header: list[str], where: str = "") -> DatasetSpec:
    """`match_header(...).spec`: the spec resolved on a file's header."""
    return match_header(spec, header, where).spec


def _spellings(spec: DatasetSpec, column: str) -> str:
    aliases = spec.column_aliases.get(column, [])
    return f" (nor {', '.join(map(repr, aliases))})" if aliases else ""


def _shorten(names: list[str], most: int = 12) -> str:
    shown = ", ".join(map(repr, names[:most]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


# Names of count-like columns (bytes, packets, durations): a negative value is a broken record.
_COUNT_NAME = re.compile(r"(bytes|byts|octets|pkts|packets|packet|duration|^dur$|^td$|count|cnt"
                         r"|^ibyt$|^obyt$|^ipkt$|^opkt$)", re.IGNORECASE)


def count_like(column: str) -> bool:
    """Does the name say the column counts something (bytes, packets, a duration)? The service
    refuses negative values in such columns unless training data held some (`nonnegative`)."""
    return bool(_COUNT_NAME.search(column))


# ---------------------------------------------------------------- explaining a schema


def explain_schema(spec: DatasetSpec, match: HeaderMatch | None = None) -> list[dict]:
    """Each column's role and why: [{"column", "role", "why"}], for `fedlstm schema show`.
    With `match` (the schema read on a file's header), the file's columns, with the names they
    were found under and the columns the file lacks."""
    if match is not None:
        spec = match.spec
    columns = list(spec.columns) if spec.columns else list(dict.fromkeys(
        c for c in [spec.label, spec.family_column, spec.entity_column, spec.time_column,
                    *spec.categorical, *spec.ignore, *spec.optional_columns] if c))
    if spec.column_notes:  # `schema infer` wrote them in the file's column order
        order = {c: i for i, c in enumerate(spec.column_notes)}
        columns.sort(key=lambda c: order.get(c, len(order)))
    found_as = {v: k for k, v in (match.renamed if match else {}).items()}
    rows = []
    for c in columns:
        role, why = _role(spec, c)
        if c in spec.column_notes:  # drafted as "role: reason"
            why = spec.column_notes[c].removeprefix(f"{role}: ")
        if c in found_as:
            why += f" (the file spells it {found_as[c]!r})"
        rows.append({"column": c, "role": role, "why": why})
    if match is not None:
        for c in dict.fromkeys(match.absent):
            rows.append({"column": c, "role": "absent",
                         "why": "named by the schema, not in this file" +
                                _spellings(spec, c).replace(" (nor", " (nor as")})
    elif not spec.columns:
        rows.append({"column": "(any other)", "role": "numeric",
                     "why": "columns come from the file's header: every column not named here "
                            "is a numeric feature"})
    return rows


def _role(spec: DatasetSpec, c: str) -> tuple[str, str]:
    if c == spec.label:
        return "label", "the label (`label`): what the detector learns to predict; never a feature"
    if c == spec.family_column:
        return "family", "attack family (`family`): names the attack; never a feature"
    if c == spec.entity_column:
        return "entity", ("entity key (`entity`): windows are formed per value (per host); "
                          "never a feature")
    if c == spec.time_column:
        return "time", "time column (`time`): when the flow started; never a feature"
    if c in spec.ignore:
        return "ignore", "listed in `ignore`: read past, never a feature"
    if c in spec.categorical:
        return "categorical", ("listed in `categorical`: one-hot encoded, with a bucket for "
                               "values unseen in training")
    if c in spec.optional_columns:
        return "optional", "may be absent from a file (`optional`)"
    return "numeric", "numeric feature (not named in any other role)"


# ---------------------------------------------------------------- schema inference

# Tokens that mean "no value" in the tools' outputs: Zeek's unset '-' and empty '(empty)', empty
# cells, and NaN/Infinity (CICFlowMeter's rates of zero-duration flows).
MISSING_TOKENS = ["-", "(empty)", "", "NaN", "nan", "NA", "N/A", "null", "None", "Infinity",
                  "-Infinity", "inf", "-inf"]


def _names(*names: str) -> frozenset[str]:
    return frozenset(normalized(n) for n in names)


# Label-like columns, in the order one is taken as *the* label; any name holding "label" is one.
_LABELS = [normalized(n) for n in (
    "label", "class", "classification", "attack", "malicious", "is_malicious", "is_attack",
    "target", "labels", "detailed-label", "attack_cat", "attack_category", "category",
    "attack_type", "attack_name", "subcategory", "anomaly", "is_anomaly", "ground_truth",
    "attacks", "classes")]
_FAMILIES = [normalized(n) for n in (
    "detailed-label", "attack_cat", "attack_category", "attack", "category", "attack_type",
    "attack_name", "subcategory")]
# Identifiers by name, as Zeek, CICFlowMeter (both spellings and the Python port), Argus,
# nfdump, nProbe/NetFlow CSVs and common exports spell them.
_START_TIME = _names("ts", "timestamp", "time", "stime", "StartTime", "start", "date", "datetime",
                     "first_seen", "flow_start", "FLOW_START_MILLISECONDS", "flowStartSeconds",
                     "start_time", "first")
_END_TIME = _names("te", "ltime", "LastTime", "end_time", "end", "last_seen", "flow_end",
                   "FLOW_END_MILLISECONDS", "flowEndSeconds", "tr", "last", "received")
_SRC_ADDR = _names("Src IP", "Source IP", "SrcAddr", "src_addr", "source_address", "saddr", "sa",
                   "src", "sip", "ip_src", "id.orig_h", "orig_h", "IPV4_SRC_ADDR",
                   "IPV6_SRC_ADDR", "src_host", "source_host", "client_ip", "srcip", "src_ip_addr")
_DST_ADDR = _names("Dst IP", "Destination IP", "DstAddr", "dst_addr", "destination_address",
                   "daddr", "da", "dst", "dip", "ip_dst", "id.resp_h", "resp_h", "IPV4_DST_ADDR",
                   "IPV6_DST_ADDR", "dst_host", "destination_host", "server_ip", "dstip",
                   "dst_ip_addr", "nh", "nhb", "ra", "router_ip", "exporter", "next_hop")
_PORTS = _names("Src Port", "Source Port", "Sport", "sp", "Dst Port", "Destination Port", "Dport",
                "dp", "id.orig_p", "id.resp_p", "orig_p", "resp_p", "L4_SRC_PORT", "L4_DST_PORT",
                "src_pt", "dst_pt", "port", "srcport", "dstport")
_FLOW_IDS = _names("Flow ID", "uid", "id", "conn_id", "connection_id", "session_id", "flow_index",
                   "index", "Unnamed: 0", "no", "row_id", "record_id", "community_id", "fid",
                   "seq", "pkSeqID")
_OTHER_IDS = _names("src_mac", "dst_mac", "smac", "dmac", "SrcMac", "DstMac", "ismc", "odmc",
                    "idmc", "osmc", "in_mac", "out_mac", "in", "out", "input", "output",
                    "snmp_in", "snmp_out", "sas", "das", "src_as", "dst_as", "smk", "dmk",
                    "svln", "dvln", "src_vlan", "dst_vlan", "vlan", "exid", "eng", "engine_id",
                    "tunnel_parents", "local_orig", "local_resp", "sensor", "host_name")
# Numbers that name a category, not a quantity.
_PROTOCOLS = _names("proto", "protocol", "pr", "ip_proto", "protocol_id", "L7_PROTO", "app_proto")
# Label values that mean benign traffic (CTU-13's are like 'flow=Background-TCP-Established').
_BENIGN = re.compile(r"^(0|false|no)$|benign|normal|legitimate|background", re.IGNORECASE)
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_DATETIME = re.compile(r"^(\d{4}[-/]\d{1,2}[-/]\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})[ T]\d{1,2}:\d{2}")
_CIC_SAY = ("this is CICFlowMeter output: the built-in schema `cicflowmeter` reads it too "
            "(--schema cicflowmeter)")
_ZEEK_SAY = ("this is Zeek conn.log: the built-in schema `zeek-conn` reads it as it is "
             "(--schema zeek-conn)")
# Zeek's columns in a delimited export (e.g. pipe-separated): `zeek-conn` reads Zeek's own TSV
# and JSON logs, not this layout.
_ZEEK_EXPORT_SAY = ("these are Zeek conn.log's columns in a delimited export: this draft reads "
                    "it (the built-in `zeek-conn` reads Zeek's own TSV or JSON logs)")
_TOOLS = [  # (columns that mark a tool's output, what to say)
    ({"uid", "idorigh", "idresph"}, _ZEEK_SAY),
    ({"flowduration", "fwdpacketlengthmax"}, _CIC_SAY),
    ({"flowduration", "fwdpktlenmax"}, _CIC_SAY),
    ({"ts", "te", "td", "sa", "da"}, "this is an nfdump CSV export (nfdump -o csv)"),
    ({"starttime", "srcaddr", "dstaddr"}, "this is an Argus export (ra -c ,)"),
    ({"ipv4srcaddr", "ipv4dstaddr"}, "this is a NetFlow/nProbe CSV export"),
]


@dataclass
class _Sample:
    fmt: str
    delimiter: str
    names: list[str]
    has_header: bool
    frame: pd.DataFrame  # every cell as text, "" where a JSON record left the field out
    stop_at: str | None = None
    structured: set[str] = field(default_factory=set)  # JSON columns holding lists/objects
    absent: set[str] = field(default_factory=set)  # JSON columns some records leave out


def _sniff(path: Path, sample_lines: int) -> _Sample:
    if sample_lines < 1:
        raise SchemaError(f"a sample of {sample_lines} lines of {path}: sample at least 1")
    lines: list[str] = []
    try:
        with open_binary(path) as fh:
            for raw in fh:
                lines.append(raw.decode("utf-8-sig", errors="replace").rstrip("\r\n"))
                if len(lines) >= sample_lines:
                    break
    except EOFError:  # gzip: "Compressed file ended before the end-of-stream marker"
        if not lines:
            raise SchemaError(f"{path}: the compressed file is cut short (truncated), and no "
                              "line of it could be read") from None
    if not any(ln.strip() for ln in lines):
        raise SchemaError(f"{path}: file is empty")
    with open_binary(path) as fh:
        problem = text_problem(fh.readline(1 << 20))
    if problem:
        raise SchemaError(f"{path}:1: {problem}")
    if lines[0].startswith("#separator"):
        return _sniff_zeek(path, lines)
    if lines[0].lstrip().startswith("{"):
        return _sniff_json(path, lines)
    return _sniff_csv(path, lines)


def _sniff_zeek(path: Path, lines: list[str]) -> _Sample:
    fields = next((ln.split("\t")[1:] for ln in lines if ln.startswith("#fields")), None)
    if fields is None:
        raise SchemaError(f"{path}: Zeek log without a #fields line")
    space_split = any(" " in f.strip() for f in fields)  # IoT-23's appended labels
    fields = [f for part in fields for f in part.split()]
    data = [ln.replace("   ", "\t") if space_split else ln
            for ln in lines if ln and not ln.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(data)), sep="\t", header=None, dtype=str,
                        keep_default_na=False, quoting=csv.QUOTE_NONE, names=fields,
                        on_bad_lines="skip", engine="python").fillna("")
    return _Sample("zeek", "\t", fields, True, frame)


def _sniff_json(path: Path, lines: list[str]) -> _Sample:
    records = []
    for ln in lines:
        try:
            value = json.loads(ln)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    if not records:
        raise SchemaError(f"{path}: no JSON object per line in the first {len(lines)} lines")
    names = list(dict.fromkeys(k for r in records for k in r))
    structured = {k for r in records for k, v in r.items() if isinstance(v, (list, dict))}
    absent = {k for k in names if any(k not in r or r[k] is None for r in records)}
    frame = pd.DataFrame({k: [json_text(r.get(k)) for r in records] for k in names}, dtype=object)
    return _Sample("json", ",", names, True, frame, structured=structured, absent=absent)


def json_text(value, zeek: bool = False) -> str:
    """A JSON value as the text a CSV or Zeek TSV writer would have written for it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return ("T" if value else "F") if zeek else ("true" if value else "false")
    if isinstance(value, (list, dict)):
        return ",".join(map(str, value)) if isinstance(value, list) else json.dumps(value)
    return str(value)


def _sniff_csv(path: Path, lines: list[str]) -> _Sample:
    stop_at = None
    if "Summary" in (ln.strip() for ln in lines):  # nfdump -o csv appends a summary block
        stop_at = "Summary"
        lines = lines[:[ln.strip() for ln in lines].index("Summary")]
    lines = [ln for ln in lines if ln.strip()]
    delimiter = _sniff_delimiter(lines)
    first = next(csv.reader([lines[0]], delimiter=delimiter))
    has_header = not any(_is_number(v) for v in first)
    if has_header and len(lines) < 2:
        raise SchemaError(f"{path}: a header and no data rows in the sample; a draft needs rows "
                          "to tell numbers from categories")
    frame = pd.read_csv(io.StringIO("\n".join(lines[1:] if has_header else lines)),
                        sep=delimiter, header=None, dtype=str, keep_default_na=False,
                        engine="python", on_bad_lines="skip").fillna("")  # short rows: unset
    names = unique_names(first) if has_header else [f"col{i + 1}" for i in range(frame.shape[1])]
    if len(names) != frame.shape[1]:
        raise SchemaError(f"{path}: the header names {len(names)} columns, rows have "
                          f"{frame.shape[1]} (delimiter {delimiter!r})")
    frame.columns = names
    return _Sample("csv", delimiter, names, has_header, frame, stop_at=stop_at)


def _sniff_delimiter(lines: list[str]) -> str:
    """The candidate found the same (non-zero) number of times on most of the first lines."""
    best, choice = (0.0, 0), ","
    for d in (",", "\t", "|", ";"):
        counts = [ln.count(d) for ln in lines[:50]]
        if counts[0] == 0:
            continue
        score = (sum(c == counts[0] for c in counts) / len(counts), counts[0])
        if score > best:
            best, choice = score, d
    return choice


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() not in ("nan", "NaN", "inf", "-inf", "Infinity", "-Infinity")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _share(values: pd.Series, test) -> float:
    sample = values.head(200)
    return float(sample.map(test).mean()) if len(sample) else 0.0


@dataclass
class _Decision:
    role: str  # label | family | entity | time | ignore | categorical | numeric
    why: str


def _decide_labels(names: list[str], frame: pd.DataFrame) -> dict[str, _Decision]:
    """The label, the family column, and every other label-like column (ignored)."""
    like = [c for c in names if normalized(c) in _LABELS or "label" in normalized(c)]
    if not like:
        return {}
    rank = {c: (_LABELS.index(normalized(c)) if normalized(c) in _LABELS else len(_LABELS), i)
            for i, c in enumerate(like)}
    label = min(like, key=rank.__getitem__)
    out = {label: _Decision("label", "named like a label: what the detector learns to predict; "
                                     "never a feature")}
    rest = [c for c in like if c != label]
    family = next((c for n in _FAMILIES for c in rest if normalized(c) == n), None)
    if family is not None:
        out[family] = _Decision("family", f"named like an attack family next to the label "
                                          f"{label!r}: names the attack; never a feature")
    for c in rest:
        if c != family:
            out[c] = _Decision("ignore", "named like a label: label columns are never features")
    return out


# 1,234 / 1.234.567 / 1 234 / 0,1255 / 12,5: numbers as a spreadsheet's locale writes them
_LOCAL_NUMBER = r"[-+]?(?:\d{1,3}(?:[,. ]\d{3})+(?:[.,]\d+)?|\d+,\d+)"


def _decide(name: str, values: pd.Series, sample: _Sample, taken: dict[str, str]) -> _Decision:
    """One column's role from its name and its sampled values. `taken`: role -> column."""
    n = normalized(name)
    if n in _START_TIME:
        if "time" not in taken:
            return _Decision("time", "named like a start time: when the flow started; never a "
                                     "feature")
        return _Decision("ignore", f"a second time column (the time column is {taken['time']!r})")
    if n in _END_TIME:
        return _Decision("ignore", "named like an end or receive time: a timestamp, never a "
                                   "feature")
    if n in _SRC_ADDR:
        if "entity" not in taken:
            return _Decision("entity", "named like the source address: windows are formed per "
                                       "host; never a feature")
        return _Decision("ignore", "a source address: an identifier, never a feature")
    if n in _DST_ADDR:
        return _Decision("ignore", "named like a destination or router address: an identifier, "
                                   "never a feature")
    if n in _PORTS:
        return _Decision("ignore", "named like a port: it identifies a connection, and its number "
                                   "is no quantity; never a feature")
    if n in _FLOW_IDS:
        return _Decision("ignore", "named like a flow or record id: an identifier, never a "
                                   "feature")
    if n in _OTHER_IDS or re.fullmatch(r"mpls\d+", n):
        return _Decision("ignore", "names an interface, MAC, AS, VLAN, MPLS label, sensor "
                                   "setting or tunnel: an identifier or a property of the "
                                   "sensor, never a feature")
    if name in sample.structured:
        return _Decision("ignore", "holds lists or objects: not a flow feature")
    present = values[~values.isin(MISSING_TOKENS)]
    if present.empty:
        return _Decision("ignore", "every sampled value is unset: nothing to learn from")
    if _share(present, _is_ip) >= 0.9:
        if "entity" not in taken:
            return _Decision("entity", "its values are IP addresses (the first such column): "
                                       "taken as the host windows are formed for")
        return _Decision("ignore", "its values are IP addresses: an identifier, never a feature")
    if _share(present, lambda v: bool(_MAC.match(v))) >= 0.9:
        return _Decision("ignore", "its values are MAC addresses: an identifier, never a feature")
    if _share(present, lambda v: bool(_DATETIME.match(v))) >= 0.9:
        if "time" not in taken:
            return _Decision("time", "its values are dates and times: when the flow started; "
                                     "never a feature")
        return _Decision("ignore", "its values are dates and times: never a feature")
    numbers = pd.to_numeric(present, errors="coerce")
    distinct = present.nunique()
    if n in _PROTOCOLS:
        return _Decision("categorical", f"named like a protocol: {distinct} distinct values, "
                                        "each a category (a protocol number is no quantity)")
    unset = len(values) - len(present)
    unset_note = f"; {unset} of {len(values)} sampled values unset" if unset else ""
    if numbers.notna().mean() >= 0.99:
        return _Decision("numeric", f"numbers ({distinct} distinct in the sample){unset_note}")
    local = present.str.fullmatch(_LOCAL_NUMBER).to_numpy(bool) & numbers.isna().to_numpy()
    if local.any() and (local | numbers.notna().to_numpy()).mean() >= 0.99:
        return _Decision("ignore", "numbers written with thousands separators or decimal commas "
                                   f"(e.g. {present[local].iloc[0]!r}), which are read as text: "
                                   "export plain numbers (1234.5), then make it numeric")
    if distinct <= 64:
        return _Decision("categorical", f"text with {distinct} distinct values: a category")
    return _Decision("ignore", f"text with {distinct} distinct values in {len(present)} rows: an "
                               "identifier or free text, not a category")


def draft_schema(path: str | Path, sample_lines: int = 5000) -> tuple[dict, list[str]]:
    """A custom schema (the `[schema]` table as a dict, with `why` for every column) drafted from
    a sample of `path`, and notes for the user; `infer_schema` writes it as TOML."""
    path = Path(path)
    sample = _sniff(path, sample_lines)
    frame, names = sample.frame, sample.names
    decisions = _decide_labels(names, frame)
    taken = {d.role: c for c, d in decisions.items()}
    for c in names:
        if c not in decisions:
            d = _decide(c, frame[c].astype(str).str.strip(), sample, taken)
            decisions[c] = d
            taken.setdefault(d.role, c)
    role = {c: d.role for c, d in decisions.items()}
    label = next((c for c in names if role[c] == "label"), None)
    family = next((c for c in names if role[c] == "family"), None)
    numeric = [c for c in names if role[c] == "numeric"]
    notes = []
    header_names = {normalized(c) for c in names}
    notes += [_ZEEK_EXPORT_SAY if say == _ZEEK_SAY and sample.fmt == "csv" else say
              for marks, say in _TOOLS if marks <= header_names][:1]
    normal: list[str] = []
    if label:
        counts = frame[label].astype(str).str.strip().value_counts()
        normal = [str(v) for v in counts.index if _BENIGN.search(str(v))]
        notes.append(f"label values seen: { {str(k): int(v) for k, v in counts.head(12).items()} }")
        if not normal:
            normal = [str(counts.index[0])]
            notes.append(f"no label value reads as benign: `normal` guesses {normal[0]!r}, the "
                         "most frequent; CHECK IT")
    else:
        notes.append("no label column found: fine for scoring, training needs one")
    seen_missing = sorted({t for c in numeric for t in MISSING_TOKENS
                           if (frame[c].astype(str).str.strip() == t).any()},
                          key=MISSING_TOKENS.index)
    missing = list(dict.fromkeys((["-", "(empty)"] if sample.fmt == "zeek" else []) +
                                 [t for t in seen_missing if t]))
    schema: dict = {"name": re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "flows",
                    "format": sample.fmt}
    if sample.fmt == "csv":
        schema.update(delimiter=sample.delimiter, header=sample.has_header)
    if sample.fmt == "json" or not sample.has_header:
        schema["columns"] = names
    if label:
        schema.update(label=label, normal=normal)
    if family:
        schema["family"] = family
    schema.update(categorical=[c for c in names if role[c] == "categorical"], numeric=numeric)
    for key in ("time", "entity"):
        if key in taken:
            schema[key] = taken[key]
    schema["ignore"] = [c for c in names if role[c] == "ignore"]
    absent_numeric = [c for c in numeric if c in sample.absent]
    if missing or seen_missing or absent_numeric:
        schema.update(missing=missing, fill_missing=0.0)
        said = [repr(t) for t in seen_missing if t] + \
            (["empty or left out"] if "" in seen_missing or absent_numeric else [])
        notes.append(f"fill_missing = 0.0: the sample has unset numbers ({', '.join(said)}); "
                     "they are read as 0 and counted")
    if sample.stop_at:
        schema["stop_at"] = sample.stop_at
        notes.append(f"stop_at = {sample.stop_at!r}: the lines after it are a summary, not flows")
    schema["why"] = {c: f"{decisions[c].role}: {decisions[c].why}" for c in names}
    notes.insert(0, f"{len(frame)} rows sampled")
    return schema, notes


def infer_schema(path: str | Path, sample_lines: int = 5000) -> str:
    """Draft a custom schema (TOML text) from a sample of `path`, for the user to check: no
    label-like column and no identifier (ids, addresses, ports, timestamps) is ever a feature."""
    path = Path(path)
    schema, notes = draft_schema(path, sample_lines)
    head = [(f"# Drafted by `fedlstm schema infer {path.name}`: CHECK IT (`fedlstm schema show` "
             "explains each column; keys: docs/schemas.md)."),
            *(f"# {n}" for n in notes)]
    return "\n".join(head) + "\n" + tomli_w.dumps({"schema": schema})
