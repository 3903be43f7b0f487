"""A deployed run end to end: partition, start SuperNodes, submit the signed app, wait, collect.

`write_deployed_run` runs inside the ServerApp process (it writes the run directory a simulated
run has); `deploy_on` and `run_local_deployment` run on the launcher's side.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlstm.config import RunConfig
from fedlstm.data.registry import DatasetNotFound, data_dir
from fedlstm.federation.deploy.app import CONFIG_KEY, SIGNATURE_KEY, write_signed_app
from fedlstm.federation.deploy.credentials import generate_supernode_keys
from fedlstm.federation.deploy.processes import FINISHED, DeploymentError, LocalFederation
from fedlstm.federation.networks import (
    NetworkServer,
    resolve_inputs,
    save_site_tests,
    write_networks_run,
)
from fedlstm.federation.partitions import describe, save_records
from fedlstm.federation.server import CHECKPOINT, ServerTask
from fedlstm.federation.sites import federated_data
from fedlstm.runs.rundir import RunExists, staged_dir, write_results

log = logging.getLogger(__name__)

# Written by the launcher into the ServerApp's out-dir before the run: what only the launcher
# knows (how the data was split, which attack types the sites trained on, the command).
DEPLOYMENT_FILE = "deployment.json"


def write_deployed_run(task: ServerTask, run_config: Mapping, run_id: int | None = None) -> Path:
    """Inside the ServerApp: turn the finished federation into a run directory at `out-dir`.

    The files are those of a simulated run (config.json, metrics.json with the rounds,
    model.fedlstm, round_curves.png, roc.png, confusion plots, checkpoints/). They are written
    into a staging folder that replaces `out-dir` only when complete; the checkpoints the
    ServerTask wrote into `out-dir` during the rounds move along. Partitions, data notes and
    the sites' attack types are known only to whoever split the data: they are read from
    `out-dir/deployment.json` when the launcher wrote one, and left empty otherwise.
    """
    out = Path(str(run_config["out-dir"]))
    if task.result is None:
        raise RuntimeError("the federation finished without producing a model; see the log")
    info_file = out / DEPLOYMENT_FILE
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    if run_id is not None:  # what `flwr ls` and `flwr log` know the run by
        info["deployment"] = {**info.get("deployment", {}), "run_id": str(run_id)}
    command = info.get("command") or "flwr run"
    with staged_dir(out, overwrite=True) as stage:
        if isinstance(task, NetworkServer):  # every site scored its own detector
            write_networks_run(stage, task.cfg, task, info.get("partitions"),
                               info.get("data_notes", {}), {"runtime": "deployment"}, command)
        else:
            _write_deployed_results(stage, task, info, command)
        checkpoints = (out / CHECKPOINT).parent
        if checkpoints.is_dir():
            shutil.move(str(checkpoints), str(stage / checkpoints.name))
    log.info("run directory written to %s", out)
    return out


def _write_deployed_results(stage: Path, task: ServerTask, info: dict, command: str) -> None:
    # Which attack types the sites trained on is known to whoever split the data, if anyone.
    train_attacks = np.asarray(info.get("train_attacks", []), dtype=object)
    evaluations, extra = task.results(train_attacks, info.get("partitions"),
                                      info.get("data_notes", {}), {})
    if "train_attacks" not in info:
        extra["unseen_attacks"] = {}
    extra.update(runtime="deployment", deployment=info.get("deployment", {}))
    write_results(stage, task.cfg, task.result, evaluations, extra, command,
                  curves=[r for r in extra["rounds"] if r["round"] > 0], curve_axis="round")




@dataclass
class DeploymentResult:
    out: Path
    run_id: int
    status: str
    work_dir: Path
    timings: dict


def _resolved(cfg: RunConfig) -> RunConfig:
    """Absolute data folder: the ServerApp runs in another process with another cwd."""
    try:
        root = data_dir(cfg.data.data_dir)
    except DatasetNotFound:  # no folder configured: the split below says so
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"data_dir": str(root.expanduser().resolve())})})


def deploy_on(federation: LocalFederation, cfg: RunConfig, out: str | Path, *,
              overwrite: bool = False, resume: bool = False, timeout: float | None = None,
              command: str | None = None,
              progress: Callable[[str], None] | None = None) -> DeploymentResult:
    """Partition like the simulation, start one SuperNode per share, run, collect into `out`.

    Uses a started `federation` (its TLS/auth settings apply) and leaves it running, so that
    callers (tests) can share one SuperLink; `run_local_deployment` is the one-shot version.
    `resume`: the ServerApp continues from the checkpoint an interrupted run left in the work
    folder (the SuperLink, the ServerApp or the launcher died), instead of starting afresh.
    """
    say = progress or (lambda message: None)
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise RunExists(f"{out} already exists; choose another --out or pass --overwrite")
    work = federation.work_dir
    if resume:
        require_checkpoint(work)
    timings: dict[str, float] = {}

    say("partitioning the data")
    t = time.perf_counter()
    cfg = _resolved(cfg)
    data = federated_data(cfg)
    n = len(data.clients)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"clients": n})})
    shares = work / "shares"  # raw records of the sites: owner-only, removed after the run
    shutil.rmtree(shares, ignore_errors=True)
    shares.mkdir(mode=0o700, parents=True)
    try:
        paths = [save_records(recs, shares / f"{name}.parquet",
                              data.specs[i] if data.specs else data.spec)
                 for i, (name, recs) in enumerate(zip(data.names, data.clients))]
        if data.specs is not None:  # sites of different schemas: encoders, their own tests
            cfg = resolve_inputs(cfg, data.specs)
            for i, path in enumerate(paths):
                save_site_tests(data, i, path)
        timings["partition_seconds"] = time.perf_counter() - t
        return _run_on_shares(federation, cfg, data, paths, out, overwrite=overwrite,
                              resume=resume, timeout=timeout, command=command, say=say,
                              timings=timings)
    finally:
        shutil.rmtree(shares, ignore_errors=True)


def _default_timeout(cfg: RunConfig) -> float | None:
    """A bound on the whole run when none is given: every round (and the questions before and
    after them) may take one round timeout, twice over."""
    per_round = cfg.federation.round_timeout
    return None if per_round is None else 2 * (cfg.federation.rounds + 3) * per_round + 300


def server_dir(work: Path) -> Path:
    """The ServerApp's out-dir in a work folder: its checkpoints, then the run directory that
    moves to `out` once complete."""
    return Path(work) / "run"


def resumable(work: Path) -> bool:
    """Whether an interrupted deployment left a checkpoint in `work` to continue from."""
    return (server_dir(work) / CHECKPOINT).exists()


def require_checkpoint(work: Path) -> None:
    if not resumable(work):
        raise FileNotFoundError(f"nothing to resume: no checkpoint in {server_dir(work)}")


def _run_on_shares(federation: LocalFederation, cfg: RunConfig, data, paths: list[Path],
                   out: Path, *, overwrite: bool, resume: bool, timeout: float | None,
                   command: str | None, say: Callable[[str], None],
                   timings: dict) -> DeploymentResult:
    work, n = federation.work_dir, len(paths)
    run_dir = server_dir(work)
    # Each site gets a folder of its own, as in simulation; a site of a federation across
    # schemas keeps its detector there (here: the work folder, collected into `out/sites/NAME`
    # with the run), the others never write to it.
    sites_dir = work / "sites"
    if not resume:  # a checkpoint left there would be resumed by the ServerApp
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(sites_dir, ignore_errors=True)
    run_dir.mkdir(exist_ok=True)
    (run_dir / DEPLOYMENT_FILE).write_text(json.dumps({
        "partitions": describe(data.clients, data.names), "data_notes": data.notes,
        "train_attacks": sorted(set(np.concatenate([c.attack for c in data.clients]).astype(str))),
        "command": command,
        "deployment": {"supernodes": n, "tls": federation.tls, "supernode_auth": federation.auth,
                       "superlink": federation.address, "front_door": federation.front_door,
                       "sites_connect_to": federation.fleet_address,
                       "app_signed_by": federation.app_key.fingerprint,
                       "flwr_version": _flwr_version()},
    }, indent=2, default=str))

    t = time.perf_counter()
    keys: list[Path | None] = [None] * n
    if federation.auth:
        say(f"registering {n} SuperNode keys")
        pairs = generate_supernode_keys(federation.keys_dir, n)
        federation.register([public for _, public in pairs])
        keys = [private for private, _ in pairs]
    say(f"starting {n} SuperNodes")
    nodes = [federation.start_supernode(name, {"partition-id": i, "num-partitions": n,
                                               "data-path": str(path), "name": name,
                                               "out-dir": str(sites_dir / name)}, key)
             for i, (name, path, key) in enumerate(zip(data.names, paths, keys))]
    try:
        app = write_signed_app(work, federation.app_key, overwrite=True)  # its own folder
        run_id = federation.submit(app.folder, {CONFIG_KEY: cfg.model_dump_json(),
                                                "out-dir": str(run_dir),
                                                SIGNATURE_KEY: app.signature})
        say(f"run {run_id}: {cfg.federation.rounds} rounds on {n} SuperNodes")
        info = federation.wait(run_id, timeout=timeout or _default_timeout(cfg), watch=nodes,
                               min_sites=min(cfg.federation.min_fit_clients, len(nodes)))
    finally:  # their shares go away with this run: so do they
        federation.stop_processes(nodes)
    timings["deployment_seconds"] = time.perf_counter() - t
    status = str(info.get("status"))
    if status != FINISHED or not (run_dir / "metrics.json").exists():
        details = info.get("status-details") or "no metrics.json was written"
        raise DeploymentError(f"run {run_id} ended with status {status!r}: {details}\n"
                              f"{federation.report()}")

    say("collecting the results")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["timings"] = {**timings, **metrics.get("timings", {})}
    metrics["deployment"] = {"run_id": str(run_id), **metrics.get("deployment", {}),
                             "status": status,
                             **{k: info[k] for k in ("elapsed", "network-traffic", "compute-time")
                                if k in info}}
    metrics_path.write_text(json.dumps(metrics, indent=2))
    with staged_dir(out, overwrite=overwrite) as stage:
        for item in run_dir.iterdir():
            shutil.move(str(item), str(stage / item.name))
        if sites_dir.is_dir():
            shutil.move(str(sites_dir), str(stage / "sites"))
        shutil.copytree(federation.logs, stage / "logs")
    return DeploymentResult(out, run_id, status, work, metrics["timings"])


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def run_local_deployment(cfg: RunConfig, out: str | Path, work_dir: str | Path | None = None, *,
                         tls: bool = True, auth: bool = True, front_door: bool = True,
                         overwrite: bool = False, resume: bool = False,
                         timeout: float | None = None, command: str | None = None,
                         progress: Callable[[str], None] | None = None) -> DeploymentResult:
    """A SuperLink and one SuperNode per client on this machine; the run ends up in `out`.

    `work_dir` (default: `.NAME.deploy` next to `out`) holds the certificates, keys and logs
    (and, during the run only, the sites' data shares); a default one is removed after success and kept after a failure, to read the
    logs. Every process started is stopped before this returns or raises. A failed run's work
    folder keeps the ServerApp's last checkpoint: `resume` starts a new SuperLink and SuperNodes
    there, and the federation continues after the last completed round.
    """
    out = Path(out).resolve()
    default_work = work_dir is None
    work = Path(work_dir).resolve() if work_dir else out.parent / f".{out.name}.deploy"
    federation = LocalFederation(work, tls=tls, auth=auth, front_door=front_door)  # checks options
    if resume:  # before any process starts
        require_checkpoint(work)
    if default_work and not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda message: None)
    say("starting the SuperLink")
    try:
        with federation:
            result = deploy_on(federation, cfg, out, overwrite=overwrite, resume=resume,
                               timeout=timeout, command=command, progress=progress)
            say("stopping the federation")
    except DeploymentError as exc:
        again = ("; the last completed round is checkpointed there: continue with the same "
                 "command and --resume" if resumable(work) else "")
        raise DeploymentError(f"{exc}\n(certificates, keys and logs kept in {work}{again})"
                              ) from exc
    if default_work:
        shutil.rmtree(work, ignore_errors=True)
    return result
