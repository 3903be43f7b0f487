"""Detection metrics from scikit-learn; attack is the positive class."""

from __future__ import annotations

import numpy as np


def _skm():
    """scikit-learn's metrics, imported at first use: importing scikit-learn takes about 1 s,
    which every deployed ClientApp process (Flower starts one per message) paid even for the
    messages that compute no metric."""
    from sklearn import metrics

    return metrics


UNUSABLE_FPR = 0.5  # a detector that flags more than this share of normal traffic is noise


def unusable(tn: int | float, fp: int | float, fn: int | float, tp: int | float) -> str | None:
    """Why a detector with this confusion matrix is not usable as it stands (None: it may be):
    it flags most normal traffic, or no attack. Accuracy hides both where one class dominates.
    Counts may be means over seeds."""
    if tn + fp and fp / (tn + fp) > UNUSABLE_FPR:
        return f"flags {fp / (tn + fp):.0%} of the normal traffic"
    if fn + tp and tp == 0:
        return f"flags none of the {fn:,.0f} attacks"
    return None


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    skm = _skm()
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(score) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, score)) if both else None,
        "pr_auc": float(skm.average_precision_score(y_true, score)) if both else None,
        "fpr": float(fp / (fp + tn)) if fp + tn else 0.0,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def multiclass_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Per-class scores of every class (support 0 where a class has no test record), and the
    macro average over the classes present in the test set only: a class without records has no
    recall to average, and counting it as 0 would understate every model alike."""
    skm = _skm()
    labels = list(range(len(class_names)))
    present = [c for c in labels if np.any(np.asarray(y_true) == c)]
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                           zero_division=0)
    out = {"accuracy": float(skm.accuracy_score(y_true, y_pred)),
           "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
           "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]),
                                "f1": float(f[i]), "support": int(support[i])}
                         for i, name in enumerate(class_names)}}
    for avg in ("macro", "weighted"):  # weighted: absent classes weigh 0 anyway
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=present if avg == "macro" else labels, average=avg,
            zero_division=0)
        out[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return out


def recall_by_group(is_attack_pred: np.ndarray, groups: np.ndarray) -> dict[str, dict]:
    """Share of records of each group (attack family or name) flagged as attacks."""
    out = {}
    for g in np.unique(groups):
        mask = groups == g
        out[str(g)] = {"n": int(mask.sum()), "flagged": float(is_attack_pred[mask].mean())}
    return out


def best_f1_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising F1; only ever called on validation data."""
    precision, recall, thresholds = _skm().precision_recall_curve(y_true, score)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=(precision + recall) > 0)
    if len(thresholds) == 0:
        return 0.5
    return float(thresholds[int(np.argmax(f1[:-1]))])
