"""What a detector kind is: the one interface the trainer, the federated sites and server, the
run writer and the reports use, so that none of them knows which kind it holds.

A `Task` says only what differs between kinds:
- which records fit the preprocessing statistics (`preprocessing_records`);
- which windows a site builds (`site_windows`): what the model learns from, what early-stops it
  (and is a site's federated evaluation), and what calibrates the detector;
- the model and its objective (`new_model`, `objective`), or a model that is not trained with
  the loop at all (`fit` is the hook);
- how the detector is built and calibrated, centrally (`calibrate`) and from aggregate-only
  answers of the sites (`federated_detector`, `site_answers`, `declared_answers`);
- how a detector is evaluated on a test set (`evaluate`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedlstm import __version__
from fedlstm.config import RunConfig
from fedlstm.data.readers import Records
from fedlstm.data.spec import NORMAL_FAMILY, DatasetSpec
from fedlstm.data.splits import run_protocol
from fedlstm.features import FlowPreprocessor
from fedlstm.features.windows import WindowSet, make_windows
from fedlstm.models import build_model
from fedlstm.training.loop import History, Reporter, fit
from fedlstm.training.metrics import binary_metrics, multiclass_metrics, recall_by_group
from fedlstm.training.objectives import Objective, evaluate_loss

# A check of one answer value a site sends: None when it is as declared, else why it is not.
Check = Callable[[object], "str | None"]
# A site's answer to one aggregate question: (the site's state, the question) -> scalars/bytes.
Answer = Callable[[object, dict], dict]
# The server's way to put one question to every site: the question -> their answers.
Ask = Callable[[dict], list[dict]]
# Per-epoch test curves for figures: the model being trained -> a hook called after each epoch.
Curves = Callable[[torch.nn.Module], Callable[[dict], None]]


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


def training_stride(cfg: RunConfig) -> int:
    """Stride of the windows a model trains on. Under DP-SGD with `dp_windows=disjoint` it is at
    least W, so that each flow sits in one training window and the per-window guarantee is the
    per-flow one (`training.privacy.sgd_rdp` accounts any overlap that is left as a group)."""
    w = cfg.windows
    if cfg.train.dp and cfg.train.dp_windows == "disjoint":
        return max(w.stride, w.window)
    return w.stride


def windows_of(records: Records, preprocessor: FlowPreprocessor, cfg: RunConfig,
               class_names: list[str], stride: int = 1) -> WindowSet:
    labels = encode_labels(records, cfg.model.task, class_names)
    return make_windows(preprocessor.transform(records.frame), labels, cfg.windows.window, stride,
                        segments=records.segment)


def _unknown_families(detector, records: Records) -> list[str]:
    # A family the model has no class for (a later log's new attack) is still scored, as an
    # attack; only the family metrics need every family to have a class.
    return sorted(set(records.family) - set(detector.class_names)) \
        if detector.task == "family" else []


def scored_windows(detector, records: Records) -> WindowSet:
    """The windows `evaluate_detector` scores: one ending at every record of the test set."""
    labels = records.is_attack.astype(np.int64) if _unknown_families(detector, records) else \
        encode_labels(records, detector.task, detector.class_names)
    return make_windows(detector.preprocessor.transform(records.frame), labels, detector.window,
                        segments=records.segment)


def evaluate_detector(detector, records: Records, data: WindowSet | None = None,
                      score: np.ndarray | None = None) -> dict:
    """Scores every record of the test set: each ends one window (left-padded at the start of
    its segment, `features.windows`).

    `detector` is anything with `preprocessor`, `window`, `task`, `class_names`, `threshold_` and
    `decision_function` (plus `predict_proba` for the family task): LSTM bundles, the anomaly
    detector and the classical baselines alike. A caller that already has the `scored_windows`
    and their `decision_function` passes them (the hybrid scores its parts from the same pass).
    """
    unknown = _unknown_families(detector, records)
    data = scored_windows(detector, records) if data is None else data
    labels = data.labels.numpy()
    ends = data.ends.numpy()
    score = detector.decision_function(data) if score is None else score
    is_attack = records.is_attack[ends]
    result = {"binary": binary_metrics(is_attack, score, detector.threshold_)}
    flagged = (score >= detector.threshold_).astype(int)
    result["flagged_by_family"] = recall_by_group(flagged, records.family[ends])
    result["flagged_by_attack"] = recall_by_group(flagged, records.attack[ends])
    if unknown:
        result["families_without_class"] = unknown
    elif detector.task == "family":
        # What `detect` names: an alert's most likely attack family, else the most likely class.
        proba = detector.predict_proba(data)
        named = np.where(flagged == 1, 1 + proba[:, 1:].argmax(1), proba.argmax(1))
        result["family"] = multiclass_metrics(labels[ends], named, detector.class_names)
    result["_curve"] = {"y": is_attack, "score": score}
    return result


def arrays_to_bytes(arrays: list[np.ndarray]) -> bytes:
    """Arrays as .npz bytes: how weights and aggregate answers travel in a config record."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def bytes_to_arrays(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def training_attacks(*parts: Records) -> np.ndarray:
    """The attack types a detector was trained and calibrated with: those of every training
    part (training and validation records). An attack type outside it is "unseen", in every
    report (`runs.rundir.unseen_attack_recall`, `tasks.anomaly.evaluate_anomaly`)."""
    return np.concatenate([p.attack for p in parts])


def npz_check(layout: Mapping[str, tuple[tuple[int, ...], str]]) -> Check:
    """A check for answers sent as .npz bytes: exactly these arrays, of these shapes and kinds."""
    def check(data: object) -> str | None:
        if not isinstance(data, bytes):
            return f"expected .npz bytes, found {type(data).__name__}"
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if sorted(z.files) != sorted(layout):
                    return f"arrays {sorted(z.files)}, declared {sorted(layout)}"
                for name, (shape, kinds) in layout.items():
                    value = z[name]
                    if value.shape != tuple(shape) or value.dtype.kind not in kinds:
                        return (f"{name} has shape {value.shape} and dtype {value.dtype}, "
                                f"declared {tuple(shape)} of kind {kinds!r}")
        except (ValueError, OSError, EOFError, AttributeError) as exc:
            return f"not an .npz archive ({exc})"
        return None
    return check


def split_metadata(cfg: RunConfig) -> dict:
    """What rebuilds a run's test split (`fedlstm evaluate`): a random split depends on the seed,
    the fractions and dedup, so a bundle records them."""
    d = cfg.data
    return {"seed": cfg.seed, "protocol": run_protocol(d), "dedup": d.dedup,
            "test_fraction": d.test_fraction, "val_fraction": d.val_fraction,
            "split_file": d.split_file, "max_test_rows": d.max_test_rows}


@dataclass
class SiteWindows:
    """The windows one site (or the pooled training data) builds from its own records."""

    train: WindowSet  # what the model learns from
    val: WindowSet  # early stopping, and the site's federated evaluation
    calibration: WindowSet | None = None  # what chooses the detector's threshold (if not val)
    calibration_is_attack: np.ndarray | None = None


@dataclass
class TrainResult:
    bundle: object  # the detector
    history: History
    split: object  # fedlstm.data.splits.Split
    evaluations: dict
    timings: dict


class Task:
    """One detector kind. Parameters come from the run configuration; nothing here is learned."""

    kind: ClassVar[str]
    federated: ClassVar[bool] = True  # can its model be trained by federated averaging?
    test_curves: ClassVar[bool] = True  # is a test-set loss per epoch/round meaningful?

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    # -- data -----------------------------------------------------------------------------------
    def class_names(self, spec: DatasetSpec) -> list[str]:
        return class_names_for(spec, self.cfg.model.task)

    def preprocessing_records(self, records: Records) -> Records:
        """The records whose statistics fit the preprocessing (all of a site's training data)."""
        return records

    def fit_preprocessor(self, spec: DatasetSpec, train: Records) -> FlowPreprocessor:
        return make_preprocessor(spec, self.cfg).fit(self.preprocessing_records(train).frame)

    def site_windows(self, train: Records, val: Records, preprocessor: FlowPreprocessor,
                     classes: list[str]) -> SiteWindows:
        cfg = self.cfg
        return SiteWindows(windows_of(train, preprocessor, cfg, classes, stride=training_stride(cfg)),
                           windows_of(val, preprocessor, cfg, classes))

    # -- model ----------------------------------------------------------------------------------
    def model_params(self) -> dict:
        m = self.cfg.model
        return {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "dropout": m.dropout}

    def new_model(self, input_size: int, n_classes: int) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)  # initial weights are part of what a seed reproduces
        return build_model(self.cfg.model.name, input_size, n_classes, **self.model_params())

    def objective(self) -> Objective | None:
        """The loss the loop trains with (None: the loop's cross-entropy, class-weighted with
        `train.class_weights=balanced`)."""
        return None

    def evaluation_objective(self) -> Objective:
        """What a site reports as its validation loss in a federation."""
        return Objective()

    # -- the detector ---------------------------------------------------------------------------
    def metadata(self, spec: DatasetSpec, protocol: str, mode: str) -> dict:
        return {"dataset": spec.name, "protocol": protocol, "mode": mode, "seed": self.cfg.seed,
                "fedlstm_version": __version__, "split": split_metadata(self.cfg)}

    def detector(self, spec: DatasetSpec, preprocessor: FlowPreprocessor, model: torch.nn.Module,
                 classes: list[str], metadata: dict):
        raise NotImplementedError

    def calibrate(self, detector, windows: SiteWindows, val: Records) -> None:
        """Set the detector's operating point from validation data (never test data)."""

    def fit(self, spec: DatasetSpec, preprocessor: FlowPreprocessor, windows: SiteWindows,
            classes: list[str], metadata: dict, val: Records, reporter: Reporter | None = None,
            curves: Curves | None = None):
        """Train a model with the one loop and turn it into a calibrated detector."""
        model = self.new_model(preprocessor.n_features_out, len(classes))
        history = fit(model, windows.train, windows.val, self.cfg.train, len(classes),
                      seed=self.cfg.seed, reporter=reporter,
                      on_epoch=curves(model) if curves else None, objective=self.objective())
        detector = self.detector(spec, preprocessor, model.cpu(), classes, metadata)
        self.calibrate(detector, windows, val)
        return detector, history

    def evaluate(self, detector, records: Records, seen_attacks: np.ndarray) -> dict:
        return evaluate_detector(detector, records)

    # -- federated ------------------------------------------------------------------------------
    def site_answers(self) -> dict[str, Answer]:
        """Aggregate questions (beyond the preprocessing statistics) a site of this kind answers."""
        return {}

    def declared_answers(self, server) -> dict[str, dict[str, Check]]:
        """The layout of each answer of `site_answers`, which the server checks."""
        return {}

    def federated_detector(self, server, ask: Ask | None, mode: str = "federated"):
        """The detector of a finished federation; `ask` puts aggregate questions to the sites."""
        raise NotImplementedError


def test_curves(tests: dict[str, WindowSet]) -> Curves:
    """Per-epoch test loss/accuracy for learning-curve figures only (never used to select)."""
    def bind(model):
        def on_epoch(record: dict) -> None:
            for name, data in tests.items():
                r = evaluate_loss(model, data, torch.nn.CrossEntropyLoss())
                record[f"test_loss/{name}"], record[f"test_accuracy/{name}"] = r["loss"], r["accuracy"]
                model.train()
        return on_epoch
    return bind
