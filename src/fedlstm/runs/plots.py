"""PNG figures of a run: learning curves, ROC and precision-recall curves, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def learning_curves(records: list[dict], path: Path, title: str, x_key: str = "epoch") -> Path:
    """Every `*_loss` / `*_accuracy` series (train, val, test/NAME, ...) against epochs or rounds."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    keys = sorted({k for r in records for k in r if isinstance(r[k], (int, float))})
    for metric, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        for key in keys:
            if key.split("/")[0].endswith(f"_{metric}"):
                points = [(r[x_key], r[key]) for r in records if key in r]
                ax.plot(*zip(*points), marker="o", ms=3, label=key.replace(f"_{metric}", ""))
        ax.set_xlabel(x_key)
        ax.set_ylabel("accuracy of the classifier (argmax)" if metric == "accuracy" else metric)
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_traffic(records: list[dict], path: Path, title: str) -> Path:
    """Each round's test accuracy (reporting only) against the megabytes sent and received so far
    (training and evaluation messages, as serialised for the wire)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    keys = sorted({k for r in records for k in r if k.startswith("test_accuracy/")})
    total, xs = 0.0, []
    for r in records:
        total += sum(r.get(k, 0) for k in ("bytes_up", "bytes_down", "eval_bytes_up",
                                            "eval_bytes_down"))
        xs.append(total / 1e6)
    for key in keys:
        points = [(x, r[key]) for x, r in zip(xs, records) if key in r]
        ax.plot(*zip(*points), marker="o", ms=3, label=key.removeprefix("test_accuracy/"))
    ax.set_xlabel("cumulative MB (up + down)")
    ax.set_ylabel("test accuracy of the classifier (argmax)")
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, score) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:,}", ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, score) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        precision, recall, _ = precision_recall_curve(y, score)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, score):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
