"""Flower ClientApp and ServerApp: thin shells that move arrays, statistics and metrics.

One ClientApp and one ServerApp serve every detector kind (the run configuration's `detector`
picks the `fedlstm.tasks` plug-in), in simulation (`run_simulation`, configuration passed in by
closure because the simulation engine gives the apps an empty run config) and in deployment
(`flwr run`, configuration in the run config's `config`, as JSON, on both sides). Messages carry
the federation's state (weights, merged preprocessing, round numbers), never the configuration.
We use Flower's workflow API (`DefaultWorkflow` with `LegacyContext`) because SecAgg+ exists only
there in flwr 1.42.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig, SimpleClientManager
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedlstm.config import RunConfig
from fedlstm.data.schemas import get_spec
from fedlstm.federation.attacks import site_attack
from fedlstm.federation.audit import GuardedGrid
from fedlstm.federation.client import ClientTask
from fedlstm.federation.codec import parse
from fedlstm.federation.compression import (
    CodecStrategy,
    Float32Model,
    UnpackedMasks,
    compression_mod,
    pack_masked,
    secagg_ranges,
)
from fedlstm.federation.deploy.app import CONFIG_KEY
from fedlstm.federation.deploy.launch import write_deployed_run
from fedlstm.federation.networks import (
    NetworkServer,
    NetworkSite,
    is_heterogeneous,
    keep_private,
    restore_private,
)
from fedlstm.federation.partitions import load_client_records
from fedlstm.federation.questions import NOT_HELD, HeldModels, with_held_weights
from fedlstm.federation.robust import (
    ROBUST_STRATEGIES,
    CappedCounts,
    NormBounded,
    Reputation,
    robust_strategy,
)
from fedlstm.federation.server import ServerTask, sampled_clients
from fedlstm.federation.sites import load_tests
from fedlstm.tasks import task_for

log = logging.getLogger(__name__)

# Key names of Flower's legacy get_properties messages (flwr/compat/common/recorddict_compat.py).
_PROPS_IN, _PROPS_OUT = "getpropertiesins.config", "getpropertiesres.properties"


# --- client ------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _site(data_path: str, config_json: str, name: str, index: int = 0,
          out_dir: str | None = None) -> ClientTask:
    """One site per process and data file: Flower builds a new client for every message.
    `index` is the site's partition id (a simulated attack makes some of them malicious)."""
    cfg = RunConfig.model_validate_json(config_json)
    records, spec = load_client_records(data_path, get_spec(cfg.data.spec_name),
                                        lenient=cfg.data.lenient,
                                        max_bad_share=cfg.data.max_bad_share)
    attack = site_attack(cfg.federation, index)
    if is_heterogeneous(cfg):  # its own schema; its test sets (if any) beside its data file
        path = Path(data_path)
        tests = {p.name[len(path.stem) + 6:-8].replace("~", "/"):
                 load_client_records(p, spec)[0]
                 for p in sorted(path.parent.glob(f"{path.stem}.test.*.parquet"))}
        return NetworkSite(task_for(cfg), records, spec, name, tests, attack, out_dir)
    return ClientTask(task_for(cfg), records, spec, name, attack)


class FlowerClient(NumPyClient):
    def __init__(self, data_path: str, name: str, config_json: str, index: int = 0,
                 state=None, out_dir: str | None = None):
        self.data_path, self.name, self.config_json = data_path, name, config_json
        self.index, self.state = index, state  # the node's context state (a site's encoder)
        self.out_dir = out_dir  # where a site of a networks federation keeps its detector

    def _state(self) -> ClientTask:
        return _site(self.data_path, self.config_json, self.name, self.index, self.out_dir)

    def _site(self, config: dict) -> ClientTask:
        site = self._state()
        if self.state is not None:
            restore_private(site, self.state)
        site.take_preprocessing(config)
        return site

    def get_properties(self, config):
        site = self._state()
        config = dict(config)
        if self.state is not None:
            restore_private(site, self.state)
            config = with_held_weights(config, self.state)
        return site.answer(config)

    def fit(self, parameters, config):
        site = self._site(config)
        result = site.fit(parameters, int(config["local_epochs"]),
                          float(config.get("proximal_mu", 0.0)), seed=int(config["seed"]),
                          server_round=int(config.get("server_round", 1)))
        if self.state is not None:
            keep_private(site, self.state)
        return result

    def evaluate(self, parameters, config):
        return self._site(config).evaluate(parameters)


def _when_secagg(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's SecAgg+ mod, for runs whose server asked for it (one app serves every mode)."""
    if msg.metadata.message_type == MessageType.TRAIN and \
            SECAGG_CONFIGS in msg.content.config_records:
        # Flower's quantisation rounds with numpy's global generator: seeded by the site's
        # configuration, the run's seed and the round, so that a rerun sends the same sums.
        fit = msg.content.config_records.get("fitins.config", {})
        group = str(msg.metadata.group_id)
        np.random.seed([zlib.crc32(repr(sorted(ctxt.node_config.items())).encode()),
                        int(fit.get("seed", 0)) & 0xFFFFFFFF, int(group) if group.isdigit() else 0])
        return pack_masked(secaggplus_mod(msg, ctxt, call_next), ctxt)
    return call_next(msg, ctxt)


def _when_clipping(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's client-side fixed clipping, for runs whose server applies client-level DP."""
    fit_config = msg.content.config_records.get("fitins.config") \
        if msg.metadata.message_type == MessageType.TRAIN else None
    if fit_config is not None and "clipping_norm" in fit_config:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _site_names(partition_dir: str) -> tuple[str, ...]:
    """Simulation: the sites' names by partition id (e.g. from their files), when given."""
    path = Path(partition_dir) / "names.json"
    return tuple(json.loads(path.read_text())) if path.exists() else ()


def make_client_app(partition_dir: str | None = None, cfg: RunConfig | None = None,
                    mods: tuple = (), sites_out: str | None = None) -> ClientApp:
    """The site's app: simulation passes `partition_dir` and `cfg`; deployment reads its data
    file from the node config and the configuration from the run config. `mods` are further
    Flower mods, innermost (tests inject faults there). `sites_out`: where each site of a
    networks federation writes its own detector (`SITES_OUT/NAME/`; deployment: the node
    config's `out-dir`)."""
    config_json = cfg.model_dump_json() if cfg is not None else None

    def client_fn(context: Context):
        node = context.node_config
        pid = int(node.get("partition-id", 0))
        path = node.get("data-path") or f"{partition_dir}/client-{pid}.parquet"
        names = _site_names(partition_dir) if partition_dir else ()
        name = node.get("name") or (names[pid] if pid < len(names) else f"client-{pid}")
        out = node.get("out-dir") or (f"{sites_out}/{name}" if sites_out else None)
        return FlowerClient(str(path), str(name),
                            config_json or str(context.run_config[CONFIG_KEY]), pid,
                            context.state, str(out) if out else None).to_client()

    # SecAgg+ outermost, so updates are clipped before they are masked (Flower's fl-dp-sa order);
    # compression outside clipping, so it packs the clipped update (and keeps the bound).
    return ClientApp(client_fn=client_fn,
                     mods=[_when_secagg, compression_mod, _when_clipping, *mods])


# --- server ------------------------------------------------------------------------------------
class FederationStalled(RuntimeError):
    """Too few sites are connected to go on."""


def query_clients(grid: Grid, config: dict, n_clients: int, timeout: float | None = 600.0,
                  min_answers: int = 1, held: HeldModels | None = None) -> list[dict]:
    """Ask every connected site one aggregate-only question (`config["phase"]`); the answers of
    the sites that gave one (a site that failed or went away is named in the log and left out;
    fewer than `min_answers` is an error). `held`: the model each site holds from an earlier
    question of this run, which the question then names instead of carrying it."""
    phase = config.get("phase")
    deadline = time.monotonic() + (timeout or 600.0)
    while len(node_ids := list(grid.get_node_ids())) < n_clients:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of {n_clients} sites connected")
        time.sleep(0.5)
    held, asked = held or HeldModels(), len(node_ids)
    answers, errors = [], []
    for attempt in range(2):  # a site that no longer holds the model is sent it once more
        messages = [Message(content=RecordDict({_PROPS_IN: ConfigRecord(
            held.question_for(node_id, config))}), dst_node_id=node_id,
            message_type="get_properties") for node_id in node_ids]
        node_ids = []
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                if NOT_HELD in reply.error.reason and attempt == 0:
                    held.forget(node)
                    node_ids.append(node)
                    continue
                log.warning("site %s did not answer %r: %s", node, phase, reply.error.reason)
                errors.append(reply.error.reason)
                continue
            held.answered(node, config)
            answers.append(dict(reply.content.config_records[_PROPS_OUT]))
        if not node_ids:
            break
    if len(answers) < min_answers:
        # the sites' own error first: "did not answer within 600 s" read as a timeout when a
        # site had failed after seconds
        why = f"; a site's error: {(errors[0].strip().splitlines() or ['?'])[-1]}" if errors else \
            f" within {timeout or 600:.0f} s"
        raise FederationStalled(f"{len(answers)} of {asked} sites answered {phase!r}, "
                                f"{min_answers} needed{why} (see the sites' logs; "
                                "federation.round_timeout, min_fit_clients)")
    return answers


def collect_statistics(grid: Grid, task: ServerTask, n_clients: int,
                       timeout: float | None = 600.0) -> None:
    """Before round 1: the federation's preprocessing (`ServerTask.prepare_preprocessing`): every
    site sends statistics (never rows), noisy histograms, or, when agreed beforehand, nothing."""
    task.prepare_preprocessing(lambda question: query_clients(
        grid, question, n_clients, timeout,
        min_answers=min(task.cfg.federation.min_fit_clients, n_clients)))


def build_strategy(task: ServerTask) -> Strategy:
    fed = task.cfg.federation
    shared = task.preprocessor_message()
    n = fed.clients
    min_fit = min(max(fed.min_fit_clients, 1), n)

    def fit_config(server_round: int) -> dict:
        return {**shared, "local_epochs": fed.local_epochs,
                "server_round": server_round + task.round_offset,
                "seed": task.cfg.seed * 100_003 + server_round + task.round_offset}

    def evaluate_config(server_round: int) -> dict:
        return {**shared}

    common = dict(
        # Every site is waited for before round 1 (the statistics; none under `agreed`,
        # where no site is asked); after that a round goes on
        # with whoever is connected, as long as min_fit_clients are.
        fraction_fit=fed.fraction_fit, min_fit_clients=min_fit, min_available_clients=min_fit,
        fraction_evaluate=1.0 if fed.evaluate_clients else 0.0,
        min_evaluate_clients=n if fed.evaluate_clients else 0,
        initial_parameters=ndarrays_to_parameters(task.initial_weights()),
        on_fit_config_fn=fit_config, on_evaluate_config_fn=evaluate_config,
        # Flower does not tell metric hooks the round. Per round it runs fit, then evaluate_fn
        # (which stores the round in task.last_round), then federated evaluation.
        fit_metrics_aggregation_fn=lambda res: task.record_fit(task.last_round + 1, res),
        evaluate_metrics_aggregation_fn=lambda res: task.record_evaluate(task.last_round, res),
        evaluate_fn=_evaluate_fn(task),
    )
    if fed.strategy == "fedprox":
        strategy = FedProx(proximal_mu=fed.proximal_mu, **common)
    elif fed.strategy == "fedadam":
        strategy = FedAdam(eta=fed.server_lr, eta_l=task.cfg.train.lr, **common)
    elif fed.strategy in ROBUST_STRATEGIES:
        strategy = robust_strategy(fed.strategy, num_malicious=int(fed.tolerate * n),
                                   n_sites=sampled_clients(fed), **common)
    else:
        strategy = FedAvg(**common)
    # Defences around the aggregation rule, innermost first (`fedlstm.federation.robust`).
    if "norm-bound" in fed.defences:
        strategy = NormBounded(strategy, max_norm=fed.norm_bound, multiplier=fed.norm_multiplier)
    if "reputation" in fed.defences:
        strategy = Reputation(strategy)
    if "cap-counts" in fed.defences:
        strategy = CappedCounts(strategy)
    task.defences = strategy
    if fed.client_dp:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=fed.client_dp_noise, clipping_norm=fed.client_dp_clip,
            num_sampled_clients=sampled_clients(fed))
    # Outermost: every strategy above sees plain model weights. Also uncompressed, where it
    # only keeps a site from being sent the model it holds.
    strategy = CodecStrategy(strategy, parse(fed.compress),
                             error_feedback=fed.compress_feedback,
                             downlink=fed.compress_downlink, seed=task.cfg.seed,
                             secagg=fed.secagg)
    return Float32Model(strategy) if fed.secagg or fed.client_dp else strategy


def _evaluate_fn(task: ServerTask):
    def evaluate(server_round: int, weights: list[np.ndarray], config: dict):
        loss, metrics = task.on_global_model(server_round, weights)
        task.last_round = server_round
        return loss, metrics
    return evaluate


class BoundedClientManager(SimpleClientManager):
    """Flower's client manager waits up to a day for the sites a round needs; a federation
    whose sites are gone should fail within a round timeout, saying so."""

    def __init__(self, timeout: float | None):
        super().__init__()
        self.timeout = timeout

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        limit = timeout if self.timeout is None else min(timeout, self.timeout)
        if not super().wait_for(num_clients, int(max(limit, 1))):
            raise FederationStalled(f"only {len(self)} site(s) connected, {num_clients} needed, "
                                    f"after waiting {limit:.0f} s: a site stopped or lost its "
                                    "connection (see federation.min_fit_clients, round_timeout)")
        return True


def guarded(grid: Grid, task: ServerTask) -> GuardedGrid:
    """The grid every exchange of a run goes through: replies checked against the task's
    contract, recorded when `task.audit` asks for it, interrupted by `task.stop`."""
    if isinstance(grid, GuardedGrid):
        return grid
    guard = GuardedGrid(grid, task.reply_contract, record=task.audit is not None,
                        keep_arrays=bool(task.audit), stop=task.stop,
                        timeout=task.cfg.federation.round_timeout, ledger=task.ledger)
    if task.audit is not None:
        task.audit = guard
    return guard


def run_server(grid: Grid, context: Context, task: ServerTask) -> ServerTask:
    grid = guarded(grid, task)
    fed = task.cfg.federation
    collect_statistics(grid, task, fed.clients, timeout=fed.round_timeout)
    strategy = build_strategy(task)
    rounds = task.remaining_rounds
    if rounds == 0:
        return task
    # A site that hangs (or is stopped) costs a round at most `round_timeout`; the round goes on
    # with the sites that answered, as long as Flower's strategy accepts failures (the default).
    legacy = LegacyContext(context=context, strategy=strategy,
                           config=ServerConfig(num_rounds=rounds, round_timeout=fed.round_timeout),
                           client_manager=BoundedClientManager(fed.round_timeout))
    fit_workflow = None
    if fed.secagg:
        # SecAgg+ weights each masked update by num_examples / max_weight; max_weight must be
        # at least the largest client's count or the sum overflows (counts from the stats phase).
        largest = max((s["count"] for s in task.statistics_received), default=1)
        fit_workflow = SecAggPlusWorkflow(num_shares=fed.secagg_shares,
                                          reconstruction_threshold=fed.secagg_threshold,
                                          max_weight=float(largest + 1),
                                          timeout=fed.round_timeout,
                                          **secagg_ranges(parse(fed.compress), fed.clients))
    if fed.secagg:  # the sites bit-pack their masked vectors; Flower reads them as it sent them
        grid = UnpackedMasks(grid, lambda: tuple(np.shape(w) for w in task.weights))
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    return task


def finish(grid: Grid, task: ServerTask):
    """After the last round: the detector, asking the sites what its kind needs to calibrate."""
    fed = task.cfg.federation
    # Every connected site is asked; a site that stopped during training is not waited for.
    enough = min(fed.min_fit_clients, fed.clients)
    held = HeldModels()  # each site is sent the final model once, for every question
    return task.detector(lambda question: query_clients(
        grid, question, enough, fed.round_timeout, min_answers=enough, held=held))


def make_server_app(task: ServerTask | None = None) -> ServerApp:
    """Simulation passes the `task` (the caller writes the run from `task.result`); deployment
    builds it from the run config and writes the run directory at `out-dir`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        server = task if task is not None else _task_from_run_config(context)
        grid = guarded(grid, server)
        run_server(grid, context, server)
        server.result = finish(grid, server)
        if task is None:
            write_deployed_run(server, context.run_config, context.run_id)

    return app


def _task_from_run_config(context: Context) -> ServerTask:
    """Deployment: the run config holds the configuration and an output folder."""
    cfg = RunConfig.model_validate_json(str(context.run_config[CONFIG_KEY]))
    if is_heterogeneous(cfg):  # the sites score their own test sets
        return NetworkServer(task_for(cfg), Path(str(context.run_config["out-dir"])))
    spec, tests = load_tests(cfg)
    return ServerTask(task_for(cfg), spec, tests, Path(str(context.run_config["out-dir"])))


client_app = make_client_app()
server_app = make_server_app()
