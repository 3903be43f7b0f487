"""Scoring a test set with the hybrid detector: one pass against the two passes it used to take.

    .venv/bin/python benchmarks/bench_evaluate.py [--dataset kdd99] [--repeats 3]

A hybrid (the default detector) is trained briefly on 20,000 training rows of the dataset's
official split (1 epoch; how good it is does not matter here), then its test set is scored both
ways, alternately, one torch thread:
- one pass (`HybridTask.evaluate`): one set of windows, both parts scored once, the hybrid's
  score their maximum;
- two passes (the code before this benchmark, rebuilt here from the same functions):
  `evaluate_anomaly` windows and scores the test set itself, then the parts are scored again on
  windows built again.
Both must give the same metrics; the benchmark checks it. Both sides also compute the same
metrics (ROC, recall per attack type), which the single pass does not shorten. Target: ratio
<= 0.9.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("FEDLSTM_DATA", str(Path(__file__).resolve().parents[2] / "shared"
                                          / "datasets"))

from _ratio import print_ratio  # noqa: E402

from fedlstm.config import load_config  # noqa: E402
from fedlstm.data.splits import build_split  # noqa: E402
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.anomaly import evaluate_anomaly  # noqa: E402
from fedlstm.tasks.base import scored_windows, training_attacks  # noqa: E402
from fedlstm.tasks.centralised import train  # noqa: E402


def two_passes(task, detector, records, seen) -> dict:
    ev = evaluate_anomaly(detector, records, seen, task.cfg.anomaly.report_fpr)
    known, anomalous = detector.parts(scored_windows(detector, records))
    return {**ev, "known": known, "anomalous": anomalous}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kdd99")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["detector=hybrid", f"data.dataset={args.dataset}",
                             "data.protocol=official", "data.max_train_rows=20000",
                             "train.epochs=1",
                             f"data.data_dir={os.environ['FEDLSTM_DATA']}"])
    split = build_split(cfg.data, seed=cfg.seed)
    task = task_for(cfg)
    detector = train(task, split).bundle
    records, seen = split.tests["test"], training_attacks(split.train, split.val)
    print(f"{args.dataset} test set: {len(records):,} records")
    seconds: dict[str, list[float]] = {"one pass": [], "two passes": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        old = two_passes(task, detector, records, seen)
        seconds["two passes"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = task.evaluate(detector, records, seen)
        seconds["one pass"].append(time.perf_counter() - t0)
        assert new["binary"] == old["binary"] and new["unseen"] == old["unseen"]
    print_ratio(seconds, "one pass", "two passes", 0.9)


if __name__ == "__main__":
    main()
