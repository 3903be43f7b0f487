"""The built-in benchmark datasets (NSL-KDD, KDD Cup 99, UNSW-NB15), and `get_spec`, which finds
any schema by name: a benchmark, a built-in flow-log schema or a TOML file."""

from __future__ import annotations

from fedlstm.data import flowschemas
from fedlstm.data.spec import NORMAL_FAMILY, DatasetSpec, FileSpec

KDD_FEATURES = [
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
]
KDD_CATEGORICAL = ["protocol_type", "service", "flag"]

# Attack name -> family, including the 17 attack types that occur only in the test sets
# (NSL-KDD KDDTest+ and KDD99 'corrected'). Follows the MIT Lincoln Lab categories.
_KDD_FAMILY_MEMBERS = {
    "dos": ["back", "land", "neptune", "pod", "smurf", "teardrop", "apache2", "mailbomb",
            "processtable", "udpstorm"],
    "probe": ["ipsweep", "nmap", "portsweep", "satan", "mscan", "saint"],
    "r2l": ["ftp_write", "guess_passwd", "imap", "multihop", "phf", "spy", "warezclient",
            "warezmaster", "named", "sendmail", "snmpgetattack", "snmpguess", "worm", "xlock",
            "xsnoop"],
    "u2r": ["buffer_overflow", "loadmodule", "perl", "rootkit", "httptunnel", "ps", "sqlattack",
            "xterm"],
}
KDD_FAMILIES = {attack: fam for fam, attacks in _KDD_FAMILY_MEMBERS.items() for attack in attacks}

NSL_KDD = DatasetSpec(
    name="nsl-kdd",
    folder="nsl-kdd",
    title="NSL-KDD (Network A)",
    columns=[*KDD_FEATURES, "label", "difficulty"],
    categorical=KDD_CATEGORICAL,
    label="label",
    ignore=["difficulty"],  # how many of 21 learners got the record wrong: not a traffic feature
    families=KDD_FAMILIES,
    family_order=[NORMAL_FAMILY, "dos", "probe", "r2l", "u2r"],
    order_note="rows are shuffled: a window of consecutive records is a bag of unrelated connections",
    files=[
        FileSpec(role="train", name="KDDTrain+.txt", rows=125_973,
                 sha256="1b86d2f957b33082081bba410fe129b475efebcc13c9014c3f447c8271aadf95"),
        FileSpec(role="test", name="KDDTest+.txt", rows=22_544,
                 sha256="fa46b0935342616aa83b7c2578db355b6a7aaabbc492248172c7a1e8b7ab8f84"),
        FileSpec(role="test-21", name="KDDTest-21.txt", rows=11_850,
                 sha256="746993ac9e25868827cacf09eab450050a2a1056e1ce48a1ad39f5dc801d531d"),
        FileSpec(role="train-20", name="KDDTrain+_20Percent.txt", rows=25_192,
                 sha256="7ea86479faab5ca2190b7f18b4982fb058ce5bf2b46e0e1017d0d9ef90f9c16e"),
    ],
)
# The University of New Brunswick serves NSL-KDD behind a registration form; the files are
# mirrored verbatim (same sha256) in the dataset authors' public repository.
_NSL_BASE = "https://raw.githubusercontent.com/defcom17/NSL_KDD/master/"
for _f in NSL_KDD.files:
    _f.url = _NSL_BASE + _f.name

KDD99 = DatasetSpec(
    name="kdd99",
    folder="kddcup99",
    title="KDD Cup 1999 (Network B)",
    columns=[*KDD_FEATURES, "label"],
    categorical=KDD_CATEGORICAL,
    label="label",
    label_suffix=".",
    families=KDD_FAMILIES,
    family_order=[NORMAL_FAMILY, "dos", "probe", "r2l", "u2r"],
    order_note="capture order: long runs of one attack, so windows see real temporal context",
    files=[
        FileSpec(role="train", name="kddcup.data_10_percent.gz",
                 alternatives=["kddcup.data_10_percent", "kddcup.data_10_percent.txt"], rows=494_021,
                 sha256="8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561",
                 url="http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz"),
        FileSpec(role="test", name="corrected.gz", alternatives=["corrected", "corrected.txt"],
                 rows=311_029,
                 sha256="74f0daef49b242badc09f2adbd457dea6a45b4f77177efbd11216d333651044b",
                 url="http://kdd.ics.uci.edu/databases/kddcup99/corrected.gz"),
    ],
)

UNSW_COLUMNS = [
    "id", "dur", "proto", "service", "state", "spkts", "dpkts", "sbytes", "dbytes", "rate",
    "sttl", "dttl", "sload", "dload", "sloss", "dloss", "sinpkt", "dinpkt", "sjit", "djit", "swin",
    "stcpb", "dtcpb", "dwin", "tcprtt", "synack", "ackdat", "smean", "dmean", "trans_depth",
    "response_body_len", "ct_srv_src", "ct_state_ttl", "ct_dst_ltm", "ct_src_dport_ltm",
    "ct_dst_sport_ltm", "ct_dst_src_ltm", "is_ftp_login", "ct_ftp_cmd", "ct_flw_http_mthd",
    "ct_src_ltm", "ct_srv_dst", "is_sm_ips_ports", "attack_cat", "label",
]
UNSW_FAMILIES = ["Analysis", "Backdoor", "DoS", "Exploits", "Fuzzers", "Generic",
                 "Reconnaissance", "Shellcode", "Worms"]
_UNSW_BASE = "https://research.unsw.edu.au/sites/default/files/documents/"

UNSW_NB15 = DatasetSpec(
    name="unsw-nb15",
    folder="unsw-nb15",
    title="UNSW-NB15 (Network C)",
    columns=UNSW_COLUMNS,
    categorical=["proto", "service", "state"],
    label="label",
    ignore=["id"],  # row number: sorted by class, so it would leak the label
    has_header=True,
    normal_labels=["Normal"],
    family_column="attack_cat",
    families={f: f.lower() for f in UNSW_FAMILIES},
    family_order=[NORMAL_FAMILY, *(f.lower() for f in UNSW_FAMILIES)],
    order_note="the partitions are sorted by class: file-order windows are nearly pure by class",
    identify_by_rows=True,
    files=[
        # The two partitions circulate under swapped names, so a file's role is decided by its
        # row count, never by its name.
        FileSpec(role="train", name="UNSW_NB15_training-set.csv",
                 alternatives=["UNSW_NB15_testing-set.csv"], rows=175_341,
                 url=_UNSW_BASE + "UNSW_NB15_training-set.csv"),
        FileSpec(role="test", name="UNSW_NB15_testing-set.csv",
                 alternatives=["UNSW_NB15_training-set.csv"], rows=82_332,
                 sha256="734fe6642edf758f7c94d7d9149426b49d202fe8e7bf0bef47392489c3c0a559",
                 url=_UNSW_BASE + "UNSW_NB15_testing-set.csv"),
    ],
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (NSL_KDD, KDD99, UNSW_NB15)}
ALIASES = {"nslkdd": "nsl-kdd", "kdd": "kdd99", "kddcup99": "kdd99", "unsw": "unsw-nb15",
           "unswnb15": "unsw-nb15"}


def get_spec(name: str) -> DatasetSpec:
    """A built-in dataset or flow-log schema by name, or a custom schema from a .toml file."""
    if name.lower().endswith(".toml"):
        return flowschemas.load_schema(name)
    key = ALIASES.get(name.lower(), name.lower())
    if key in flowschemas.FLOW_SCHEMAS:
        return flowschemas.FLOW_SCHEMAS[key]
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}, "
                       f"{', '.join(flowschemas.FLOW_SCHEMAS)} or a schema .toml file")
    return DATASETS[key]
