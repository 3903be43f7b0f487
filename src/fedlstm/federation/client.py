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

import numpy as np
import torch

from fedlstm.data.readers import Records
from fedlstm.data.spec import DatasetSpec
from fedlstm.data.splits import carve_validation
from fedlstm.features import FlowPreprocessor, PreprocessingStats
from fedlstm.models import get_weights, set_weights
from fedlstm.tasks import Task
from fedlstm.tasks.base import SiteWindows, make_preprocessor
from fedlstm.training.loop import fit

log = logging.getLogger(__name__)

# Every number a site reports besides its update and counts (the server refuses any other key):
# training loss/accuracy and time, the DP-SGD budget spent, validation loss/accuracy.
REPLY_METRICS = frozenset({"train_loss", "train_accuracy", "seconds", "epsilon", "delta",
                           "noise_multiplier", "val_loss", "val_accuracy"})
PREPROCESSING = "preprocessing"  # the question every kind answers before round 1


class ClientTask:
    def __init__(self, task: Task, records: Records, spec: DatasetSpec, name: str = "client"):
        self.task, self.cfg, self.spec, self.name = task, task.cfg, spec, name
        self.classes = task.class_names(spec)
        self.train_records, self.val_records = carve_validation(records, self.cfg.data.val_fraction,
                                                                self.cfg.seed)
        self.windows: SiteWindows | None = None
        self._windows_key: str | None = None

    def statistics(self) -> PreprocessingStats:
        """The only thing about its data a site sends before training: mergeable aggregates."""
        records = self.task.preprocessing_records(self.train_records)
        return make_preprocessor(self.spec, self.cfg).compute_stats(records.frame)

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
        set_weights(model, weights)
        return model

    def fit(self, weights: list[np.ndarray], epochs: int, proximal_mu: float = 0.0,
            seed: int = 0, server_round: int = 1) -> tuple[list[np.ndarray], int, dict]:
        model = self.model(weights)
        train_cfg = self.cfg.train.model_copy(update={"proximal_mu": proximal_mu, "patience": None})
        dp_steps = None
        train = self.windows.train
        if train_cfg.dp:  # one privacy budget over all planned rounds, spent round by round
            per_round = epochs * -(-len(train) // train_cfg.batch_size)
            dp_steps = ((server_round - 1) * per_round, self.cfg.federation.rounds * per_round)
        history = fit(model, train, None, train_cfg, len(self.classes), seed=seed, epochs=epochs,
                      dp_steps=dp_steps, objective=self.task.objective())
        last = history.epochs[-1]
        metrics = {"train_loss": last["train_loss"], "client": self.name,
                   "seconds": history.seconds}
        if "train_accuracy" in last:
            metrics["train_accuracy"] = last["train_accuracy"]
        if history.privacy:
            metrics.update({"epsilon": history.privacy["epsilon"], "delta": history.privacy["delta"],
                            "noise_multiplier": history.privacy["noise_multiplier"]})
        return get_weights(model), len(train), metrics

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
            return {"statistics": self.statistics().to_bytes(), "client": self.name}
        answers = self.task.site_answers()
        if phase not in answers:
            raise ValueError(f"unknown question {phase!r}; a {self.task.kind} site answers "
                             f"{sorted([PREPROCESSING, *answers])}")
        if "preprocessor" in config:
            self.use_preprocessing(json.loads(str(config["preprocessor"])))
        return {**answers[phase](self, config), "client": self.name}
