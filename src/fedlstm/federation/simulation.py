"""Federated runs in Flower's simulation engine: partition, simulate, evaluate, write a run.

The same ClientApp/ServerApp run in deployment (`fedlstm.federation.deploy`); only where each
client's data file and the configuration come from differ (a private partition file and the
closure here, the node config and the run config there).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

for _name, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                      ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"),
                      ("RAY_DEDUP_LOGS", "0"), ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402

from fedlstm import signals  # noqa: E402
from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.data.spec import DatasetSpec  # noqa: E402
from fedlstm.federation.apps import make_client_app, make_server_app  # noqa: E402
from fedlstm.federation.attacks import site_attack  # noqa: E402
from fedlstm.federation.audit import RunInterrupted  # noqa: E402
from fedlstm.federation.client import ClientTask  # noqa: E402
from fedlstm.federation.inprocess import run_inprocess  # noqa: E402
from fedlstm.federation.networks import (  # noqa: E402
    NetworkServer,
    NetworkSite,
    resolve_inputs,
    save_site_tests,
    write_networks_run,
)
from fedlstm.federation.partitions import describe, save_records  # noqa: E402
from fedlstm.federation.server import ServerTask  # noqa: E402
from fedlstm.federation.sites import FederatedData, federated_data, pooled_split  # noqa: E402
from fedlstm.runs.rundir import (  # noqa: E402
    REQUEST_NAME,
    baseline_metrics,
    partial_dir,
    staged_dir,
    write_results,
)
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.centralised import baseline_on_split  # noqa: E402

log = logging.getLogger(__name__)


@contextmanager
def private_shares(data: FederatedData, spec: DatasetSpec) -> Iterator[Path]:
    """The simulated sites' data files, in a folder only this user can read, removed afterwards
    (also on failure or Ctrl-C): copies of raw records never outlive the run."""
    folder = Path(tempfile.mkdtemp(prefix="fedlstm-shares-"))  # mode 0700
    try:
        for i, recs in enumerate(data.clients):
            own = data.specs[i] if data.specs else spec
            save_records(recs, folder / f"client-{i}.parquet", own)
            save_site_tests(data, i, folder / f"client-{i}.parquet")
        (folder / "names.json").write_text(json.dumps(data.names))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C, SIGTERM (a service manager, CI cancelling a job) or SIGHUP (the terminal closed)
    sets `stop`, which the server checks while it waits for sites (every 0.2 s), so the run ends
    within seconds with its last completed round checkpointed. Flower's simulation swallows
    SIGINT in the thread that drives the clients; a second signal interrupts at once."""
    previous: dict = {}

    def request_stop(signum, frame):
        if stop.is_set():
            signals.restore(previous)
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping the federation (%s); a second one aborts at once",
                    signals.NAMES.get(signum, signum))

    if not signals.in_main_thread():
        yield
        return
    with signals.handling(dict.fromkeys(signals.STOP_SIGNALS, request_stop)) as previous, \
            _handlers_kept_over_ray(request_stop):
        yield


@contextmanager
def _handlers_kept_over_ray(handler) -> Iterator[None]:
    """`ray.init` replaces the SIGTERM handler twice: natively (a crash handler that printed a
    raw stack dump and aborted, exit 134) and in Python (`sys.exit`, which killed Ray's
    workers and left the run hanging). Flower starts Ray in this (main) thread; `handler` is
    put back right after."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    init_ray = RayBackend.init_ray

    def init_then_restore(self, *args, **kwargs):
        init_ray(self, *args, **kwargs)
        if signals.in_main_thread():
            for sig in signals.STOP_SIGNALS:
                signal.signal(sig, handler)

    RayBackend.init_ray = init_then_restore
    try:
        yield
    finally:
        RayBackend.init_ray = init_ray


class _PromptQueue(queue.Queue):
    """A queue whose blocking reads wait at most 50 ms at a time.

    Flower's simulation runtime (flwr 1.42, `vce_api.run_api`) has its worker threads read their
    queues with a 1 s timeout and check the stop event in between, so every simulation ends
    about 0.9 s after its ServerApp (a third of a 3 s simulation in the quick `reproduce`).
    Flower offers no setting for it; with this queue the same loop notices the stop event
    within 50 ms."""

    def get(self, block: bool = True, timeout: float | None = None):
        return super().get(block, None if timeout is None else min(timeout, 0.05))


@contextmanager
def _prompt_shutdown() -> Iterator[None]:
    """Flower's runtime builds its queues from `vce_api.Queue` during this block."""
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.Queue
    vce_api.Queue = _PromptQueue
    try:
        yield
    finally:
        vce_api.Queue = original


def simulate(server_app, client_app, n_clients: int, stop: threading.Event) -> None:
    """Flower's simulation engine, one CPU and one torch thread per client, interruptible."""
    from flwr.simulation import run_simulation

    _quiet_flower()
    with interruptible(stop), _prompt_shutdown():
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_clients,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"logging_level": "error",
                                                         "log_to_driver": False}})
        except Exception:
            if stop.is_set():
                raise RunInterrupted("the federation was stopped on request") from None
            stop.set()  # the engine failed: release a server thread still waiting for replies
            raise
    if stop.is_set():
        raise RunInterrupted("the federation was stopped on request")


def federate(cfg: RunConfig, data: FederatedData, out_dir: Path | None = None,
             engine: str = "flower") -> ServerTask:
    """Train (and calibrate) the configured detector over `data`'s sites; the server task, with
    the detector in `result`. `engine`: flower (the simulation engine) or inprocess (the same
    sites and server, FedAvg in this process: `fedlstm.federation.inprocess`)."""
    n = len(data.clients)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"clients": n})})
    if data.specs is not None:  # sites of different schemas: private encoders
        return federate_networks(cfg, data, out_dir, engine)
    task = ServerTask(task_for(cfg), data.spec, data.tests, out_dir)
    if engine == "inprocess":
        _check_inprocess(cfg)
        return run_inprocess(task, [ClientTask(task.task, recs, data.spec, name,
                                               site_attack(cfg.federation, i))
                                    for i, (recs, name) in enumerate(zip(data.clients,
                                                                         data.names))])
    with private_shares(data, data.spec) as part_dir:
        simulate(make_server_app(task), make_client_app(str(part_dir), cfg), n, task.stop)
    if task.result is None:
        raise RuntimeError(task.failure or "the federation finished without producing a "
                           "detector (did the clients fail? rerun with -v); see the log")
    return task


def _check_inprocess(cfg: RunConfig) -> None:
    """What the in-process engine cannot do is refused, never silently skipped."""
    fed = cfg.federation
    if fed.compress != "none":
        raise ValueError("the in-process engine sends no messages, so it has nothing to "
                         f"compress (compress={fed.compress}); use engine flower")
    if fed.strategy not in ("fedavg", "fedprox") or set(fed.defences) - {"robust-calibration"}:
        raise ValueError("the in-process engine averages with FedAvg (or FedProx) only; "
                         f"strategy {fed.strategy} with defences {fed.defences} needs engine "
                         "flower")


def federate_networks(cfg: RunConfig, data: FederatedData, out_dir: Path | None,
                      engine: str) -> NetworkServer:
    """`federate` for sites of different schemas (`federation.networks`)."""
    cfg = resolve_inputs(cfg, data.specs)
    server = NetworkServer(task_for(cfg), out_dir)
    if engine == "inprocess":
        _check_inprocess(cfg)
        sites = [NetworkSite(server.task, recs, spec, name, data.site_tests(i),
                             site_attack(cfg.federation, i),
                             out_dir=out_dir / "sites" / name if out_dir else None)
                 for i, (recs, spec, name) in enumerate(zip(data.clients, data.specs,
                                                            data.names))]
        return run_inprocess(server, sites)
    # Each simulated site keeps its detector in its own folder of the run (a real site: its disk).
    sites_out = str(out_dir / "sites") if out_dir else None
    with private_shares(data, data.spec) as part_dir:
        simulate(make_server_app(server), make_client_app(str(part_dir), cfg, sites_out=sites_out),
                 len(data.clients), server.stop)
    if server.result is None:
        raise RuntimeError("the federation finished without the sites' reports (did the "
                           "clients fail? rerun with -v); see the log")
    return server


def run_federated(cfg: RunConfig, out: str | Path, overwrite: bool = False, resume: bool = False,
                  command: str | None = None, engine: str = "flower", plots: bool = True,
                  baseline: bool = False, progress=None) -> Path:
    """A federated run directory at `out`: `federate`, then the one run writer (`plots`: its
    figures too). `baseline`: also gradient boosting on the sites' pooled shares, beside the
    federation in metrics.json and its summary (sites of one schema; a simulation can pool
    what no deployed federation can). `progress(text)` hears when that starts."""
    out = Path(out)
    if resume and not (partial_dir(out) / "checkpoints" / "last.pt").exists():
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {partial_dir(out)}")
    with staged_dir(out, overwrite=overwrite, keep_on_failure=True, resume=resume) as stage:
        t = time.perf_counter()
        data = federated_data(cfg)
        timings = {"partition_seconds": time.perf_counter() - t}
        t = time.perf_counter()
        task = federate(cfg, data, stage, engine)
        timings["simulation_seconds"] = time.perf_counter() - t
        reference = None
        if baseline and not isinstance(task, NetworkServer):
            if progress:
                progress("gradient boosting on the sites' pooled shares...")
            reference = baseline_on_split(cfg, pooled_split(cfg, data), "the sites' pooled shares")
        finish_run(task, task.cfg, stage, data, timings, command, engine, plots, reference)
        (stage / REQUEST_NAME).write_text(cfg.model_dump_json(indent=2))
    return out


_RAY_HELD = {"active": False}  # the patches below are process-wide


@contextmanager
def one_ray_runtime():
    """Keep one Ray runtime, and its client actors, across simulations run back to back.

    Flower's Ray backend starts Ray only when it is not running, but shuts it down after every
    simulation, and starts fresh actors (processes that import torch and fedlstm) for each one:
    together about 9 s on 2 cores, which dominated short federated steps of `reproduce`. Within
    this block Ray's shutdown is deferred to the block's end, and the actors a simulation leaves
    idle serve the next one. Reuse changes no result: what a site keeps in an actor between
    messages is cached under its data file's path (`apps._site`), each simulation writes its
    sites' files to a new folder, and every site seeds what it draws. An actor still busy when a
    simulation ends (it failed or was stopped) is killed, and one that died is replaced. Nested
    blocks share the outer one."""
    if _RAY_HELD["active"]:
        yield
        return
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    idle: list = []
    shutdown = ray.shutdown
    add_actors, terminate_actors = BasicActorPool.add_actors_to_pool, \
        BasicActorPool.terminate_all_actors

    def reuse_actors(pool, num_actors: int) -> None:
        reused = [idle.pop() for _ in range(min(num_actors, len(idle)))]
        try:
            ray.get([a.__ray_ready__.remote() for a in reused], timeout=30)
        except Exception:  # noqa: BLE001 - a dead or stuck actor: start fresh ones instead
            for actor in reused:
                ray.kill(actor)
            reused = []
        pool.pool.extend(reused)
        pool.num_actors += len(reused)
        add_actors(pool, num_actors - len(reused))

    def keep_idle_actors(pool) -> None:
        for actor in pool._future_to_actor.values():  # still running a message: not reusable
            ray.kill(actor)
        idle.extend(pool.pool)
        pool.pool = []

    ray.shutdown = lambda *args, **kwargs: None
    BasicActorPool.add_actors_to_pool = reuse_actors
    BasicActorPool.terminate_all_actors = keep_idle_actors
    _RAY_HELD["active"] = True
    try:
        yield
    finally:
        _RAY_HELD["active"] = False
        ray.shutdown = shutdown
        BasicActorPool.add_actors_to_pool = add_actors
        BasicActorPool.terminate_all_actors = terminate_actors
        if ray.is_initialized():
            shutdown()
        signals.put_back()


def _quiet_flower() -> None:
    """Flower logs every message at INFO, and warns on each in-process simulation that
    `run_simulation` is deprecated in favour of `flwr run` (we use `flwr run` for deployment,
    `run_simulation` for simulation). Keep all of that for `-v` (root logger at INFO)."""
    flwr_log = logging.getLogger("flwr")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        flwr_log.setLevel(logging.ERROR)


def finish_run(task: ServerTask, cfg: RunConfig, stage: Path, data: FederatedData, timings: dict,
               command: str | None, engine: str = "flower", plots: bool = True,
               baseline: dict | None = None) -> Path:
    if isinstance(task, NetworkServer):
        write_networks_run(stage, task.cfg, task, describe(data.clients, data.names), data.notes,
                           {**timings, "engine": engine}, command)
        return stage
    train_attacks = np.concatenate([c.attack for c in data.clients])
    evaluations, extra = task.results(train_attacks, describe(data.clients, data.names),
                                      data.notes, timings)
    extra["engine"] = engine
    if baseline is not None:
        extra["baseline"] = baseline_metrics(baseline)
    write_results(stage, cfg, task.result, evaluations, extra, command,
                  curves=[r for r in extra["rounds"] if r["round"] > 0], curve_axis="round",
                  plots=plots)
    return stage
