"""What one site does in a federation, with no Flower in sight (the ClientApp only forwards).

A site holds its own records, carves its own validation split, reports preprocessing statistics
(never rows), and trains the global model for E local epochs with the one training loop.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from fedlstm.config import RunConfig
from fedlstm.data.readers import Records
from fedlstm.data.schemas import DatasetSpec, get_spec
from fedlstm.data.splits import carve_validation
from fedlstm.features import FlowPreprocessor, PreprocessingStats
from fedlstm.models import get_weights, set_weights
from fedlstm.pipeline import class_names_for, make_preprocessor, new_model, windows_of
from fedlstm.training.loop import evaluate_loss, fit
from fedlstm.windows import WindowSet

log = logging.getLogger(__name__)

# Every number a site reports besides its update and counts (the server refuses any other key):
# training loss/accuracy and time, the DP-SGD budget spent, validation loss/accuracy.
REPLY_METRICS = frozenset({"train_loss", "train_accuracy", "seconds", "epsilon", "delta",
                           "noise_multiplier", "val_loss", "val_accuracy"})


class ClientTask:
    def __init__(self, records: Records, cfg: RunConfig, spec: DatasetSpec | None = None,
                 name: str = "client"):
        self.cfg, self.name = cfg, name
        self.spec = spec or get_spec(cfg.data.spec_name)
        self.classes = class_names_for(self.spec, cfg.model.task)
        self.train_records, self.val_records = carve_validation(records, cfg.data.val_fraction,
                                                                cfg.seed)
        self._windows_key: str | None = None
        self.train_windows: WindowSet | None = None
        self.val_windows: WindowSet | None = None

    def statistics(self) -> PreprocessingStats:
        """The only thing about its data a site sends before training: mergeable aggregates."""
        return make_preprocessor(self.spec, self.cfg).compute_stats(self.train_records.frame)

    def use_preprocessing(self, global_preprocessor: dict | None) -> None:
        """Transform with the federation's merged statistics (or, in `local` mode, its own)."""
        if self.cfg.federation.preprocessing == "local" or global_preprocessor is None:
            key = "local"
            if key == self._windows_key:
                return
            preprocessor = make_preprocessor(self.spec, self.cfg).fit(self.train_records.frame)
        else:
            key = hashlib.sha256(repr(global_preprocessor).encode()).hexdigest()
            if key == self._windows_key:
                return
            preprocessor = FlowPreprocessor.from_dict(global_preprocessor)
        self.train_windows = windows_of(self.train_records, preprocessor, self.cfg, self.classes,
                                        stride=self.cfg.windows.stride)
        self.val_windows = windows_of(self.val_records, preprocessor, self.cfg, self.classes)
        self._windows_key = key

    def _model(self, weights: list[np.ndarray]) -> torch.nn.Module:
        model, _ = new_model(self.cfg, self.train_windows.n_features, len(self.classes))
        set_weights(model, weights)
        return model

    def fit(self, weights: list[np.ndarray], epochs: int, proximal_mu: float = 0.0,
            seed: int = 0, server_round: int = 1) -> tuple[list[np.ndarray], int, dict]:
        model = self._model(weights)
        train_cfg = self.cfg.train.model_copy(update={"proximal_mu": proximal_mu, "patience": None})
        dp_steps = None
        if train_cfg.dp:  # one privacy budget over all planned rounds, spent round by round
            per_round = epochs * -(-len(self.train_windows) // train_cfg.batch_size)
            dp_steps = ((server_round - 1) * per_round, self.cfg.federation.rounds * per_round)
        history = fit(model, self.train_windows, None, train_cfg, len(self.classes), seed=seed,
                      epochs=epochs, dp_steps=dp_steps)
        last = history.epochs[-1]
        metrics = {"train_loss": last["train_loss"], "client": self.name,
                   "seconds": history.seconds}
        if "train_accuracy" in last:
            metrics["train_accuracy"] = last["train_accuracy"]
        if history.privacy:
            metrics.update({"epsilon": history.privacy["epsilon"], "delta": history.privacy["delta"],
                            "noise_multiplier": history.privacy["noise_multiplier"]})
        return get_weights(model), len(self.train_windows), metrics

    def evaluate(self, weights: list[np.ndarray]) -> tuple[float, int, dict]:
        if not len(self.val_windows):
            return 0.0, 0, {"client": self.name}
        model = self._model(weights)
        torch.set_num_threads(self.cfg.train.threads)
        result = evaluate_loss(model, self.val_windows, torch.nn.CrossEntropyLoss())
        return result["loss"], len(self.val_windows), {"val_accuracy": result["accuracy"],
                                                        "val_loss": result["loss"],
                                                        "client": self.name}
