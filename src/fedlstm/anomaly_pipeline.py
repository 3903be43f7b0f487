"""Centralised unsupervised detection: normal-only LSTM -> error vectors -> Mahalanobis -> ζ.

Labels are used only to pick the normal records a model learns from and to evaluate. Validation
records (carved from training data) are split in two: the normal part fits μ, Σ (and early-stops
training); the other part, normal and attack records, chooses ζ. Test data is never an input to
any fit. `site_windows` is shared with the federated clients so both modes see the same windows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from fedlstm import __version__
from fedlstm.config import RunConfig, _Strict, raw_config
from fedlstm.data.readers import Records
from fedlstm.data.schemas import DatasetSpec
from fedlstm.data.splits import Split, build_split, carve_validation
from fedlstm.detection.anomaly import MahalanobisDetector
from fedlstm.features import FlowPreprocessor
from fedlstm.models import build_model
from fedlstm.models.sequence import SequenceObjective
from fedlstm.pipeline import evaluate_bundle, make_preprocessor, windows_of
from fedlstm.training.loop import History, Reporter, fit
from fedlstm.windows import WindowSet, window_ends

log = logging.getLogger(__name__)
CLASSES = ["normal", "attack"]


class AnomalyConfig(_Strict):
    model: Literal["lstm-ae", "lstm-forecast"] = "lstm-ae"
    horizon: int = Field(1, ge=1)  # T': records the forecaster predicts (W = T + T')
    threshold: Literal["f-beta", "fpr"] = "f-beta"  # f-beta needs labelled validation anomalies
    beta: float = Field(0.5, gt=0)  # < 1 favours precision (Malhotra et al.)
    target_fpr: float = Field(0.01, gt=0, lt=1)  # label-free policy
    min_shrinkage: float = Field(1e-3, ge=0, le=1)
    score_bins: int = Field(2000, ge=3)
    threshold_share: float = Field(0.5, gt=0, lt=1)  # of validation records, for choosing ζ
    report_fpr: float = Field(0.01, gt=0, lt=1)  # "recall at X% FPR" in evaluations


class AnomalyRunConfig(RunConfig):
    anomaly: AnomalyConfig = AnomalyConfig()


def load_anomaly_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        **top: Any) -> AnomalyRunConfig:
    """`fedlstm.config.load_config` for runs that also carry an `[anomaly]` section."""
    data = raw_config(path, overrides, **top)
    data.setdefault("model", {})["task"] = "binary"  # windows carry normal/attack labels only
    cfg = AnomalyRunConfig.model_validate(data)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": cfg.anomaly.model})})


# --- data --------------------------------------------------------------------------------------
def normal_only(records: Records) -> Records:
    return records.take(np.flatnonzero(records.is_attack == 0))


@dataclass
class SiteWindows:
    train: WindowSet  # normal records: what the model learns
    sigma: WindowSet  # normal validation records: early stopping, μ and Σ
    threshold: WindowSet  # all other validation records: ζ
    threshold_is_anomaly: np.ndarray


def split_validation(val: Records, cfg: AnomalyRunConfig) -> tuple[Records, Records]:
    """(normal records for μ/Σ, labelled records for ζ): disjoint, so ζ is not fitted on the
    windows that defined normal."""
    if len(val) < 4:
        return normal_only(val), val.take(np.array([], np.int64))
    sigma, threshold = carve_validation(val, cfg.anomaly.threshold_share, cfg.seed + 5)
    return normal_only(sigma), threshold


def site_windows(train: Records, val: Records, preprocessor: FlowPreprocessor,
                 cfg: AnomalyRunConfig) -> SiteWindows:
    sigma, threshold = split_validation(val, cfg)
    thr = windows_of(threshold, preprocessor, cfg, CLASSES)
    return SiteWindows(windows_of(normal_only(train), preprocessor, cfg, CLASSES,
                                  stride=cfg.windows.stride),
                       windows_of(sigma, preprocessor, cfg, CLASSES), thr,
                       thr.window_labels.numpy().astype(bool))


# --- model and detector --------------------------------------------------------------------------
def model_params(cfg: AnomalyRunConfig) -> dict:
    m = cfg.model
    params = {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "dropout": m.dropout}
    if cfg.anomaly.model == "lstm-forecast":
        if cfg.windows.window <= cfg.anomaly.horizon:
            raise ValueError(f"the forecaster needs windows.window > anomaly.horizon "
                             f"(got W={cfg.windows.window}, T'={cfg.anomaly.horizon})")
        params["horizon"] = cfg.anomaly.horizon
    return params


def new_anomaly_model(cfg: AnomalyRunConfig, input_size: int) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(cfg.anomaly.model, input_size, len(CLASSES), **model_params(cfg))


def new_detector(spec: DatasetSpec, preprocessor: FlowPreprocessor, model: torch.nn.Module,
                 cfg: AnomalyRunConfig, metadata: dict) -> MahalanobisDetector:
    a = cfg.anomaly
    return MahalanobisDetector(spec, preprocessor, model.cpu().eval(), a.model, model_params(cfg),
                               "binary", CLASSES, cfg.windows.window, float("inf"),
                               {"fedlstm_version": __version__, "seed": cfg.seed, **metadata},
                               threshold_policy=a.threshold, beta=a.beta, target_fpr=a.target_fpr,
                               min_shrinkage=a.min_shrinkage)


# --- evaluation ----------------------------------------------------------------------------------
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
                     seen: set | None = None) -> dict:
    """`evaluate_bundle` plus recall at `report_fpr`, and recall on attack types unseen in training."""
    ev = evaluate_bundle(detector, records)
    y, score = ev["_curve"]["y"], ev["_curve"]["score"]
    ends = window_ends(len(records), detector.window, segments=records.segment)
    attacks = records.attack[ends]
    at = threshold_at_fpr(y, score, report_fpr)
    ev["at_fpr"] = {"target_fpr": report_fpr, "threshold": at,
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


# --- centralised training ------------------------------------------------------------------------
@dataclass
class AnomalyResult:
    bundle: MahalanobisDetector
    history: History
    split: Split
    evaluations: dict
    timings: dict


def train_anomaly(cfg: AnomalyRunConfig, split: Split | None = None,
                  reporter: Reporter | None = None, mode: str = "centralised") -> AnomalyResult:
    timings: dict = {}
    t = time.perf_counter()
    split = split or build_split(cfg.data, seed=cfg.seed)
    timings["load_seconds"] = time.perf_counter() - t
    spec = split.spec
    preprocessor = make_preprocessor(spec, cfg).fit(normal_only(split.train).frame)
    windows = site_windows(split.train, split.val, preprocessor, cfg)
    model = new_anomaly_model(cfg, preprocessor.n_features_out)
    history = fit(model, windows.train, windows.sigma, cfg.train, len(CLASSES), seed=cfg.seed,
                  reporter=reporter, objective=SequenceObjective())
    timings["train_seconds"] = history.seconds
    t = time.perf_counter()
    detector = new_detector(spec, preprocessor, model, cfg,
                            {"dataset": spec.name, "protocol": split.protocol, "mode": mode})
    detector.calibrate(windows.sigma, windows.threshold, windows.threshold_is_anomaly)
    timings["calibrate_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    seen = np.concatenate([split.train.attack, split.val.attack])  # all the training file held
    evaluations = {name: evaluate_anomaly(detector, recs, seen, cfg.anomaly.report_fpr)
                   for name, recs in {"val": split.val, **split.tests}.items()}
    timings["evaluate_seconds"] = time.perf_counter() - t
    return AnomalyResult(detector, history, split, evaluations, timings)
