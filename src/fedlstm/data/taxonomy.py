"""One attack-family vocabulary for sites whose datasets name families differently.

Sites of a heterogeneous federation (`federation.networks` of different schemas) train one shared
head, so their families must mean the same thing. Each dataset's own families map onto this
taxonomy (docs/networks.md holds the table and the reasons); a site keeps its fine-grained
attack names in its records and reports.

| shared family | NSL-KDD / KDD99 | UNSW-NB15 | CIC-IDS2017 |
|---|---|---|---|
| normal | normal | normal | BENIGN |
| dos | dos | dos | DoS *, DDoS |
| probe | probe | reconnaissance, analysis (port scans, spam probing) | PortScan |
| remote-access | r2l | exploits, shellcode | Web Attack *, FTP-/SSH-Patator, Infiltration, Heartbleed |
| privilege-escalation | u2r | (none) | (none) |
| backdoor | (none) | backdoor, worms | Bot |
| other | (none) | generic, fuzzers | (none) |
"""

from __future__ import annotations

import numpy as np

from fedlstm.data.spec import NORMAL_FAMILY

SHARED_FAMILIES = [NORMAL_FAMILY, "dos", "probe", "remote-access", "privilege-escalation",
                   "backdoor", "other"]

# A dataset family (lower case) -> the shared family. Names are matched after lower-casing and
# on their first word ("dos hulk" -> "dos"), which covers CIC-IDS2017's labels.
_MAP = {
    NORMAL_FAMILY: NORMAL_FAMILY, "benign": NORMAL_FAMILY,
    "dos": "dos", "ddos": "dos",
    "probe": "probe", "reconnaissance": "probe", "analysis": "probe", "portscan": "probe",
    "r2l": "remote-access", "exploits": "remote-access", "shellcode": "remote-access",
    "web": "remote-access", "ftp-patator": "remote-access", "ssh-patator": "remote-access",
    "infiltration": "remote-access", "heartbleed": "remote-access",
    "u2r": "privilege-escalation",
    "backdoor": "backdoor", "backdoors": "backdoor", "worms": "backdoor", "bot": "backdoor",
    "generic": "other", "fuzzers": "other",
}


def shared_family(family: str) -> str:
    """The shared family of one dataset family; families nobody listed become `other`."""
    name = str(family).strip().lower()
    if name in _MAP:
        return _MAP[name]
    return _MAP.get(name.split()[0] if name else name, "other")


def to_shared(families: np.ndarray) -> np.ndarray:
    """`shared_family` over an array of family names (object array out)."""
    names, inverse = np.unique(np.asarray(families, dtype=object).astype(str), return_inverse=True)
    return np.array([shared_family(n) for n in names], dtype=object)[inverse.ravel()]
