"""The supervised detector: an LSTM (or RNN/CNN) classifier of windows, binary or per attack
family; its attack score is 1 - P(normal) and its threshold fixed or chosen on validation F1.

Federated, `train.threshold=val-f1` asks every site one aggregate question after the last round:
"score-histogram", the counts of its normal and attack validation windows per score bin (bins of
1/1000 over [0, 1], the same at every site). The merged histogram is that of all validation
windows together, and the threshold is the bin edge of best F1 on it. No score leaves a site.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from fedlstm.data.splits import run_protocol
from fedlstm.detection.anomaly import ScoreHistogram
from fedlstm.detection.bundle import ModelBundle
from fedlstm.features import merge_all
from fedlstm.tasks.base import Task, arrays_to_bytes, bytes_to_arrays, npz_check
from fedlstm.training.metrics import best_f1_threshold
from fedlstm.training.objectives import predict_proba

log = logging.getLogger(__name__)
SCORE_BINS = 1001  # attack scores lie in [0, 1]; the last bin holds the score 1.0 itself
SCORE_HISTOGRAM = "score-histogram"


def score_edges(bins: int = SCORE_BINS) -> np.ndarray:
    return np.linspace(0.0, 1.0, bins)


def score_histogram_answer(site, config: dict) -> dict:
    """A site's validation windows, counted per attack-score bin and label."""
    torch.set_num_threads(site.cfg.train.threads)
    val = site.windows.val
    model = site.model(bytes_to_arrays(config["weights"]))
    score = 1.0 - predict_proba(model, val)[:, 0] if len(val) else np.empty(0)
    is_attack = val.window_labels.numpy() != 0  # class 0 is "normal" in every task
    edges = score_edges(int(config["bins"]))
    return {"histogram": ScoreHistogram.of(score, is_attack, edges).to_bytes()}


SCORE_HISTOGRAM_LAYOUT = {"histogram": npz_check({"normal": ((SCORE_BINS,), "iu"),
                                                   "anomalous": ((SCORE_BINS,), "iu")})}


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

    def site_answers(self):
        return {SCORE_HISTOGRAM: score_histogram_answer}

    def declared_answers(self, server):
        return {SCORE_HISTOGRAM: SCORE_HISTOGRAM_LAYOUT}

    def federated_detector(self, server, ask, mode: str = "federated") -> ModelBundle:
        metadata = {**self.metadata(server.spec, run_protocol(self.cfg.data), mode),
                    "rounds": max(server.rounds, default=0), "created": time.time()}
        detector = self.detector(server.spec, server.preprocessor, server.model(),
                                 server.classes, metadata)
        if self.cfg.train.threshold == "val-f1":
            detector.threshold_ = merged_f1_threshold(server, ask, self.cfg.train.fixed_threshold)
        return detector


def merged_f1_threshold(server, ask, fixed_threshold: float, phase: str = SCORE_HISTOGRAM
                        ) -> float:
    """The threshold of best F1 over every site's validation windows, from their merged score
    histograms (`fixed_threshold` if no site holds both classes). `phase`: the question's name
    (the hybrid asks it of its classifier under its own name)."""
    if ask is None:
        raise ValueError("train.threshold=val-f1 is calibrated by asking the sites")
    edges = score_edges()
    answers = ask({"phase": phase, "bins": len(edges), **server.preprocessor_message(),
                   "weights": arrays_to_bytes(server.weights)})
    server.receive(phase, answers)
    merged = merge_all([ScoreHistogram.from_bytes(bytes(a["histogram"]), edges)
                        for a in answers])
    if merged.anomalous.sum() == 0 or merged.normal.sum() == 0:
        log.warning("the sites' validation windows hold only one class; keeping the fixed "
                    "threshold %.2f", fixed_threshold)
        return fixed_threshold
    return merged.threshold_f_beta(1.0)
