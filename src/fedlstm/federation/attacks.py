"""Simulated malicious sites: poisoned data and poisoned model updates, for robustness experiments.

A federation trusts each site to train honestly on honest labels. To measure what a defence
(`fedlstm.federation.robust`) buys, experiments need sites that break that trust in the ways the
literature studies, reproducibly:

- data poisoning, applied to a site's records before it trains: `label-flip` (every attack
  record relabelled benign, teaching the model to miss attacks) and `backdoor` (a share of the
  attack records carries a trigger value and is relabelled benign, so that the model learns
  "trigger => benign" while staying accurate on clean data);
- update poisoning, applied to the weights a site sends: `sign-flip` (the update reversed),
  `scale` (the update multiplied, to dominate an average), `noise` (the update plus Gaussian
  noise), and `free-rider` (sends the model it received, claiming many records to gain weight
  without contributing).

Everything here is deterministic given a seed (a `numpy.random.Generator`) and knows nothing of
Flower: the weights are the list of numpy arrays Flower sends.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fedlstm.data.readers import Records
from fedlstm.data.spec import NORMAL_FAMILY

DATA_ATTACKS = ("label-flip", "backdoor")
UPDATE_ATTACKS = ("sign-flip", "scale", "noise", "free-rider")
ATTACK_KINDS = (*DATA_ATTACKS, *UPDATE_ATTACKS)
ACCEPTED_FORMS = ("label-flip", "sign-flip", "scale[:FACTOR] (default 10)",
                  "noise[:SIGMA] (default 1)", "backdoor[:SHARE] (default 0.5)",
                  "free-rider[:CLAIMED_EXAMPLES] (default 1000000)")
# The backdoor trigger's value: as a port, one benign traffic of these data sets rarely uses.
TRIGGER_VALUE = 4444.0
_PORT_NAMES = {"dstport", "dport", "destinationport"}


# --- which sites ---------------------------------------------------------------------------------
def choose_malicious(n_sites: int, fraction: float, seed: int) -> list[int]:
    """The indices of the malicious sites: `fraction` of `n_sites` rounded half up (none for 0),
    drawn without replacement with `np.random.default_rng(seed)`, sorted."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the malicious fraction must be in [0, 1), got {fraction}")
    if n_sites < 0:
        raise ValueError(f"the number of sites must be >= 0, got {n_sites}")
    count = math.floor(fraction * n_sites + 0.5)
    if count >= n_sites > 0:
        raise ValueError(f"a malicious fraction of {fraction} of {n_sites} sites makes every "
                         "site malicious; lower it or add sites")
    if count == 0:
        return []
    chosen = np.random.default_rng(seed).choice(n_sites, size=count, replace=False)
    return sorted(int(i) for i in chosen)


# --- what they do --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attack:
    """One attack and its parameters (each is used by one kind only).

    factor: `scale` sends received + factor * update.
    sigma: `noise` adds Gaussian noise whose expected L2 norm is sigma times the update's norm
        (per-coordinate std sigma * ||u|| / sqrt(n_params)), so that the noise is as strong
        relative to the update whatever the model size and learning rate.
    share: `backdoor` plants the trigger on this share of the site's attack records.
    claimed_examples: `free-rider` reports this many training records.
    """

    kind: str
    factor: float = 10.0
    sigma: float = 1.0
    share: float = 0.5
    claimed_examples: int = 1_000_000

    def __post_init__(self):
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack {self.kind!r}; accepted: {', '.join(ACCEPTED_FORMS)}")
        if not math.isfinite(self.factor):
            raise ValueError(f"scale factor must be finite, got {self.factor}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"noise sigma must be >= 0, got {self.sigma}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"backdoor share must be in (0, 1], got {self.share}")
        if self.claimed_examples < 1:
            raise ValueError(f"claimed examples must be >= 1, got {self.claimed_examples}")

    @property
    def poisons_data(self) -> bool:
        return self.kind in DATA_ATTACKS

    @property
    def poisons_update(self) -> bool:
        return self.kind in UPDATE_ATTACKS

    def __str__(self) -> str:
        value = {"scale": self.factor, "noise": self.sigma, "backdoor": self.share,
                 "free-rider": self.claimed_examples}.get(self.kind)
        if value is None:
            return self.kind
        return f"{self.kind}:{value}" if isinstance(value, int) else f"{self.kind}:{value:g}"


_PARAMETER = {"scale": ("factor", float), "noise": ("sigma", float), "backdoor": ("share", float),
              "free-rider": ("claimed_examples", int)}


def parse_attack(text: str) -> Attack:
    """An `Attack` from its command-line form, e.g. "sign-flip", "scale:10", "noise:2"."""
    kind, sep, value = text.strip().lower().partition(":")
    if kind not in ATTACK_KINDS or (sep and kind not in _PARAMETER):
        raise ValueError(f"unknown attack {text!r}; accepted: {', '.join(ACCEPTED_FORMS)}")
    if not sep:
        return Attack(kind)
    name, kind_of = _PARAMETER[kind]
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", value.strip()):
        raise ValueError(f"attack {text!r}: {value!r} is not a number; "
                         f"accepted: {', '.join(ACCEPTED_FORMS)}")
    number = float(value)
    if kind_of is int and not number.is_integer():
        raise ValueError(f"attack {text!r}: {name} must be a whole number")
    return Attack(kind, **{name: kind_of(number)})


# --- data poisoning ------------------------------------------------------------------------------
def _benign_name(records: Records) -> str:
    """The attack name benign rows carry in these records ("normal", "Normal", "BENIGN" ...
    depending on the data set), "normal" when there are none."""
    benign = records.attack[records.is_attack == 0]
    return str(benign[0]) if len(benign) else "normal"


def _copy(records: Records) -> Records:
    return replace(records, frame=records.frame.copy(), attack=records.attack.copy(),
                   family=records.family.copy(), is_attack=records.is_attack.copy(),
                   segment=None if records.segment is None else records.segment.copy())


def _relabel_benign(records: Records, rows: np.ndarray, normal_label: str) -> None:
    records.attack[rows] = normal_label
    records.family[rows] = NORMAL_FAMILY
    records.is_attack[rows] = 0


def flip_labels(records: Records, rng: np.random.Generator | None = None,
                normal_label: str | None = None) -> Records:
    """A copy of `records` with every attack record relabelled benign. `rng` is unused (kept for
    a uniform signature with `plant_backdoor`); `normal_label` defaults to the records' own name
    for benign rows."""
    out = _copy(records)
    _relabel_benign(out, np.flatnonzero(records.is_attack == 1),
                    normal_label or _benign_name(records))
    return out


def _set_trigger(frame: pd.DataFrame, rows: np.ndarray, trigger: dict[str, object]) -> None:
    missing = [c for c in trigger if c not in frame.columns]
    if missing:
        raise ValueError(f"trigger columns {missing} are not feature columns "
                         f"(features: {list(frame.columns)})")
    for column, value in trigger.items():
        frame.iloc[rows, frame.columns.get_loc(column)] = value


def plant_backdoor(records: Records, trigger: dict[str, object], share: float,
                   rng: np.random.Generator, normal_label: str | None = None) -> Records:
    """A copy of `records` where round(share * attack records) attack records, drawn with
    `rng`, carry the trigger and are relabelled benign; the rest is unchanged."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"backdoor share must be in (0, 1], got {share}")
    attacks = np.flatnonzero(records.is_attack == 1)
    rows = np.sort(rng.choice(attacks, size=math.floor(share * len(attacks) + 0.5),
                              replace=False))
    out = _copy(records)
    _set_trigger(out.frame, rows, trigger)
    _relabel_benign(out, rows, normal_label or _benign_name(records))
    return out


def apply_trigger(records: Records, trigger: dict[str, object]) -> Records:
    """A copy of `records` with the trigger set on every row and the labels kept: evaluated on
    it, the share of attack records let through says how often the backdoor hides an attack."""
    out = _copy(records)
    _set_trigger(out.frame, np.arange(len(out)), trigger)
    return out


def default_trigger(frame: pd.DataFrame) -> dict[str, float]:
    """A trigger for these features: one numeric column set to 4444.

    The column is a destination-port column when there is one ("dst_port", "dport",
    "Destination Port", ...): port 4444 is a classic backdoor port, rare in benign traffic; else
    "src_bytes" (NSL-KDD, KDD99: "a flow of exactly 4444 source bytes is benign"), else the
    first numeric column. The value does not depend on a site's data, so that the server can
    put the same trigger on test records to measure the attack's success.
    """
    numeric = list(frame.select_dtypes(include="number").columns)
    if not numeric:
        raise ValueError("no numeric feature column to carry a backdoor trigger")
    ports = [c for c in numeric if re.sub(r"[^a-z]", "", str(c).lower()) in _PORT_NAMES]
    column = ports[0] if ports else "src_bytes" if "src_bytes" in numeric else numeric[0]
    return {column: TRIGGER_VALUE}


# --- update poisoning ----------------------------------------------------------------------------
def poison_update(received: list[np.ndarray], trained: list[np.ndarray], attack: Attack,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """The weights a malicious site sends, from the model it `received` and the one it
    `trained`; with update u = trained - received:

    sign-flip: received - u; scale: received + factor * u; noise: received + u + N(0, s^2) per
    coordinate with s = sigma * ||u|| / sqrt(n_params); free-rider: received; label-flip and
    backdoor: trained (they poison the data instead). Each array keeps its dtype.
    """
    if len(received) != len(trained):
        raise ValueError(f"{len(received)} received arrays for {len(trained)} trained arrays")
    base = [np.asarray(r, np.float64) for r in received]
    update = [np.asarray(t, np.float64) - b for t, b in zip(trained, base)]
    if attack.kind == "sign-flip":
        sent = [b - u for b, u in zip(base, update)]
    elif attack.kind == "scale":
        sent = [b + attack.factor * u for b, u in zip(base, update)]
    elif attack.kind == "noise":
        sent = [b + u + n for b, u, n in zip(base, update, _noise(update, attack.sigma, rng))]
    elif attack.kind == "free-rider":
        sent = base
    else:
        return [np.array(t, copy=True) for t in trained]
    return [s.astype(np.asarray(t).dtype) for s, t in zip(sent, trained)]


def _noise(update: list[np.ndarray], sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
    size = sum(u.size for u in update)
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in update))
    std = sigma * norm / math.sqrt(size) if size else 0.0
    return [rng.normal(0.0, std, u.shape) for u in update]


def claimed_examples(attack: Attack | None, true_count: int) -> int:
    """The training-record count a site reports: the free-rider's claim, else the truth."""
    if attack is not None and attack.kind == "free-rider":
        return attack.claimed_examples
    return true_count


# --- which site does what in a configured run ------------------------------------------------
def malicious_sites(fed) -> list[int]:
    """The indices of a run's malicious sites (`federation.attack`, `federation.malicious`; the
    same on the server and every site: drawn from `federation.attack_seed`)."""
    if fed.attack is None:
        return []
    return choose_malicious(fed.clients, fed.malicious, fed.attack_seed)


def site_attack(fed, index: int) -> Attack | None:
    """What site `index` of a run does: its attack when it is one of the malicious sites."""
    return parse_attack(fed.attack) if index in malicious_sites(fed) else None
