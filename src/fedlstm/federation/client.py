"""What one site does in a federation, with no Flower in sight (the ClientApp only forwards).

A site holds its own records, carves its own validation split, reports preprocessing statistics
(never rows), trains the global model for E local epochs with the one training loop, and answers
the aggregate questions its detector kind declares. The detector kind (`fedlstm.tasks`) decides
which records and windows; this class is the same for every kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib

import numpy as np
import torch

from fedlstm.data.readers import Records
from fedlstm.data.spec import DatasetSpec
from fedlstm.data.splits import carve_validation
from fedlstm.features import FlowPreprocessor, PreprocessingStats
from fedlstm.features.stats import dp_histogram_to_bytes
from fedlstm.federation.attacks import (
    Attack,
    claimed_examples,
    default_trigger,
    flip_labels,
    plant_backdoor,
    poison_update,
)
from fedlstm.models import get_weights, set_weights
from fedlstm.tasks import Task
from fedlstm.tasks.base import SiteWindows, make_preprocessor
from fedlstm.training import privacy
from fedlstm.training.loop import batches_per_epoch, epochs_for, fit

log = logging.getLogger(__name__)

# Every number a site reports besides its update and counts (the server refuses any other key):
# training loss/accuracy, time and local epochs (no more than its sample count tells), the DP-SGD
# budget spent, validation loss/accuracy.
REPLY_METRICS = frozenset({"train_loss", "train_accuracy", "seconds", "local_epochs", "epsilon",
                           "delta", "noise_multiplier", "val_loss", "val_accuracy"})
PREPROCESSING = "preprocessing"  # the question every kind answers before round 1


class ClientTask:
    def __init__(self, task: Task, records: Records, spec: DatasetSpec, name: str = "client",
                 attack: Attack | None = None):
        self.task, self.cfg, self.spec, self.name = task, task.cfg, spec, name
        self.classes = task.class_names(spec)
        # A simulated malicious site (robustness experiments): its data poisoned here, its
        # updates in `fit`.
        self.attack = attack
        self.rng = np.random.default_rng([self.cfg.seed, zlib.crc32(name.encode())])
        if attack is not None and attack.kind == "label-flip":
            records = flip_labels(records)
        elif attack is not None and attack.kind == "backdoor":
            records = plant_backdoor(records, default_trigger(records.frame), attack.share,
                                     self.rng)
        self.train_records, self.val_records = carve_validation(records, self.cfg.data.val_fraction,
                                                                self.cfg.seed)
        self.windows: SiteWindows | None = None
        self._windows_key: str | None = None

    def statistics(self) -> PreprocessingStats:
        """The only thing about its data a site sends before training: mergeable aggregates."""
        records = self.task.preprocessing_records(self.train_records)
        return make_preprocessor(self.spec, self.cfg).compute_stats(records.frame)

    @property
    def delta(self) -> float:
        """δ of every DP release of this site, counted over its training records."""
        return self.cfg.train.dp_delta or privacy.default_delta(len(self.train_records))

    def preprocessing_noise(self) -> float:
        """`preprocessing=dp`: the noise multiplier of this site's histogram release."""
        return privacy.gaussian_noise_for_epsilon(self.cfg.federation.preprocessing_epsilon,
                                                  self.delta)

    def released(self) -> tuple[float, ...]:
        """Gaussian releases of this site's records before training (for the privacy budget)."""
        return (self.preprocessing_noise(),) if self.cfg.federation.preprocessing == "dp" else ()

    def statistics_answer(self) -> dict:
        """The answer to the preprocessing question: exact statistics, or (dp) a noisy
        histogram only. Under `agreed` a site sends nothing."""
        mode = self.cfg.federation.preprocessing
        if mode == "agreed":
            raise ValueError("preprocessing is agreed beforehand: a site sends no statistics")
        stats = self.statistics()
        if mode != "dp":
            return {"statistics": stats.to_bytes()}
        sigma = self.preprocessing_noise() * np.sqrt(len(stats.numeric_columns))
        seeded = [self.cfg.seed, zlib.crc32(self.name.encode())]  # tests: reproducible per site
        rng = np.random.default_rng(seeded if self.cfg.train.dp_seeded_noise else None)
        return {"dp_histogram": dp_histogram_to_bytes(stats.dp_histogram(sigma, rng), sigma)}

    def use_preprocessing(self, global_preprocessor: dict | None) -> None:
        """Transform with the federation's merged statistics (or, in `local` mode, its own)."""
        if self.cfg.federation.preprocessing == "local" or global_preprocessor is None:
            key = "local"
        else:
            key = hashlib.sha256(json.dumps(global_preprocessor, sort_keys=True).encode()).hexdigest()
        if key == self._windows_key:
            return
        if key == "local":
            preprocessor = self.task.fit_preprocessor(self.spec, self.train_records)
        else:
            preprocessor = FlowPreprocessor.from_dict(global_preprocessor)
        self.windows = self.task.site_windows(self.train_records, self.val_records, preprocessor,
                                              self.classes)
        self._windows_key = key

    def model(self, weights: list[np.ndarray]) -> torch.nn.Module:
        model = self.task.new_model(self.windows.train.n_features, len(self.classes))
        try:
            set_weights(model, weights)
        except RuntimeError as exc:  # "size mismatch": say why, not only which tensor
            if self.cfg.federation.preprocessing != "local":
                raise
            raise ValueError(
                f"{self.name}: its own preprocessing (federation.preprocessing=local) gives "
                f"{self.windows.train.n_features} input features, which the federation's model "
                "does not take: under `local` every site must see the same categorical values "
                "(docs/privacy.md); use preprocessing federated, dp or agreed") from exc
        return model

    def fit(self, weights: list[np.ndarray], epochs: int, proximal_mu: float = 0.0,
            seed: int = 0, server_round: int = 1) -> tuple[list[np.ndarray], int, dict]:
        model = self.model(weights)
        # One δ for every release of this site (DP preprocessing histogram and DP-SGD).
        train_cfg = self.cfg.train.model_copy(update={"proximal_mu": proximal_mu, "patience": None,
                                                      "dp_delta": self.delta})
        dp_steps = None
        train = self.windows.train
        # A small log takes its `train.min_steps` batches over the planned rounds, as centralised
        # training does (on the CIC-IDS2017 sample, 3 sites x 10 rounds x 1 epoch were 60-70
        # batches a site and left a model that flagged every benign test flow).
        epochs = epochs_for(train_cfg, epochs, len(train), self.cfg.federation.rounds)
        if train_cfg.dp:  # one privacy budget over all planned rounds, spent round by round
            per_round = epochs * batches_per_epoch(len(train), train_cfg)
            dp_steps = ((server_round - 1) * per_round, self.cfg.federation.rounds * per_round)
        history = fit(model, train, None, train_cfg, len(self.classes), seed=seed, epochs=epochs,
                      dp_steps=dp_steps, objective=self.task.objective(),
                      dp_released=self.released())
        last = history.epochs[-1]
        metrics = {"train_loss": last["train_loss"], "client": self.name,
                   "seconds": history.seconds, "local_epochs": epochs}
        if "train_accuracy" in last:
            metrics["train_accuracy"] = last["train_accuracy"]
        if history.privacy:
            metrics.update({"epsilon": history.privacy["epsilon"], "delta": history.privacy["delta"],
                            "noise_multiplier": history.privacy["noise_multiplier"]})
        elif self.released():  # only the DP preprocessing release spent anything
            metrics.update({"epsilon": self.cfg.federation.preprocessing_epsilon,
                            "delta": self.delta})
        trained, count = self.release(model), len(train)
        if self.attack is not None and self.attack.poisons_update:
            trained = poison_update(weights, trained, self.attack, self.rng)
            count = claimed_examples(self.attack, count)
        return trained, count, metrics

    def release(self, model: torch.nn.Module) -> list[np.ndarray]:
        """What the site sends of its trained model: all of it (a site with private layers,
        `federation.networks`, keeps those)."""
        return get_weights(model)

    def evaluate(self, weights: list[np.ndarray]) -> tuple[float, int, dict]:
        val = self.windows.val
        if not len(val):
            return 0.0, 0, {"client": self.name}
        torch.set_num_threads(self.cfg.train.threads)
        result = self.task.evaluation_objective().evaluate(self.model(weights), val)
        metrics = {f"val_{k}": v for k, v in result.items()}
        return result["loss"], len(val), {**metrics, "client": self.name}

    def answer(self, config: dict) -> dict:
        """One aggregate question (`config["phase"]`): the answer, scalars and bytes only."""
        phase = str(config.get("phase", PREPROCESSING))
        if phase == PREPROCESSING:
            return {**self.statistics_answer(), "client": self.name}
        answers = self.task.site_answers()
        if phase not in answers:
            raise ValueError(f"unknown question {phase!r}; a {self.task.kind} site answers "
                             f"{sorted([PREPROCESSING, *answers])}")
        self.take_preprocessing(config)
        return {**answers[phase](self, config), "client": self.name}

    def take_preprocessing(self, config: dict) -> None:
        """The preprocessing a message from the server carries, or, under `local` (where none
        is sent), the site's own statistics; otherwise the site keeps what it transforms with."""
        if "preprocessor" in config:
            self.use_preprocessing(json.loads(str(config["preprocessor"])))
        elif self.cfg.federation.preprocessing == "local":
            self.use_preprocessing(None)
