"""Centralised training and evaluation: split -> preprocess -> windows -> train -> evaluate -> bundle.

Federated and local-only runs reuse `encode_labels`, `windows_of`, `evaluate_bundle` and the
training loop, so every mode is scored by the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from fedlstm import __version__
from fedlstm.config import RunConfig
from fedlstm.data.readers import Records
from fedlstm.data.schemas import NORMAL_FAMILY, DatasetSpec
from fedlstm.data.splits import Split, build_split
from fedlstm.detection.bundle import ModelBundle
from fedlstm.features import FlowPreprocessor
from fedlstm.models import build_model
from fedlstm.training.loop import History, Reporter, evaluate_loss, fit
from fedlstm.training.metrics import (best_f1_threshold, binary_metrics, multiclass_metrics,
                                      recall_by_group)
from fedlstm.windows import WindowSet, make_windows

log = logging.getLogger(__name__)


def class_names_for(spec: DatasetSpec, task: str) -> list[str]:
    return [NORMAL_FAMILY, "attack"] if task == "binary" else list(spec.family_order)


def encode_labels(records: Records, task: str, class_names: list[str]) -> np.ndarray:
    if task == "binary":
        return records.is_attack.astype(np.int64)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(records.family) - set(index))
    if unknown:
        raise ValueError(f"attack families {unknown} have no class; known: {class_names}")
    return np.array([index[f] for f in records.family], np.int64)


def make_preprocessor(spec: DatasetSpec, cfg: RunConfig) -> FlowPreprocessor:
    p = cfg.preprocess
    return FlowPreprocessor(spec.numeric_columns, spec.categorical, p.feature_range, p.outliers,
                            p.log_threshold, p.clip_quantile)


def windows_of(records: Records, preprocessor: FlowPreprocessor, cfg: RunConfig,
               class_names: list[str], stride: int = 1) -> WindowSet:
    labels = encode_labels(records, cfg.model.task, class_names)
    return make_windows(preprocessor.transform(records.frame), labels, cfg.windows.window, stride,
                        segments=records.segment)


def new_model(cfg: RunConfig, input_size: int, n_classes: int):
    torch.manual_seed(cfg.seed)  # initial weights are part of what a seed reproduces
    m = cfg.model
    params = {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "dropout": m.dropout}
    return build_model(m.name, input_size, n_classes, **params), params


def choose_threshold(bundle: ModelBundle, val: WindowSet, val_is_attack: np.ndarray,
                     cfg: RunConfig) -> float:
    if cfg.train.threshold == "val-f1":
        return best_f1_threshold(val_is_attack, bundle.decision_function(val))
    return cfg.train.fixed_threshold


def evaluate_bundle(bundle, records: Records) -> dict:
    """Scores every record that ends a full window of the test set (the first W-1 cannot).

    `bundle` is any detector with `preprocessor`, `window`, `task`, `class_names`, `threshold_`
    and `decision_function` (plus `predict_proba` for the family task): LSTM bundles and the
    classical baselines alike.
    """
    labels = encode_labels(records, bundle.task, bundle.class_names)
    data = make_windows(bundle.preprocessor.transform(records.frame), labels, bundle.window,
                        segments=records.segment)
    ends = data.ends.numpy()
    score = bundle.decision_function(data)
    is_attack = records.is_attack[ends]
    result = {"binary": binary_metrics(is_attack, score, bundle.threshold_)}
    flagged = (score >= bundle.threshold_).astype(int)
    result["flagged_by_family"] = recall_by_group(flagged, records.family[ends])
    result["flagged_by_attack"] = recall_by_group(flagged, records.attack[ends])
    if bundle.task == "family":
        proba = bundle.predict_proba(data)
        result["family"] = multiclass_metrics(labels[ends], proba.argmax(1), bundle.class_names)
    result["_curve"] = {"y": is_attack, "score": score}
    return result


@dataclass
class TrainResult:
    bundle: ModelBundle
    history: History
    split: Split
    evaluations: dict
    timings: dict


def test_curve_hook(model, tests: dict[str, WindowSet]):
    """Per-epoch test loss/accuracy for learning-curve figures only (never used to select)."""
    def on_epoch(record: dict) -> None:
        for name, data in tests.items():
            r = evaluate_loss(model, data, torch.nn.CrossEntropyLoss())
            record[f"test_loss/{name}"], record[f"test_accuracy/{name}"] = r["loss"], r["accuracy"]
            model.train()
    return on_epoch


def train_classical(cfg: RunConfig, split: Split | None = None,
                    mode: str = "centralised") -> TrainResult:
    """A scikit-learn baseline through the same split, preprocessing, windows and metrics."""
    from fedlstm.models.classical import ClassicalDetector

    timings = {}
    t = time.perf_counter()
    split = split or build_split(cfg.data, seed=cfg.seed)
    timings["load_seconds"] = time.perf_counter() - t
    classes = class_names_for(split.spec, "binary")
    preprocessor = make_preprocessor(split.spec, cfg).fit(split.train.frame)
    binary_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"task": "binary"})})
    train = windows_of(split.train, preprocessor, binary_cfg, classes, stride=cfg.windows.stride)
    val = windows_of(split.val, preprocessor, binary_cfg, classes)
    t = time.perf_counter()
    detector = ClassicalDetector(cfg.model.name, preprocessor, cfg.windows.window, cfg.seed,
                                 metadata={"dataset": split.spec.name, "protocol": split.protocol,
                                           "mode": mode, "seed": cfg.seed}).fit(train, val)
    timings["train_seconds"] = time.perf_counter() - t
    evaluations = {name: evaluate_bundle(detector, recs)
                   for name, recs in {"val": split.val, **split.tests}.items()}
    return TrainResult(detector, History(), split, evaluations, timings)


def train_centralised(cfg: RunConfig, reporter: Reporter | None = None,
                      split: Split | None = None, test_curves: bool = False,
                      mode: str = "centralised") -> TrainResult:
    timings = {}
    t = time.perf_counter()
    split = split or build_split(cfg.data, seed=cfg.seed)
    timings["load_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    spec = split.spec
    classes = class_names_for(spec, cfg.model.task)
    preprocessor = make_preprocessor(spec, cfg).fit(split.train.frame)  # training rows only
    train = windows_of(split.train, preprocessor, cfg, classes, stride=cfg.windows.stride)
    val = windows_of(split.val, preprocessor, cfg, classes)
    timings["preprocess_seconds"] = time.perf_counter() - t

    model, params = new_model(cfg, preprocessor.n_features_out, len(classes))
    hook = None
    if test_curves:
        hook = test_curve_hook(model, {name: windows_of(recs, preprocessor, cfg, classes)
                                       for name, recs in split.tests.items()})
    history = fit(model, train, val, cfg.train, len(classes), seed=cfg.seed, reporter=reporter,
                  on_epoch=hook)
    timings["train_seconds"] = history.seconds

    bundle = ModelBundle(spec, preprocessor, model.cpu(), cfg.model.name, params, cfg.model.task,
                         classes, cfg.windows.window, cfg.train.fixed_threshold,
                         metadata={"dataset": spec.name, "protocol": split.protocol,
                                   "mode": mode, "seed": cfg.seed,
                                   "fedlstm_version": __version__})
    bundle.threshold_ = choose_threshold(bundle, val, split.val.is_attack[val.ends.numpy()], cfg)
    t = time.perf_counter()
    evaluations = {"val": evaluate_bundle(bundle, split.val)}
    evaluations.update({name: evaluate_bundle(bundle, recs) for name, recs in split.tests.items()})
    timings["evaluate_seconds"] = time.perf_counter() - t
    return TrainResult(bundle, history, split, evaluations, timings)
