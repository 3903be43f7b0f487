"""A common flow vocabulary: the same few features for every schema, with fixed transforms.

Sites of a federation log flows in different schemas (NSL-KDD/KDD Cup 99, UNSW-NB15, Zeek
conn.log, CICFlowMeter), so their fitted features (`FlowPreprocessor`) mean different things and
no two sites share a feature column. `harmonised` maps each schema's columns onto one fixed
vector (`COMMON_FEATURES`) that means the same at every site. Its transforms are constants (log
scales with fixed ceilings, fixed one-hot classes), never fitted statistics, so every site computes
it identically without sharing anything; `HarmonisedPreprocessor` puts it in front of a site's own
features.

| concept | transform | NSL-KDD / KDD99 | UNSW-NB15 | Zeek conn.log | CICFlowMeter |
|---|---|---|---|---|---|
| duration (s) | log1p(s) / log1p(86400), clipped to [0, 1] | `duration` | `dur` | `duration` | `Flow Duration` (µs, / 1e6) |
| bytes out (orig -> resp) | log1p(x) / log1p(1e10), clipped | `src_bytes` | `sbytes` | `orig_bytes` | `Total Length of Fwd Packets` |
| bytes in (resp -> orig) | log1p(x) / log1p(1e10), clipped | `dst_bytes` | `dbytes` | `resp_bytes` | `Total Length of Bwd Packets` |
| packets out | log1p(x) / log1p(1e8), clipped; absent: 0 | - | `spkts` | `orig_pkts` | `Total Fwd Packets` |
| packets in | log1p(x) / log1p(1e8), clipped; absent: 0 | - | `dpkts` | `resp_pkts` | `Total Backward Packets` |
| has_packets | 1 where the schema has packet counts, else 0 | 0 | 1 | 1 | 1 |
| protocol | one-hot tcp, udp, icmp, other (names or IANA numbers 6, 17, 1, 58) | `protocol_type` | `proto` | `proto` | `Protocol` (a number; absent in CIC-IDS2017's ML CSVs) |
| service class | one-hot web, dns, mail, file, remote, other | `service` | `service` | `service` | from `Dst Port` (`Destination Port`) |
| connection state class | one-hot completed, rejected, reset, attempt, other | `flag` | `state` | `conn_state` | - (other) |

A schema without a concept's column gets 0 for a number and "other" for a class, so every
one-hot block sums to 1 in each row. A schema with none of duration, bytes and protocol cannot be
harmonised (`mapping_for` raises ValueError naming it). Columns are found by name ignoring case,
spaces and punctuation (`flowschemas.normalized`), so CICFlowMeter-V3's spellings
(`Tot Fwd Pkts`) and the Python port's (`tot_fwd_pkts`) are found too.

Numbers: missing, non-numeric, non-finite (CICFlowMeter's 'Infinity') and negative values are
read as 0: a broken count says nothing about size, and 0 keeps the vector inside [0, 1].

Service classes, from service names (compared lower-case; Zeek's 'ssl,http' by its first name):
web = http* (http, http_443, http_8001, ...), https, ssl, tls, www, quic; dns = domain, domain_u,
dns, mdns; mail = smtp, pop_2, pop_3, pop3, imap, imap4, imaps, pop3s, smtps; file = ftp,
ftp_data, ftp-data, tftp, tftp_u, sftp; remote = ssh, telnet, login, klogin, kshell, shell,
exec, rlogin, rsh, rdp, vnc, supdup, x11, remote_job; anything else ('-', 'private', 'other',
'eco_i', ...) is other. From destination ports (only where the schema has no service column):
80/443/8080 web, 53 dns, 25/110/143/465/587/993/995 mail, 20/21/69 file, 22/23/3389 remote.

Connection states: completed = SF, S1, S2, S3 (KDD/Zeek) and FIN, CON, CLO, ACC (UNSW, Argus
states); rejected = REJ; reset = RSTO, RSTR, RSTOS0, RSTRH, and UNSW's RST; attempt (no reply) =
S0, SH, SHR, OTH and UNSW's INT, REQ; anything else is other.

A destination port is an identifier (`ignore`d) in the Zeek and CICFlowMeter schemas, so
`Records.frame` (feature columns only) does not hold it: a frame without the port column reads
as service "other". Pass frames of one kind (with or without the port) for training and scoring.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedlstm.data.flowschemas import normalized
from fedlstm.data.spec import DatasetSpec
from fedlstm.features.preprocessor import FlowPreprocessor

# Fixed ceilings of the log scales: a day of duration, 10 GB, 100 million packets. Larger values
# clip to 1; fixed (not fitted) so that every site scales identically.
MAX_SECONDS = 86_400.0
MAX_BYTES = 1e10
MAX_PACKETS = 1e8

PROTOCOLS = ["tcp", "udp", "icmp", "other"]
SERVICES = ["web", "dns", "mail", "file", "remote", "other"]
STATES = ["completed", "rejected", "reset", "attempt", "other"]

COMMON_FEATURES: list[str] = [
    "duration", "bytes_out", "bytes_in", "packets_out", "packets_in", "has_packets",
    *(f"proto_{p}" for p in PROTOCOLS),
    *(f"service_{s}" for s in SERVICES),
    *(f"state_{s}" for s in STATES),
]

# Concept -> the column names it goes by in the supported schemas (compared `normalized`), each
# with the factor that turns its unit into the concept's (CICFlowMeter durations are in µs).
_CANDIDATES: dict[str, list[tuple[str, float]]] = {
    "duration": [("duration", 1.0), ("dur", 1.0), ("Flow Duration", 1e-6)],
    "bytes_out": [("src_bytes", 1.0), ("sbytes", 1.0), ("orig_bytes", 1.0),
                  ("Total Length of Fwd Packets", 1.0), ("TotLen Fwd Pkts", 1.0)],
    "bytes_in": [("dst_bytes", 1.0), ("dbytes", 1.0), ("resp_bytes", 1.0),
                 ("Total Length of Bwd Packets", 1.0), ("TotLen Bwd Pkts", 1.0)],
    "packets_out": [("spkts", 1.0), ("orig_pkts", 1.0), ("Total Fwd Packets", 1.0),
                    ("Tot Fwd Pkts", 1.0)],
    "packets_in": [("dpkts", 1.0), ("resp_pkts", 1.0), ("Total Backward Packets", 1.0),
                   ("Tot Bwd Pkts", 1.0)],
    "protocol": [("protocol_type", 1.0), ("proto", 1.0), ("Protocol", 1.0)],
    "service": [("service", 1.0)],
    "dst_port": [("id.resp_p", 1.0), ("Dst Port", 1.0), ("Destination Port", 1.0)],
    "state": [("flag", 1.0), ("state", 1.0), ("conn_state", 1.0)],
}
CONCEPTS = list(_CANDIDATES)
_REQUIRED = ("duration", "bytes_out", "bytes_in", "protocol")

_PROTOCOL_CLASS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp",
                   # Zeek says icmp for ICMPv6 too; other tools name it apart.
                   "icmp6": "icmp", "icmpv6": "icmp", "ipv6-icmp": "icmp", "58": "icmp"}
_SERVICE_CLASS = {
    **dict.fromkeys(["https", "ssl", "tls", "www", "quic"], "web"),
    **dict.fromkeys(["domain", "domain_u", "dns", "mdns"], "dns"),
    **dict.fromkeys(["smtp", "pop_2", "pop_3", "pop3", "imap", "imap4", "imaps", "pop3s", "smtps"],
                    "mail"),
    **dict.fromkeys(["ftp", "ftp_data", "ftp-data", "tftp", "tftp_u", "sftp"], "file"),
    **dict.fromkeys(["ssh", "telnet", "login", "klogin", "kshell", "shell", "exec", "rlogin",
                     "rsh", "rdp", "vnc", "supdup", "x11", "remote_job"], "remote"),
}
_PORT_CLASS = {
    **dict.fromkeys([80, 443, 8080], "web"),
    53: "dns",
    **dict.fromkeys([25, 110, 143, 465, 587, 993, 995], "mail"),
    **dict.fromkeys([20, 21, 69], "file"),
    **dict.fromkeys([22, 23, 3389], "remote"),
}
_STATE_CLASS = {
    # S1-S3: the handshake completed and the responder answered, only the close was not seen:
    # the same as UNSW's CON (connected, not closed), which is counted as completed.
    **dict.fromkeys(["SF", "S1", "S2", "S3"], "completed"),
    # UNSW-NB15's states are Argus's: FIN (TCP closed by FIN: 48% of its test partition) and CON
    # (both directions seen, mostly UDP: 8%) are finished exchanges; CLO (closed) and ACC
    # (accepted: SYN-ACK seen; 5 rows) likewise had an answer.
    **dict.fromkeys(["FIN", "CON", "CLO", "ACC"], "completed"),
    "REJ": "rejected",
    # Argus's RST says a reset was seen, not when; UNSW's one RST row exchanged data (6 and 2
    # packets) before it, i.e. a reset connection rather than a rejected attempt (KDD's REJ: SYN
    # answered by RST, no data).
    **dict.fromkeys(["RSTO", "RSTR", "RSTOS0", "RSTRH", "RST"], "reset"),
    # INT (only the originator's direction seen: 41%, mostly UDP) and REQ (request, no reply)
    # are unanswered attempts, as Zeek/KDD's S0 and the half-seen SH, SHR, OTH.
    **dict.fromkeys(["S0", "SH", "SHR", "OTH", "INT", "REQ"], "attempt"),
}


def _match(spec: DatasetSpec) -> dict[str, tuple[str, float] | None]:
    """Concept -> (the spec's column, unit factor), None where the schema lacks the concept."""
    excluded = {spec.label, spec.family_column}
    by_name = {}
    for c in spec.columns:  # identifiers (ports) count too: the frame may hold them
        if c not in excluded:
            by_name.setdefault(normalized(c), c)
    found: dict[str, tuple[str, float] | None] = {}
    for concept, candidates in _CANDIDATES.items():
        found[concept] = next(((by_name[normalized(name)], factor) for name, factor in candidates
                               if normalized(name) in by_name), None)
    if not any(found[c] for c in _REQUIRED):
        hint = (" (its columns come from a file's header: resolve it on one first, "
                "`flowschemas.resolve_spec`)") if not spec.columns else ""
        raise ValueError(f"schema {spec.name!r} cannot be harmonised: it has none of duration, "
                         f"bytes or protocol{hint}; columns: {spec.columns}")
    return found


def mapping_for(spec: DatasetSpec) -> dict[str, str | None]:
    """Common concept -> the spec's column (None where the schema lacks it), for every concept of
    `CONCEPTS`. Raises ValueError naming the schema when it has none of duration/bytes/protocol."""
    return {concept: (m[0] if m else None) for concept, m in _match(spec).items()}


def _numbers(values: pd.Series) -> np.ndarray:
    """Float64 values; missing, non-numeric, non-finite and negative ones read as 0."""
    # A copy: pandas may hand out a read-only view of the frame's own data (copy-on-write).
    x = np.array(pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan))
    x[~np.isfinite(x) | (x < 0)] = 0.0
    return x


def _log_scaled(x: np.ndarray, ceiling: float) -> np.ndarray:
    return np.clip(np.log1p(x) / np.log1p(ceiling), 0.0, 1.0)


def _class_codes(values: pd.Series, classify, classes: list[str]) -> np.ndarray:
    """Index into `classes` per row: each distinct value is classified once (few distinct)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    other = classes.index("other")
    table = np.array([classes.index(classify(v)) for v in uniques] + [other], np.int64)
    return table[codes]  # the sentinel -1 (missing) picks the appended "other"


def _protocol(value) -> str:
    text = str(value).strip().lower()
    try:  # IANA numbers, possibly read as floats ("6.0")
        number = float(text)
        text = str(int(number)) if number.is_integer() else text
    except ValueError:
        pass
    return _PROTOCOL_CLASS.get(text, "other")


def _service(value) -> str:
    text = str(value).strip().lower().split(",")[0].strip()  # Zeek: 'ssl,http'
    if text.startswith("http"):  # KDD's http_443, http_8001, http_2784
        return "web"
    return _SERVICE_CLASS.get(text, "other")


def _state(value) -> str:
    return _STATE_CLASS.get(str(value).strip().upper(), "other")


def _port_codes(values: pd.Series) -> np.ndarray:
    ports = _numbers(values)
    codes = np.full(len(ports), SERVICES.index("other"), np.int64)
    for port, cls in _PORT_CLASS.items():
        codes[ports == port] = SERVICES.index(cls)
    return codes


def _onehot(codes: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float64)[codes]


def harmonised(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """The common features (`COMMON_FEATURES`) of each row: float32, shape (len(frame), n), every
    value in [0, 1], no NaN. Columns of the mapping must be in `frame`, except a destination port
    (an identifier the readers leave out), whose absence reads as service "other"."""
    found = _match(spec)
    n = len(frame)

    def column(concept: str) -> tuple[pd.Series, float] | None:
        m = found[concept]
        if m is None:
            return None
        name, factor = m
        if name not in frame.columns:
            if concept == "dst_port":
                return None
            raise ValueError(f"frame lacks column {name!r} ({concept}) of schema {spec.name!r}")
        return frame[name], factor

    blocks = []
    for concept, ceiling in (("duration", MAX_SECONDS), ("bytes_out", MAX_BYTES),
                             ("bytes_in", MAX_BYTES), ("packets_out", MAX_PACKETS),
                             ("packets_in", MAX_PACKETS)):
        col = column(concept)
        x = np.zeros(n) if col is None else _numbers(col[0]) * col[1]
        blocks.append(_log_scaled(x, ceiling)[:, None])
    has_packets = found["packets_out"] is not None or found["packets_in"] is not None
    blocks.append(np.full((n, 1), float(has_packets)))

    col = column("protocol")
    codes = (np.full(n, PROTOCOLS.index("other")) if col is None
             else _class_codes(col[0], _protocol, PROTOCOLS))
    blocks.append(_onehot(codes, len(PROTOCOLS)))

    col, port = column("service"), column("dst_port")
    if col is not None:
        codes = _class_codes(col[0], _service, SERVICES)
    elif port is not None:
        codes = _port_codes(port[0])
    else:
        codes = np.full(n, SERVICES.index("other"))
    blocks.append(_onehot(codes, len(SERVICES)))

    col = column("state")
    codes = np.full(n, STATES.index("other")) if col is None else _class_codes(col[0], _state, STATES)
    blocks.append(_onehot(codes, len(STATES)))
    return np.concatenate(blocks, axis=1).astype(np.float32)


class HarmonisedPreprocessor:
    """A site's FlowPreprocessor with the common features in front:
    transform(frame) = concat([harmonised(frame, spec), pre.transform(frame)], axis=1)."""

    def __init__(self, preprocessor: FlowPreprocessor, spec: DatasetSpec):
        mapping_for(spec)  # a schema that cannot be harmonised fails here, not at first transform
        self.preprocessor = preprocessor
        self.spec = spec
        self.n_common = len(COMMON_FEATURES)

    @property
    def n_features_out(self) -> int:
        return self.n_common + self.preprocessor.n_features_out

    @property
    def numeric_columns(self) -> list[str]:
        return self.preprocessor.numeric_columns

    @property
    def categorical_columns(self) -> list[str]:
        return self.preprocessor.categorical_columns

    @property
    def categories_(self) -> dict[str, list[str]]:
        return self.preprocessor.categories_

    @property
    def feature_names_out_(self) -> list[str]:
        return [f"common:{c}" for c in COMMON_FEATURES] + list(self.preprocessor.feature_names_out_)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return np.concatenate([harmonised(frame, self.spec),
                               np.asarray(self.preprocessor.transform(frame), np.float32)],
                              axis=1)

    def to_dict(self) -> dict:
        # The vocabulary travels with the state: a bundle made under another one is refused.
        return {"common_features": list(COMMON_FEATURES),
                "preprocessor": self.preprocessor.to_dict(), "spec": self.spec.model_dump()}

    @classmethod
    def from_dict(cls, d: dict) -> HarmonisedPreprocessor:
        if list(d["common_features"]) != COMMON_FEATURES:
            raise ValueError("the preprocessor was saved with another common vocabulary: "
                             f"{d['common_features']}; this version has {COMMON_FEATURES}")
        return cls(FlowPreprocessor.from_dict(d["preprocessor"]),
                   DatasetSpec.model_validate(d["spec"]))
