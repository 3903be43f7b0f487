"""Score flow logs as a stream: chunks in, alerts out, memory bounded whatever the input size.

`StreamScorer` keeps, per entity (or for the whole stream when the schema has no entity key), the
last W-1 preprocessed records, so a window is always W consecutive records of one entity in
arrival order, across chunk boundaries. Every record is scored as it arrives: an entity's first
W-1 records end windows left-padded with its first record, as in training (`features.windows`).
The entity table is an LRU of at most `max_entities` entries, so memory stays bounded; an evicted
entity starts again from its next record; evictions are counted in the summary.

Top contributing features of a classifier's alert are integrated gradients (Captum) of the attack
logit, log(P(attack) / P(normal)), with respect to the alerted (last) record of the window, the
W-1 records before it held fixed, from a baseline record of zeros (every numeric feature at its
training minimum, no category set); they are summed back onto input columns (a categorical column
gets its one-hot block) and are in logit units: together they make up (to the integration's
accuracy) the logit of the window minus that of the window ending in the baseline record. The
logit, unlike the probability, does not saturate, so a confident alert is explained as well as a
borderline one (gradients of a probability of 1.0 are ~0). Computed for alerts only. An anomaly
alert is explained by the largest terms of its Mahalanobis score's decomposition instead. Either
way the features are listed by what they pushed towards the alert, largest first (not by size:
three features that all argued against an alert explained nothing).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients

from fedlstm.data.flows import Chunk, FlowReader, label_arrays, unset_labels
from fedlstm.data.flowschemas import SchemaError, count_like
from fedlstm.data.io import DataFormatError
from fedlstm.data.readers import shown
from fedlstm.detection.bundle import ModelBundle
from fedlstm.features.windows import WindowSet, segment_starts
from fedlstm.models.lstm import LSTMClassifier
from fedlstm.training.metrics import unusable

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """Scores of one chunk, aligned with its rows (arrival order)."""

    scored: np.ndarray  # bool: the row was scored (every row; the service reports it)
    score: np.ndarray  # attack score (NaN where not scored)
    proba: np.ndarray  # class probabilities (NaN rows where not scored)
    alert: np.ndarray  # bool: score >= threshold
    top_features: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # alert rows
    unseen: dict[str, np.ndarray] = field(default_factory=dict)  # column -> rows with a new category
    fired: dict[int, str] = field(default_factory=dict)  # hybrid alerts: which part fired


class StreamScorer:
    """Stateful window scorer over a stream of record chunks of one model bundle."""

    def __init__(self, bundle: ModelBundle, explain_top: int = 3, max_entities: int = 10_000,
                 batch_size: int = 4096, explain_steps: int = 8):
        self.bundle = bundle
        # Integrated gradients: points on the path (Gauss-Legendre; 8 already make the
        # attributions add up to the logit difference within 1e-5 on our LSTMs).
        self.explain_steps = explain_steps
        self.window = bundle.window
        self.explain_top = explain_top
        self.max_entities = max_entities
        self.batch_size = batch_size
        self.evicted = 0
        self._tails: OrderedDict[object, np.ndarray] = OrderedDict()
        # Harmonised inputs (`features.harmonise`) put the common flow vocabulary in front;
        # each of those features is explained under its own name ("common:duration").
        pre = bundle.preprocessor
        n_common = getattr(pre, "n_common", 0)
        self.input_columns = [*pre.feature_names_out_[:n_common],
                              *pre.numeric_columns, *pre.categorical_columns]
        first = n_common + len(pre.numeric_columns)  # the first categorical column's index
        owner = list(range(first))
        for j, c in enumerate(pre.categorical_columns):
            owner += [first + j] * (len(pre.categories_[c]) + 1)
        self._owner = np.array(owner, np.int64)  # preprocessed feature -> input column
        # Position of each categorical column's "unseen" one-hot bucket (the last of its block).
        self._unseen_bucket = {c: int(np.flatnonzero(self._owner == first + j)[-1])
                               for j, c in enumerate(pre.categorical_columns)}
        bundle.model.eval()
        self.hybrid = hasattr(bundle, "parts")  # classifier + normal-traffic model
        self.unsupervised = hasattr(bundle, "top_features") and not self.hybrid  # Mahalanobis

    def reset(self) -> None:
        """Forget all history (a new, unrelated stream starts)."""
        self._tails.clear()

    @property
    def histories(self) -> int:
        """The (stream, entity) histories kept now (at most `max_entities`)."""
        return len(self._tails)

    def score(self, frame: pd.DataFrame, entity: np.ndarray | None = None,
              features: np.ndarray | None = None, stream: Hashable = None) -> Scores:
        """Scores of `frame`'s rows; `features`: their preprocessed form, when already known.
        `stream`: whose records these are; histories are then kept per (stream, entity), so
        several sources (the service's clients) share one scorer without mixing windows."""
        n = len(frame)
        if features is None:
            features = self.bundle.preprocessor.transform(frame)
        codes, keys = _history_keys(n, entity, stream)
        ext, origin, segment = self._join_tails(features, codes, keys)
        self._keep_tails(ext, segment, keys)
        ends = np.flatnonzero(origin >= 0)  # carried rows were scored with an earlier chunk
        rows = origin[ends]  # the chunk row each window ends on
        windows = WindowSet(torch.from_numpy(np.ascontiguousarray(ext, dtype=np.float32)),
                            torch.zeros(len(ext), dtype=torch.int64), torch.from_numpy(ends),
                            self.window, torch.from_numpy(segment_starts(len(ext), segment)))
        if self.hybrid:
            result = self._score_hybrid(windows, rows, n)
        elif self.unsupervised:
            result = self._score_distances(windows, rows, n)
        else:
            result = self._score_classes(windows, rows, n)
        self._mark_unseen(result, features)
        return result

    def _join_tails(self, features: np.ndarray, codes: np.ndarray, keys: list
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ext, origin, segment): each entity's carried tail, then its new rows, laid out
        contiguously, so windows never cross entities (one segment each); `origin` maps
        rows of `ext` back to chunk rows (-1: carried), `segment` to the entity's index in `keys`.
        The tails are taken out of the table; `_keep_tails` puts the new ones back."""
        n = len(features)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
        parts, origin, segment = [], [], []
        for k, key in enumerate(keys):
            rows = order[bounds[k]:bounds[k + 1]]
            tail = self._tails.pop(key, None)
            if tail is not None and len(tail):
                parts.append(tail)
                origin.append(np.full(len(tail), -1))
                segment.append(np.full(len(tail), k))
            parts.append(features[rows])
            origin.append(rows)
            segment.append(np.full(len(rows), k))
        ext = np.concatenate(parts) if parts else features
        origin = np.concatenate(origin) if origin else np.arange(n)
        segment = np.concatenate(segment) if segment else np.zeros(n, np.int64)
        return ext, origin, segment

    def _keep_tails(self, ext: np.ndarray, segment: np.ndarray, keys: list) -> None:
        """Carry the last W-1 records of every entity seen in this chunk to the next one, most
        recently seen last; beyond `max_entities`, the least recently seen are forgotten, which
        keeps memory bounded whatever the number of entities (or streams)."""
        w = self.window
        if w <= 1 or not len(ext):  # a window of one record needs no history
            return
        firsts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
        lasts = np.r_[firsts[1:] - 1, len(ext) - 1]
        for first, last in zip(firsts, lasts):
            key = keys[segment[first]]
            self._tails[key] = ext[max(first, last - w + 2):last + 1].copy()
        while len(self._tails) > self.max_entities:
            self._tails.popitem(last=False)
            self.evicted += 1

    def _score_distances(self, windows: WindowSet, rows: np.ndarray, n: int) -> Scores:
        """The Mahalanobis detector's scores (larger = more anomalous); it has no classes, so
        the probabilities stay NaN, and it explains its alerts itself."""
        score = np.full(n, np.nan)
        if len(windows):
            score[rows] = self.bundle.decision_function(windows)
        scored = _rows_mask(n, rows)
        alert = scored & (np.nan_to_num(score, nan=-np.inf) >= self.bundle.threshold_)
        result = Scores(scored, score, self._unset_proba(n), alert)
        if self.explain_top and alert.any():
            picked = np.flatnonzero(alert[rows])
            tops = self.bundle.top_features(windows.subset(picked), self.explain_top)
            result.top_features = {int(rows[p]): top for p, top in zip(picked, tops)}
        return result

    def _score_hybrid(self, windows: WindowSet, rows: np.ndarray, n: int) -> Scores:
        """The novelty-aware detector: the classifier's P(attack) / t_s and the normal-traffic
        model's Mahalanobis score / ζ; a row is an alert where either reaches 1, and its
        explanation is that part's: the classifier's gradients for a known attack, the score's
        largest terms for an anomaly."""
        bundle = self.bundle
        proba = self._class_proba(windows, rows, n)
        known = (1.0 - proba[:, 0]) / max(bundle.supervised_threshold_, 1e-12)
        anomalous = np.full(n, np.nan)
        if len(windows) and np.isfinite(bundle.anomaly_threshold_):
            anomalous[rows] = bundle.anomaly_score(windows) / max(bundle.anomaly_threshold_, 1e-12)
        elif len(windows):
            anomalous[rows] = 0.0
        scored = _rows_mask(n, rows)
        score = np.fmax(known, anomalous)
        alert = scored & (np.nan_to_num(score, nan=-np.inf) >= 1.0)
        result = Scores(scored, score, proba, alert)
        is_known, is_anomalous = alert & (known >= 1.0), alert & (anomalous >= 1.0)
        result.fired = {int(r): ("known attack and anomalous" if is_known[r] and is_anomalous[r]
                                 else "known attack" if is_known[r] else "anomalous")
                        for r in np.flatnonzero(alert)}
        if self.explain_top and alert.any():
            at = {int(r): i for i, r in enumerate(rows)}  # chunk row -> its window
            novel = [at[int(r)] for r in np.flatnonzero(is_anomalous & ~is_known)]
            if novel:
                tops = bundle.top_features(windows.subset(np.array(novel)), self.explain_top)
                result.top_features = {int(rows[p]): top for p, top in zip(novel, tops)}
            picked = np.flatnonzero(is_known[rows])
            if len(picked):
                result.top_features.update(self._explain(windows.subset(picked), rows[picked]))
        return result

    def _score_classes(self, windows: WindowSet, rows: np.ndarray, n: int) -> Scores:
        """A classifier's scores: the attack score is 1 - P(normal), so it means the same for
        a binary and a family model."""
        proba = self._class_proba(windows, rows, n)
        scored = _rows_mask(n, rows)
        score = 1.0 - proba[:, 0]
        alert = scored & (score >= self.bundle.threshold_)
        result = Scores(scored, score, proba, alert)
        if self.explain_top and alert.any():
            picked = np.flatnonzero(alert[rows])
            result.top_features = self._explain(windows.subset(picked), rows[picked])
        return result

    def _class_proba(self, windows: WindowSet, rows: np.ndarray, n: int) -> np.ndarray:
        """Class probabilities of `windows`, on their chunk `rows` (NaN on the rest); in
        batches of `batch_size` windows, so memory stays bounded."""
        proba = self._unset_proba(n)
        model = self.bundle.model
        with torch.inference_mode():
            if hasattr(model, "forward_sliding"):  # shares work across overlapping windows
                logits = model.forward_sliding(windows.features, windows.ends, windows.window,
                                               starts=windows.starts_of(windows.ends))
                proba[rows] = torch.softmax(logits, 1).numpy()
            else:
                for s in range(0, len(windows), self.batch_size):
                    x, _ = windows.batch(torch.arange(s, min(s + self.batch_size, len(windows))))
                    proba[rows[s:s + self.batch_size]] = torch.softmax(model(x), 1).numpy()
        return proba

    def _unset_proba(self, n: int) -> np.ndarray:
        return np.full((n, len(self.bundle.class_names)), np.nan, np.float32)

    def _mark_unseen(self, result: Scores, features: np.ndarray) -> None:
        """Rows whose category a column never saw in training (its "unseen" one-hot bucket is
        set): they are scored, but `detect` reports them, since the model knows them less."""
        for c, bucket in self._unseen_bucket.items():
            new = features[:, bucket] > 0
            if new.any():
                result.unseen[c] = new

    def _explain(self, windows: WindowSet, rows: np.ndarray
                 ) -> dict[int, list[tuple[str, float]]]:
        """The top input columns of the alerts at `rows` (their `windows`): integrated
        gradients of the attack logit over the alerted record (see the module's docstring)."""
        out: dict[int, list[tuple[str, float]]] = {}
        ig = IntegratedGradients(_attack_logit)
        n_cols = len(self.input_columns)
        batch = max(1, self.batch_size // self.explain_steps)  # windows per pass: batch x steps
        for s in range(0, len(windows), batch):
            x, _ = windows.batch(torch.arange(s, min(s + batch, len(windows))))
            last = x[:, -1].clone()
            with torch.enable_grad():
                attribution = ig.attribute(
                    last, baselines=torch.zeros_like(last), method="gausslegendre",
                    additional_forward_args=(self.bundle.model, *_before_last(self.bundle.model,
                                                                             x[:, :-1])),
                    n_steps=self.explain_steps)
            contrib = attribution.detach().numpy().astype(np.float64)
            per_column = np.zeros((len(contrib), n_cols), np.float64)
            np.add.at(per_column.T, self._owner, contrib.T)
            k = min(self.explain_top, n_cols)
            # What pushed towards the alert first: ranked by |contribution|, an alert could be
            # "explained" by features that all argued against it.
            top = np.argsort(-per_column, axis=1)[:, :k]
            for r, cols, values in zip(rows[s:s + batch], top, per_column):
                out[int(r)] = [(self.input_columns[j], float(values[j])) for j in cols]
        return out


def _before_last(model: torch.nn.Module, before: torch.Tensor) -> tuple:
    """What the records before the alerted one contribute to its window, for `_attack_logit`:
    for an LSTM classifier (alone, or the hybrid network's), the LSTM's state after them, batch
    first (Captum repeats extra arguments along their first dimension), so each point on the
    integration path costs one LSTM step instead of W; for other models, the records."""
    net = getattr(model, "classifier", model)
    if not isinstance(net, LSTMClassifier) or net.training or not len(before) \
            or not before.shape[1]:
        return (before,)
    with torch.no_grad():
        _, (h, c) = net.lstm(before)
    return h.transpose(0, 1), c.transpose(0, 1)


def _attack_logit(last: torch.Tensor, model: torch.nn.Module, *before: torch.Tensor
                  ) -> torch.Tensor:
    """log(P(attack) / P(normal)) of windows made of `before` (records, or an LSTM state from
    `_before_last`) and `last`: the score's logit, which does not saturate."""
    if len(before) == 2:  # an LSTM classifier's state: continue it with the last record
        net = getattr(model, "classifier", model)
        state = (before[0].transpose(0, 1).contiguous(), before[1].transpose(0, 1).contiguous())
        hidden, _ = net.lstm(last.unsqueeze(1), state)
        logits = net.head(net.dropout(hidden[:, -1]))
    else:
        logits = model(torch.cat([before[0], last.unsqueeze(1)], 1))
    return torch.logsumexp(logits[:, 1:], 1) - logits[:, 0]


def _history_keys(n: int, entity: np.ndarray | None, stream: Hashable) -> tuple[np.ndarray, list]:
    """(codes, keys): each of the n rows' index in `keys`, the histories they join: one per
    entity (a single one without entity keys), paired with `stream` when one is given."""
    if entity is None:
        codes, keys = np.zeros(n, np.int64), [None]
    else:
        codes, keys = pd.factorize(pd.Series(entity, dtype=object), sort=False)
        keys = list(keys)
    if stream is not None:
        keys = [(stream, key) for key in keys]
    return codes, keys


def _rows_mask(n: int, rows: np.ndarray) -> np.ndarray:
    """A boolean mask of n rows, set on `rows` (those scored)."""
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


# ---------------------------------------------------------------------- alerts


class AlertWriter:
    """Alerts as JSON lines (default) or CSV; one row per alert (or per scored record)."""

    def __init__(self, stream: IO[str], fmt: str, class_names: list[str], follow: bool = False):
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"alert format must be jsonl or csv, not {fmt!r}")
        self.stream, self.fmt, self.class_names = stream, fmt, class_names
        self._csv = None
        if fmt == "csv":  # the JSON lines' fields; a binary model's p_ columns were always empty
            probabilities = [f"p_{c}" for c in class_names] if len(class_names) > 2 else []
            # following a log: which file of the rotated log a line is in
            fields = ["file", "line", *(["rotation"] if follow else []), "entity", "score", "score_type", "threshold", "alert",
                      "predicted", "fired", "reason", "label", "top_features", *probabilities]
            self._csv = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, alert: dict) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(alert, separators=(",", ":")) + "\n")
            return
        row = dict(alert)
        row["top_features"] = ";".join(f"{f['feature']}={f['value']}:{f['contribution']:+.4g}"
                                       for f in alert.get("top_features", []))
        for c, p in alert.get("probabilities", {}).items():
            row[f"p_{c}"] = p
        self._csv.writerow(row)

    def flush(self) -> None:
        self.stream.flush()


def alert_records(bundle: ModelBundle, frame: pd.DataFrame, scores: Scores,
                  rows: Iterable[int], source: str | None = None, lines: np.ndarray | None = None,
                  entity: np.ndarray | None = None, label: np.ndarray | None = None,
                  rotation: int = 0) -> list[dict]:
    """JSON-ready descriptions of the given rows (alerts, or every scored row). `rotation`: a
    followed log's rotations before the rows' file (0: the file at the start; omitted)."""
    classes = bundle.class_names
    columns: dict[str, np.ndarray] = {}  # input values of top features, one array per column
    out = []
    for r in rows:
        p = scores.proba[r]
        if bundle.task == "binary":
            predicted = classes[1] if scores.alert[r] else classes[0]
        else:  # the most likely attack family when alerting, else the most likely class
            predicted = classes[1 + int(np.argmax(p[1:]))] if scores.alert[r] else \
                classes[int(np.argmax(p))]
        item: dict = {}
        if source is not None:
            item["file"] = source
        if lines is not None:
            item["line"] = int(lines[r])
            if rotation:  # line numbers restart in each new file of a rotated log
                item["rotation"] = rotation
        if entity is not None:
            item["entity"] = str(entity[r])
        kind = "hybrid" if hasattr(bundle, "parts") else \
            "mahalanobis" if hasattr(bundle, "top_features") else "p_attack"
        item.update({"score": round(float(scores.score[r]), 6), "score_type": kind,
                     "threshold": round(float(bundle.threshold_), 6),
                     "alert": bool(scores.alert[r]), "predicted": predicted})
        if r in scores.fired:  # why: "known attack: dos (p = 0.98)" or "anomalous: ..."
            item["fired"] = scores.fired[r]
            item["reason"] = _reason(scores.fired[r], predicted, 1.0 - float(p[0]),
                                     scores.top_features.get(r, []),
                                     None if bundle.task == "binary" else
                                     float(p[classes.index(predicted)]))
        if bundle.task != "binary":
            item["probabilities"] = {c: round(float(v), 6) for c, v in zip(classes, p)}
        if label is not None:
            item["label"] = str(label[r])
        if r in scores.top_features:
            item["top_features"] = [
                {"feature": name, "value": _input_value(frame, name, r, columns),
                 "contribution": round(value, 6)} for name, value in scores.top_features[r]]
        out.append(item)
    return out


def _reason(fired: str, predicted: str, p_attack: float, top: list[tuple[str, float]],
            p_family: float | None = None) -> str:
    """Why an alert fired. A family model flags on P(attack) = 1 - P(normal) and names the most
    likely family: both probabilities are given (p was P(attack) beside the family's name)."""
    features = ", ".join(name for name, _ in top[:3])
    if fired == "anomalous":
        return f"anomalous: unlike normal traffic in {features}" if features else "anomalous"
    if p_family is None:
        return f"{fired}: {predicted} (p = {p_attack:.2f})"
    return f"{fired}: {predicted} (p(attack) = {p_attack:.2f}, p({predicted}) = {p_family:.2f})"


def _input_value(frame: pd.DataFrame, feature: str, row: int, cache: dict):
    """The input value behind a feature: a column, or the column of a one-hot `col=value`."""
    column = feature if feature in frame.columns else feature.split("=", 1)[0]
    if column not in frame.columns:
        return None
    if column not in cache:
        cache[column] = frame[column].to_numpy()
    return _plain(cache[column][row])


def _plain(value):
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


# ---------------------------------------------------------------------- batch detection


FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model's range


def nonnegative_columns(bundle: ModelBundle) -> list[bool]:
    """Per numeric input column: may it never be negative? The schema's `nonnegative` list, or,
    where it has none, the columns named like counts (bytes, packets, durations:
    `flowschemas.count_like`) in which no training record was negative. The service refuses
    such values (422); `detect` reports them."""
    spec, pre = bundle.spec, bundle.preprocessor
    if spec.nonnegative is not None:
        allowed = set(spec.nonnegative)
    else:
        allowed = {c for c, low in zip(pre.numeric_columns, pre.data_min_)
                   if count_like(c) and low >= 0}
    return [c in allowed for c in pre.numeric_columns]


@dataclass
class DetectSummary:
    files: list[dict] = field(default_factory=list)
    records: int = 0  # parsed records
    scored: int = 0
    alerts: int = 0
    predicted: Counter = field(default_factory=Counter)
    unseen_categories: Counter = field(default_factory=Counter)
    unseen_examples: list[str] = field(default_factory=list)
    # Values the service refuses (a negative count, beyond float32): scored here, clipped into
    # the model's range as every value is, and reported rather than passed over in silence.
    invalid_values: Counter = field(default_factory=Counter)
    invalid_examples: list[str] = field(default_factory=list)
    evicted_entities: int = 0
    skipped: list[str] = field(default_factory=list)  # a named folder's files of another format
    labelled: dict = field(default_factory=lambda: {"tp": 0, "fp": 0, "tn": 0, "fn": 0})
    unlabelled: int = 0  # scored records whose label cell is unset: not in `labelled`
    seconds: float = 0.0
    waited: float = 0.0  # --follow: of `seconds`, those spent waiting for the log to grow

    @property
    def bad_lines(self) -> int:
        return sum(f["bad_lines"] for f in self.files)

    def to_dict(self) -> dict:
        d = {"files": self.files, "records": self.records, "bad_lines": self.bad_lines,
             "scored": self.scored, "alerts": self.alerts,
             "predicted": dict(self.predicted), "unseen_categories": dict(self.unseen_categories),
             "unseen_examples": self.unseen_examples,
             **({"invalid_values": dict(self.invalid_values),
                 "invalid_examples": self.invalid_examples} if self.invalid_values else {}),
             "evicted_entities": self.evicted_entities,
             **({"skipped_files": self.skipped} if self.skipped else {}),
             "seconds": round(self.seconds, 3),
             **({"waiting_seconds": round(self.waited, 3)} if self.waited else {}),
             # over the time spent reading and scoring: a followed log's quiet hours aside
             "records_per_second": round(self.records / busy) if (
                 busy := self.seconds - self.waited) > 0 else None}
        c = self.labelled
        if sum(c.values()):
            d["labelled"] = dict(c)
            tp, fp, fn = c["tp"], c["fp"], c["fn"]
            d["labelled"]["precision"] = tp / (tp + fp) if tp + fp else None
            d["labelled"]["recall"] = tp / (tp + fn) if tp + fn else None
            d["labelled"]["accuracy"] = (tp + c["tn"]) / sum(c.values())
            d["labelled"]["fpr"] = fp / (fp + c["tn"]) if fp + c["tn"] else None
            d["labelled"]["unusable"] = unusable(c["tn"], fp, fn, tp)
        if self.unlabelled:
            d["unlabelled"] = self.unlabelled
        return d


def detect(bundle: ModelBundle, inputs: list[str | Path], writer: AlertWriter | None,
           strict: bool = False, follow: bool = False, all_records: bool = False,
           explain_top: int = 3, chunk_bytes: int = 1 << 20, max_entities: int = 10_000,
           stop: Callable[[], bool] | None = None, poll_seconds: float = 0.5,
           on_chunk: Callable[[DetectSummary], None] | None = None,
           max_bad_share: float | None = None, share_hint: str = "",
           skippable: frozenset[Path] = frozenset()) -> DetectSummary:
    """Score every input file as its own stream; write alerts as they are found.
    `max_bad_share`: a file none of whose lines parse, or with more than this share of
    malformed lines, stops detection with `TooManyBadLines` (`share_hint`: how to change it).
    `skippable`: files found in a folder the user named; one whose header is not the schema's
    (a README, another Zeek log) is skipped and said, where a file named itself stops the run."""
    summary = DetectSummary()
    scorer = StreamScorer(bundle, explain_top=explain_top, max_entities=max_entities)
    counts = np.array(nonnegative_columns(bundle), bool)
    t0 = time.perf_counter()
    for i, path in enumerate(inputs):
        scorer.reset()  # windows never span two files
        # `follow` tails the last file only: a followed file ends at Ctrl-C alone, and the
        # files after it would never be read before that
        reader = FlowReader(path, bundle.spec, chunk_bytes=chunk_bytes, strict=strict,
                            follow=follow and i == len(inputs) - 1, stop=stop,
                            poll_seconds=poll_seconds,
                            max_bad_share=max_bad_share, share_hint=share_hint)
        try:
            for chunk in reader:
                _check_values(bundle.preprocessor.numeric_columns, counts, chunk, str(path),
                              summary)
                _score_chunk(bundle, scorer, chunk, str(path), writer, summary, all_records)
                if on_chunk:
                    on_chunk(summary)
        except (DataFormatError, SchemaError) as exc:  # its header, or its encoding
            if Path(path) not in skippable or reader.report.rows or reader.report.bad:
                raise
            summary.skipped.append(f"skipped, not a {bundle.spec.name!r} flow file: {exc}")
            continue
        summary.files.append(reader.report.to_dict())
        summary.waited += reader.report.waited
    summary.evicted_entities = scorer.evicted
    summary.seconds = time.perf_counter() - t0
    if writer:
        writer.flush()
    return summary


def _check_values(numeric: list[str], counts: np.ndarray, chunk: Chunk, source: str,
                  summary: DetectSummary) -> None:
    """Count (with a few file:line examples) the values the service would refuse: one pass over
    the chunk's numeric block (`counts`: which of its columns may never be negative)."""
    values = chunk.frame[numeric].to_numpy(np.float64)
    for what, bad in (("negative", (values < 0) & counts),
                      ("beyond float32", np.abs(values) > FLOAT32_MAX)):
        for j in np.flatnonzero(bad.any(axis=0)):
            summary.invalid_values[f"{numeric[j]}: {what}"] += int(bad[:, j].sum())
            if len(summary.invalid_examples) < 10:
                i = int(np.argmax(bad[:, j]))
                summary.invalid_examples.append(
                    f"{source}:{chunk.lines[i]}: column '{numeric[j]}': {values[i, j]:g} is "
                    f"{what} (the model reads it clipped into its range; the service refuses it)")


def _score_chunk(bundle: ModelBundle, scorer: StreamScorer, chunk: Chunk, source: str,
                 writer: AlertWriter | None, summary: DetectSummary, all_records: bool) -> None:
    scores = scorer.score(chunk.frame, chunk.entity)
    n_scored = int(scores.scored.sum())
    summary.records += len(chunk)
    summary.scored += n_scored
    summary.alerts += int(scores.alert.sum())
    for c, mask in scores.unseen.items():
        summary.unseen_categories[c] += int(mask.sum())
        if len(summary.unseen_examples) < 10:
            i = int(np.argmax(mask))
            summary.unseen_examples.append(
                f"{source}:{chunk.lines[i]}: column '{c}': category {shown(chunk.frame[c].iat[i])} "
                "unseen in training (scored through the unseen bucket)")
    rows = np.flatnonzero(scores.scored if all_records else scores.alert)
    if chunk.label is not None:  # rows with an unset label are scored, but not compared
        has = ~unset_labels(bundle.spec, chunk.label)
        sel = scores.scored & has
        summary.unlabelled += int((scores.scored & ~has).sum())
        family = chunk.family_label[sel] if chunk.family_label is not None else None
        _, _, is_attack = label_arrays(bundle.spec, chunk.label[sel], family)
        y, a = is_attack.astype(bool), scores.alert[sel]
        c = summary.labelled
        c["tp"] += int((y & a).sum())
        c["fp"] += int((~y & a).sum())
        c["fn"] += int((y & ~a).sum())
        c["tn"] += int((~y & ~a).sum())
    records = alert_records(bundle, chunk.frame, scores, rows, source, chunk.lines,
                            chunk.entity, chunk.label, chunk.rotation)
    for item in records:
        if item["alert"]:
            summary.predicted[item["predicted"]] += 1
        if writer:
            writer.write(item)
