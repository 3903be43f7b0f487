"""The supervised detector: an LSTM (or RNN/CNN) classifier of windows, binary or per attack
family; its attack score is 1 - P(normal) and its threshold fixed or chosen on validation F1."""

from __future__ import annotations

import time

from fedlstm.detection.bundle import ModelBundle
from fedlstm.tasks.base import Task
from fedlstm.training.metrics import best_f1_threshold


class SupervisedTask(Task):
    kind = "supervised"

    def detector(self, spec, preprocessor, model, classes, metadata) -> ModelBundle:
        m = self.cfg.model
        return ModelBundle(spec=spec, preprocessor=preprocessor, model=model, model_name=m.name,
                           model_params=self.model_params(), task=m.task, class_names=classes,
                           window=self.cfg.windows.window,
                           threshold_=self.cfg.train.fixed_threshold, metadata=metadata)

    def calibrate(self, detector, windows, val) -> None:
        if self.cfg.train.threshold == "val-f1":
            is_attack = val.is_attack[windows.val.ends.numpy()]
            detector.threshold_ = best_f1_threshold(is_attack, detector.decision_function(windows.val))

    def federated_detector(self, server, ask, mode: str = "federated") -> ModelBundle:
        metadata = {**self.metadata(server.spec, self.cfg.data.protocol, mode),
                    "rounds": max(server.rounds, default=0), "created": time.time()}
        return self.detector(server.spec, server.preprocessor, server.model(), server.classes,
                             metadata)
