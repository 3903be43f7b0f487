"""Federated unsupervised detection: FedAvg on each site's normal windows, then μ, Σ and ζ from
merged per-site aggregates.

After training, the server asks every site two aggregate-only questions through the same
`get_properties` channel as the preprocessing statistics (`apps.CLIENT_QUERIES`):
- "error-stats": the global model's error sums on the site's normal validation windows
  (count, Σe, Σeeᵀ, and the two higher sums Ledoit-Wolf needs) -> the server fits μ, Σ;
- "score-histogram": counts of normal and anomalous validation windows per score bin, for bin
  edges the server broadcasts -> the server picks ζ.
No per-record error, score or row leaves a site. The sites are `ClientTask`s and the server a
`ServerTask` (framework-free); Flower only moves the messages (`run_federated_anomaly`), and
`run_inprocess` drives the same calls without Flower's engine.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fedlstm.anomaly_pipeline import (
    AnomalyRunConfig,
    SiteWindows,
    new_anomaly_model,
    new_detector,
    normal_only,
    site_windows,
)
from fedlstm.data.readers import Records
from fedlstm.data.schemas import DatasetSpec, get_spec
from fedlstm.detection.anomaly import ErrorStats, MahalanobisDetector, ScoreHistogram
from fedlstm.features import FlowPreprocessor, PreprocessingStats, merge_all
from fedlstm.federation import apps
from fedlstm.federation.audit import npz_check
from fedlstm.federation.client import ClientTask
from fedlstm.federation.partitions import load_client_records
from fedlstm.federation.server import ServerTask
from fedlstm.models import get_weights, set_weights
from fedlstm.models.sequence import SequenceObjective, error_vectors
from fedlstm.pipeline import make_preprocessor
from fedlstm.training.loop import fit

log = logging.getLogger(__name__)


# --- what moves: weights and matrices as bytes in a config record ---------------------------------
def arrays_to_bytes(arrays: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def bytes_to_arrays(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


# --- a site ------------------------------------------------------------------------------------
class AnomalyClientTask(ClientTask):
    """A site that learns normal traffic: its statistics, training and answers use normal records
    (labels pick them); its labelled validation records only ever leave as histogram counts."""

    cfg: AnomalyRunConfig

    def statistics(self):
        return make_preprocessor(self.spec, self.cfg).compute_stats(
            normal_only(self.train_records).frame)

    def use_preprocessing(self, global_preprocessor: dict | None) -> None:
        if self.cfg.federation.preprocessing == "local" or global_preprocessor is None:
            key, preprocessor = "local", None
        else:
            key = json.dumps(global_preprocessor, sort_keys=True)
            preprocessor = FlowPreprocessor.from_dict(global_preprocessor)
        if key == self._windows_key:
            return
        if preprocessor is None:
            preprocessor = make_preprocessor(self.spec, self.cfg).fit(
                normal_only(self.train_records).frame)
        self.site: SiteWindows = site_windows(self.train_records, self.val_records, preprocessor,
                                              self.cfg)
        self.train_windows, self.val_windows = self.site.train, self.site.sigma
        self._windows_key = key

    def _model(self, weights: list[np.ndarray]) -> torch.nn.Module:
        model = new_anomaly_model(self.cfg, self.train_windows.n_features)
        set_weights(model, weights)
        return model

    def fit(self, weights, epochs, proximal_mu=0.0, seed=0, **_round_info):
        model = self._model(weights)
        train_cfg = self.cfg.train.model_copy(update={"proximal_mu": proximal_mu, "patience": None})
        history = fit(model, self.train_windows, None, train_cfg, 2, seed=seed, epochs=epochs,
                      objective=SequenceObjective())
        metrics = {"train_loss": history.epochs[-1]["train_loss"], "client": self.name,
                   "seconds": history.seconds}
        return get_weights(model), len(self.train_windows), metrics

    def evaluate(self, weights):
        if not len(self.val_windows):
            return 0.0, 0, {"client": self.name}
        torch.set_num_threads(self.cfg.train.threads)
        loss = SequenceObjective().evaluate(self._model(weights), self.val_windows)["loss"]
        return loss, len(self.val_windows), {"val_loss": loss, "client": self.name}

    # -- the two calibration answers -----------------------------------------------------------
    def error_stats(self, weights: list[np.ndarray]) -> ErrorStats:
        torch.set_num_threads(self.cfg.train.threads)
        return ErrorStats.of(error_vectors(self._model(weights), self.site.sigma))

    def score_histogram(self, weights: list[np.ndarray], mean: np.ndarray, covariance: np.ndarray,
                        edges: np.ndarray) -> ScoreHistogram:
        torch.set_num_threads(self.cfg.train.threads)
        errors = error_vectors(self._model(weights), self.site.threshold)
        diff = errors - mean
        scores = (diff * (diff @ _precision(covariance))).sum(axis=1)
        return ScoreHistogram.of(scores, self.site.threshold_is_anomaly, edges)


def _precision(covariance: np.ndarray) -> np.ndarray:
    p = np.linalg.inv(covariance)
    return (p + p.T) / 2


def _error_stats_answer(task: ClientTask, config: dict) -> dict:
    stats = task.error_stats(bytes_to_arrays(config["weights"]))
    return {"error_stats": stats.to_bytes()}


def _score_histogram_answer(task: ClientTask, config: dict) -> dict:
    mean, covariance = bytes_to_arrays(config["mean_cov"])
    edges = edges_from_config(config)
    hist = task.score_histogram(bytes_to_arrays(config["weights"]), mean, covariance, edges)
    return {"histogram": hist.to_bytes()}


apps.CLIENT_QUERIES["error-stats"] = _error_stats_answer
apps.CLIENT_QUERIES["score-histogram"] = _score_histogram_answer


def edges_from_config(config: dict) -> np.ndarray:
    from fedlstm.detection.anomaly import score_bin_edges

    return score_bin_edges(int(config["n_features"]), int(config["bins"]),
                           float(config["bin_low"]), float(config["bin_high"]))


# --- the server --------------------------------------------------------------------------------
class AnomalyServerTask(ServerTask):
    cfg: AnomalyRunConfig

    def __init__(self, cfg, spec, tests=None, out_dir=None):
        super().__init__(cfg, spec, tests, out_dir)
        self.detector: MahalanobisDetector | None = None
        self.answers_received: list[dict] = []  # phase, client, keys and sizes: the audit trail
        self._histogram_bins = 0  # set when the score histograms are asked for

    def declared_answers(self):
        d = self.preprocessor.n_features_out if self.preprocessor is not None else 0
        floats, ints = "f", "iu"
        return {**super().declared_answers(),
                "error-stats": {"error_stats": npz_check({
                    "count": ((), ints), "total": ((d,), floats), "outer": ((d, d), floats),
                    "norm2_total": ((d,), floats), "norm4": ((), floats)})},
                "score-histogram": {"histogram": npz_check({
                    "normal": ((self._histogram_bins,), ints),
                    "anomalous": ((self._histogram_bins,), ints)})}}

    def initial_weights(self):
        resumed = self.load_checkpoint()
        if resumed is not None:
            return resumed
        self.weights = get_weights(new_anomaly_model(self.cfg, self.preprocessor.n_features_out))
        return self.weights

    def model(self) -> torch.nn.Module:
        model = new_anomaly_model(self.cfg, self.preprocessor.n_features_out)
        set_weights(model, self.weights)
        return model

    def record_fit(self, server_round, results):
        n = sum(k for k, _ in results)
        agg = {"train_loss": sum(k * m["train_loss"] for k, m in results) / n}
        rec = self.round_record(server_round)
        rec.update(agg)
        rec["clients_fit"] = {m.get("client", str(i)): {"n": k, "train_loss": m["train_loss"]}
                              for i, (k, m) in enumerate(results)}
        return agg

    def record_evaluate(self, server_round, results):
        results = [(k, m) for k, m in results if k > 0]
        n = sum(k for k, _ in results)
        if not n:
            return {}
        agg = {"val_loss": sum(k * m["val_loss"] for k, m in results) / n}
        self.round_record(server_round).update(agg)
        return agg

    def on_global_model(self, server_round, weights):
        """No per-round test curves: a reconstruction loss on attack traffic means nothing."""
        self.weights = [np.asarray(w) for w in weights]
        self.round_times[server_round + self.round_offset] = time.perf_counter()
        if server_round > 0:
            self.save_checkpoint(server_round + self.round_offset)
        return 0.0, {}

    # -- calibration ----------------------------------------------------------------------------
    def base_query(self) -> dict:
        return {"run_config": self.cfg.model_dump_json(),
                "preprocessor": json.dumps(self.preprocessor.to_dict()),
                "weights": arrays_to_bytes(self.weights)}

    def receive(self, phase: str, answers: list[dict]) -> None:
        self.answers_received += [{"phase": phase, "client": str(a.get("client", "?")),
                                   "keys": sorted(a), "bytes": sum(len(v) for v in a.values()
                                                                   if isinstance(v, bytes))}
                                  for a in answers]

    def calibrate(self, ask: Callable[[dict], list[dict]], mode: str = "federated") -> MahalanobisDetector:
        """μ, Σ from merged error sums, then ζ from merged score histograms."""
        self.detector = new_detector(self.spec, self.preprocessor, self.model(), self.cfg,
                                     {"dataset": self.spec.name, "mode": mode,
                                      "protocol": self.cfg.data.protocol,
                                      "rounds": max(self.rounds, default=0)})
        base = self.base_query()
        answers = ask({**base, "phase": "error-stats"})
        self.receive("error-stats", answers)
        self.detector.fit_error_stats(merge_all([ErrorStats.from_bytes(bytes(a["error_stats"]))
                                                 for a in answers]))
        edges = self.detector.bin_edges(self.cfg.anomaly.score_bins)
        self._histogram_bins = len(edges)
        hist_query = {**base, "phase": "score-histogram", "n_features": len(self.detector.mean_),
                      "bins": len(edges), "bin_low": float(edges[1]), "bin_high": float(edges[-1]),
                      "mean_cov": arrays_to_bytes([self.detector.mean_, self.detector.covariance_])}
        answers = ask(hist_query)
        self.receive("score-histogram", answers)
        self.detector.fit_threshold(merge_all([ScoreHistogram.from_bytes(bytes(a["histogram"]), edges)
                                               for a in answers]))
        return self.detector

    def bundle(self, mode: str = "federated") -> MahalanobisDetector:
        if self.detector is None:
            raise RuntimeError("the federation has not calibrated the detector yet")
        return self.detector


# --- without Flower's engine -------------------------------------------------------------------
def answer(task: ClientTask, config: dict) -> dict:
    """What `FlowerClient.get_properties` does on a site, called directly."""
    if "preprocessor" in config:
        task.use_preprocessing(json.loads(str(config["preprocessor"])))
    return {**apps.CLIENT_QUERIES[str(config["phase"])](task, config), "client": task.name}


def run_inprocess(server: ServerTask, clients: list[ClientTask]) -> ServerTask:
    """FedAvg (weighted by windows, as Flower's FedAvg) with every site, then calibration when the
    server is an `AnomalyServerTask`. Works for the supervised Fed-LSTM too (ClientTask/ServerTask)."""
    cfg = server.cfg
    config = {"phase": "preprocessing"}
    server.merge_statistics([PreprocessingStats.from_bytes(bytes(answer(c, config)["statistics"]))
                             for c in clients])
    pre = server.preprocessor.to_dict()
    weights = server.initial_weights()
    server.on_global_model(0, weights)
    for rnd in range(1, server.remaining_rounds + 1):
        results = []
        for c in clients:
            c.use_preprocessing(pre)
            results.append(c.fit(weights, cfg.federation.local_epochs,
                                 cfg.federation.proximal_mu if cfg.federation.strategy == "fedprox" else 0.0,
                                 seed=cfg.seed * 100_003 + rnd + server.round_offset))
        n = sum(k for _, k, _ in results)
        weights = [sum(w[i] * (k / n) for w, k, _ in results).astype(weights[i].dtype)
                   for i in range(len(weights))]
        server.record_fit(rnd, [(k, m) for _, k, m in results])
        server.on_global_model(rnd, weights)
        server.last_round = rnd
        if cfg.federation.evaluate_clients:
            server.record_evaluate(rnd, [(k, m) for _, k, m in (c.evaluate(weights) for c in clients)])
    if isinstance(server, AnomalyServerTask):
        server.calibrate(lambda query: [answer(c, query) for c in clients])
    return server


# --- with Flower -------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _anomaly_task(data_path: str, config_json: str, name: str) -> AnomalyClientTask:
    cfg = AnomalyRunConfig.model_validate_json(config_json)
    records, spec = load_client_records(data_path, get_spec(cfg.data.spec_name),
                                        lenient=cfg.data.lenient)
    return AnomalyClientTask(records, cfg, spec, name)


class AnomalyFlowerClient(apps.FlowerClient):
    """`FlowerClient` whose site is an `AnomalyClientTask`: fit, evaluate and every query answer
    go through the same handlers."""

    def _task(self, config: dict) -> AnomalyClientTask:
        task = _anomaly_task(self.data_path, str(config["run_config"]), self.name)
        if "preprocessor" in config:
            task.use_preprocessing(json.loads(str(config["preprocessor"])))
        return task


def make_client_app(partition_dir: str):
    from flwr.client import ClientApp

    def client_fn(context):
        pid = context.node_config.get("partition-id", 0)
        return AnomalyFlowerClient(f"{partition_dir}/client-{pid}.parquet", f"client-{pid}").to_client()

    return ClientApp(client_fn=client_fn)


def make_server_app(task: AnomalyServerTask):
    from flwr.server import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        grid = apps.guarded(grid, task)  # calibration answers are checked like the rest
        apps.run_server(grid, context, task)  # preprocessing statistics, then FedAvg rounds
        fed = task.cfg.federation
        task.calibrate(lambda query: apps.query_clients(grid, query, fed.clients,
                                                        fed.round_timeout))

    return app


def simulate(task: AnomalyServerTask, partition_dir: Path, n_clients: int) -> None:
    from fedlstm.federation.simulation import simulate as run_simulation

    run_simulation(make_server_app(task), make_client_app(str(partition_dir)), n_clients, task.stop)
    if task.detector is None or not any("train_loss" in r for r in task.rounds.values()):
        raise RuntimeError("the federation finished without training or calibrating a detector "
                           "(did the clients fail? rerun with -v); see the log")


def federate_anomaly(cfg: AnomalyRunConfig, spec: DatasetSpec, clients: list[Records],
                     names: list[str], tests: dict[str, Records], stage: Path,
                     engine: str = "flower") -> AnomalyServerTask:
    """Train and calibrate over `clients`' records; `engine` = flower | inprocess."""
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"clients": len(clients), "server_test_curves": False})})
    task = AnomalyServerTask(cfg, spec, tests, stage)
    if engine == "inprocess":
        sites = [AnomalyClientTask(recs, cfg, spec, name) for recs, name in zip(clients, names)]
        run_inprocess(task, sites)
        return task
    from fedlstm.federation.simulation import FederatedData, private_shares

    sites = FederatedData(spec, clients, names, tests, {})
    with private_shares(sites, spec) as part_dir:  # no copies of client data outlive the run
        simulate(task, part_dir, len(clients))
    return task
