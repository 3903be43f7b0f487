"""Small flow logs in the real output formats of the tools users run, written here in code (never
copied from a dataset): Zeek conn.log as TSV (plain and IoT-23-labelled) and as JSON, CICFlowMeter
CSV with CIC-IDS2017's and CICFlowMeter-V3's header spellings, a pipe-delimited export of
labelled Zeek logs, nfdump's CSV (with its summary trailer), an Argus CSV and a NetFlow (nProbe)
CSV. Each `CorpusFile` says which of its columns are labels and which are identifiers, so tests
can check that schema inference never drafts one of them as a feature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ZEEK_FIELDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto",
               "service", "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig",
               "local_resp", "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts",
               "resp_ip_bytes", "tunnel_parents"]
ZEEK_TYPES = ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval",
              "count", "count", "string", "bool", "bool", "count", "string", "count", "count",
              "count", "count", "set[string]"]
ZEEK_IDS = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"]


@dataclass
class CorpusFile:
    name: str
    path: Path
    rows: int  # flow records in the file
    labels: list[str]  # label-like columns
    identifiers: list[str]  # ids, addresses, ports, timestamps: never features
    entity: str | None = None  # the source-host column a schema should key windows on
    builtin: str | None = None  # a built-in schema that reads it
    extra: dict = field(default_factory=dict)


@dataclass
class _Flow:
    """One synthetic connection, the common source of every format."""

    t: float
    uid: str
    src: str
    sport: int
    dst: str
    dport: int
    proto: str
    service: str | None
    duration: float | None
    orig_bytes: int | None
    resp_bytes: int | None
    state: str
    history: str
    orig_pkts: int
    resp_pkts: int
    attack: str | None  # None: benign


def flows(n: int, seed: int = 0) -> list[_Flow]:
    """n flows from a handful of hosts: a third are a port scan (short, unanswered) or C&C."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
    out, t = [], 1_545_403_000.0
    for i in range(n):
        t += float(rng.exponential(0.5))
        kind = rng.choice(["benign", "benign", "scan", "cc"])
        src = f"192.168.1.{int(rng.integers(2, 9))}"
        if kind == "scan":
            proto, service, dport, state, history = "tcp", None, int(rng.integers(1, 1024)), \
                "S0", "S"
            duration = orig = resp = None  # no reply: Zeek leaves these unset
            opk, rpk = 1, 0
        else:
            proto = str(rng.choice(["tcp", "udp"]))
            service = "dns" if proto == "udp" else str(rng.choice(["http", "ssl"]))
            dport = 53 if proto == "udp" else (80 if service == "http" else 443)
            state, history = ("SF", "ShADadFf") if proto == "tcp" else ("SF", "Dd")
            duration = float(rng.exponential(2.0 if kind == "benign" else 30.0))
            orig = int(rng.exponential(400 if kind == "benign" else 90))
            resp = int(rng.exponential(4000 if kind == "benign" else 60))
            opk, rpk = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        out.append(_Flow(t, "C" + "".join(rng.choice(alphabet, 17)), src,
                         int(rng.integers(1024, 65535)), f"10.0.{int(rng.integers(0, 4))}.{i % 250}",
                         dport, proto, service, duration, orig, resp, state, history, opk, rpk,
                         None if kind == "benign" else kind))
    return out


def _zeek_values(f: _Flow) -> list[str]:
    def unset(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)
    return [f"{f.t:.6f}", f.uid, f.src, str(f.sport), f.dst, str(f.dport), f.proto,
            unset(f.service), unset(f.duration, "{:.6f}"), unset(f.orig_bytes),
            unset(f.resp_bytes), f.state, "-", "-", "0", f.history, str(f.orig_pkts),
            str(f.orig_pkts * 40 + (f.orig_bytes or 0)), str(f.resp_pkts),
            str(f.resp_pkts * 40 + (f.resp_bytes or 0)), "-"]


def _iot23_label(f: _Flow) -> tuple[str, str]:
    if f.attack is None:
        return "Benign", "-"
    return "Malicious", "PartOfAHorizontalPortScan" if f.attack == "scan" else "C&C"


def zeek_tsv(path: Path, records: list[_Flow], labelled: bool) -> Path:
    """Zeek's ASCII writer: #-header lines, tab-separated, '-' unset, '(empty)' an empty set.
    IoT-23's conn.log.labeled appends `label` and `detailed-label`, separated by three spaces."""
    labels = "   label   detailed-label" if labelled else ""
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
            "#path\tconn", "#open\t2018-12-21-15-50-14",
            "#fields\t" + "\t".join(ZEEK_FIELDS) + labels,
            "#types\t" + "\t".join(ZEEK_TYPES) + ("   string   string" if labelled else "")]
    lines = []
    for f in records:
        row = "\t".join(_zeek_values(f))
        if labelled:
            row += "   " + "   ".join(_iot23_label(f))
        lines.append(row)
    path.write_text("\n".join([*head, *lines, "#close\t2018-12-21-16-50-14"]) + "\n")
    return path


def zeek_json(path: Path, records: list[_Flow]) -> Path:
    """Zeek's JSON writer (LogAscii::use_json=T): one object a line, unset fields left out."""
    lines = []
    for f in records:
        obj = {"ts": f.t, "uid": f.uid, "id.orig_h": f.src, "id.orig_p": f.sport,
               "id.resp_h": f.dst, "id.resp_p": f.dport, "proto": f.proto, "service": f.service,
               "duration": f.duration, "orig_bytes": f.orig_bytes, "resp_bytes": f.resp_bytes,
               "conn_state": f.state, "missed_bytes": 0, "history": f.history,
               "orig_pkts": f.orig_pkts, "orig_ip_bytes": f.orig_pkts * 40 + (f.orig_bytes or 0),
               "resp_pkts": f.resp_pkts, "resp_ip_bytes": f.resp_pkts * 40 + (f.resp_bytes or 0)}
        label, detailed = _iot23_label(f)
        obj.update({"label": label, "detailed-label": detailed})
        lines.append(json.dumps({k: v for k, v in obj.items() if v is not None}))
    path.write_text("\n".join(lines) + "\n")
    return path


def pipe_export(path: Path, records: list[_Flow]) -> Path:
    """Labelled Zeek logs exported with '|' between fields and '-' for unset values."""
    header = "|".join([*ZEEK_FIELDS, "label", "detailed-label"])
    lines = ["|".join([*_zeek_values(f), *_iot23_label(f)]) for f in records]
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


_CIC_2017 = ["Flow ID", "Source IP", "Source Port", "Destination IP", "Destination Port",
             "Protocol", "Timestamp", "Flow Duration", "Total Fwd Packets",
             "Total Backward Packets", "Total Length of Fwd Packets",
             "Total Length of Bwd Packets", "Fwd Packet Length Max", "Flow Bytes/s",
             "Flow Packets/s", "Fwd Header Length", "SYN Flag Count", "Init_Win_bytes_forward",
             "Fwd Header Length", "Label"]
_CIC_V3 = ["Flow ID", "Src IP", "Src Port", "Dst IP", "Dst Port", "Protocol", "Timestamp",
           "Flow Duration", "Tot Fwd Pkts", "Tot Bwd Pkts", "TotLen Fwd Pkts", "TotLen Bwd Pkts",
           "Fwd Pkt Len Max", "Flow Byts/s", "Flow Pkts/s", "Fwd Header Len", "SYN Flag Cnt",
           "Init Fwd Win Byts", "Label"]
CIC_IDS = ["Flow ID", "Source IP", "Source Port", "Destination IP", "Destination Port",
           "Timestamp", "Src IP", "Src Port", "Dst IP", "Dst Port"]


def cicflowmeter(path: Path, records: list[_Flow], spelling: str) -> Path:
    """CICFlowMeter CSV. `2017`: CIC-IDS2017's GeneratedLabelledFlows (names after a comma start
    with a space, 'Fwd Header Length' twice, timestamps '3/7/2017 8:55', BENIGN/attack names);
    `v3`: CICFlowMeter-V3 as in CSE-CIC-IDS2018 ('Src IP', 'Tot Fwd Pkts', 'Benign')."""
    start = datetime(2017, 7, 3, 8, 55, tzinfo=UTC)
    lines = []
    for i, f in enumerate(records):
        micros = int((f.duration or 0) * 1e6)
        fwd, bwd = f.orig_bytes or 0, f.resp_bytes or 0
        rate = "Infinity" if micros == 0 and fwd else ("NaN" if micros == 0 else
                                                      f"{(fwd + bwd) / micros * 1e6:.6f}")
        prate = "Infinity" if micros == 0 else f"{(f.orig_pkts + f.resp_pkts) / micros * 1e6:.6f}"
        proto = 6 if f.proto == "tcp" else 17
        when = start + timedelta(seconds=i * 3)
        stamp = f"{when.day}/{when.month}/{when.year} {when.hour}:{when.minute:02d}" \
            if spelling == "2017" else when.strftime("%d/%m/%Y %I:%M:%S %p")
        flow_id = f"{f.dst}-{f.src}-{f.dport}-{f.sport}-{proto}"
        label = ("BENIGN" if spelling == "2017" else "Benign") if f.attack is None else \
            ("PortScan" if f.attack == "scan" else "Bot")
        header = f.orig_pkts * 20
        values = [flow_id, f.src, f.sport, f.dst, f.dport, proto, stamp, micros, f.orig_pkts,
                  f.resp_pkts, fwd, bwd, min(fwd, 1460), rate, prate, header, int(f.attack ==
                  "scan"), -1 if f.proto == "udp" else 29200]
        if spelling == "2017":
            values.append(header)  # CIC-IDS2017 repeats 'Fwd Header Length'
        lines.append(",".join(map(str, [*values, label])))  # no spaces in the rows
    names = _CIC_2017 if spelling == "2017" else _CIC_V3
    head = ", ".join(names) if spelling == "2017" else ",".join(names)
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


NFDUMP_FIELDS = ("ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,out,sas,das,smk,"
                 "dmk,dtos,dir,nh,nhb,svln,dvln,ismc,odmc,idmc,osmc,mpls1,mpls2,mpls3,mpls4,mpls5,"
                 "mpls6,mpls7,mpls8,mpls9,mpls10,cl,sl,al,ra,eng,exid,tr").split(",")
NFDUMP_IDS = ["ts", "te", "tr", "sa", "da", "sp", "dp", "nh", "nhb", "ra", "in", "out", "sas",
              "das", "ismc", "odmc", "idmc", "osmc", "exid", "eng", "svln", "dvln", "smk", "dmk"]


def nfdump_csv(path: Path, records: list[_Flow], label: bool = True) -> Path:
    """`nfdump -r FILE -o csv` (nfdump 1.6): the fixed field list, dates as text, and a trailing
    summary block; a `label` column appended, as labelled exports do."""
    lines = []
    for f in records:
        t0 = datetime.fromtimestamp(f.t, UTC)
        t1 = t0 + timedelta(seconds=f.duration or 0)
        flags = "....S." if f.attack == "scan" else ".AP.SF"
        row = [t0.strftime("%Y-%m-%d %H:%M:%S"), t1.strftime("%Y-%m-%d %H:%M:%S"),
               f"{f.duration or 0:.3f}", f.src, f.dst, f.sport, f.dport, f.proto.upper(), flags,
               0, 0, f.orig_pkts, f.orig_bytes or 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "0.0.0.0",
               "0.0.0.0", 0, 0, "00:00:00:00:00:00", "00:00:00:00:00:00", "00:00:00:00:00:00",
               "00:00:00:00:00:00", *(["0-0-0"] * 10), "0.000", "0.000", "0.000", "10.0.0.254",
               "0/0", 1, t1.strftime("%Y-%m-%d %H:%M:%S")]
        if label:
            row.append("background" if f.attack is None else "attack")
        lines.append(",".join(map(str, row)))
    total = sum((f.orig_bytes or 0) for f in records)
    summary = ["Summary", "flows,bytes,packets,avg_bps,avg_pps,avg_bpp",
               f"{len(records)},{total},{sum(f.orig_pkts for f in records)},0,0,0"]
    header = ",".join(NFDUMP_FIELDS + (["label"] if label else []))
    path.write_text("\n".join([header, *lines, *summary]) + "\n")
    return path


def argus_csv(path: Path, records: list[_Flow]) -> Path:
    """`ra -c , -s stime dur proto saddr sport dir daddr dport state stos dtos pkts bytes
    sbytes` plus a label, the layout of CTU-13's binetflow files."""
    head = "StartTime,Dur,Proto,SrcAddr,Sport,Dir,DstAddr,Dport,State,sTos,dTos,TotPkts," \
           "TotBytes,SrcBytes,Label"
    lines = []
    for f in records:
        when = datetime.fromtimestamp(f.t, UTC).strftime("%Y/%m/%d %H:%M:%S.%f")
        label = "flow=Background-TCP-Established" if f.attack is None else \
            "flow=From-Botnet-V42-TCP-Attempt"
        lines.append(",".join(map(str, [
            when, f"{f.duration or 0:.6f}", f.proto, f.src, f.sport, "  ->", f.dst, f.dport,
            "S_" if f.attack == "scan" else "FSPA_FSPA", 0, 0 if f.resp_pkts else "",
            f.orig_pkts + f.resp_pkts, (f.orig_bytes or 0) + (f.resp_bytes or 0),
            f.orig_bytes or 0, label])))
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


def netflow_csv(path: Path, records: list[_Flow]) -> Path:
    """An nProbe NetFlow v9 export in the NF-* datasets' layout: `Label` 0/1 and `Attack`."""
    head = "IPV4_SRC_ADDR,L4_SRC_PORT,IPV4_DST_ADDR,L4_DST_PORT,PROTOCOL,L7_PROTO,IN_BYTES," \
           "OUT_BYTES,IN_PKTS,OUT_PKTS,TCP_FLAGS,FLOW_DURATION_MILLISECONDS,Label,Attack"
    lines = []
    for f in records:
        lines.append(",".join(map(str, [
            f.src, f.sport, f.dst, f.dport, 6 if f.proto == "tcp" else 17,
            7.0 if f.service == "http" else 0.0, f.orig_bytes or 0, f.resp_bytes or 0,
            f.orig_pkts, f.resp_pkts, 2 if f.attack == "scan" else 27,
            int((f.duration or 0) * 1000), int(f.attack is not None),
            "Benign" if f.attack is None else ("Reconnaissance" if f.attack == "scan" else
                                               "Backdoor")])))
    path.write_text("\n".join([head, *lines]) + "\n")
    return path


def write_corpus(root: Path, n: int = 120, seed: int = 0) -> dict[str, CorpusFile]:
    """Every format, each file `n` flows of the same synthetic traffic."""
    root.mkdir(parents=True, exist_ok=True)
    recs = flows(n, seed)
    zeek_labels = ["label", "detailed-label"]
    out = [
        CorpusFile("zeek-tsv", zeek_tsv(root / "conn.log", recs, labelled=False), n, [],
                   ZEEK_IDS, "id.orig_h", "zeek-conn"),
        CorpusFile("zeek-tsv-labelled", zeek_tsv(root / "conn.log.labeled", recs, labelled=True),
                   n, zeek_labels, ZEEK_IDS, "id.orig_h", "zeek-conn"),
        CorpusFile("zeek-json", zeek_json(root / "conn.json.log", recs), n, zeek_labels,
                   ZEEK_IDS, "id.orig_h", "zeek-conn"),
        CorpusFile("pipe", pipe_export(root / "flows.psv", recs), n, zeek_labels, ZEEK_IDS,
                   "id.orig_h"),
        CorpusFile("cic-2017", cicflowmeter(root / "cic2017.csv", recs, "2017"), n, ["Label"],
                   [c for c in CIC_IDS if c in _CIC_2017], "Source IP", "cicflowmeter"),
        CorpusFile("cic-v3", cicflowmeter(root / "cicv3.csv", recs, "v3"), n, ["Label"],
                   [c for c in CIC_IDS if c in _CIC_V3], "Src IP", "cicflowmeter"),
        CorpusFile("nfdump", nfdump_csv(root / "nfcapd.csv", recs), n, ["label"], NFDUMP_IDS,
                   "sa"),
        CorpusFile("argus", argus_csv(root / "capture.binetflow", recs), n, ["Label"],
                   ["StartTime", "SrcAddr", "Sport", "DstAddr", "Dport"], "SrcAddr"),
        CorpusFile("netflow", netflow_csv(root / "nf.csv", recs), n, ["Label", "Attack"],
                   ["IPV4_SRC_ADDR", "L4_SRC_PORT", "IPV4_DST_ADDR", "L4_DST_PORT"],
                   "IPV4_SRC_ADDR"),
    ]
    return {f.name: f for f in out}
