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
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

import fedlstm
from fedlstm import __version__
from fedlstm.config import DataConfig, RunConfig
from fedlstm.data.registry import DatasetNotFound, available_roles, data_dir, locate, sha256_of
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split
from fedlstm.detection import ModelBundle
from fedlstm.detection.classical import CLASSICAL
from fedlstm.federation.simulation import one_ray_runtime, run_federated
from fedlstm.reports.report import write_report
from fedlstm.runs.rundir import git_commit
from fedlstm.tasks import task_for
from fedlstm.tasks.base import evaluate_detector
from fedlstm.tasks.centralised import train

log = logging.getLogger(__name__)

NEURAL = ("lstm", "rnn", "cnn")
METHODS = ("lstm", "fed-lstm", "rnn", "cnn", "svm", "ae-ocsvm", "hgb", "rf", "logreg")
NETWORKS = {"nsl-kdd": "A", "kdd99": "B", "unsw-nb15": "C"}


@dataclass(frozen=True)
class Profile:
    name: str
    max_train_rows: int | None
    max_test_rows: int | None
    epochs: int
    rounds: int
    clients: int
    seeds: tuple[int, ...]
    hidden_size: int = 64
    window: int = 8
    headline_seeds_only: tuple[str, ...] = ()  # methods run with every seed; others with the first
    all_seeds_first_protocol_only: bool = False  # repeat seeds under each dataset's main protocol
    fed_first_protocol_only: bool = False  # Fed-LSTM under one protocol per dataset (quick)
    note: str = ""


PROFILES = {
    "quick": Profile("quick", 3_000, 3_000, epochs=1, rounds=2, clients=3, seeds=(0,),
                     hidden_size=32, fed_first_protocol_only=True,
                     note="QUICK PROFILE: 3,000 training and 3,000 test rows per dataset, 1 epoch, "
                          "2 federated rounds over 3 clients, Fed-LSTM under one protocol per "
                          "dataset. A smoke test of the pipeline, not a result."),
    "full": Profile("full", 40_000, None, epochs=5, rounds=5, clients=5, seeds=(0, 1, 2),
                    headline_seeds_only=("lstm", "fed-lstm"), all_seeds_first_protocol_only=True,
                    note="Full profile: training data subsampled (stratified) to 40,000 rows per "
                         "dataset to bound the run time; complete official test sets; "
                         "LSTM 5 epochs, Fed-LSTM 5 rounds x 1 local epoch over 5 IID clients; "
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
    return RunConfig.model_validate({
        "seed": step.seed,
        "data": {"dataset": step.dataset, "protocol": step.protocol, "data_dir": str(root),
                 "max_train_rows": profile.max_train_rows, "max_test_rows": profile.max_test_rows},
        "windows": {"window": profile.window},
        "model": {"name": model, "hidden_size": profile.hidden_size},
        "train": {"epochs": profile.epochs, "patience": None},
        "federation": {"clients": profile.clients, "rounds": profile.rounds, "local_epochs": 1},
    })


@lru_cache(maxsize=4)
def _split(data_json: str, seed: int):
    return build_split(DataConfig.model_validate_json(data_json), seed=seed)


def _roc_points(y: np.ndarray, score: np.ndarray, n: int = 200) -> dict | None:
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, score)
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(n, len(fpr))).astype(int))
    return {"fpr": fpr[idx].round(5).tolist(), "tpr": tpr[idx].round(5).tolist()}


def _evaluations(evaluations: dict) -> dict:
    return {name: {**ev["binary"], "roc": _roc_points(ev["_curve"]["y"], ev["_curve"]["score"])}
            for name, ev in evaluations.items()}


def run_step(step: Step, profile: Profile, root: Path, out: Path) -> dict:
    cfg = step_config(step, profile, root)
    t0 = time.perf_counter()
    result: dict = {"step": step.__dict__, "key": step.key, "profile": profile.name,
                    "config": json.loads(cfg.model_dump_json())}
    task = task_for(cfg)
    split = _split(cfg.data.model_dump_json(), cfg.seed)
    if step.method == "fed-lstm":
        run_dir = out / "runs" / step.key
        # Per-round test curves and federated evaluation feed no table or figure here (Fig. 5/6
        # come from the networks run), and cost a full test-set pass every round.
        cfg = _with_federation(cfg, server_test_curves=False, evaluate_clients=False)
        run_federated(cfg, run_dir, overwrite=True)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        bundle = ModelBundle.load(run_dir / "model.fedlstm")
        result["evaluations"] = _evaluations({n: evaluate_detector(bundle, r)
                                              for n, r in split.tests.items()})
        result["curves"] = [r for r in metrics["rounds"] if r["round"] > 0]
        result["curve_axis"] = "round"
        result["run_dir"] = str(run_dir)
    else:
        if step.method not in (*NEURAL, *CLASSICAL):
            raise KeyError(f"unknown method {step.method!r}")
        # Test curves (a test-set pass per epoch) only where Fig. 5/6 draw them.
        curves = step.method == "lstm" and step.seed == profile.seeds[0]
        trained = train(task, split, curves=curves)
        if step.method in CLASSICAL:
            result["approximation"] = trained.bundle.approximation
        result["evaluations"] = _evaluations({k: v for k, v in trained.evaluations.items()
                                              if k != "val"})
        result["curves"] = trained.history.epochs
        result["curve_axis"] = "epoch"
        result["train_seconds"] = trained.timings.get("train_seconds")
    result["seconds"] = time.perf_counter() - t0
    return result


def _federated_extra(key: str, cfg: RunConfig, out: Path) -> dict:
    """A Flower simulation of `cfg` as a report step: its evaluations, rounds and partitions."""
    run_dir = out / "runs" / key
    t0 = time.perf_counter()
    run_federated(cfg, run_dir, overwrite=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"key": key, "run_dir": str(run_dir), "seconds": time.perf_counter() - t0,
            "config": json.loads(cfg.model_dump_json()),
            "curves": [r for r in metrics["rounds"] if r["round"] > 0], "curve_axis": "round",
            "evaluations": {k: v["binary"] for k, v in metrics["evaluations"].items()},
            "partitions": metrics["partitions"],
            "epsilon": metrics["rounds"][-1].get("epsilon"),
            "delta": max((c["delta"] for c in metrics["rounds"][-1].get("clients_fit", {}).values()
                          if "delta" in c), default=None)}


def _with_federation(cfg: RunConfig, **update) -> RunConfig:
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update=update)})


# Extra studies on Network A under its main protocol, seed 0: non-IID sites, DP-SGD, unsupervised.
NONIID = {"fedavg": {}, "fedprox": {"proximal_mu": 0.01}}
NONIID_ALPHA = 0.1
EPSILONS = (1.0, 8.0)


def extra_keys(the_plan: Plan, datasets: list[str] | None, methods: list[str] | None) -> list[str]:
    keys = [f"overlap--{ds}--{prot}" for ds, prot in
            dict.fromkeys((s.dataset, s.protocol) for s in the_plan.steps)]
    fed = methods is None or "fed-lstm" in methods
    if fed and (datasets is None or {"nsl-kdd", "kdd99"} <= set(datasets)):
        keys.append("networks-ab--s0")
    if any(s.dataset == "nsl-kdd" for s in the_plan.steps) and methods is None:
        keys += [f"noniid--{name}--s0" for name in NONIID]
        keys += [f"privacy--eps{eps:g}--s0" for eps in EPSILONS]
        keys.append("anomaly--nsl-kdd--s0")
    return keys


def extra_config(key: str, the_plan: Plan, profile: Profile, root: Path) -> RunConfig:
    """The resolved configuration of an extra step (what its cache key hashes)."""
    if key.startswith("overlap--"):
        _, ds, protocol = key.split("--")
        return step_config(Step(ds, protocol, "lstm", 0), profile, root)
    if key.startswith("networks-ab"):
        cfg = step_config(Step("nsl-kdd", "official", "fed-lstm", 0), profile, root)
        return _with_federation(cfg, partition="networks", networks=["nsl-kdd", "kdd99"])
    protocol = next(s.protocol for s in the_plan.steps if s.dataset == "nsl-kdd")
    base = step_config(Step("nsl-kdd", protocol, "fed-lstm", 0), profile, root)
    base = _with_federation(base, server_test_curves=False, evaluate_clients=False)
    kind, name, _ = key.split("--")
    if kind == "noniid":
        return _with_federation(base, partition=f"dirichlet:{NONIID_ALPHA:g}", strategy=name,
                                **NONIID[name])
    if kind == "privacy":
        # A simulated federation has no curious server: sampling and noise are seeded so that
        # the report is reproducible (a real site draws them from the OS, train.dp_seeded_noise).
        return base.model_copy(update={"train": base.train.model_copy(update={
            "dp": True, "dp_target_epsilon": float(name.removeprefix("eps")),
            "dp_seeded_noise": True})})
    if kind == "anomaly":
        data = json.loads(step_config(Step("nsl-kdd", protocol, "lstm", 0), profile, root)
                          .model_dump_json())
        data["detector"] = "anomaly"
        data["model"].update(name=data["anomaly"]["model"], task="binary")
        return RunConfig.model_validate(data)
    raise KeyError(f"unknown extra step {key!r}")


def run_extra(key: str, cfg: RunConfig, out: Path) -> dict | None:
    if key.startswith("overlap--"):
        return _overlap_extra(key, cfg)
    if key.startswith("networks-ab"):
        try:
            return _federated_extra(key, cfg, out)
        except DatasetNotFound as exc:
            log.warning("networks federation skipped: %s", exc)
            return None
    kind, name, _ = key.split("--")
    where = {"dataset": cfg.data.dataset, "protocol": cfg.data.protocol}
    if kind == "noniid":
        return {**_federated_extra(key, cfg, out), "kind": kind, "strategy": name,
                "alpha": NONIID_ALPHA, **where}
    if kind == "privacy":
        return {**_federated_extra(key, cfg, out), "kind": kind,
                "target_epsilon": cfg.train.dp_target_epsilon, **where}
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
            out[f"{ds}/{role}"] = _sha256(locate(spec, role, root, verify=False))
    return out


def _sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


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


def reproduce(out: str | Path, profile_name: str = "full", data_root: str | None = None,
              datasets: list[str] | None = None, methods: list[str] | None = None,
              progress=None, command: str | None = None) -> Path:
    profile = PROFILES[profile_name]
    root = data_dir(data_root)
    out = Path(out)
    steps_dir = out / "steps"
    steps_dir.mkdir(parents=True, exist_ok=True)
    the_plan = plan(profile, root, datasets, methods)
    extra = extra_keys(the_plan, datasets, methods)
    total = len(the_plan.steps) + len(extra)
    progress = progress or (lambda done, total, text: None)
    current = []
    with one_ray_runtime():
        for i, step in enumerate(the_plan.steps):
            cfg = step_config(step, profile, root)
            current.append(_step(steps_dir / f"{step.key}.json", fingerprint(cfg, profile, root),
                                 partial(run_step, step, profile, root, out), i, total, progress))
        for i, key in enumerate(extra, start=len(the_plan.steps)):
            cfg = extra_config(key, the_plan, profile, root)
            current.append(_step(steps_dir / f"{key}.json", fingerprint(cfg, profile, root),
                                 partial(run_extra, key, cfg, out), i, total, progress))
    progress(total, total, "writing report")
    return write_report(out, profile, the_plan.skipped, command,
                        steps=[s for s in current if s is not None])


def _step(path: Path, expected: dict, compute, i: int, total: int, progress) -> dict | None:
    """A step's result: its cached file when current, else computed now and written."""
    cached = cached_step(path, expected)
    if cached is not None:
        return cached
    progress(i, total, path.stem)
    result = compute()
    if result is None:
        return None
    result["fingerprint"] = expected
    _write_json(path, result)
    return result


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    tmp.replace(path)  # a step is either complete on disk or absent
