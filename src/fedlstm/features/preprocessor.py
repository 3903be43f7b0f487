"""Preprocessing of paper Section IV-B: outlier handling, one-hot encoding, min-max scaling (Eq. 1-2).

Follows scikit-learn's estimator contract (constructor parameters, `fit` returns self, learned
state ends in `_`, `transform` never learns), but is fitted from `PreprocessingStats`, so that
statistics merged across federated clients give the same preprocessor as fitting on pooled rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from fedlstm.features.stats import PreprocessingStats

UNSEEN = "__unseen__"
OutlierMode = Literal["none", "log", "clip", "log+clip"]


class FlowPreprocessor:
    def __init__(self, numeric_columns: list[str], categorical_columns: list[str],
                 feature_range: tuple[float, float] = (0.0, 1.0), outliers: OutlierMode = "log",
                 log_threshold: float = 100.0, clip_quantile: float = 0.999):
        self.numeric_columns = list(numeric_columns)
        self.categorical_columns = list(categorical_columns)
        self.feature_range = tuple(feature_range)
        self.outliers = outliers
        self.log_threshold = log_threshold
        self.clip_quantile = clip_quantile

    def get_params(self) -> dict:
        return {"numeric_columns": self.numeric_columns,
                "categorical_columns": self.categorical_columns,
                "feature_range": list(self.feature_range), "outliers": self.outliers,
                "log_threshold": self.log_threshold, "clip_quantile": self.clip_quantile}

    def compute_stats(self, frame: pd.DataFrame) -> PreprocessingStats:
        return PreprocessingStats.of(frame, self.numeric_columns, self.categorical_columns)

    def fit(self, frame: pd.DataFrame) -> FlowPreprocessor:
        return self.fit_stats(self.compute_stats(frame))

    def fit_stats(self, stats: PreprocessingStats) -> FlowPreprocessor:
        if stats.count == 0:
            raise ValueError("cannot fit preprocessing on zero records")
        if stats.numeric_columns != self.numeric_columns:
            raise ValueError("statistics were computed for other numeric columns")
        lo, hi = stats.minimum.copy(), stats.maximum.copy()
        # Heavy-tailed non-negative counts (bytes, durations) are log-scaled so that a few huge
        # flows do not squash every other value to ~0 after min-max scaling.
        use_log = self.outliers in ("log", "log+clip")
        self.log_columns_ = ((lo >= 0) & (hi >= self.log_threshold)) if use_log \
            else np.zeros(len(lo), bool)
        if self.outliers in ("clip", "log+clip"):
            hi = np.maximum(stats.quantile(self.clip_quantile), lo)
        self.clip_max_ = hi
        self.data_min_ = self._log(lo)
        self.data_max_ = self._log(hi)
        self.categories_ = {c: list(v) for c, v in stats.categories.items()}
        self.__dict__.pop("_indices", None)  # caches of the previous fit
        self.__dict__.pop("_lookups", None)
        self.n_records_ = stats.count
        self.feature_names_out_ = self._feature_names()
        return self

    def _log(self, values: np.ndarray) -> np.ndarray:
        out = np.asarray(values, dtype=np.float64).copy()
        cols = self.log_columns_
        out[..., cols] = np.log1p(np.maximum(out[..., cols], 0))
        return out

    def _feature_names(self) -> list[str]:
        names = list(self.numeric_columns)
        for c in self.categorical_columns:
            names += [f"{c}={v}" for v in self.categories_[c]] + [f"{c}={UNSEEN}"]
        return names

    @property
    def n_features_out(self) -> int:
        return len(self.feature_names_out_)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.transform_arrays(frame[self.numeric_columns].to_numpy(np.float64),
                                     {c: frame[c].to_numpy(object) for c in self.categorical_columns})

    def transform_arrays(self, numeric: np.ndarray, categorical: dict[str, np.ndarray]) -> np.ndarray:
        """`transform` of columns given as arrays: numeric (n, numeric_columns) and one array per
        categorical column. Spares the service's single records the cost of a DataFrame."""
        if not hasattr(self, "data_min_"):
            raise RuntimeError("FlowPreprocessor is not fitted")
        raw = np.minimum(np.asarray(numeric, np.float64), self.clip_max_)
        y = self._log(raw)
        lo, hi = self.data_min_, self.data_max_
        span = hi - lo
        # Eq. (1): Y_std = (Y - Ymin) / (Ymax - Ymin); a constant column maps to 0, not NaN.
        y_std = np.divide(y - lo, span, out=np.zeros_like(y), where=span > 0)
        y_std = np.clip(y_std, 0.0, 1.0)  # unseen extremes stay inside the trained range
        a, b = self.feature_range
        # Eq. (2): Y_scaled = Y_std * (max - min) + min
        numeric = (y_std * (b - a) + a).astype(np.float32)
        blocks = [numeric]
        n = len(numeric)
        for c in self.categorical_columns:
            cats = self.categories_[c]
            values = categorical[c]
            if len(values) <= 64:  # single records (the service): a dict beats pandas' set-up
                lookup = self._lookup(c)
                codes = np.fromiter((lookup.get(str(v), len(cats)) for v in values), np.int64,
                                    len(values))
            else:
                codes = self._index(c).get_indexer(np.asarray(values).astype(str)).astype(np.int64)
            codes[codes < 0] = len(cats)  # the explicit bucket for categories unseen at fit time
            onehot = np.zeros((n, len(cats) + 1), np.float32)
            onehot[np.arange(n), codes] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1)

    def _index(self, column: str) -> pd.Index:
        """The fitted categories of a column as a hashed index, built once per fit."""
        cache = self.__dict__.setdefault("_indices", {})
        if column not in cache:
            cache[column] = pd.Index(self.categories_[column])
        return cache[column]

    def _lookup(self, column: str) -> dict[str, int]:
        cache = self.__dict__.setdefault("_lookups", {})
        if column not in cache:
            cache[column] = {v: i for i, v in enumerate(self.categories_[column])}
        return cache[column]

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.fit(frame).transform(frame)

    def to_dict(self) -> dict:
        return {"params": self.get_params(), "log_columns_": self.log_columns_.tolist(),
                "clip_max_": self.clip_max_.tolist(), "data_min_": self.data_min_.tolist(),
                "data_max_": self.data_max_.tolist(), "categories_": self.categories_,
                "n_records_": self.n_records_}

    @classmethod
    def from_dict(cls, d: dict) -> FlowPreprocessor:
        p = d["params"]
        obj = cls(p["numeric_columns"], p["categorical_columns"], tuple(p["feature_range"]),
                  p["outliers"], p["log_threshold"], p["clip_quantile"])
        obj.log_columns_ = np.array(d["log_columns_"], bool)
        obj.clip_max_ = np.array(d["clip_max_"], np.float64)
        obj.data_min_ = np.array(d["data_min_"], np.float64)
        obj.data_max_ = np.array(d["data_max_"], np.float64)
        obj.categories_ = {k: list(v) for k, v in d["categories_"].items()}
        obj.n_records_ = d["n_records_"]
        obj.feature_names_out_ = obj._feature_names()
        return obj
