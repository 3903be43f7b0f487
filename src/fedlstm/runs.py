"""Run directories: written in a staging folder and moved into place only when complete.

An interrupted or failed run therefore never leaves a half-written run directory, and a failed
re-run never destroys the results of an earlier one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fedlstm import __version__
from fedlstm.config import RunConfig
from fedlstm.pipeline import TrainResult
from fedlstm.reports import plots

BUNDLE_NAME = "model.fedlstm"


class RunExists(FileExistsError):
    pass


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False):
    out = Path(out)
    if out.exists() and not overwrite:
        raise RunExists(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def public(evaluation: dict) -> dict:
    return {k: v for k, v in evaluation.items() if not k.startswith("_")}


def unseen_attack_recall(result: TrainResult) -> dict:
    """Detection rate on attack types absent from the training data, per test set."""
    seen = set(result.split.train.attack)
    out = {}
    for name, ev in result.evaluations.items():
        rows = {a: v for a, v in ev["flagged_by_attack"].items()
                if a not in seen and a not in result.split.spec.normal_labels}
        n = sum(v["n"] for v in rows.values())
        if n:
            out[name] = {"n": n, "recall": sum(v["n"] * v["flagged"] for v in rows.values()) / n,
                         "attacks": sorted(rows)}
    return out


def write_run(result: TrainResult, cfg: RunConfig, out: str | Path, overwrite: bool = False,
              command: str | None = None) -> Path:
    spec, split = result.split.spec, result.split
    title = f"{spec.name} / {split.protocol} / {result.bundle.metadata.get('mode', 'centralised')}"
    with staged_dir(out, overwrite) as stage:
        (stage / "config.json").write_text(cfg.model_dump_json(indent=2))
        result.bundle.save(stage / BUNDLE_NAME)
        metrics = {
            "dataset": spec.name, "protocol": split.protocol, "model": cfg.model.name,
            "task": cfg.model.task, "mode": result.bundle.metadata.get("mode", "centralised"),
            "window": cfg.windows.window, "seed": cfg.seed, "fedlstm_version": __version__,
            "commit": git_commit(), "command": command or " ".join(sys.argv),
            "files": split.files, "data_notes": split.notes, "threshold": result.bundle.threshold_,
            "evaluations": {k: public(v) for k, v in result.evaluations.items()},
            "unseen_attacks": unseen_attack_recall(result),
            "history": result.history.to_dict(), "timings": result.timings,
        }
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
        plots.learning_curves(result.history.epochs, stage / "learning_curves.png", title)
        curves = {k: (v["_curve"]["y"], v["_curve"]["score"]) for k, v in result.evaluations.items()}
        plots.roc_curves(curves, stage / "roc.png", title)
        for name, ev in result.evaluations.items():
            if name == "val":
                continue
            plots.confusion_matrix(ev["binary"]["confusion_matrix"], ["normal", "attack"],
                                   stage / f"confusion_{name}.png", f"{title} / {name}")
            if "family" in ev:
                plots.confusion_matrix(ev["family"]["confusion_matrix"], result.bundle.class_names,
                                       stage / f"confusion_family_{name}.png", f"{title} / {name}")
    return Path(out)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
