"""The one centralised trainer: split -> preprocess -> windows -> train -> calibrate -> evaluate,
for every detector kind. Local-only models of the comparison are this trainer on one site's data."""

from __future__ import annotations

import logging
import time

from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, build_split
from fedlstm.detection.classical import CLASSICAL
from fedlstm.tasks.base import Task, TrainResult, test_curves, training_attacks, windows_of
from fedlstm.tasks.classical import ClassicalTask
from fedlstm.training.loop import Reporter

log = logging.getLogger(__name__)


def _check_classes(task: Task, split: Split) -> None:
    """Training data of one class: without normal records the novelty part (or the anomaly
    detector) has nothing to learn, which is an error that says why, not "0 windows"; without
    attacks a classifier can never flag one, which is said before training, not only by the test
    summary afterwards."""
    n, attacks = len(split.train), int(split.train.is_attack.sum())
    if not n:
        return
    spec = split.spec
    if attacks == n and task.cfg.detector in ("hybrid", "anomaly"):
        raise ValueError(
            f"the training data holds no normal records ({n:,} records, all attacks): the "
            f"{'novelty part' if task.cfg.detector == 'hybrid' else 'anomaly detector'} learns "
            f"normal traffic. Schema {spec.name!r} reads the label values "
            f"{list(spec.normal_labels)} as normal: if the files name it otherwise, set `normal` "
            "in a schema file (docs/schemas.md)")
    if task.cfg.detector != "anomaly" and attacks in (0, n):
        what, never = ("no attack", "flag an attack") if attacks == 0 else \
            ("no normal", "call a record normal")
        log.warning("the training data holds %s records (%d records, schema %r): the "
                    "classifier can never %s%s", what, n, spec.name, never,
                    "; only the novelty part can flag" if task.cfg.detector == "hybrid"
                    and attacks == 0 else "")


def train(task: Task, split: Split | None = None, reporter: Reporter | None = None,
          curves: bool = False, mode: str = "centralised") -> TrainResult:
    """Train `task`'s detector on the split's training records; validation (carved from
    training data) early-stops and calibrates; every test set is only evaluated. `curves` adds
    per-epoch test loss/accuracy to the history, for figures only."""
    cfg = task.cfg
    timings = {}
    t = time.perf_counter()
    split = split or build_split(cfg.data, seed=cfg.seed)
    timings["load_seconds"] = time.perf_counter() - t

    _check_classes(task, split)
    t = time.perf_counter()
    spec = split.spec
    classes = task.class_names(spec)
    preprocessor = task.fit_preprocessor(spec, split.train)  # training rows only
    windows = task.site_windows(split.train, split.val, preprocessor, classes)
    timings["preprocess_seconds"] = time.perf_counter() - t

    hook = None
    if curves and task.test_curves:
        hook = test_curves({name: windows_of(recs, preprocessor, cfg, classes)
                            for name, recs in split.tests.items()})
    t = time.perf_counter()
    detector, history = task.fit(spec, preprocessor, windows, classes,
                                 task.metadata(spec, split.protocol, mode), split.val,
                                 reporter=reporter, curves=hook)
    timings["train_seconds"] = history.seconds or time.perf_counter() - t

    t = time.perf_counter()
    seen = training_attacks(split.train, split.val)
    evaluations = {name: task.evaluate(detector, recs, seen)
                   for name, recs in {"val": split.val, **split.tests}.items()}
    timings["evaluate_seconds"] = time.perf_counter() - t
    return TrainResult(detector, history, split, evaluations, timings)


BASELINE = "hgb"  # the strongest simple baseline in every report table: gradient boosting
BASELINE_TITLE = "gradient boosting"


def baseline_on_split(cfg: RunConfig, split: Split, on: str = "the same split") -> dict | None:
    """Gradient boosting trained and scored on `split`, the split a detector was just trained
    on: same training, validation and test records, same task (binary or families), same
    windows. What a run summary puts beside the detector, so that a model no better than a
    10-second baseline is seen as such. None where it does not apply: the detector is itself a
    classical baseline, the training data holds one class only (nothing to classify), or it
    failed (logged). `on`: what the split is, as the summary says it."""
    if cfg.model.name in CLASSICAL:
        return None
    attacks = int(split.train.is_attack.sum())
    if attacks in (0, len(split.train)):
        return None
    hgb = cfg.model_copy(update={"detector": "supervised",
                                 "model": cfg.model.model_copy(update={"name": BASELINE})})
    t = time.perf_counter()
    try:
        result = train(ClassicalTask(hgb), split)
    except Exception as exc:  # a reference only: the detector's own run must not be lost to it
        log.warning("gradient boosting on %s failed, the run goes on without it: %s", on, exc)
        return None
    return {"method": BASELINE, "title": BASELINE_TITLE, "on": on, "task": cfg.model.task,
            "evaluations": result.evaluations, "seconds": time.perf_counter() - t}
