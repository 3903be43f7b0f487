"""The unsupervised detector: a sequence model of normal traffic -> error vectors -> Mahalanobis
distance (paper Eq. 12) -> a threshold ζ chosen on validation data.

Labels are used only to pick the normal records a model learns from and to evaluate. Validation
records (carved from training data) are split in two: the normal part fits μ, Σ (and early-stops
training); the other part, normal and attack records, chooses ζ. Test data is never an input to
any fit.

Federated, a site answers two aggregate-only questions after training: "error-stats" (count, Σe,
Σeeᵀ and the two higher sums Ledoit-Wolf needs, over its normal validation windows) and
"score-histogram" (counts of normal and anomalous validation windows per score bin, for bin edges
the server broadcasts). No per-record error, score or row leaves a site.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlstm.config import RunConfig, raw_config
from fedlstm.data.readers import Records
from fedlstm.data.splits import carve_validation, run_protocol
from fedlstm.detection.anomaly import (
    ErrorStats,
    MahalanobisDetector,
    ScoreHistogram,
    score_bin_edges,
)
from fedlstm.detection.site_checks import (
    outlying_sites,
    outlying_tails,
    site_distances,
    tail_shares,
)
from fedlstm.features import merge_all
from fedlstm.features.windows import WindowSet, window_ends
from fedlstm.models import build_model
from fedlstm.tasks.base import (
    SiteWindows,
    Task,
    arrays_to_bytes,
    bytes_to_arrays,
    evaluate_detector,
    npz_check,
    training_stride,
    windows_of,
)
from fedlstm.training.objectives import SequenceObjective, error_vectors

log = logging.getLogger(__name__)

CLASSES = ["normal", "attack"]


def anomaly_config(path: str | Path | None = None, overrides: list[str] | None = None,
                   **top: Any) -> RunConfig:
    """`fedlstm.config.load_config` for the anomaly detector: binary windows, the sequence model."""
    data = raw_config(path, overrides, **top)
    data["detector"] = "anomaly"
    data.setdefault("model", {})["task"] = "binary"  # windows carry normal/attack labels only
    cfg = RunConfig.model_validate(data)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": cfg.anomaly.model})})


def normal_only(records: Records) -> Records:
    return records.take(np.flatnonzero(records.is_attack == 0))


def split_validation(val: Records, cfg: RunConfig) -> tuple[Records, Records]:
    """(normal records for μ/Σ, labelled records for ζ): disjoint, so ζ is not fitted on the
    windows that defined normal."""
    if len(val) < 4:
        return normal_only(val), val.take(np.array([], np.int64))
    sigma, threshold = carve_validation(val, cfg.anomaly.threshold_share, cfg.seed + 5)
    return normal_only(sigma), threshold


def _precision(covariance: np.ndarray) -> np.ndarray:
    p = np.linalg.inv(covariance)
    return (p + p.T) / 2


# --- a site's two answers --------------------------------------------------------------------------
def _error_stats_answer(site, config: dict) -> dict:
    torch.set_num_threads(site.cfg.train.threads)
    model = site.model(bytes_to_arrays(config["weights"]))
    normal = site.task.normal_windows(site.windows)
    return {"error_stats": ErrorStats.of(error_vectors(model, normal)).to_bytes()}


def _score_histogram_answer(site, config: dict) -> dict:
    torch.set_num_threads(site.cfg.train.threads)
    mean, covariance = bytes_to_arrays(config["mean_cov"])
    edges = score_bin_edges(int(config["n_features"]), int(config["bins"]),
                            float(config["bin_low"]), float(config["bin_high"]))
    errors = error_vectors(site.model(bytes_to_arrays(config["weights"])), site.windows.calibration)
    diff = errors - mean
    scores = (diff * (diff @ _precision(covariance))).sum(axis=1)
    return {"histogram": ScoreHistogram.of(scores, site.windows.calibration_is_attack,
                                           edges).to_bytes()}


class AnomalyTask(Task):
    kind = "anomaly"
    test_curves = False  # a reconstruction loss on attack traffic means nothing

    def class_names(self, spec) -> list[str]:
        return CLASSES

    def preprocessing_records(self, records: Records) -> Records:
        return normal_only(records)

    def site_windows(self, train, val, preprocessor, classes) -> SiteWindows:
        cfg = self.cfg
        sigma, threshold = split_validation(val, cfg)
        calibration = windows_of(threshold, preprocessor, cfg, CLASSES)
        return SiteWindows(windows_of(normal_only(train), preprocessor, cfg, CLASSES,
                                      stride=training_stride(cfg)),
                           windows_of(sigma, preprocessor, cfg, CLASSES), calibration,
                           calibration.window_labels.numpy().astype(bool))

    def model_params(self) -> dict:
        params = super().model_params()
        a = self.cfg.anomaly
        if a.model == "lstm-forecast":
            if self.cfg.windows.window <= a.horizon:
                raise ValueError(f"the forecaster needs windows.window > anomaly.horizon "
                                 f"(got W={self.cfg.windows.window}, T'={a.horizon})")
            params["horizon"] = a.horizon
        return params

    def new_model(self, input_size: int, n_classes: int) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        return build_model(self.cfg.anomaly.model, input_size, len(CLASSES), **self.model_params())

    def objective(self) -> SequenceObjective:
        return SequenceObjective()

    def evaluation_objective(self) -> SequenceObjective:
        return SequenceObjective()

    def detector(self, spec, preprocessor, model, classes, metadata) -> MahalanobisDetector:
        a = self.cfg.anomaly
        return MahalanobisDetector(spec=spec, preprocessor=preprocessor, model=model.cpu().eval(),
                                   model_name=a.model, model_params=self.model_params(),
                                   task="binary", class_names=CLASSES,
                                   window=self.cfg.windows.window, threshold_=float("inf"),
                                   metadata=metadata, threshold_policy=a.threshold, beta=a.beta,
                                   target_fpr=a.target_fpr, min_shrinkage=a.min_shrinkage)

    def calibrate(self, detector, windows, val) -> None:
        """μ, Σ on the normal validation windows, ζ on the labelled ones, with the score bins
        of `anomaly.score_bins` (the federated calibration uses the same)."""
        detector.fit_error_stats(ErrorStats.of(detector.error_vectors(self.normal_windows(windows))))
        edges = detector.bin_edges(self.cfg.anomaly.score_bins)
        detector.fit_threshold(ScoreHistogram.of(detector.decision_function(windows.calibration),
                                                 windows.calibration_is_attack, edges))

    def evaluate(self, detector, records, seen_attacks) -> dict:
        return evaluate_anomaly(detector, records, seen_attacks, self.cfg.anomaly.report_fpr)

    # -- federated ------------------------------------------------------------------------------
    def site_answers(self):
        return {"error-stats": _error_stats_answer, "score-histogram": _score_histogram_answer}

    def declared_answers(self, server):
        d = server.preprocessor.n_features_out if server.preprocessor is not None else 0
        bins = getattr(server, "histogram_bins", 0)
        floats, ints = "f", "iu"
        return {"error-stats": {"error_stats": npz_check({
                    "count": ((), ints), "total": ((d,), floats), "outer": ((d, d), floats),
                    "norm2_total": ((d,), floats), "norm4": ((), floats)})},
                "score-histogram": {"histogram": npz_check({
                    "normal": ((bins,), ints), "anomalous": ((bins,), ints)})}}

    def normal_windows(self, windows: SiteWindows):
        """The normal validation windows that μ and Σ are fitted on."""
        return windows.val

    def federated_detector(self, server, ask, mode: str = "federated") -> MahalanobisDetector:
        """μ, Σ from merged error sums, then ζ from merged score histograms."""
        metadata = {**self.metadata(server.spec, run_protocol(self.cfg.data), mode),
                    "rounds": max(server.rounds, default=0)}
        detector = self.detector(server.spec, server.preprocessor, server.model(), CLASSES,
                                 metadata)
        return calibrate_by_asking(detector, server, ask, self.cfg.anomaly.score_bins)


def calibrate_by_asking(detector: MahalanobisDetector, server, ask, score_bins: int):
    """Fit μ, Σ and ζ of `detector` from the sites' merged aggregate answers.

    With the `robust-calibration` defence, sites whose answers disagree with the majority's
    (`fedlstm.detection.site_checks`) are left out: first by their error statistics,
    then by the share of their normal windows above the majority's ζ; a site found only by the
    second check costs one more round of histograms, with μ, Σ fitted again without it.
    """
    if ask is None:
        raise ValueError("a Mahalanobis detector is calibrated by asking the sites")
    robust = "robust-calibration" in server.cfg.federation.defences
    base = {**server.preprocessor_message(), "weights": arrays_to_bytes(server.weights)}
    answers = ask({**base, "phase": "error-stats"})
    server.receive("error-stats", answers)
    stats = [ErrorStats.from_bytes(bytes(a["error_stats"])) for a in answers]
    names = [_site(a, i) for i, a in enumerate(answers)]
    left_out: set[str] = set()  # by site name (the two questions' answers come in any order)
    if robust:
        left_out = {names[i] for i in outlying_sites(stats)}
        check = {"distances": dict(zip(names, _rounded(site_distances(stats)))),
                 "left_out_by_statistics": sorted(left_out)}
    for attempt in range(2):
        detector.fit_error_stats(merge_all([s for s, n in zip(stats, names) if n not in left_out]))
        edges = detector.bin_edges(score_bins)
        server.histogram_bins = len(edges)
        answers = ask({**base, "phase": "score-histogram", "n_features": len(detector.mean_),
                       "bins": len(edges), "bin_low": float(edges[1]),
                       "bin_high": float(edges[-1]),
                       "mean_cov": arrays_to_bytes([detector.mean_, detector.covariance_])})
        server.receive("score-histogram", answers)
        hists = [ScoreHistogram.from_bytes(bytes(a["histogram"]), edges) for a in answers]
        hist_names = [_site(a, i) for i, a in enumerate(answers)]
        detector.fit_threshold(merge_all([h for h, n in zip(hists, hist_names)
                                          if n not in left_out]))
        if not robust:
            return detector
        zeta = detector.score_threshold
        more = {hist_names[i] for i in outlying_tails(hists, zeta)}
        check["tail_shares"] = dict(zip(hist_names, _rounded(tail_shares(hists, zeta)[0])))
        if not more - left_out or attempt == 1:
            break
        left_out |= more
        check["left_out_by_tails"] = sorted(more)
    check["left_out"] = sorted(left_out)
    server.calibration_check = check
    log.info("robust calibration: %s", check)
    return detector


def _rounded(values) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


def _site(answer: dict, i: int) -> str:
    return str(answer.get("client", f"site-{i}"))


# --- evaluation ------------------------------------------------------------------------------------
def threshold_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float) -> float:
    """Lowest threshold (score >= t flags) whose false-positive rate on these windows is <= fpr.
    Reading a ROC curve for reporting; never used to set a detector's ζ."""
    normal = np.sort(np.asarray(score)[np.asarray(y) == 0])[::-1]
    k = int(np.floor(fpr * len(normal)))  # at most k normal windows may be flagged
    if len(normal) == 0:
        return float("-inf")
    if k >= len(normal):
        return float(normal[-1])
    return float(np.nextafter(normal[k], np.inf))


def evaluate_anomaly(detector, records: Records, train_attacks: np.ndarray, report_fpr: float,
                     seen: set | None = None, data: WindowSet | None = None,
                     score: np.ndarray | None = None) -> dict:
    """`evaluate_detector` (`data`, `score`: as it takes them) plus recall at `report_fpr`, and
    recall on attack types unseen in training."""
    ev = evaluate_detector(detector, records, data, score)
    y, score = ev["_curve"]["y"], ev["_curve"]["score"]
    ends = window_ends(len(records), detector.window, segments=records.segment)
    attacks = records.attack[ends]
    at = threshold_at_fpr(y, score, report_fpr)
    # An oracle operating point: the threshold comes from this test set's own ROC.
    ev["at_fpr"] = {"target_fpr": report_fpr, "oracle": True, "threshold": at,
                    "recall": _recall(y, score, at), "fpr": _fpr(y, score, at)}
    seen = set(train_attacks) if seen is None else seen
    unseen = (y == 1) & ~np.isin(attacks, list(seen)) & ~np.isin(attacks, detector.spec.normal_labels)
    ev["unseen"] = {"n": int(unseen.sum()), "attacks": sorted(set(attacks[unseen])),
                    "recall_at_threshold": _share(score[unseen] >= detector.threshold_),
                    "recall_at_fpr": _share(score[unseen] >= at)}
    ev["_curve"]["unseen"] = unseen
    return ev


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _recall(y, score, t) -> float | None:
    return _share(score[y == 1] >= t)


def _fpr(y, score, t) -> float | None:
    return _share(score[y == 0] >= t)


def matched_fpr_comparison(anomaly_ev: dict, supervised_ev: dict) -> dict:
    """Unseen-attack recall of a supervised detector at the anomaly detector's test FPR (at ζ and
    at the report FPR); both read from the same test windows' ROC."""
    y, sup = supervised_ev["_curve"]["y"], supervised_ev["_curve"]["score"]
    unseen = anomaly_ev["_curve"]["unseen"]
    if len(y) != len(unseen):
        raise ValueError("the two detectors scored different test windows (different W?)")
    out = {}
    for key, fpr in (("at_threshold", anomaly_ev["binary"]["fpr"]),
                     ("at_fpr", anomaly_ev["at_fpr"]["target_fpr"])):
        t = threshold_at_fpr(y, sup, fpr)
        out[key] = {"fpr": fpr, "supervised_fpr": _fpr(y, sup, t),
                    "supervised_recall": _recall(y, sup, t),
                    "supervised_unseen_recall": _share(sup[unseen] >= t)}
    return out
