"""Detector kinds, one plug-in each (`base.Task`): what differs between them, and nothing else.

The trainer (`centralised.train`), the federated site and server (`fedlstm.federation`), the run
writer and the reports take a Task and never ask which kind it is. Adding a kind is one file
here and one line in `TASKS`.
"""

from __future__ import annotations

from fedlstm.config import RunConfig
from fedlstm.detection.classical import CLASSICAL
from fedlstm.tasks.anomaly import AnomalyTask
from fedlstm.tasks.base import Task
from fedlstm.tasks.classical import ClassicalTask
from fedlstm.tasks.hybrid import HybridTask
from fedlstm.tasks.supervised import SupervisedTask

TASKS: dict[str, type[Task]] = {t.kind: t for t in (SupervisedTask, AnomalyTask, ClassicalTask,
                                                   HybridTask)}


def task_for(cfg: RunConfig) -> Task:
    """The detector kind a configuration asks for: `detector`, where a supervised detector with a
    classical model name (svm, hgb, ...) is that scikit-learn baseline."""
    kind, name = cfg.detector, cfg.model.name
    # Never train another model than the one asked for: the hybrid is an LSTM.
    if kind == "hybrid" and name != "lstm" or name in CLASSICAL and kind != "supervised":
        raise ValueError(f"model {name} is not the {kind} detector's: pass --detector supervised "
                         f"to train {name}")
    if name in CLASSICAL:
        kind = "classical"
    return TASKS[kind](cfg)


__all__ = ["TASKS", "Task", "task_for"]
