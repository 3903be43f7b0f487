"""The one centralised trainer: split -> preprocess -> windows -> train -> calibrate -> evaluate,
for every detector kind. Local-only models of the comparison are this trainer on one site's data."""

from __future__ import annotations

import time

from fedlstm.data.splits import Split, build_split
from fedlstm.tasks.base import Task, TrainResult, test_curves, training_attacks, windows_of
from fedlstm.training.loop import Reporter


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
