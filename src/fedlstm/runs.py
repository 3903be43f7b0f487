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
from fedlstm.detection.bundle import ModelBundle
from fedlstm.pipeline import TrainResult
from fedlstm.reports import plots

BUNDLE_NAME = "model.fedlstm"


class RunExists(FileExistsError):
    pass


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False, keep_on_failure: bool = False):
    """Yield a staging folder that becomes `out` only on success.

    `keep_on_failure` keeps the staging folder (and its checkpoints) after an error, so that a
    resumed run continues from it; otherwise a failed run leaves nothing behind.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise RunExists(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = partial_dir(out)
    if not keep_on_failure:
        shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(exist_ok=True)
    try:
        yield stage
    except BaseException:
        if not keep_on_failure:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def public(evaluation: dict) -> dict:
    return {k: v for k, v in evaluation.items() if not k.startswith("_")}


def unseen_attack_recall(train_attacks: np.ndarray, spec, evaluations: dict) -> dict:
    """Detection rate on attack types absent from the training data, per test set."""
    seen = set(train_attacks)
    out = {}
    for name, ev in evaluations.items():
        rows = {a: v for a, v in ev["flagged_by_attack"].items()
                if a not in seen and a not in spec.normal_labels}
        n = sum(v["n"] for v in rows.values())
        if n:
            out[name] = {"n": n, "recall": sum(v["n"] * v["flagged"] for v in rows.values()) / n,
                         "attacks": sorted(rows)}
    return out


def write_run(result: TrainResult, cfg: RunConfig, out: str | Path, overwrite: bool = False,
              command: str | None = None) -> Path:
    with staged_dir(out, overwrite) as stage:
        extra = {"files": result.split.files, "data_notes": result.split.notes,
                 "unseen_attacks": unseen_attack_recall(result.split.train.attack,
                                                        result.split.spec, result.evaluations),
                 "history": result.history.to_dict(), "timings": result.timings}
        write_results(stage, cfg, result.bundle, result.evaluations, extra, command)
        plots.learning_curves(result.history.epochs, stage / "learning_curves.png",
                              run_title(result.bundle))
    return Path(out)


def run_title(bundle: ModelBundle) -> str:
    m = bundle.metadata
    return f"{m.get('dataset')} / {m.get('protocol')} / {m.get('mode', 'centralised')}"


def write_results(stage: Path, cfg: RunConfig, bundle: ModelBundle, evaluations: dict,
                  extra: dict, command: str | None = None) -> None:
    """Configuration, bundle, metrics.json, ROC and confusion plots: common to every mode."""
    title = run_title(bundle)
    (stage / "config.json").write_text(cfg.model_dump_json(indent=2))
    bundle.save(stage / BUNDLE_NAME)
    metrics = {
        "dataset": bundle.metadata.get("dataset"), "protocol": bundle.metadata.get("protocol"),
        "model": bundle.model_name, "task": bundle.task,
        "mode": bundle.metadata.get("mode", "centralised"), "window": bundle.window,
        "seed": cfg.seed, "fedlstm_version": __version__, "commit": git_commit(),
        "command": command or " ".join(sys.argv), "threshold": bundle.threshold_,
        "evaluations": {k: public(v) for k, v in evaluations.items()}, **extra,
    }
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
    curves = {k: (v["_curve"]["y"], v["_curve"]["score"]) for k, v in evaluations.items()}
    plots.roc_curves(curves, stage / "roc.png", title)
    for name, ev in evaluations.items():
        if name == "val":
            continue
        safe = name.replace("/", "_")
        plots.confusion_matrix(ev["binary"]["confusion_matrix"], ["normal", "attack"],
                               stage / f"confusion_{safe}.png", f"{title} / {name}")
        if "family" in ev:
            plots.confusion_matrix(ev["family"]["confusion_matrix"], bundle.class_names,
                                   stage / f"confusion_family_{safe}.png", f"{title} / {name}")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
