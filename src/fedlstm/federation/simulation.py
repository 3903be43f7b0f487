"""Federated runs in Flower's simulation engine: partition, simulate, evaluate, write a run.

The same ClientApp/ServerApp run in deployment (`fedlstm.federation.deploy`); only where each
client's data file comes from differs (a partition file here, the node config there).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

for _name, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                      ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"),
                      ("RAY_DEDUP_LOGS", "0"), ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.data.readers import Records, concat_records  # noqa: E402
from fedlstm.data.schemas import DatasetSpec, get_spec  # noqa: E402
from fedlstm.data.splits import build_split  # noqa: E402
from fedlstm.federation.audit import RunInterrupted  # noqa: E402
from fedlstm.federation.partitions import (PartitionScheme, describe, partition_indices,  # noqa: E402
                                           save_records)
from fedlstm.federation.server import ServerTask  # noqa: E402
from fedlstm.pipeline import evaluate_bundle  # noqa: E402
from fedlstm.reports import plots  # noqa: E402
from fedlstm.runs import partial_dir, run_title, staged_dir, unseen_attack_recall, write_results  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class FederatedData:
    spec: DatasetSpec
    clients: list[Records]
    names: list[str]
    tests: dict[str, Records]
    notes: dict


def dataset_cfg(cfg: RunConfig, dataset: str) -> RunConfig:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})


def load_tests(cfg: RunConfig) -> tuple[DatasetSpec, dict[str, Records]]:
    """The schema and the held-out test sets (per dataset under `networks`), for reporting only."""
    kind = PartitionScheme.parse(cfg.federation.partition).kind
    if kind == "files":
        sites = file_sites(cfg)
        return sites.spec, sites.tests
    if kind == "networks":
        tests = {}
        for ds in cfg.federation.networks:
            split = build_split(dataset_cfg(cfg, ds).data, seed=cfg.seed, carve_val=False)
            tests.update({f"{ds}/{k}": v for k, v in split.tests.items()})
        return get_spec(cfg.federation.networks[0]), tests
    split = build_split(cfg.data, seed=cfg.seed, carve_val=False)
    return split.spec, split.tests


def file_sites(cfg: RunConfig) -> FederatedData:
    """Partition `files`: each training file or folder is one site's data, split on its own.

    With a test file, every site is scored on it; without, each site's seeded random split keeps
    its test share and the shares are pooled into one test set (no site trains on any of it)."""
    files = cfg.data.train_files
    if len(files) < 2:
        raise ValueError("partition `files` makes each --train-file (a file or a folder) one client; "
                         f"give at least two (got {len(files)})")
    splits = [build_split(cfg.data.model_copy(update={"train_files": [f]}), seed=cfg.seed,
                          carve_val=False) for f in files]
    columns = {tuple(s.spec.feature_columns) for s in splits}
    if len(columns) != 1:
        raise ValueError(f"the sites' files do not share one set of feature columns: {files}")
    order = list(splits[0].spec.family_order)  # every site must encode families alike
    order += sorted({f for s in splits for f in s.spec.family_order} - set(order))
    spec = splits[0].spec.model_copy(update={"family_order": order})
    if splits[0].protocol == "files":
        tests = splits[0].tests
    else:
        tests = {"test": concat_records([s.tests["test"] for s in splits])}
    names = [f"site-{i}-{Path(f).name}" for i, f in enumerate(files)]
    return FederatedData(spec, [s.train for s in splits], names, tests,
                         {name: s.notes for name, s in zip(names, splits)})


def federated_data(cfg: RunConfig) -> FederatedData:
    fed = cfg.federation
    scheme = PartitionScheme.parse(fed.partition)
    if scheme.kind == "files":
        return file_sites(cfg)
    if scheme.kind == "networks":
        specs = [get_spec(ds) for ds in fed.networks]
        if len({tuple(s.feature_columns) for s in specs}) != 1:
            raise ValueError(f"networks {fed.networks} do not share one feature schema")
        splits = [build_split(dataset_cfg(cfg, s.name).data, seed=cfg.seed, carve_val=False)
                  for s in specs]
        tests = {f"{s.spec.name}/{k}": v for s in splits for k, v in s.tests.items()}
        return FederatedData(specs[0], [s.train for s in splits], [s.name for s in specs], tests,
                             {s.spec.name: s.notes for s in splits})
    split = build_split(cfg.data, seed=cfg.seed, carve_val=False)
    shares = partition_indices(split.train, scheme, fed.clients, cfg.seed)
    clients = [split.train.take(idx) for idx in shares]
    return FederatedData(split.spec, clients, [f"client-{i}" for i in range(len(clients))],
                         split.tests, split.notes)


@contextmanager
def private_shares(data: FederatedData, spec: DatasetSpec) -> Iterator[Path]:
    """The simulated sites' data files, in a folder only this user can read, removed afterwards
    (also on failure or Ctrl-C): copies of raw records never outlive the run."""
    folder = Path(tempfile.mkdtemp(prefix="fedlstm-shares-"))  # mode 0700
    try:
        for i, recs in enumerate(data.clients):
            save_records(recs, folder / f"client-{i}.parquet", spec)
        (folder / "names.json").write_text(json.dumps(data.names))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C sets `stop`, which the server checks while it waits for sites (every 0.2 s), so
    the run ends within seconds with its last completed round checkpointed. Flower's simulation
    swallows SIGINT in the thread that drives the clients; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def request_stop(signum, frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping the federation (Ctrl-C again to abort at once)")

    signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def simulate(server_app, client_app, n_clients: int, stop: threading.Event) -> None:
    """Flower's simulation engine, one CPU and one torch thread per client, interruptible."""
    from flwr.simulation import run_simulation

    _quiet_flower()
    with interruptible(stop):
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_clients,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"logging_level": "error",
                                                         "log_to_driver": False}})
        except Exception:
            if stop.is_set():
                raise RunInterrupted("the federation was stopped (Ctrl-C)") from None
            stop.set()  # the engine failed: release a server thread still waiting for replies
            raise
    if stop.is_set():
        raise RunInterrupted("the federation was stopped (Ctrl-C)")


def run_federated(cfg: RunConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
                  command: str | None = None) -> Path:
    from fedlstm.federation.apps import make_client_app, make_server_app

    out = Path(out)
    if resume and not (partial_dir(out) / "checkpoints" / "last.pt").exists():
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {partial_dir(out)}")
    timings = {}
    with staged_dir(out, overwrite=overwrite or resume, keep_on_failure=True) as stage:
        t = time.perf_counter()
        data = federated_data(cfg)
        n = len(data.clients)
        cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"clients": n})})
        task = ServerTask(cfg, data.spec, data.tests, stage)
        with private_shares(data, data.spec) as part_dir:
            timings["partition_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            simulate(make_server_app(task), make_client_app(str(part_dir)), n, task.stop)
        timings["simulation_seconds"] = time.perf_counter() - t
        if task.weights is None or not task.rounds:
            raise RuntimeError("the federation finished without producing a model; see the log")
        finish_run(task, cfg, stage, data, timings, command)
    return out


@contextmanager
def one_ray_runtime():
    """Keep one Ray runtime across several simulations run back to back.

    Flower's Ray backend starts Ray only when it is not running, but shuts it down after every
    simulation; a restart costs about 5 s on 2 cores, which dominated short federated steps of
    `reproduce`. Within this block the backend's shutdown is deferred to the block's end (its
    actors are still terminated after each simulation, so no state carries over)."""
    import ray

    shutdown = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray.shutdown = shutdown
        if ray.is_initialized():
            shutdown()


def _quiet_flower() -> None:
    """Flower logs every message at INFO, and warns on each in-process simulation that
    `run_simulation` is deprecated in favour of `flwr run` (we use `flwr run` for deployment,
    `run_simulation` for simulation). Keep all of that for `-v` (root logger at INFO)."""
    flwr_log = logging.getLogger("flwr")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        flwr_log.setLevel(logging.ERROR)


def finish_run(task: ServerTask, cfg: RunConfig, stage: Path, data: FederatedData, timings: dict,
               command: str | None) -> Path:
    bundle = task.bundle()
    t = time.perf_counter()
    evaluations = {name: evaluate_bundle(bundle, recs) for name, recs in data.tests.items()}
    timings["evaluate_seconds"] = time.perf_counter() - t
    train_attacks = np.concatenate([c.attack for c in data.clients])
    rounds = [task.rounds[k] for k in sorted(task.rounds)]
    extra = {"federation": cfg.federation.model_dump(), "partitions": describe(data.clients, data.names),
             "data_notes": data.notes, "rounds": rounds,
             "unseen_attacks": unseen_attack_recall(train_attacks, data.spec, evaluations),
             "timings": timings}
    write_results(stage, cfg, bundle, evaluations, extra, command)
    plots.learning_curves([r for r in rounds if r["round"] > 0], stage / "round_curves.png",
                          run_title(bundle), x_key="round")
    return stage
