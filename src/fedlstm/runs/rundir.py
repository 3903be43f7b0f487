"""Run directories: written in a staging folder and moved into place only when complete.

An interrupted or failed run therefore never leaves a half-written run directory, and a failed
re-run never destroys the results of an earlier one. Single output files (`fedlstm detect --out`)
are staged the same way (`staged_file`). Every output is written under `output_lock`, so two
runs given the same output never mix their files: the second fails at once and says why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from fedlstm import __version__
from fedlstm.config import RunConfig
from fedlstm.detection.anomaly import MahalanobisDetector, calibration_summary
from fedlstm.detection.bundle import ModelBundle
from fedlstm.detection.signing import KeyFileError, KeyHome, SigningKey
from fedlstm.tasks.base import TrainResult, training_attacks

BUNDLE_NAME = "model.fedlstm"
log = logging.getLogger(__name__)


class RunExists(FileExistsError):
    pass


class OutputBusy(OSError):
    """Another process is writing the same output."""


_held: dict[Path, list] = {}  # lock file -> [FileLock, depth]: what this process holds
_held_guard = threading.Lock()


def lock_file(out: str | Path) -> Path:
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lock"


@contextmanager
def output_lock(*outputs: str | Path):
    """Hold the lock of every output (a run directory or a file) for the block, or fail at once
    with OutputBusy if another process holds one of them.

    Re-entrant within a process: a command may hold it around its whole run and the
    `staged_dir` it calls takes it again. The lock file (`.NAME.lock` next to the output) is
    removed on release.
    """
    taken: list[Path] = []
    try:  # a pipe or device is no file to replace: nothing to lock (`staged_file`)
        for path in sorted({lock_file(o) for o in outputs if not is_stream(o)}):
            _acquire(path)
            taken.append(path)
        yield
    finally:
        for path in reversed(taken):
            _release(path)


def _acquire(path: Path) -> None:
    with _held_guard:
        if path in _held:
            _held[path][1] += 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            out = path.parent / path.name[1:-len(".lock")]
            raise OutputBusy(f"{out} is being written by another fedlstm run (it holds {path}); "
                             "wait for it to finish, or choose another output") from None
        _held[path] = [lock, 1]


def _release(path: Path) -> None:
    with _held_guard:
        entry = _held[path]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[path]
        # Unlinked while still held: a process waiting on this inode finds it gone once it gets
        # the lock (filelock checks the link count) and locks the new file instead.
        path.unlink(missing_ok=True)
        entry[0].release()


def is_stream(path: str | Path) -> bool:
    """An existing pipe, socket or device (/dev/null, /dev/stdout, a FIFO): written as it is."""
    path = Path(path)
    return path.exists() and not (path.is_file() or path.is_dir())


@contextmanager
def staged_file(out: str | Path, keep_on_failure: bool = False):
    """Yield a text file, open for writing, that replaces `out` only when the block ends without
    an error: written next to it as `.NAME.*.partial`, flushed, fsynced, then renamed over `out`.
    On an error it is removed (kept with `keep_on_failure`, its path in `.name`) and an earlier
    `out` is left as it was. Hold `output_lock(out)` around it. A symbolic link `out` has its
    target replaced. A pipe or device (`is_stream`) is written directly: renamed over, /dev/null
    became a regular file, and a FIFO's reader got nothing."""
    if is_stream(out):
        with open(out, "w", newline="") as fh:
            yield fh
        return
    out = Path(out).resolve()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        # mkstemp makes it private (0600); the file keeps the mode `out` has, or would get.
        mode = out.stat().st_mode & 0o7777 if out.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with open(tmp, "w", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        if not keep_on_failure:
            Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a crash once its folder is on disk
        folder = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def staged_dir(out: str | Path, overwrite: bool = False, keep_on_failure: bool = False,
               resume: bool = False):
    """Yield a staging folder that becomes `out` only on success, under `output_lock(out)`.

    `keep_on_failure` keeps the staging folder (and its checkpoints) after an error, so that a
    run with `resume` continues from it; otherwise a failed run leaves nothing behind. A new run
    never continues a failed one's leftovers: it stops unless `overwrite` lets it clear them.
    """
    out = Path(out)
    with output_lock(out):
        check_out(out, overwrite, resume)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = partial_dir(out)
        if keep_on_failure:
            check_leftovers(out, overwrite, resume)
        if not resume:
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


# What fedlstm writes into every folder it may replace: a run (config.json, metrics.json), a
# comparison, a deployment's work folder (deployment.json, checkpoints).
_RUN_MARKERS = ("config.json", "metrics.json", "comparison.json", "deployment.json", "checkpoints")


def check_out(out: str | Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an existing `out` unless `overwrite` (or `resume`) allows it, and refuse to
    replace anything but an earlier run: `--overwrite` deleted whatever folder it was given,
    the one holding the input files too."""
    out = Path(out)
    if not out.exists():
        return
    if not (overwrite or resume):
        raise RunExists(f"{out} already exists; choose another --out or pass --overwrite")
    if not out.is_dir():
        raise RunExists(f"{out} is a file, not a run directory; choose another --out")
    here = Path.cwd().resolve()
    if out.resolve() in (here, *here.parents):
        raise RunExists(f"{out} is the current folder (or holds it); choose another --out")
    if any(out.iterdir()) and not any((out / m).exists() for m in _RUN_MARKERS):
        raise RunExists(f"{out} is not a fedlstm run directory (no config.json or metrics.json "
                        "in it), so --overwrite will not delete it; choose another --out")


def check_leftovers(out: str | Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to start over a run that a failed or stopped one left to resume (its checkpoints),
    unless `overwrite` lets it clear them. Commands call it before any work: the refusal came
    after the banner and the data loading."""
    stage = partial_dir(out)
    if stage.is_dir() and any(stage.iterdir()) and not resume and not overwrite:
        raise RunExists(f"{stage} holds what a failed run left (its checkpoints); pass "
                        "--resume to continue it, or --overwrite to start a new run")


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
    """An evaluation as metrics.json keeps it: its scores, and its ROC curve as at most 200
    points instead of every record's score."""
    out = {k: v for k, v in evaluation.items() if not k.startswith("_")}
    if "_curve" in evaluation:
        out["roc"] = roc_points(evaluation["_curve"]["y"], evaluation["_curve"]["score"])
    return out


def roc_points(y: np.ndarray, score: np.ndarray, n: int = 200) -> dict | None:
    """At most `n` points of the ROC curve, evenly spaced along it (None with one class)."""
    from sklearn.metrics import roc_curve  # a site's ClientApp imports this module, not sklearn

    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, score)
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(n, len(fpr))).astype(int))
    return {"fpr": fpr[idx].round(5).tolist(), "tpr": tpr[idx].round(5).tolist()}


def unseen_attack_recall(train_attacks: np.ndarray, spec, evaluations: dict) -> dict:
    """Detection rate at the threshold on attack types absent from the training data
    (`tasks.base.training_attacks`: training and validation records), per test set."""
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


# The configuration a federated run was asked for. config.json holds the one it ran, which the
# sites settle (their number; the inputs "auto" picks for their schemas): compared with that, a
# study's request for a federation across networks never matched, and every rerun started over.
REQUEST_NAME = "request.json"


def ran_with(run_dir: str | Path, cfg: RunConfig) -> bool:
    """Whether `run_dir` holds a finished run of exactly `cfg` (as asked: its request.json, or
    config.json where the run settled nothing), so that a study may reuse it; another dataset,
    round count or override is run again."""
    run_dir = Path(run_dir)
    config_file = next((f for f in (run_dir / REQUEST_NAME, run_dir / "config.json")
                        if f.exists()), None)
    return (run_dir / "metrics.json").exists() and config_file is not None and \
        json.loads(config_file.read_text()) == json.loads(cfg.model_dump_json())


def baseline_metrics(baseline: dict) -> dict:
    """Gradient boosting on a run's split (`centralised.baseline_on_split`), as metrics.json
    keeps it (`baseline`): its evaluations as the run's own are kept."""
    return {**baseline, "evaluations": {k: public(v) for k, v in baseline["evaluations"].items()}}


def write_run(result: TrainResult, cfg: RunConfig, out: str | Path, overwrite: bool = False,
              command: str | None = None, baseline: dict | None = None) -> Path:
    """A centralised (or local-only) run: `write_results` in a staged folder. `baseline`:
    gradient boosting on the same split (`centralised.baseline_on_split`), kept as `baseline`."""
    with staged_dir(out, overwrite) as stage:
        extra = {"files": result.split.files, "data_notes": result.split.notes,
                 "unseen_attacks": unseen_attack_recall(
                     training_attacks(result.split.train, result.split.val), result.split.spec,
                     result.evaluations),
                 "history": result.history.to_dict(), "timings": result.timings}
        if baseline is not None:
            extra["baseline"] = baseline_metrics(baseline)
        write_results(stage, cfg, result.bundle, result.evaluations, extra, command,
                      curves=result.history.epochs)
    return Path(out)


def run_title(bundle: ModelBundle) -> str:
    m = bundle.metadata
    return f"{m.get('dataset')} / {m.get('protocol')} / {m.get('mode', 'centralised')}"


def write_results(stage: Path, cfg: RunConfig, bundle, evaluations: dict, extra: dict,
                  command: str | None = None, curves: list[dict] | None = None,
                  curve_axis: str = "epoch", plots: bool = True) -> None:
    """What every run directory holds, whatever the mode (centralised, local, federated in
    simulation or deployment) and the detector kind: config.json, the signed bundle, metrics.json,
    ROC and confusion plots, learning curves (`curves`: one record per epoch or round), and for
    the anomaly detector its calibration and a precision-recall figure. `plots=False` leaves the
    figures out (`reproduce` draws its own: about 0.6 s a run saved)."""
    title = run_title(bundle)
    (stage / "config.json").write_text(cfg.model_dump_json(indent=2))
    key = None
    if hasattr(bundle, "save"):
        key = run_signing_key()
        bundle.save(stage / BUNDLE_NAME, key, sign=key is not None)
    else:  # a scikit-learn baseline: a bundle would be a pickle, which runs code when loaded
        log.warning("%s is a baseline for comparison: its run has scores and plots, no %s",
                    bundle.model_name, BUNDLE_NAME)
    if isinstance(bundle, MahalanobisDetector):
        extra = {"anomaly": calibration_summary(bundle), **extra}
    metrics = {
        "dataset": bundle.metadata.get("dataset"), "protocol": bundle.metadata.get("protocol"),
        "model": bundle.model_name, "task": bundle.task,
        "mode": bundle.metadata.get("mode", "centralised"), "window": bundle.window,
        "seed": cfg.seed, "fedlstm_version": __version__, "commit": git_commit(),
        "command": command or " ".join(sys.argv), "threshold": bundle.threshold_,
        "bundle_signed_by": key.fingerprint if key else None,
        "evaluations": {k: public(v) for k, v in evaluations.items()}, **extra,
    }
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, default=json_default))
    if plots:
        _plot_run(stage, bundle, evaluations, curves, curve_axis, title)


def _plot_run(stage: Path, bundle, evaluations: dict, curves: list[dict] | None, curve_axis: str,
              title: str) -> None:
    # matplotlib costs every importer ~0.5 s, ClientApp processes included: load it to plot
    from fedlstm.runs import plots

    roc = {k: (v["_curve"]["y"], v["_curve"]["score"]) for k, v in evaluations.items()}
    plots.roc_curves(roc, stage / "roc.png", title)
    if isinstance(bundle, MahalanobisDetector):
        plots.pr_curves(roc, stage / "pr.png", title)
    if curves is not None:
        name = "learning_curves.png" if curve_axis == "epoch" else "round_curves.png"
        plots.learning_curves(curves, stage / name, title, x_key=curve_axis)
        if any("bytes_up" in r for r in curves):
            plots.accuracy_vs_traffic(curves, stage / "accuracy_vs_traffic.png", title)
    for name, ev in evaluations.items():
        if name == "val":
            continue
        safe = name.replace("/", "_")
        plots.confusion_matrix(ev["binary"]["confusion_matrix"], ["normal", "attack"],
                               stage / f"confusion_{safe}.png", f"{title} / {name}")
        if "family" in ev:
            plots.confusion_matrix(ev["family"]["confusion_matrix"], bundle.class_names,
                                   stage / f"confusion_family_{safe}.png", f"{title} / {name}")


def run_signing_key() -> SigningKey | None:
    """The key a run signs its bundle with: the local key home's (created on first use), which
    for a federation is the coordinator's, since the ServerApp writes the run there.

    A key home that cannot be read or written must not throw away a finished training run: the
    bundle is then written unsigned (loading refuses it) with an error saying how to sign it.
    """
    home = KeyHome.default()
    try:
        return home.signing_key()
    except (KeyFileError, OSError) as exc:
        log.error("the bundle is written UNSIGNED: no signing key (%s); fix the key home %s (or set "
                  "FEDLSTM_KEYS), then run `fedlstm keys sign RUN/%s`", exc, home.path, BUNDLE_NAME)
        return None


def json_default(value):
    """numpy scalars and arrays as JSON (metrics carry both)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
