"""The novelty-aware detector: a classifier for the attacks seen in training and a model of normal
traffic for what was never seen, in one network (`fedlstm.models.hybrid`) and one bundle
(`fedlstm.detection.hybrid`).

Training: one loop, one objective per batch: cross-entropy of the classifier on every window plus
the autoencoder's reconstruction error on the normal windows. Calibration, on validation data
only: the classifier's threshold t_s (fixed, or best F1 on validation), then μ, Σ of the
autoencoder's errors on normal validation windows, then ζ such that the anomaly part flags at
most the alert budget (`anomaly.alert_budget`) of other normal validation windows. Federated,
the sites answer the anomaly detector's two aggregate questions (error sums, score histograms),
and, with `train.threshold=val-f1`, the supervised detector's of the classifier
("known-score-histogram"), as centralised training chooses t_s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedlstm.data.splits import run_protocol
from fedlstm.detection.anomaly import ErrorStats, ScoreHistogram
from fedlstm.detection.hybrid import HybridDetector
from fedlstm.features.windows import WindowSet
from fedlstm.models import build_model
from fedlstm.tasks.anomaly import (
    AnomalyTask,
    calibrate_by_asking,
    evaluate_anomaly,
    normal_only,
    split_validation,
)
from fedlstm.tasks.base import SiteWindows, Task, scored_windows, training_stride, windows_of
from fedlstm.tasks.supervised import (
    SCORE_HISTOGRAM_LAYOUT,
    merged_f1_threshold,
    score_histogram_answer,
)
from fedlstm.training.metrics import best_f1_threshold, binary_metrics, recall_by_group
from fedlstm.training.objectives import Objective, error_vectors, evaluate_loss

MODEL = "lstm-hybrid"
KNOWN_SCORE_HISTOGRAM = "known-score-histogram"  # the classifier's, for train.threshold=val-f1


@dataclass
class HybridWindows(SiteWindows):
    normal: WindowSet | None = None  # normal validation windows: μ and Σ


class HybridObjective(Objective):
    """Cross-entropy of the classifier on every window + mean squared reconstruction error of
    the autoencoder on the normal ones (label 0): what it learns normal traffic from."""

    def step(self, model, x, y):
        logits = model(x)
        loss = self.loss_fn(logits, y)
        normal = y == 0
        if bool(normal.any()):
            prediction, target = model.prediction_and_target(x[normal])
            loss = loss + nn.functional.mse_loss(prediction, target)
        return loss, (logits.detach().argmax(1) == y).sum()

    def evaluate(self, model, data: WindowSet, device=None) -> dict:
        result = evaluate_loss(model, data, self.loss_fn, device)
        normal = data.subset(np.flatnonzero(data.window_labels.cpu().numpy() == 0))
        errors = error_vectors(model, normal, device=device)
        reconstruction = float((errors ** 2).mean()) if len(errors) else 0.0
        return {"loss": result["loss"] + reconstruction, "accuracy": result["accuracy"]}


class HybridTask(Task):
    kind = "hybrid"  # (its test curves are the classifier's loss and accuracy)

    # the anomaly detector's aggregate questions, answered from the hybrid's windows, and, with
    # train.threshold=val-f1, the supervised detector's, of the classifier, under its own name
    def site_answers(self):
        return {**AnomalyTask.site_answers(self), KNOWN_SCORE_HISTOGRAM: score_histogram_answer}

    def declared_answers(self, server):
        return {**AnomalyTask.declared_answers(self, server),
                KNOWN_SCORE_HISTOGRAM: SCORE_HISTOGRAM_LAYOUT}

    def site_windows(self, train, val, preprocessor, classes) -> HybridWindows:
        """All training windows (the classifier learns from all, the autoencoder from the
        normal ones); all validation windows (early
        stopping); normal validation windows for μ, Σ; the rest of validation for ζ."""
        cfg = self.cfg
        sigma, rest = split_validation(val, cfg)
        calibration = windows_of(rest, preprocessor, cfg, classes)
        return HybridWindows(
            windows_of(train, preprocessor, cfg, classes, stride=training_stride(cfg)),
            windows_of(val, preprocessor, cfg, classes), calibration,
            calibration.window_labels.numpy() > 0,
            normal=windows_of(normal_only(sigma), preprocessor, cfg, classes))

    def normal_windows(self, windows: SiteWindows) -> WindowSet:
        return windows.normal

    def new_model(self, input_size: int, n_classes: int) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        return build_model(MODEL, input_size, n_classes, **self.model_params())

    def objective(self) -> HybridObjective:
        return HybridObjective()

    def evaluation_objective(self) -> HybridObjective:
        return HybridObjective()

    def detector(self, spec, preprocessor, model, classes, metadata) -> HybridDetector:
        a = self.cfg.anomaly
        return HybridDetector(spec=spec, preprocessor=preprocessor, model=model.cpu().eval(),
                              model_name=MODEL, model_params=self.model_params(),
                              task=self.cfg.model.task, class_names=classes,
                              window=self.cfg.windows.window, threshold_=1.0, metadata=metadata,
                              target_fpr=a.alert_budget, min_shrinkage=a.min_shrinkage,
                              supervised_threshold_=self.cfg.train.fixed_threshold)

    def calibrate(self, detector: HybridDetector, windows: SiteWindows, val) -> None:
        if self.cfg.train.threshold == "val-f1":
            is_attack = val.is_attack[windows.val.ends.numpy()]
            detector.supervised_threshold_ = best_f1_threshold(
                is_attack, detector.attack_probability(windows.val))
        detector.fit_error_stats(ErrorStats.of(detector.error_vectors(windows.normal)))
        hist = ScoreHistogram.of(detector.anomaly_score(windows.calibration),
                                 windows.calibration_is_attack,
                                 detector.bin_edges(self.cfg.anomaly.score_bins))
        detector.fit_threshold(hist)

    def evaluate(self, detector: HybridDetector, records, seen_attacks) -> dict:
        """The hybrid's scores, and each part's alone (known attacks; novelty)."""
        data = scored_windows(detector, records)
        known, anomalous = detector.parts(data)  # one pass: the hybrid's score is their maximum
        ev = evaluate_anomaly(detector, records, seen_attacks, self.cfg.anomaly.report_fpr,
                              data=data, score=np.maximum(known, anomalous))
        y = ev["_curve"]["y"]
        ev["parts"] = {"supervised": binary_metrics(y, known, 1.0),
                       "anomaly": binary_metrics(y, anomalous, 1.0)}
        attacks = records.attack[data.ends.numpy()]
        ev["parts_by_attack"] = {"supervised": recall_by_group(known >= 1.0, attacks),
                                 "anomaly": recall_by_group(anomalous >= 1.0, attacks)}
        return ev

    def federated_detector(self, server, ask, mode: str = "federated") -> HybridDetector:
        metadata = {**self.metadata(server.spec, run_protocol(self.cfg.data), mode),
                    "rounds": max(server.rounds, default=0)}
        detector = self.detector(server.spec, server.preprocessor, server.model(), server.classes,
                                 metadata)
        train = self.cfg.train
        if train.threshold == "val-f1":  # as centralised: best F1 on (all sites') validation
            detector.supervised_threshold_ = merged_f1_threshold(
                server, ask, train.fixed_threshold, KNOWN_SCORE_HISTOGRAM)
        return calibrate_by_asking(detector, server, ask, self.cfg.anomaly.score_bins)

    def budget_curve(self, detector: HybridDetector, split,
                     budgets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1)) -> list[dict]:
        """The trade-off the alert budget sets: for each budget, ζ chosen again on the validation
        part of `split` (the windows centralised training calibrates ζ on; for a federated
        detector, a validation part of the pooled training data, not the sites' own windows that
        set its ζ), and the test sets scored with it. For the report only: the detector keeps the
        budget it was built with."""
        # the validation windows ζ is calibrated on (not the training ones: nothing else is needed)
        _, rest = split_validation(split.val, self.cfg)
        calibration = windows_of(rest, detector.preprocessor, self.cfg, detector.class_names)
        hist = ScoreHistogram.of(detector.anomaly_score(calibration),
                                 calibration.window_labels.numpy() > 0,
                                 detector.bin_edges(self.cfg.anomaly.score_bins))
        scored = {}
        for name, records in split.tests.items():
            data = windows_of(records, detector.preprocessor, self.cfg, detector.class_names)
            scored[name] = (records.is_attack[data.ends.numpy()],
                            detector.attack_probability(data) >= detector.supervised_threshold_,
                            detector.anomaly_score(data))
        curve = []
        for budget in budgets:
            zeta = hist.threshold_for_fpr(budget)
            row = {"budget": budget, "default": budget == self.cfg.anomaly.alert_budget}
            for name, (y, known, score) in scored.items():
                flag = known | (score >= zeta)
                row[name] = {"accuracy": float((flag == y).mean()),
                             "recall": float(flag[y == 1].mean()) if y.any() else None,
                             "fpr": float(flag[y == 0].mean()) if (~y.astype(bool)).any() else None}
            curve.append(row)
        return curve
