"""Mergeable preprocessing statistics: what a federation must agree on, without sharing rows.

`merge(stats(A), stats(B)) == stats(A ∪ B)` holds exactly: counts and histograms add, minima and
maxima take the min/max, category sets take the union. Quantiles come from a fixed-grid histogram
in signed-log space (a sketch whose bins are the same at every site, so it merges by addition;
resolution ~2.7% relative), because exact quantiles cannot be merged.
"""

from __future__ import annotations

import io
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

_LOG_LIMIT = float(np.log1p(1e12))  # covers byte counts far beyond any real flow
N_BINS = 1024
_BIN_WIDTH = 2 * _LOG_LIMIT / N_BINS


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _bin_index(x: np.ndarray) -> np.ndarray:
    idx = np.floor((_signed_log(x) + _LOG_LIMIT) / _BIN_WIDTH)
    return np.clip(idx, 0, N_BINS - 1).astype(np.int64)


def bin_upper_edge(idx: np.ndarray) -> np.ndarray:
    edge = (idx + 1) * _BIN_WIDTH - _LOG_LIMIT
    return np.sign(edge) * np.expm1(np.abs(edge))


# The DP histogram (`federation.preprocessing=dp`) is coarser: every bin adds noise, and a bin
# must hold more records than the noise to show that values occur there.
DP_BIN_FACTOR = 16
DP_BINS = N_BINS // DP_BIN_FACTOR


@dataclass
class PreprocessingStats:
    numeric_columns: list[str]
    count: int
    minimum: np.ndarray  # (n_numeric,) float64
    maximum: np.ndarray
    histogram: np.ndarray  # (n_numeric, N_BINS) int64
    categories: dict[str, list[str]]  # sorted

    @classmethod
    def empty(cls, numeric_columns: list[str], categorical_columns: list[str]) -> PreprocessingStats:
        n = len(numeric_columns)
        return cls(list(numeric_columns), 0, np.full(n, np.inf), np.full(n, -np.inf),
                   np.zeros((n, N_BINS), np.int64), {c: [] for c in categorical_columns})

    @classmethod
    def of(cls, frame: pd.DataFrame, numeric_columns: list[str],
           categorical_columns: list[str]) -> PreprocessingStats:
        if len(frame) == 0:
            return cls.empty(numeric_columns, categorical_columns)
        values = frame[numeric_columns].to_numpy(np.float64)
        n_cols = values.shape[1]
        flat = (_bin_index(values) + np.arange(n_cols) * N_BINS).ravel()
        hist = np.bincount(flat, minlength=n_cols * N_BINS).reshape(n_cols, N_BINS)
        cats = {c: sorted(map(str, pd.unique(frame[c]))) for c in categorical_columns}
        return cls(list(numeric_columns), len(frame), values.min(axis=0), values.max(axis=0),
                   hist.astype(np.int64), cats)

    def merge(self, other: PreprocessingStats) -> PreprocessingStats:
        if self.numeric_columns != other.numeric_columns or set(self.categories) != set(other.categories):
            raise ValueError("cannot merge statistics of different column sets")
        cats = {c: sorted(set(self.categories[c]) | set(other.categories[c])) for c in self.categories}
        return PreprocessingStats(self.numeric_columns, self.count + other.count,
                                  np.minimum(self.minimum, other.minimum),
                                  np.maximum(self.maximum, other.maximum),
                                  self.histogram + other.histogram, cats)

    @classmethod
    def agreed(cls, numeric_columns: list[str], categorical_columns: list[str], ranges: dict,
               categories: dict) -> PreprocessingStats:
        """Statistics that sites agreed on beforehand (`federation.preprocessing=agreed`): the
        range of every numeric column and the category list of every categorical one. Nothing
        is measured, so the histogram is empty and a clip quantile is the range's maximum."""
        missing = [c for c in numeric_columns if c not in ranges] + \
            [c for c in categorical_columns if c not in categories]
        if missing:
            raise ValueError(f"the agreed preprocessing has no range or category list for "
                             f"{missing}")
        bounds = np.array([[float(v) for v in ranges[c]] for c in numeric_columns], np.float64)
        if bounds.shape != (len(numeric_columns), 2) or (bounds[:, 0] > bounds[:, 1]).any():
            raise ValueError("an agreed range is not [minimum, maximum] with minimum <= maximum")
        return cls(list(numeric_columns), 1, bounds[:, 0], bounds[:, 1],
                   np.zeros((len(numeric_columns), N_BINS), np.int64),
                   {c: sorted(map(str, categories[c])) for c in categorical_columns})

    def dp_histogram(self, sigma: float, rng: np.random.Generator) -> np.ndarray:
        """This part's histogram on the coarse grid plus N(0, sigma²) noise in every bin: what a
        site sends under `federation.preprocessing=dp`. One record adds 1 to one bin of every
        numeric column, so the L2 sensitivity is sqrt(n_numeric)."""
        coarse = self.histogram.reshape(len(self.numeric_columns), DP_BINS, DP_BIN_FACTOR)
        counts = coarse.sum(axis=2).astype(np.float64)
        return counts + rng.normal(0.0, sigma, counts.shape)

    @classmethod
    def from_dp_histogram(cls, numeric_columns: list[str], noisy: np.ndarray, threshold: float,
                          categories: dict) -> PreprocessingStats:
        """Statistics from a merged noisy histogram (post-processing only): each column's range
        spans the bins whose noisy count exceeds `threshold`; values beyond are clipped. A column
        with no such bin gets its fullest bin. Categories come from the agreed lists."""
        noisy = np.asarray(noisy, np.float64)
        lo, hi = np.empty(len(noisy)), np.empty(len(noisy))
        for j, row in enumerate(noisy):
            above = np.flatnonzero(row > threshold)
            first, last = (above[0], above[-1]) if len(above) else (np.argmax(row),) * 2
            lo[j] = bin_upper_edge(first * DP_BIN_FACTOR - 1)
            hi[j] = bin_upper_edge((last + 1) * DP_BIN_FACTOR - 1)
        # Clip quantiles read the noisy counts, each at the top of its coarse bin.
        fine = np.zeros((len(noisy), N_BINS), np.int64)
        fine[:, DP_BIN_FACTOR - 1::DP_BIN_FACTOR] = np.rint(np.clip(noisy, 0, None))
        count = int(max(np.rint(np.clip(noisy, 0, None).sum(axis=1).max()), 1)) if len(noisy) else 1
        return cls(list(numeric_columns), count, lo, hi, fine,
                   {c: sorted(map(str, v)) for c, v in categories.items()})

    def quantile(self, q: float) -> np.ndarray:
        """Upper bin edge where the cumulative share reaches q, kept inside [min, max]."""
        cum = np.cumsum(self.histogram, axis=1)
        target = np.ceil(q * cum[:, -1:]).clip(min=1)
        idx = (cum < target).sum(axis=1)
        return np.clip(bin_upper_edge(idx), self.minimum, self.maximum)

    def equals(self, other: PreprocessingStats) -> bool:
        return (self.numeric_columns == other.numeric_columns and self.count == other.count
                and np.array_equal(self.minimum, other.minimum)
                and np.array_equal(self.maximum, other.maximum)
                and np.array_equal(self.histogram, other.histogram)
                and self.categories == other.categories)

    def to_bytes(self) -> bytes:
        """Compact form for transports that carry scalars and bytes (Flower config records)."""
        buffer = io.BytesIO()
        header = json.dumps({"numeric_columns": self.numeric_columns, "count": self.count,
                             "categories": self.categories})
        np.savez_compressed(buffer, header=np.frombuffer(header.encode(), np.uint8),
                            minimum=self.minimum, maximum=self.maximum, histogram=self.histogram)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreprocessingStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            return cls(header["numeric_columns"], int(header["count"]), z["minimum"],
                       z["maximum"], z["histogram"], header["categories"])

    def layout_error(self, numeric_columns: list[str], categorical_columns: list[str],
                     max_categories: int = 100_000, max_chars: int = 256) -> str | None:
        """Why these statistics are not of the declared layout (None when they are): the
        columns agreed on, arrays of their fixed sizes, bounded category lists. What a server
        checks before it merges a site's answer, so that nothing else travels in it."""
        n = len(numeric_columns)
        if list(self.numeric_columns) != list(numeric_columns):
            return "numeric columns differ from the declared ones"
        if sorted(self.categories) != sorted(categorical_columns):
            return "categorical columns differ from the declared ones"
        arrays = {"minimum": (self.minimum, (n,), "f"), "maximum": (self.maximum, (n,), "f"),
                  "histogram": (self.histogram, (n, N_BINS), "iu")}
        for name, (value, shape, kinds) in arrays.items():
            if not isinstance(value, np.ndarray) or value.shape != shape or \
                    value.dtype.kind not in kinds:
                return f"{name} is not a {shape} array of kind {kinds!r}"
        if not isinstance(self.count, int) or self.count < 0:
            return "count is not a non-negative integer"
        for column, values in self.categories.items():
            if not isinstance(values, list) or len(values) > max_categories or \
                    not all(isinstance(v, str) and len(v) <= max_chars for v in values):
                return (f"categories of {column!r} are not a list of at most {max_categories} "
                        f"values of at most {max_chars} characters")
        return None


def dp_histogram_to_bytes(noisy: np.ndarray, sigma: float) -> bytes:
    """A site's DP answer: the noisy histogram and the noise's standard deviation (public: the
    server needs it to tell counts from noise)."""
    buffer = io.BytesIO()
    np.savez(buffer, histogram=np.asarray(noisy, np.float64), sigma=np.float64(sigma))
    return buffer.getvalue()


def dp_histogram_from_bytes(data: bytes) -> tuple[np.ndarray, float]:
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
        return z["histogram"], float(z["sigma"])


def read_agreed(path: str | Path) -> dict:
    """An agreed-preprocessing file (JSON or TOML): `ranges` (column -> [min, max]), `categories`
    (column -> values) and, for SecAgg+, `max_site_records` (an upper bound of a site's records)."""
    path = Path(path)
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data.get("ranges", {}), dict) or not isinstance(data.get("categories"), dict):
        raise ValueError(f"{path}: an agreed preprocessing file needs `ranges` (column -> [min, "
                         "max]) and `categories` (column -> values)")
    return data


def agreed_file_of(stats: PreprocessingStats) -> dict:
    """The agreed-preprocessing content that reproduces `stats`' ranges and categories (for sites
    that derive it from public or earlier data; never computed from the federation's own)."""
    return {"ranges": {c: [float(lo), float(hi)] for c, lo, hi in
                       zip(stats.numeric_columns, stats.minimum, stats.maximum)},
            "categories": stats.categories}


def merge_all(parts: list):
    """Merge any list of mergeable statistics (anything with `merge`), left to right."""
    if not parts:
        raise ValueError("no statistics to merge")
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out
