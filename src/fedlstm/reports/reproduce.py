"""`fedlstm reproduce`: every dataset x method x protocol of the paper, one cached step at a time.

Each step (dataset, protocol, method, seed) writes `steps/<key>.json` when it finishes; a rerun
reuses a finished step only when its fingerprint still matches: the profile, a hash of the
step's resolved configuration, the fedlstm version, commit and source, and the sha256 of every
data file it reads. Anything else is stale and is computed again (never relabelled), so an
interrupted reproduction resumes where it stopped and a report never mixes profiles, code or
data. The report is assembled from the current steps' files only (`reports.report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path

from threadpoolctl import threadpool_limits

import fedlstm
from fedlstm import __version__, signals
from fedlstm.config import DataConfig, RunConfig, load_config, with_dataset_defaults
from fedlstm.data.fetch import FetchError, fetch_dataset
from fedlstm.data.readers import remember_reads, remembered_reads
from fedlstm.data.registry import (
    DEFAULT_DATA,
    DatasetCorrupt,
    DatasetNotFound,
    available_roles,
    data_dir,
    file_sha256,
    locate,
)
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split
from fedlstm.detection import ModelBundle
from fedlstm.detection.classical import CLASSICAL
from fedlstm.federation.audit import RunInterrupted
from fedlstm.federation.simulation import one_ray_runtime, run_federated
from fedlstm.reports import communication, networks, robustness
from fedlstm.reports.report import write_report
from fedlstm.runs.rundir import git_commit, roc_points
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

log = logging.getLogger(__name__)

NEURAL = ("lstm", "rnn", "cnn")
METHODS = ("lstm", "fed-lstm", "rnn", "cnn", "svm", "ae-ocsvm", "hgb", "rf", "logreg")
NETWORKS = networks.LETTERS


@dataclass(frozen=True)
class Profile:
    """How much of the data and training a reproduction uses. A setting left None is the
    dataset's default (`config.DATASET_DEFAULTS`), what `fedlstm train|federate` use."""
    name: str
    max_train_rows: int | None
    max_test_rows: int | None
    clients: int
    seeds: tuple[int, ...]
    epochs: int | None = None
    rounds: int | None = None
    local_epochs: int | None = None
    hidden_size: int | None = None
    window: int | None = None
    detector: str = "hybrid"  # the (Fed-)LSTM rows: the product's detector
    headline_seeds_only: tuple[str, ...] = ()  # methods run with every seed; others with the first
    all_seeds_first_protocol_only: bool = False  # repeat seeds under each dataset's main protocol
    fed_first_protocol_only: bool = False  # Fed-LSTM under one protocol per dataset (quick)
    comm_modes: tuple[str, ...] = tuple(communication.MODES)  # the communication study's modes
    comm_datasets: tuple[str, ...] = communication.DATASETS  # ... and datasets
    robust_attacks: tuple[str, ...] = robustness.STUDY_ATTACKS  # the robustness study's attacks
    robust_clients: int = 10  # its sites
    note: str = ""


PROFILES = {
    "quick": Profile("quick", 3_000, 3_000, clients=3, seeds=(0,), epochs=1, rounds=2,
                     local_epochs=1, hidden_size=32, fed_first_protocol_only=True,
                     comm_modes=("none", "topk5"), comm_datasets=("nsl-kdd",),
                     robust_attacks=("scale:-10",),
                     robust_clients=4,
                     note="QUICK PROFILE: 3,000 training and 3,000 test rows per dataset, 1 epoch, "
                          "2 federated rounds over 3 clients, hidden size 32, Fed-LSTM under one "
                          "protocol per dataset. A smoke test of the pipeline, not a result."),
    "full": Profile("full", None, None, clients=5, seeds=(0, 1, 2),
                    headline_seeds_only=("lstm", "fed-lstm"), all_seeds_first_protocol_only=True,
                    note="Full profile: every training row and complete test sets; every setting "
                         "is the dataset's default, as `fedlstm train` and `fedlstm federate` "
                         "use it (listed with each step's configuration); Fed-LSTM over 5 "
                         "block-IID sites. The LSTM and Fed-LSTM rows are the hybrid detector "
                         "(known attacks + novelty), with each of its parts alone beside it; "
                         "LSTM and Fed-LSTM over 3 seeds (mean ± std) under each dataset's main "
                         "protocol (official where both files exist), other cells seed 0."),
}


@dataclass(frozen=True)
class Step:
    dataset: str
    protocol: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}--{self.protocol}--{self.method}--s{self.seed}"


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def plan(profile: Profile, root: Path, datasets: list[str] | None = None,
         methods: list[str] | None = None) -> Plan:
    out = Plan()
    for ds in datasets or list(NETWORKS):
        roles = available_roles(get_spec(ds), root)
        protocols = []
        if "train" in roles and len(roles) > 1:
            protocols.append("official")
        elif roles:
            out.skipped.append(f"{ds} official: needs the training and test files (found {roles})")
        if roles:
            protocols.append("random-split")
        else:
            out.skipped.append(f"{ds}: no files in {root / get_spec(ds).folder}")
        for i, protocol in enumerate(protocols):
            for method in methods or METHODS:
                if method == "fed-lstm" and profile.fed_first_protocol_only and i > 0:
                    continue
                headline = (not profile.headline_seeds_only
                            or method in profile.headline_seeds_only)
                if profile.all_seeds_first_protocol_only and i > 0:
                    headline = False
                seeds = profile.seeds if headline else profile.seeds[:1]
                out.steps += [Step(ds, protocol, method, s) for s in seeds]
    return out


def step_config(step: Step, profile: Profile, root: Path) -> RunConfig:
    model = "lstm" if step.method == "fed-lstm" else step.method
    data: dict = {
        "seed": step.seed,
        "data": {"dataset": step.dataset, "protocol": step.protocol, "data_dir": str(root),
                 "max_train_rows": profile.max_train_rows, "max_test_rows": profile.max_test_rows},
        "model": {"name": model}, "federation": {"clients": profile.clients}, "train": {}}
    if model == "lstm":
        data["detector"] = profile.detector
    for section, key, value in (("windows", "window", profile.window),
                                ("model", "hidden_size", profile.hidden_size),
                                ("train", "epochs", profile.epochs),
                                ("federation", "rounds", profile.rounds),
                                ("federation", "local_epochs", profile.local_epochs)):
        if value is not None:
            data.setdefault(section, {})[key] = value
    if profile.epochs is not None:
        data["train"]["patience"] = None  # a fixed short schedule: no early stopping
    return RunConfig.model_validate(with_dataset_defaults(data))


@lru_cache(maxsize=4)
def _split(data_json: str, seed: int):
    return build_split(DataConfig.model_validate_json(data_json), seed=seed)


def _evaluations(evaluations: dict) -> dict:
    """What a step file keeps of each test set's evaluation (as computed, or as a run's
    metrics.json holds it): binary scores and ROC points; the share flagged per attack type and
    the unseen types; for the hybrid, each part's scores."""
    out = {}
    for name, ev in evaluations.items():
        roc = ev["roc"] if "roc" in ev else roc_points(ev["_curve"]["y"], ev["_curve"]["score"])
        kept = {**ev["binary"], "roc": roc,
                "by_attack": ev.get("flagged_by_attack", {})}
        if "unseen" in ev:
            kept["unseen"] = {"n": ev["unseen"]["n"], "attacks": ev["unseen"]["attacks"],
                              "recall": ev["unseen"]["recall_at_threshold"]}
        if "parts" in ev:
            kept["parts"] = {part: {k: v for k, v in m.items() if k != "roc"}
                             for part, m in ev["parts"].items()}
            kept["parts_by_attack"] = ev.get("parts_by_attack", {})
        out[name] = kept
    return out


def comm_references(the_plan: Plan, profile: Profile) -> set[str]:
    """The Fed-LSTM steps that are also the communication study's `none` rows: seed 0 (the
    study's seed) under each study dataset's main protocol, the protocol its compressed steps
    run under (`extra_config`). The study would otherwise train the same federation again."""
    if "none" not in profile.comm_modes:
        return set()
    return {Step(ds, next(s.protocol for s in the_plan.steps if s.dataset == ds), "fed-lstm",
                 profile.seeds[0]).key
            for ds in profile.comm_datasets
            if any(s.dataset == ds and s.method == "fed-lstm" for s in the_plan.steps)}


def run_config(step: Step, profile: Profile, root: Path, comm_reference: bool = False
               ) -> RunConfig:
    """What a step runs: its `step_config`; a Fed-LSTM step without per-round test curves and
    federated evaluation (they feed no table and cost a test-set pass every round), except a
    communication reference, whose rows and figure need both (its compressed steps run them)."""
    cfg = step_config(step, profile, root)
    if step.method == "fed-lstm" and not comm_reference:
        cfg = _with_federation(cfg, server_test_curves=False, evaluate_clients=False)
    return cfg


def run_step(step: Step, profile: Profile, root: Path, out: Path,
             comm_reference: bool = False) -> dict:
    cfg = run_config(step, profile, root, comm_reference)
    t0 = time.perf_counter()
    result: dict = {"step": step.__dict__, "key": step.key, "profile": profile.name,
                    "config": json.loads(cfg.model_dump_json())}
    task = task_for(cfg)
    # `_split` is cached: built only where used (a Fed-LSTM step reads its data through the
    # federation, and needs the split only for the budget curve).
    data_key = (cfg.data.model_dump_json(), cfg.seed)
    if step.method == "fed-lstm":
        run_dir = out / "runs" / step.key
        run_federated(cfg, run_dir, overwrite=True, plots=False)  # the report draws its own
        metrics = json.loads((run_dir / "metrics.json").read_text())
        bundle = ModelBundle.load(run_dir / "model.fedlstm")
        # The run writer evaluated the same test sets (the attack types of the sites' training
        # and validation records as "seen"): no second pass over them.
        result["evaluations"] = _evaluations(metrics["evaluations"])
        result["curves"] = [r for r in metrics["rounds"] if r["round"] > 0]
        result["curve_axis"] = "round"
        result["run_dir"] = str(run_dir)
        result["traffic_bytes"] = metrics.get("traffic_bytes")
        if comm_reference:
            result["comm_reference"] = True  # the study's `none` row (`communication.study_runs`)
    else:
        if step.method not in (*NEURAL, *CLASSICAL):
            raise KeyError(f"unknown method {step.method!r}")
        # Test curves (a test-set pass per epoch) only where Fig. 5/6 draw them.
        curves = step.method == "lstm" and step.seed == profile.seeds[0]
        trained = train(task, _split(*data_key), curves=curves)
        bundle = trained.bundle
        if step.method in CLASSICAL:
            result["approximation"] = bundle.approximation
        result["evaluations"] = _evaluations({k: v for k, v in trained.evaluations.items()
                                              if k != "val"})
        result["curves"] = trained.history.epochs
        result["curve_axis"] = "epoch"
        result["train_seconds"] = trained.timings.get("train_seconds")
    if hasattr(task, "budget_curve") and step.seed == profile.seeds[0]:
        # The alert budget's trade-off (report only; the detector keeps its own budget).
        result["budget_curve"] = task.budget_curve(bundle, _split(*data_key))
    result["seconds"] = time.perf_counter() - t0
    return result


def _federated_extra(key: str, cfg: RunConfig, out: Path) -> dict:
    """A Flower simulation of `cfg` as a report step: its evaluations, rounds and partitions."""
    run_dir = out / "runs" / key
    t0 = time.perf_counter()
    run_federated(cfg, run_dir, overwrite=True, plots=False)  # the report draws its own
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"key": key, "run_dir": str(run_dir), "seconds": time.perf_counter() - t0,
            "config": json.loads(cfg.model_dump_json()),
            "curves": [r for r in metrics["rounds"] if r["round"] > 0], "curve_axis": "round",
            "evaluations": {k: v["binary"] for k, v in metrics["evaluations"].items()},
            "partitions": metrics["partitions"], "traffic_bytes": metrics.get("traffic_bytes"),
            "epsilon": metrics["rounds"][-1].get("epsilon"),
            "delta": max((c["delta"] for c in metrics["rounds"][-1].get("clients_fit", {}).values()
                          if "delta" in c), default=None)}


def _with_federation(cfg: RunConfig, **update) -> RunConfig:
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update=update)})


# Extra studies on Network A under its main protocol, seed 0: non-IID sites, DP-SGD,
# unsupervised detection and robustness (the Networks A, B, C study has its own limits, below).
# Each study carries its own reference row under its own settings ("iid" for non-IID, "epsinf"
# for DP). They train on every row of the profile with STUDY_ROUNDS x 1 local epoch. At 40,000
# rows, the earlier limit, ten robust sites held about 1,000 normal validation windows for the
# novelty part's μ, Σ, and leaving 3 label flippers out of them cost 3.7 points (1,072 -> 753
# windows; over every row, 3,369 -> 2,366, it cost nothing, seed 0), and the non-IID study
# ranked FedAvg above FedProx where every row ranks them the other way (both within noise).
NONIID = {"iid": {}, "fedavg": {}, "fedprox": {"proximal_mu": 0.01}}
NONIID_ALPHA = 0.1
EPSILONS = (1.0, 8.0, float("inf"))
STUDY_ROUNDS = 5


def study_profile(profile: Profile) -> Profile:
    """The profile an extra study runs under: the profile's rows, no more than the study's
    rounds, one local epoch."""
    return replace(profile, rounds=min(profile.rounds or STUDY_ROUNDS, STUDY_ROUNDS),
                   local_epochs=1, epochs=profile.epochs or STUDY_ROUNDS)


def extra_keys(the_plan: Plan, datasets: list[str] | None, methods: list[str] | None,
               profile: Profile | None = None) -> list[str]:
    keys = [f"overlap--{ds}--{prot}" for ds, prot in
            dict.fromkeys((s.dataset, s.protocol) for s in the_plan.steps)]
    fed = methods is None or "fed-lstm" in methods
    if fed and (datasets is None or set(NETWORKS) <= set(datasets)):
        keys += [f"{NETWORKS_STEP}--s{seed}" for seed in (profile.seeds if profile else (0,))]
    if fed and profile is not None:
        keys += communication.study_keys(sorted({s.dataset for s in the_plan.steps}
                                                & set(profile.comm_datasets)), profile.comm_modes)
        if any(s.dataset == "nsl-kdd" for s in the_plan.steps):
            keys += robustness.study_keys(profile.robust_attacks)
    if any(s.dataset == "nsl-kdd" for s in the_plan.steps) and methods is None:
        keys += [f"noniid--{name}--s0" for name in NONIID]
        keys += [f"privacy--eps{eps:g}--s0" for eps in EPSILONS]  # eps inf: no DP
        keys.append("anomaly--nsl-kdd--s0")
    return keys


def extra_config(key: str, the_plan: Plan, profile: Profile, root: Path) -> RunConfig:
    """The resolved configuration of an extra step (what its cache key hashes)."""
    if key.startswith("comm--"):  # the dataset's own Fed-LSTM step, compressed
        _, ds, _, _ = key.split("--")
        protocol = next(s.protocol for s in the_plan.steps if s.dataset == ds)
        cfg = step_config(Step(ds, protocol, "fed-lstm", 0), profile, root)
        return _with_federation(cfg, **communication.federation_update(key))
    if key.startswith("robust--"):  # Network A's Fed-LSTM step under the study's rounds
        protocol = next(s.protocol for s in the_plan.steps if s.dataset == "nsl-kdd")
        cfg = step_config(Step("nsl-kdd", protocol, "fed-lstm", 0), study_profile(profile), root)
        attack, defence, share = robustness.study_cell(key)
        return robustness.cell_config(_with_federation(cfg, clients=profile.robust_clients),
                                      defence, attack, share)
    if key.startswith(f"{NETWORKS_STEP}--"):  # its own limits (NETWORKS_ROWS) and rounds
        return networks_config(profile, root).model_copy(update={"seed": _seed(key)})
    if not key.startswith("overlap--"):
        profile = study_profile(profile)
    if key.startswith("overlap--"):
        _, ds, protocol = key.split("--")
        return step_config(Step(ds, protocol, "lstm", 0), profile, root)
    protocol = next(s.protocol for s in the_plan.steps if s.dataset == "nsl-kdd")
    base = step_config(Step("nsl-kdd", protocol, "fed-lstm", 0), profile, root)
    base = _with_federation(base, server_test_curves=False, evaluate_clients=False)
    kind, name, _ = key.split("--")
    if kind == "noniid":
        if name == "iid":
            return base
        return _with_federation(base, partition=f"dirichlet:{NONIID_ALPHA:g}",
                                strategy=name, **NONIID[name])
    if kind == "privacy":
        # DP-SGD is implemented for the supervised LSTM: its rows (and the ε = ∞ reference) are
        # that detector. A simulated federation has no curious server: sampling and noise are
        # seeded so that the report is reproducible (a real site draws them from the OS).
        base = base.model_copy(update={"detector": "supervised"})
        epsilon = float(name.removeprefix("eps"))
        if epsilon == float("inf"):
            return base
        return base.model_copy(update={"train": base.train.model_copy(update={
            "dp": True, "dp_target_epsilon": epsilon, "dp_seeded_noise": True})})
    if kind == "anomaly":
        data = json.loads(step_config(Step("nsl-kdd", protocol, "lstm", 0), profile, root)
                          .model_dump_json())
        data["detector"] = "anomaly"
        data["model"].update(name=data["anomaly"]["model"], task="binary")
        return RunConfig.model_validate(data)
    raise KeyError(f"unknown extra step {key!r}")


# The Networks A, B, C study (`reports.networks`): every network subsampled to
# networks.STUDY_ROWS training rows (it trains about 15 models per seed: local-only,
# federations, centralised, gradient boosting, starved sites), the supervised LSTM (what the
# federation trains: a hybrid site's model of normal traffic is its own, the same local-only and
# federated), each network's tuned window, and the networks' rounds. One step per seed
# (`networks-abc--sN`): the study's seeds are the longest steps (461-566 s each in a full
# profile on 2 cores, README); as one step (1,630 s) the study kept one core for the whole
# centralised phase while the other finished everything else and idled.
NETWORKS_ROWS = networks.STUDY_ROWS
NETWORKS_STEP = "networks-abc"  # the study's step keys: networks-abc--s<seed>


def networks_config(profile: Profile, root: Path) -> RunConfig:
    overrides = [f"data.max_train_rows={min(profile.max_train_rows or NETWORKS_ROWS, NETWORKS_ROWS)}",
                 f"data.data_dir={root}", "federation.partition=networks",
                 f"federation.networks={json.dumps(list(NETWORKS))}"]
    if profile.max_test_rows:
        overrides.append(f"data.max_test_rows={profile.max_test_rows}")
    for key, value in (("federation.rounds", profile.rounds),
                       ("federation.local_epochs", profile.local_epochs),
                       ("model.hidden_size", profile.hidden_size)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(None, overrides)
    return cfg.model_copy(update={"detector": "supervised"})


def _seed(key: str) -> int:
    return int(key.rsplit("--s", 1)[1])


def _networks_extra(key: str, cfg: RunConfig, out: Path) -> dict | None:
    """One seed of the Networks A, B, C study (`networks.section` combines the seeds)."""
    ALL, MODES = networks.NETWORKS, networks.MODES
    folder = out / "runs" / NETWORKS_STEP
    t0 = time.perf_counter()
    # Fewer rows than the study's (the quick profile): encoders, one starved network.
    quick = cfg.data.max_train_rows is not None and cfg.data.max_train_rows < NETWORKS_ROWS
    modes, starved = (MODES[:1], ALL[:1]) if quick else (MODES, ALL)
    try:
        result = networks.seed_result(cfg, folder, ALL, modes, starved)
    except DatasetNotFound as exc:
        log.warning("networks study skipped: %s", exc)
        return None
    return {"key": key, "kind": "networks", "seed": cfg.seed, "out": str(folder),
            "networks": list(ALL), "seconds": time.perf_counter() - t0, "modes": list(modes),
            "result": result, "config": json.loads(cfg.model_dump_json())}


def run_extra(key: str, cfg: RunConfig, out: Path) -> dict | None:
    if key.startswith("overlap--"):
        return _overlap_extra(key, cfg)
    if key.startswith("comm--"):
        return {**_federated_extra(key, cfg, out), "kind": "comm", "mode": key.split("--")[2],
                "dataset": cfg.data.dataset, "protocol": cfg.data.protocol}
    if key.startswith("robust--"):
        result = _federated_extra(key, cfg, out)
        metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
        return {**result, "kind": "robust", "attack": key.split("--")[1],
                "defence": key.split("--")[2], "malicious_sites":
                (metrics.get("attack") or {}).get("malicious_sites", []),
                "left_out_of_calibration": (metrics.get("calibration_check") or {}).get("left_out"),
                "normal_windows": (metrics.get("anomaly") or {}).get("normal_windows_for_mu_sigma"),
                "dataset": cfg.data.dataset}
    if key.startswith(f"{NETWORKS_STEP}--"):
        return _networks_extra(key, cfg, out)
    kind, name, _ = key.split("--")
    where = {"dataset": cfg.data.dataset, "protocol": cfg.data.protocol}
    if kind == "noniid":
        return {**_federated_extra(key, cfg, out), "kind": kind, "strategy": name,
                "alpha": NONIID_ALPHA, **where}
    if kind == "privacy":
        return {**_federated_extra(key, cfg, out), "kind": kind,
                "target_epsilon": cfg.train.dp_target_epsilon if cfg.train.dp else None, **where}
    return _anomaly_extra(key, cfg)


def _overlap_extra(key: str, cfg: RunConfig) -> dict:
    """Share of each test set's records whose features also occur in the training part, as
    the steps split it and with `data.dedup=true` (which drops copies inside the training data
    before splitting; copies across the published files stay)."""
    plain = _split(cfg.data.model_dump_json(), cfg.seed)
    dedup = build_split(cfg.data.model_copy(update={"dedup": True}), seed=cfg.seed)
    notes = dedup.notes
    return {"key": key, "kind": "overlap", "dataset": cfg.data.dataset,
            "protocol": cfg.data.protocol, "config": json.loads(cfg.model_dump_json()),
            "tests": {name: {"n": len(recs), "overlap": plain.notes["test_overlap_with_train"][name],
                             "n_dedup": len(dedup.tests[name]),
                             "overlap_dedup": notes["test_overlap_with_train"][name]}
                      for name, recs in plain.tests.items()},
            "train_rows": len(plain.train) + len(plain.val),
            "duplicates_removed": notes.get("duplicates_removed",
                                            notes.get("duplicates_removed_from_train", 0))}


def _anomaly_extra(key: str, cfg: RunConfig) -> dict:
    """The unsupervised detector (LSTM autoencoder + Mahalanobis score), centralised."""
    t0 = time.perf_counter()
    result = train(task_for(cfg), _split(cfg.data.model_dump_json(), cfg.seed))
    evaluations = {}
    for name, ev in result.evaluations.items():
        if name != "val":
            evaluations[name] = {**{k: v for k, v in ev["binary"].items() if k != "roc"},
                                 "recall_at_fpr": ev["at_fpr"]["recall"],
                                 "report_fpr": ev["at_fpr"]["target_fpr"],
                                 "unseen_n": ev["unseen"]["n"],
                                 "unseen_recall": ev["unseen"]["recall_at_threshold"]}
    return {"key": key, "kind": "anomaly", "dataset": cfg.data.dataset,
            "protocol": cfg.data.protocol,
            "config": json.loads(cfg.model_dump_json()), "evaluations": evaluations,
            "threshold": result.bundle.threshold_, "seconds": time.perf_counter() - t0}


def _files_of(datasets: list[str], root: Path) -> dict[str, str]:
    """sha256 of every file of these datasets a step may read, by dataset/role."""
    out = {}
    for ds in datasets:
        spec = get_spec(ds)
        for role in available_roles(spec, root):
            out[f"{ds}/{role}"] = file_sha256(locate(spec, role, root, verify=False))
    return out


@lru_cache(maxsize=1)
def source_sha256() -> str:
    """The installed fedlstm source, so that uncommitted changes make steps stale too."""
    package = Path(fedlstm.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(cfg: RunConfig, profile: Profile, root: Path) -> dict:
    """What a step's result depends on besides its name; a cached step is reused only when
    this is unchanged. The data folder's path is left out (its files' sha256 are in)."""
    data = json.loads(cfg.model_dump_json())
    data["data"].pop("data_dir", None)
    datasets = sorted({cfg.data.dataset, *(cfg.federation.networks
                                           if cfg.federation.partition == "networks" else [])})
    return {"profile": profile.name,
            "config_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "fedlstm_version": __version__, "commit": git_commit(), "source_sha256": source_sha256(),
            "data_sha256": _files_of(datasets, root)}


def cached_step(path: Path, expected: dict) -> dict | None:
    """The step file at `path` if it was computed under `expected`; None if absent or stale."""
    if not path.exists():
        return None
    try:
        step = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if step.get("fingerprint") != expected:
        log.info("%s is stale (computed under another profile, configuration, code or data); "
                 "computing it again", path.name)
        return None
    return step


def ensure_datasets(root: Path, datasets: list[str], mirror: str | None = None,
                    progress=None) -> None:
    """Download each dataset absent from `root` (sha256-verified, resumable) from its
    publishers or `mirror`. A dataset with some of its files is used as it is (the plan notes
    a protocol it cannot run). Raises DatasetNotFound naming a dataset it cannot get."""
    for ds in datasets:
        spec = get_spec(ds)
        if available_roles(spec, root):
            continue
        if progress:
            progress(0, None, f"fetching {ds} into {root / spec.folder}")
        try:
            fetch_dataset(spec, root, mirror=mirror)
        except (FetchError, DatasetCorrupt, OSError) as exc:
            raise DatasetNotFound(f"{ds}: not in {root / spec.folder} and could not be "
                                  f"fetched: {exc}") from exc
        if not available_roles(spec, root):
            raise DatasetNotFound(f"{ds}: not in {root / spec.folder} and none of its files "
                                  "could be fetched (pass --mirror, or place them there)")


def default_jobs() -> int:
    """Centralised steps run side by side, one torch thread each: one per core, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def reproduce(out: str | Path, profile_name: str = "full", data_root: str | None = None,
              datasets: list[str] | None = None, methods: list[str] | None = None,
              progress=None, command: str | None = None, mirror: str | None = None,
              jobs: int | None = None) -> Path:
    """Every step of the profile's plan, then the report. Datasets missing from the data folder
    (default: `registry.DEFAULT_DATA` when none is named) are fetched first. Centralised steps
    run up to `jobs` at a time in worker processes (torch trains on one thread per process);
    Flower steps run one at a time in this process from the start, with half the workers beside
    them (`_run_steps`)."""
    profile = PROFILES[profile_name]
    unknown = [m for m in methods or () if m not in METHODS]
    if unknown:  # before any work: it failed in the first step that met it
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}")
    root = data_dir(data_root, default=DEFAULT_DATA).expanduser()
    progress = progress or (lambda done, total, text: None)
    ensure_datasets(root, datasets or list(NETWORKS), mirror, progress)
    out = Path(out)
    steps_dir = out / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    the_plan = plan(profile, root, datasets, methods)
    extra = extra_keys(the_plan, datasets, methods, profile)
    todo: list[_Job] = []
    references = comm_references(the_plan, profile)
    for step in the_plan.steps:
        reference = step.key in references
        cfg = run_config(step, profile, root, reference)
        todo.append(_Job(steps_dir / f"{step.key}.json", fingerprint(cfg, profile, root),
                         partial(run_step, step, profile, root, out, reference),
                         step.method == "fed-lstm"))
    for key in extra:
        cfg = extra_config(key, the_plan, profile, root)
        todo.append(_Job(steps_dir / f"{key}.json", fingerprint(cfg, profile, root),
                         partial(run_extra, key, cfg, out), key.startswith(FLOWER_EXTRAS)))
    results = {job.path: cached_step(job.path, job.expected) for job in todo}
    pending = [job for job in todo if results[job.path] is None]
    done, total = len(todo) - len(pending), len(todo)
    counter = _Counter(done, total, progress)
    # The Networks A, B, C study's seeds are the longest centralised steps: started first, the
    # short steps fill the cores' ends.
    side = sorted((j for j in pending if not j.flower),
                  key=lambda j: not j.path.stem.startswith(f"{NETWORKS_STEP}--"))
    with remembered_reads():  # the steps read the same files again and again: parse each once
        _run_steps(side, [j for j in pending if j.flower], jobs or default_jobs(), results,
                   counter)
    progress(total, total, "writing report")
    return write_report(out, profile, the_plan.skipped, command,
                        steps=[r for r in results.values() if r is not None])


FLOWER_EXTRAS = ("noniid--", "privacy--", "comm--", "robust--")


@dataclass
class _Job:
    path: Path
    expected: dict  # the fingerprint the step file must carry
    compute: partial
    flower: bool  # a Flower simulation: runs in this process, one at a time


@dataclass
class _Counter:
    done: int
    total: int
    progress: object
    running: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the pool's thread reports too

    def start(self, name: str) -> None:
        with self.lock:
            self.running.append(name)
            self.progress(self.done, self.total, ", ".join(self.running))

    def finished(self, name: str) -> None:
        with self.lock:
            if name in self.running:
                self.running.remove(name)
            self.done += 1
            self.progress(self.done, self.total, ", ".join(self.running) or "...")


def _run_steps(side: list[_Job], flower: list[_Job], workers: int, results: dict,
               counter: _Counter) -> None:
    """The centralised steps `side` in up to `workers` processes (spawned: no Ray or torch state
    is inherited), in their order, and the Flower steps one at a time in this process, from the
    start. While a Flower step runs, centralised steps take only half the workers (at least
    one): a simulation of 5 sites on 2 cores leaves part of them idle (its sites train two at
    a time, then one; the server aggregates alone), and a worker beside it fills that time
    without starving it (the full profile took 0.91 times as long as with the Flower steps
    last, the quick one 0.85: README). Once the Flower steps are done, centralised steps take
    every worker. A finished step is written at once, whatever runs beside it; after a failure
    no further step starts, and the first error is raised once the running ones have ended."""
    if workers <= 1:
        for job in side:
            _run_here(job, results, counter)
        _run_flower(flower, results, counter)
        return
    gate = threading.Condition()
    state = {"running": 0, "flower": bool(flower)}
    errors: list[BaseException] = []

    def stopped() -> bool:
        with gate:
            return bool(errors)

    def fail(exc: BaseException) -> None:
        with gate:
            errors.append(exc)
            gate.notify_all()

    def on_done(job: _Job, future) -> None:  # runs in the pool's thread: must never raise
        try:
            if future.exception() is None:
                results[job.path] = _finish(job, future.result())
            else:
                fail(future.exception())
        except BaseException as exc:  # noqa: BLE001 - e.g. the step file cannot be written
            fail(exc)
        finally:
            counter.finished(job.path.stem)
            with gate:
                state["running"] -= 1
                gate.notify_all()

    def may_start() -> bool:  # called holding `gate`
        limit = max(1, workers // 2) if state["flower"] else workers
        return bool(errors) or state["running"] < limit

    def feed(pool: ProcessPoolExecutor) -> None:  # submits each step once a worker may take it
        for job in side:
            with gate:
                gate.wait_for(may_start)
                if errors:
                    return
                state["running"] += 1
            counter.start(job.path.stem)
            pool.submit(job.compute).add_done_callback(partial(on_done, job))

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=start_worker,
                             initargs=(worker_threads(workers),)) as pool:
        feeder = threading.Thread(target=feed, args=(pool,), name="reproduce-feed", daemon=True)
        feeder.start()
        try:
            try:
                _run_flower(flower, results, counter, stopped)
            finally:
                with gate:
                    state["flower"] = False
                    gate.notify_all()
            # The last steps are waited for here, where Ctrl-C or SIGTERM reaches; Ray's native
            # clean-up resets their handlers some time after its shutdown, so they are put back
            while True:
                with gate:
                    if gate.wait_for(lambda: not feeder.is_alive() and state["running"] == 0,
                                     timeout=0.5):
                        break
                signals.put_back()
        except BaseException as exc:  # a failed simulation, Ctrl-C or SIGTERM: start nothing more
            fail(exc)
            if _is_stop_request(exc):
                _stop_workers()
            feeder.join()
    if errors:
        raise errors[0]


def _is_stop_request(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, in this process or in a Flower step (which stops gracefully)."""
    return isinstance(exc, (KeyboardInterrupt, RunInterrupted))


def _stop_workers() -> None:
    """End the pool's workers now. A SIGTERM reaches only this process: the pool's shutdown
    waited for the steps they ran (minutes), and when this process died they ran on as orphans
    whose results nobody wrote. Their unfinished steps are lost; the finished ones are on disk."""
    for child in multiprocessing.active_children():  # this process's only children: the pool's
        child.terminate()


def worker_threads(workers: int) -> int:
    """The OpenMP threads of each of `workers` side-by-side workers: its share of the cores."""
    return max(1, (os.cpu_count() or 1) // workers)


def start_worker(openmp_threads: int) -> None:
    """A spawned worker's set-up: it starts afresh, so it remembers its own reads for its
    lifetime, and its OpenMP loops (scikit-learn's gradient boosting) use its share of the cores.
    Unlimited, such a loop takes the core that another worker's training runs on: with the limit
    a gradient boosting fit and a training beside it were both done in 0.95x the time, the
    training in about 0.7x, with the same model (benchmarks/bench_worker_threads.py). Only
    OpenMP is limited: BLAS thread counts can change rounding (classical._kernel_svm)."""
    remember_reads()
    import sklearn.ensemble  # noqa: F401  loads scikit-learn's OpenMP runtime: the limit reaches it

    threadpool_limits(openmp_threads, user_api="openmp")


def _run_here(job: _Job, results: dict, counter: _Counter) -> None:
    counter.start(job.path.stem)
    results[job.path] = _finish(job, job.compute())
    counter.finished(job.path.stem)


def _run_flower(jobs: list[_Job], results: dict, counter: _Counter,
                stopped=lambda: False) -> None:
    if jobs:
        with one_ray_runtime():
            for job in jobs:
                if stopped():  # a centralised step failed: its error ends the command
                    return
                _run_here(job, results, counter)


def _finish(job: _Job, result: dict | None) -> dict | None:
    """Stamp a computed step with its fingerprint and write it (complete on disk or absent)."""
    if result is None:
        return None
    result["fingerprint"] = job.expected
    _write_json(job.path, result)
    return result


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    tmp.replace(path)  # a step is either complete on disk or absent
