"""A federation across networks whose logs have different schemas (the paper's Networks A, B, C:
NSL-KDD, KDD Cup 99 and UNSW-NB15 in one Fed-LSTM).

No two sites need to share a column. Each site preprocesses with its own statistics and keeps a
private input encoder (`models.encoded.EncodedLSTM`) from its features into a shared space; only
the LSTM body and the head are averaged, so the server never receives an encoder weight, a
column name or a statistic (before round 1 a site sends only its record count, the weight
SecAgg+ needs). Families are mapped to one shared taxonomy (`data.taxonomy`).

With `federation.inputs=harmonised`, the common flow vocabulary (`features.harmonise`: duration,
bytes and packets each way, protocol, service and state classes) goes through a shared layer,
and every site's remaining features through its encoder.

After the last round every site aligns its encoder to the final body (the encoder alone trains
against it), builds its own detector (its preprocessing, its encoder, the shared body), sets its
threshold on its own validation data and scores its own test sets; it
answers the server's "site-report" question with those scores only.

With `--detector hybrid` the federation still trains the supervised LSTM; after the last round
each site also trains its own LSTM autoencoder of its normal traffic (it reads the site's
columns, so it stays with the encoder) and its detector is the hybrid: an alert where the
classifier says attack or the autoencoder's error is further from normal traffic than the alert
budget allows on the site's normal validation traffic (`tasks.hybrid`).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedlstm.config import DATASET_DEFAULTS, RunConfig, TrainConfig
from fedlstm.data.readers import Records
from fedlstm.data.spec import NORMAL_FAMILY, DatasetSpec
from fedlstm.data.splits import run_protocol
from fedlstm.data.taxonomy import SHARED_FAMILIES, to_shared
from fedlstm.detection.bundle import ModelBundle
from fedlstm.detection.hybrid import HybridDetector
from fedlstm.features.windows import WindowSet
from fedlstm.federation.client import PREPROCESSING, ClientTask
from fedlstm.federation.partitions import save_records
from fedlstm.federation.server import ServerTask
from fedlstm.models.encoded import (
    PRIVATE,
    EncodedLSTM,
    SiteFamiliesLSTM,
    load_weights,
    private_weights,
    shared_weights,
)
from fedlstm.models.hybrid import SiteHybridLSTM
from fedlstm.models.sequence import LSTMAutoencoder
from fedlstm.tasks import Task
from fedlstm.tasks.base import (
    Check,
    arrays_to_bytes,
    bytes_to_arrays,
    encode_labels,
    training_attacks,
)
from fedlstm.tasks.hybrid import HybridTask
from fedlstm.tasks.supervised import SupervisedTask
from fedlstm.training.loop import fit
from fedlstm.training.objectives import SequenceObjective

log = logging.getLogger(__name__)
SITE_REPORT = "site-report"
MODEL_NAME = "lstm-encoded"
SITE_MODEL_NAME = "lstm-encoded-families"  # a site's detector: with its own head of families
HYBRID_MODEL_NAME = "lstm-encoded-hybrid"  # and with its own autoencoder of normal traffic
_STATE_PRIVATE = "networks.encoder"  # a site's encoder in its Flower context state


def inputs_mode(cfg: RunConfig, specs: list[DatasetSpec]) -> str:
    """shared (one schema: one plain model), or encoders / harmonised (private encoders)."""
    mode = cfg.federation.inputs
    if mode != "auto":
        return mode
    same = len({tuple(s.feature_columns) for s in specs}) == 1
    return "shared" if same else "encoders"


def resolve_inputs(cfg: RunConfig, specs: list[DatasetSpec]) -> RunConfig:
    """The configuration with `federation.inputs` decided for these sites' schemas."""
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"inputs": inputs_mode(cfg, specs)})})


def needs_encoders(cfg: RunConfig) -> bool:
    """Will this configuration federate sites through private encoders?"""
    from fedlstm.data.schemas import get_spec

    fed = cfg.federation
    if fed.inputs == "shared":
        return False
    if fed.partition == "files" or (fed.partition == "iid" and len(cfg.data.train_files) > 1):
        return fed.inputs != "auto" or len(set(cfg.data.site_schemas)) > 1
    if fed.partition != "networks":
        return False
    if fed.inputs != "auto":
        return True
    return inputs_mode(cfg, [get_spec(n) for n in fed.networks]) != "shared"


def is_heterogeneous(cfg: RunConfig) -> bool:
    return cfg.federation.inputs in ("encoders", "harmonised")


def shared_classes(cfg: RunConfig) -> list[str]:
    return [SHARED_FAMILIES[0], "attack"] if cfg.model.task == "binary" else list(SHARED_FAMILIES)


def with_shared_families(records: Records) -> Records:
    """The records with their families in the shared taxonomy (attack names kept as they are)."""
    return Records(records.frame, records.attack, to_shared(records.family), records.is_attack,
                   records.report, records.segment)


def encoder_params(task: Task) -> dict:
    """`EncodedLSTM`'s settings besides its input width: the task's LSTM, the shared space and,
    with harmonised inputs, the common features in front."""
    from fedlstm.features.harmonise import COMMON_FEATURES

    fed = task.cfg.federation
    return {**task.model_params(), "shared_dim": fed.shared_dim,
            "n_common": len(COMMON_FEATURES) if fed.inputs == "harmonised" else 0}


def site_window(cfg: RunConfig, spec: DatasetSpec) -> int:
    """A benchmark network's tuned window length (`config.DATASET_DEFAULTS`), else the run's."""
    return DATASET_DEFAULTS.get(spec.name, {}).get("windows", {}).get("window",
                                                                     cfg.windows.window)


def check_supported(cfg: RunConfig) -> None:
    if cfg.detector not in ("supervised", "hybrid") or cfg.model.name not in ("lstm", MODEL_NAME):
        raise ValueError("a federation across schemas trains the supervised LSTM (private encoders "
                         "and a shared LSTM body), and each site may add its own model of normal "
                         "traffic (--detector hybrid); got "
                         f"detector={cfg.detector}, model={cfg.model.name}")


class NetworkSite(ClientTask):
    """One network of a heterogeneous federation: its own preprocessing and encoder, kept."""

    def __init__(self, task: Task, records: Records, spec: DatasetSpec, name: str = "client",
                 tests: dict[str, Records] | None = None, attack=None, out_dir=None):
        super().__init__(task, records, spec, name, attack)
        # The site's own families name its alerts (its private head); training and the server
        # see the shared taxonomy.
        self.own_train, self.own_val = self.train_records, self.val_records
        self.train_records = with_shared_families(self.own_train)
        self.val_records = with_shared_families(self.own_val)
        self.out_dir = out_dir  # where the site keeps its own detector (None: nowhere)
        # Windows as long as this network's own tuned length (its records' order decides what a
        # window of neighbours means; the shared LSTM reads sequences of any length).
        window = site_window(self.cfg, spec)
        if window != self.cfg.windows.window:
            self.cfg = self.cfg.model_copy(update={"windows": self.cfg.windows.model_copy(
                update={"window": window})})
            self.task = type(task)(self.cfg)
        # The federation trains the supervised LSTM; a hybrid site adds its own model of normal
        # traffic after the last round (`with_normal_model`), calibrated as the hybrid is.
        self.novelty = HybridTask(self.cfg) if self.cfg.detector == "hybrid" else None
        if self.novelty is not None:
            self.task = SupervisedTask(self.cfg)
        self.classes = shared_classes(self.cfg)
        self.tests = tests or {}  # with the site's own families (`scored_records`)
        self.private: list[np.ndarray] | None = None
        self.preprocessor = None
        self.detector = None

    # Its own statistics, always: no other site shares its columns.
    def use_preprocessing(self, global_preprocessor: dict | None = None) -> None:
        if self.windows is not None:
            return
        pre = self.task.fit_preprocessor(self.spec, self.train_records)
        if self.cfg.federation.inputs == "harmonised":
            from fedlstm.features.harmonise import HarmonisedPreprocessor

            pre = HarmonisedPreprocessor(pre, self.spec)
        self.preprocessor = pre
        # the hybrid's windows add normal validation windows (μ, Σ) and the rest (its budget)
        self.windows = (self.novelty or self.task).site_windows(self.train_records,
                                                                self.val_records, pre, self.classes)

    def new_model(self) -> EncodedLSTM:
        self.use_preprocessing()
        # The encoder's first weights are the site's own draw; the body's come from the server.
        torch.manual_seed(self.cfg.seed * 1_000_003 + zlib.crc32(self.name.encode()))
        return EncodedLSTM(self.windows.train.n_features, len(self.classes),
                           **self.model_params())

    def model_params(self) -> dict:
        return encoder_params(self.task)

    def model(self, weights: list[np.ndarray]) -> EncodedLSTM:
        model = self.new_model()
        load_weights(model, weights, self.private)
        return model

    def evaluate(self, weights: list[np.ndarray]):
        self.use_preprocessing()
        return super().evaluate(weights)

    def release(self, model) -> list[np.ndarray]:
        self.private = private_weights(model)
        return shared_weights(model)

    def statistics_answer(self) -> dict:
        return {"records": int(len(self.train_records))}

    def save_detector(self) -> bool:
        """The site's detector as a signed bundle in its own folder (`fedlstm detect` reads it)."""
        from fedlstm.runs.rundir import BUNDLE_NAME, run_signing_key

        if self.out_dir is None:
            return False
        folder = Path(self.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        key = run_signing_key()
        self.detector.save(folder / BUNDLE_NAME, key, sign=key is not None)
        return True

    def answer(self, config: dict) -> dict:
        phase = str(config.get("phase", PREPROCESSING))
        if phase == PREPROCESSING:
            return {**self.statistics_answer(), "client": self.name}
        if phase == SITE_REPORT:
            return {"report": json.dumps(self.report(bytes_to_arrays(config["weights"]))),
                    "client": self.name}
        raise ValueError(f"unknown question {phase!r}; a site of a federation across schemas "
                         f"answers {[PREPROCESSING, SITE_REPORT]}")

    def site_classes(self) -> list[str]:
        """Normal, then the site's own attack families (its schema's order, then any other its
        records name)."""
        order = [f for f in self.spec.family_order if f != NORMAL_FAMILY]
        seen = {f for r in (self.own_train, self.own_val, *self.tests.values())
                for f in pd.unique(r.family)} - {NORMAL_FAMILY}
        return [NORMAL_FAMILY, *order, *sorted(seen - set(order))]

    def own_windows(self, windows: WindowSet, records: Records, classes: list[str]) -> WindowSet:
        """The same windows labelled with the site's own families."""
        labels = torch.as_tensor(encode_labels(records, "family", classes))
        return WindowSet(windows.features, labels, windows.ends, windows.window, windows.starts)

    def scored_records(self, records: Records) -> Records:
        """Records labelled in the vocabulary of this site's detector: its own families with its
        own head, else the shared taxonomy."""
        own = self.detector is not None and "n_shared_classes" in self.detector.model_params
        return records if own else with_shared_families(records)

    def site_model_params(self) -> dict:
        return {**self.model_params(), "n_shared_classes": len(self.classes)}

    def private_training(self, **update) -> TrainConfig:
        """Training settings for what only trains the site's own layers after the last round
        (its encoder's alignment, its head of families, its model of normal traffic): without
        DP-SGD. Those layers and the detector they make never leave the site; record-level DP
        covers what it sends, the shared arrays of every round."""
        return self.cfg.train.model_copy(update={**update, "dp": False})

    def site_head(self, model: EncodedLSTM, classes: list[str]) -> SiteFamiliesLSTM:
        """The trained model with a private head of the site's own families, trained by the one
        loop on the frozen encoder and body, so P(attack) stays the federation's."""
        torch.manual_seed(self.cfg.seed * 1_000_003 + zlib.crc32(self.name.encode()) + 1)
        net = SiteFamiliesLSTM(self.windows.train.n_features, len(classes),
                               **self.site_model_params())
        net.net.load_state_dict(model.state_dict())
        net.freeze_shared()
        train_cfg = self.private_training(lr=self.cfg.federation.site_head_lr)
        fit(net, self.own_windows(self.windows.train, self.own_train, classes),
            self.own_windows(self.windows.val, self.own_val, classes), train_cfg,
            len(classes), seed=self.cfg.seed, epochs=self.cfg.federation.site_head_epochs)
        return net

    def align_encoder(self, weights: list[np.ndarray]) -> None:
        """Train the site's encoder, the shared body and head frozen, against the final model by
        the one training loop (early stopping on its validation windows). The encoder was last
        trained beside the body this site sent; the average it got back was made mostly by the
        other sites (a small site's most of all). The shared weights do not move."""
        model = self.model(weights)
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(PRIVATE))
        fit(model, self.windows.train, self.windows.val, self.private_training(),
            len(self.classes), seed=self.cfg.seed, epochs=self.cfg.federation.align_epochs)
        self.private = private_weights(model)

    def with_normal_model(self, classifier: EncodedLSTM | SiteFamiliesLSTM, params: dict,
                          n_classes: int) -> SiteHybridLSTM:
        """The classifier with the site's own LSTM autoencoder of its normal traffic, trained by
        the one loop on its normal training windows (early stopping on its normal validation
        windows) for rounds x local epochs: what a single-schema hybrid's autoencoder gets."""
        torch.manual_seed(self.cfg.seed * 1_000_003 + zlib.crc32(self.name.encode()) + 2)
        n_features, fed = self.windows.train.n_features, self.cfg.federation
        normal = LSTMAutoencoder(n_features, None, **self.task.model_params())
        train, val = (w.subset(np.flatnonzero(w.window_labels.numpy() == 0))
                      for w in (self.windows.train, self.windows.val))
        if not len(train):
            raise ValueError(f"site {self.name}: its training records hold no normal traffic, "
                             "which the hybrid's model of normal traffic learns from; use "
                             "--detector supervised")
        fit(normal, train, val, self.private_training(), 1, seed=self.cfg.seed,
            epochs=fed.rounds * fed.local_epochs, objective=SequenceObjective())
        hybrid = SiteHybridLSTM(n_features, n_classes, **params)
        hybrid.classifier.load_state_dict(classifier.state_dict())
        hybrid.normal.load_state_dict(normal.state_dict())
        return hybrid

    def build_detector(self, weights: list[np.ndarray]) -> ModelBundle:
        """This site's detector: its preprocessing and encoder, the shared body, its own head of
        attack families (and, hybrid, its own model of normal traffic), and thresholds from its
        own validation windows."""
        cfg = self.cfg
        model, name, params = self.model(weights), MODEL_NAME, self.model_params()
        task, classes = cfg.model.task, self.classes
        if cfg.federation.site_head_epochs and len(own := self.site_classes()) > 2:
            model, name, task, classes = self.site_head(model, own), SITE_MODEL_NAME, "family", own
            params = self.site_model_params()
        common = {"spec": self.spec, "preprocessor": self.preprocessor, "model_params": params,
                  "task": task, "class_names": classes, "window": cfg.windows.window,
                  "metadata": {"dataset": self.spec.name, "site": self.name,
                               "mode": "federated-networks", "shared_classes": self.classes,
                               "created": time.time()}}
        if self.novelty is None:
            detector = ModelBundle(model=model.cpu().eval(), model_name=name,
                                   threshold_=cfg.train.fixed_threshold, **common)
            self.task.calibrate(detector, self.windows, self.val_records)
            return detector
        a, model = cfg.anomaly, self.with_normal_model(model, params, len(classes))
        detector = HybridDetector(model=model.cpu().eval(),
                                  model_name=HYBRID_MODEL_NAME, threshold_=1.0,
                                  target_fpr=a.alert_budget, min_shrinkage=a.min_shrinkage,
                                  supervised_threshold_=cfg.train.fixed_threshold, **common)
        self.novelty.calibrate(detector, self.windows, self.val_records)
        return detector

    def report(self, weights: list[np.ndarray]) -> dict:
        """Scores of this site's detector on its own test sets: aggregates only."""
        torch.set_num_threads(self.cfg.train.threads)
        self.use_preprocessing()
        epochs = self.cfg.federation.finetune_epochs
        if epochs:  # personalised: the final model, trained further on this site alone
            weights = self.fit(weights, epochs, seed=self.cfg.seed,
                               server_round=self.cfg.federation.rounds)[0]
        if self.cfg.federation.align_epochs:
            self.align_encoder(weights)
        self.detector = self.build_detector(weights)
        saved = self.save_detector()
        seen = training_attacks(self.train_records, self.val_records)
        evaluate = (self.novelty or self.task).evaluate
        tests = {}
        for name, recs in self.tests.items():
            ev = evaluate(self.detector, self.scored_records(recs), seen)
            tests[name] = {"binary": ev["binary"],
                           **({"family": {"accuracy": ev["family"]["accuracy"],
                                          "macro_f1": ev["family"]["macro"]["f1"]}}
                              if "family" in ev else {}),
                           # the hybrid's parts alone: known attacks, novelty
                           **({"parts": {part: {k: m[k] for k in ("accuracy", "fpr", "recall")}
                                         for part, m in ev["parts"].items()}}
                              if "parts" in ev else {})}
        val = evaluate(self.detector, self.scored_records(self.own_val), seen)["binary"]
        return {"site": self.name, "dataset": self.spec.name, "detector_saved": saved,
                "validation": {k: val[k] for k in ("accuracy", "fpr", "roc_auc")},
                "threshold": float(self.detector.threshold_),
                "train_records": int(len(self.train_records)), "tests": tests}


def save_site_tests(data, i: int, share) -> None:
    """Sites of different schemas score their own test sets: beside a site's share (`NAME.parquet`)
    as `NAME.test.SET.parquet`, which only that site reads."""
    if data.specs is None:
        return
    for name, test in data.site_tests(i).items():
        save_records(test, share.with_name(f"{share.stem}.test.{name.replace('/', '~')}.parquet"),
                     data.specs[i])


def restore_private(site, state) -> None:
    """Flower: a site's encoder lives in its node's context state between messages (a simulated
    site may run in a different worker each round)."""
    if isinstance(site, NetworkSite) and _STATE_PRIVATE in state:
        site.private = state[_STATE_PRIVATE].to_numpy_ndarrays()


def keep_private(site, state) -> None:
    from flwr.app import ArrayRecord

    if isinstance(site, NetworkSite) and site.private is not None:
        state[_STATE_PRIVATE] = ArrayRecord(site.private)


def _records_check(value: object) -> str | None:
    return None if isinstance(value, int) and value >= 0 else "expected a record count"


def _report_check(value: object) -> str | None:
    """A site report is a JSON object (at most 200 kB) with the scores of its `tests`."""
    if not isinstance(value, str) or len(value) > 200_000:
        return "expected a JSON report"
    try:
        report = json.loads(value)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(report, dict) or not isinstance(report.get("tests"), dict):
        return "a report is an object with `tests`"
    return None


class NetworkServer(ServerTask):
    """The server of a federation across schemas: it knows the shared body's shape, nothing of
    any site's columns, and ends with every site's own scores."""

    def __init__(self, task: Task, out_dir=None):
        check_supported(task.cfg)
        spec = DatasetSpec(name="networks", folder="", title="networks of several schemas",
                           columns=[], categorical=[], label="",
                           family_order=list(SHARED_FAMILIES))
        super().__init__(task, spec, {}, out_dir)
        self.classes = shared_classes(self.cfg)
        self.reports: dict[str, dict] = {}

    def prepare_preprocessing(self, ask):
        answers = ask({"phase": PREPROCESSING})
        self.statistics_received = [{"count": int(a["records"])} for a in answers]

    def declared_answers(self) -> dict[str, dict[str, Check]]:
        return {PREPROCESSING: {"records": _records_check}, SITE_REPORT: {"report": _report_check}}

    def initial_weights(self) -> list[np.ndarray]:
        resumed = self.load_checkpoint()
        if resumed is not None:
            return resumed
        torch.manual_seed(self.cfg.seed)
        params = encoder_params(self.task)  # any input width: only the shared arrays are kept
        body = EncodedLSTM(params["n_common"] + 1, len(self.classes), **params)
        self.weights = shared_weights(body)
        return self.weights

    def detector(self, ask=None, mode: str = "federated"):
        """Every site's report on its own detector (the federation's result)."""
        if self.weights is None or not self.rounds:
            raise RuntimeError("the federation finished without producing a model; see the log")
        answers = ask({"phase": SITE_REPORT, "weights": arrays_to_bytes(self.weights)})
        self.receive(SITE_REPORT, answers)
        self.reports = {str(a["client"]): json.loads(str(a["report"])) for a in answers}
        return self.reports


def write_networks_run(stage, cfg: RunConfig, server: NetworkServer, partitions: list,
                       notes: dict, timings: dict, command: str | None = None) -> None:
    """The run directory of a federation across schemas: config.json, metrics.json with every
    site's scores on its own test sets, the round curves and a confusion matrix per test set.
    There is no one bundle: each site's detector is its own (its encoder never left it)."""
    import sys

    from fedlstm import __version__
    from fedlstm.runs import plots
    from fedlstm.runs.rundir import git_commit, json_default

    (stage / "config.json").write_text(cfg.model_dump_json(indent=2))
    rounds = [server.rounds[k] for k in sorted(server.rounds)]
    # Every site's test sets, by name (each prefixed with its network): the run's evaluations.
    evaluations = {name: ev for report in server.reports.values()
                   for name, ev in report["tests"].items()}
    # a site of your own files without a note: what its split was (it read `official`, the
    # benchmarks' default, for a random split of the file)
    protocols = {site: (notes.get(site) or {}).get("protocol", run_protocol(cfg.data))
                 for site in server.reports}
    metrics = {"dataset": "+".join(server.reports),
               "protocol": ", ".join(f"{k}: {v}" for k, v in protocols.items()),
               "mode": "federated-networks", "inputs": cfg.federation.inputs,
               "evaluations": evaluations,
               "model": MODEL_NAME, "task": cfg.model.task, "seed": cfg.seed,
               "fedlstm_version": __version__, "commit": git_commit(),
               "command": command or " ".join(sys.argv), "class_names": server.classes,
               "sites": server.reports, "federation": cfg.federation.model_dump(),
               "partitions": partitions, "data_notes": notes, "rounds": rounds,
               "answers_received": server.answers_received, "timings": timings,
               "traffic_bytes": dict(sorted(server.ledger.totals.items()))}
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, default=json_default))
    curves = [r for r in rounds if r["round"] > 0]
    if curves:
        plots.learning_curves(curves, stage / "round_curves.png", "networks / federated",
                              x_key="round")
    for site, report in server.reports.items():
        for name, ev in report["tests"].items():
            plots.confusion_matrix(ev["binary"]["confusion_matrix"], ["normal", "attack"],
                                   stage / f"confusion_{name.replace('/', '_')}.png",
                                   f"{site} / {name} (own encoder, shared body)")
