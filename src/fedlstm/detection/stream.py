"""Score flow logs as a stream: chunks in, alerts out, memory bounded whatever the input size.

`StreamScorer` keeps, per entity (or for the whole stream when the schema has no entity key), the
last W-1 preprocessed records, so a window is always W consecutive records of one entity in
arrival order, across chunk boundaries; the first W-1 records of an entity cannot be scored yet
("warming up"). The entity table is an LRU of at most `max_entities` entries, so memory stays
bounded; evictions are counted in the summary.

Top contributing features of an alert are gradient x input of the attack score with respect to
the alerted (last) record of the window, over the preprocessed features, summed back onto input
columns (a categorical column gets its one-hot block). Computed for alerts only. It is a cheap
first-order attribution, not a Shapley value: a feature at its training minimum (scaled 0) gets
no credit whatever its gradient.
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

from fedlstm.data.flows import Chunk, FlowReader, label_arrays, unset_labels
from fedlstm.data.readers import shown
from fedlstm.detection.bundle import ModelBundle
from fedlstm.features.windows import WindowSet, window_ends

log = logging.getLogger(__name__)


@dataclass
class Scores:
    """Scores of one chunk, aligned with its rows (arrival order)."""

    scored: np.ndarray  # bool: the row ends a full window of its entity
    score: np.ndarray  # attack score (NaN where not scored)
    proba: np.ndarray  # class probabilities (NaN rows where not scored)
    alert: np.ndarray  # bool: score >= threshold
    top_features: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # alert rows
    unseen: dict[str, np.ndarray] = field(default_factory=dict)  # column -> rows with a new category


class StreamScorer:
    """Stateful window scorer over a stream of record chunks of one model bundle."""

    def __init__(self, bundle: ModelBundle, explain_top: int = 3, max_entities: int = 10_000,
                 batch_size: int = 4096):
        self.bundle = bundle
        self.window = bundle.window
        self.explain_top = explain_top
        self.max_entities = max_entities
        self.batch_size = batch_size
        self.evicted = 0
        self._tails: OrderedDict[object, np.ndarray] = OrderedDict()
        pre = bundle.preprocessor
        self.input_columns = [*pre.numeric_columns, *pre.categorical_columns]
        owner = list(range(len(pre.numeric_columns)))
        for j, c in enumerate(pre.categorical_columns):
            owner += [len(pre.numeric_columns) + j] * (len(pre.categories_[c]) + 1)
        self._owner = np.array(owner, np.int64)  # preprocessed feature -> input column
        # Position of each categorical column's "unseen" one-hot bucket (the last of its block).
        self._unseen_bucket = {c: int(np.flatnonzero(self._owner == len(pre.numeric_columns) + j)[-1])
                               for j, c in enumerate(pre.categorical_columns)}
        bundle.model.eval()
        self.unsupervised = hasattr(bundle, "top_features")  # the Mahalanobis detector

    def reset(self) -> None:
        """Forget all history (a new, unrelated stream starts)."""
        self._tails.clear()

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
        # Segments only matter when there are several: one entity's windows cannot cross any.
        ends = window_ends(len(ext), self.window, segments=segment if len(keys) > 1 else None)
        self._keep_tails(ext, segment, keys)
        rows = origin[ends]  # the chunk row each window ends on
        tensor = torch.from_numpy(np.ascontiguousarray(ext, dtype=np.float32))
        if self.unsupervised:
            result = self._score_distances(tensor, ends, rows, n)
        else:
            result = self._score_classes(tensor, ends, rows, n)
        self._mark_unseen(result, features)
        return result

    def _join_tails(self, features: np.ndarray, codes: np.ndarray, keys: list
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ext, origin, segment): each entity's carried tail, then its new rows, laid out
        contiguously, so windows never cross entities (window_ends with segments); `origin` maps
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

    def _score_distances(self, tensor: torch.Tensor, ends: np.ndarray, rows: np.ndarray,
                         n: int) -> Scores:
        """The Mahalanobis detector's scores (larger = more anomalous); it has no classes, so
        the probabilities stay NaN, and it explains its alerts itself."""
        windows = WindowSet(tensor, torch.zeros(len(tensor), dtype=torch.int64),
                            torch.from_numpy(ends), self.window)
        score = np.full(n, np.nan)
        if len(ends):
            score[rows] = self.bundle.decision_function(windows)
        scored = _rows_mask(n, rows)
        alert = scored & (np.nan_to_num(score, nan=-np.inf) >= self.bundle.threshold_)
        result = Scores(scored, score, self._unset_proba(n), alert)
        if self.explain_top and alert.any():
            picked = np.flatnonzero(alert[rows])
            tops = self.bundle.top_features(windows.subset(picked), self.explain_top)
            result.top_features = {int(rows[p]): top for p, top in zip(picked, tops)}
        return result

    def _score_classes(self, tensor: torch.Tensor, ends: np.ndarray, rows: np.ndarray,
                       n: int) -> Scores:
        """A classifier's scores: the attack score is 1 - P(normal), so it means the same for
        a binary and a family model."""
        proba = self._class_proba(tensor, ends, rows, n)
        scored = _rows_mask(n, rows)
        score = 1.0 - proba[:, 0]
        alert = scored & (score >= self.bundle.threshold_)
        result = Scores(scored, score, proba, alert)
        if self.explain_top and alert.any():
            result.top_features = self._explain(tensor, ends[alert[rows]], rows[alert[rows]])
        return result

    def _class_proba(self, tensor: torch.Tensor, ends: np.ndarray, rows: np.ndarray,
                     n: int) -> np.ndarray:
        """Class probabilities of the windows ending at `ends`, on their chunk `rows` (NaN on
        the rest); in batches of `batch_size` windows, so memory stays bounded."""
        proba = self._unset_proba(n)
        ends_t, w = torch.from_numpy(ends), self.window
        model = self.bundle.model
        with torch.inference_mode():
            if hasattr(model, "forward_sliding"):  # shares work across overlapping windows
                logits = model.forward_sliding(tensor, ends_t, w)
                proba[rows] = torch.softmax(logits, 1).numpy()
            else:
                offsets = torch.arange(w - 1, -1, -1)
                for s in range(0, len(ends), self.batch_size):
                    idx = ends_t[s:s + self.batch_size].unsqueeze(1) - offsets
                    logits = model(tensor[idx])
                    proba[rows[s:s + self.batch_size]] = torch.softmax(logits, 1).numpy()
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

    def _explain(self, tensor: torch.Tensor, ends: np.ndarray,
                 rows: np.ndarray) -> dict[int, list[tuple[str, float]]]:
        out: dict[int, list[tuple[str, float]]] = {}
        offsets = torch.arange(self.window - 1, -1, -1)
        n_cols = len(self.input_columns)
        for s in range(0, len(ends), self.batch_size):
            idx = torch.from_numpy(ends[s:s + self.batch_size]).unsqueeze(1) - offsets
            x = tensor[idx].clone().requires_grad_(True)
            with torch.enable_grad():
                attack = 1.0 - torch.softmax(self.bundle.model(x), 1)[:, 0]
                (grad,) = torch.autograd.grad(attack.sum(), x)
            contrib = (grad * x)[:, -1, :].detach().numpy()  # the alerted record's features
            per_column = np.zeros((len(contrib), n_cols), np.float64)
            np.add.at(per_column.T, self._owner, contrib.T)
            k = min(self.explain_top, n_cols)
            top = np.argsort(-np.abs(per_column), axis=1)[:, :k]
            for r, cols, values in zip(rows[s:s + self.batch_size], top, per_column):
                out[int(r)] = [(self.input_columns[j], float(values[j])) for j in cols]
        return out


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
    """A boolean mask of n rows, set on `rows` (those that end a full window)."""
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


# ---------------------------------------------------------------------- alerts


class AlertWriter:
    """Alerts as JSON lines (default) or CSV; one row per alert (or per scored record)."""

    def __init__(self, stream: IO[str], fmt: str, class_names: list[str]):
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"alert format must be jsonl or csv, not {fmt!r}")
        self.stream, self.fmt, self.class_names = stream, fmt, class_names
        self._csv = None
        if fmt == "csv":
            fields = ["file", "line", "entity", "score", "threshold", "alert", "predicted",
                      "label", "top_features", *(f"p_{c}" for c in class_names)]
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
                  entity: np.ndarray | None = None, label: np.ndarray | None = None) -> list[dict]:
    """JSON-ready descriptions of the given rows (alerts, or every scored row)."""
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
        if entity is not None:
            item["entity"] = str(entity[r])
        item.update({"score": round(float(scores.score[r]), 6),
                     "score_type": "mahalanobis" if hasattr(bundle, "top_features") else "p_attack",
                     "threshold": round(float(bundle.threshold_), 6),
                     "alert": bool(scores.alert[r]), "predicted": predicted})
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


@dataclass
class DetectSummary:
    files: list[dict] = field(default_factory=list)
    records: int = 0  # parsed records
    scored: int = 0
    warming_up: int = 0  # records before an entity's first full window
    alerts: int = 0
    predicted: Counter = field(default_factory=Counter)
    unseen_categories: Counter = field(default_factory=Counter)
    unseen_examples: list[str] = field(default_factory=list)
    evicted_entities: int = 0
    labelled: dict = field(default_factory=lambda: {"tp": 0, "fp": 0, "tn": 0, "fn": 0})
    unlabelled: int = 0  # scored records whose label cell is unset: not in `labelled`
    seconds: float = 0.0

    @property
    def bad_lines(self) -> int:
        return sum(f["bad_lines"] for f in self.files)

    def to_dict(self) -> dict:
        d = {"files": self.files, "records": self.records, "bad_lines": self.bad_lines,
             "scored": self.scored, "warming_up": self.warming_up, "alerts": self.alerts,
             "predicted": dict(self.predicted), "unseen_categories": dict(self.unseen_categories),
             "unseen_examples": self.unseen_examples, "evicted_entities": self.evicted_entities,
             "seconds": round(self.seconds, 3),
             "records_per_second": round(self.records / self.seconds) if self.seconds else None}
        c = self.labelled
        if sum(c.values()):
            d["labelled"] = dict(c)
            tp, fp, fn = c["tp"], c["fp"], c["fn"]
            d["labelled"]["precision"] = tp / (tp + fp) if tp + fp else None
            d["labelled"]["recall"] = tp / (tp + fn) if tp + fn else None
            d["labelled"]["accuracy"] = (tp + c["tn"]) / sum(c.values())
        if self.unlabelled:
            d["unlabelled"] = self.unlabelled
        return d


def detect(bundle: ModelBundle, inputs: list[str | Path], writer: AlertWriter | None,
           strict: bool = False, follow: bool = False, all_records: bool = False,
           explain_top: int = 3, chunk_bytes: int = 1 << 20, max_entities: int = 10_000,
           stop: Callable[[], bool] | None = None, poll_seconds: float = 0.5,
           on_chunk: Callable[[DetectSummary], None] | None = None) -> DetectSummary:
    """Score every input file as its own stream; write alerts as they are found."""
    summary = DetectSummary()
    scorer = StreamScorer(bundle, explain_top=explain_top, max_entities=max_entities)
    t0 = time.perf_counter()
    for path in inputs:
        scorer.reset()  # windows never span two files
        reader = FlowReader(path, bundle.spec, chunk_bytes=chunk_bytes, strict=strict,
                            follow=follow, stop=stop, poll_seconds=poll_seconds)
        for chunk in reader:
            _score_chunk(bundle, scorer, chunk, str(path), writer, summary, all_records)
            if on_chunk:
                on_chunk(summary)
        summary.files.append(reader.report.to_dict())
    summary.evicted_entities = scorer.evicted
    summary.seconds = time.perf_counter() - t0
    if writer:
        writer.flush()
    return summary


def _score_chunk(bundle: ModelBundle, scorer: StreamScorer, chunk: Chunk, source: str,
                 writer: AlertWriter | None, summary: DetectSummary, all_records: bool) -> None:
    scores = scorer.score(chunk.frame, chunk.entity)
    n_scored = int(scores.scored.sum())
    summary.records += len(chunk)
    summary.scored += n_scored
    summary.warming_up += len(chunk) - n_scored
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
                            chunk.entity, chunk.label)
    for item in records:
        if item["alert"]:
            summary.predicted[item["predicted"]] += 1
        if writer:
            writer.write(item)
