"""Unsupervised detection: Mahalanobis distance of an LSTM's error vectors (paper Eq. 12).

The model learns normal traffic only; each window gives an error vector e (see
`fedlstm.training.objectives.error_vectors`). μ and Σ of e are fitted on normal validation windows;
the score is (e−μ)ᵀΣ⁻¹(e−μ); the threshold ζ maximises F-β on labelled validation windows, or gives
a target false-positive rate on normal ones. Both fits go through mergeable statistics
(`ErrorStats`, `ScoreHistogram`), so a federation computes them from per-site sums and counts
without any per-record error or score leaving a site, and gets what a pooled fit would.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedlstm.detection.bundle import Manifest, ModelBundle
from fedlstm.features.windows import WindowSet
from fedlstm.training.objectives import error_vectors

log = logging.getLogger(__name__)
ThresholdPolicy = Literal["f-beta", "fpr"]


# --- μ and Σ from sums ---------------------------------------------------------------------------
@dataclass
class ErrorStats:
    """Sums over error vectors x: n, Σx, Σxxᵀ, and, for the Ledoit-Wolf shrinkage, Σ‖x‖²x, Σ‖x‖⁴.

    All are sums, so `merge` is addition and the merged statistics equal those of the union
    (up to float rounding); that is also what lets them go through secure aggregation.
    """

    count: int
    total: np.ndarray  # (d,)
    outer: np.ndarray  # (d, d)
    norm2_total: np.ndarray  # (d,)  Σ ‖x‖² x
    norm4: float  # Σ ‖x‖⁴

    @classmethod
    def empty(cls, d: int) -> ErrorStats:
        return cls(0, np.zeros(d), np.zeros((d, d)), np.zeros(d), 0.0)

    @classmethod
    def of(cls, errors: np.ndarray) -> ErrorStats:
        x = np.asarray(errors, np.float64)
        sq = (x * x).sum(axis=1)
        return cls(len(x), x.sum(axis=0), x.T @ x, sq @ x, float(sq @ sq))

    @property
    def dim(self) -> int:
        return len(self.total)

    def merge(self, other: ErrorStats) -> ErrorStats:
        if self.dim != other.dim:
            raise ValueError(f"cannot merge error statistics of {self.dim} and {other.dim} features")
        return ErrorStats(self.count + other.count, self.total + other.total,
                          self.outer + other.outer, self.norm2_total + other.norm2_total,
                          self.norm4 + other.norm4)

    def mean(self) -> np.ndarray:
        self._need(1)
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """Maximum-likelihood covariance (divides by n, like sklearn's EmpiricalCovariance)."""
        mu = self.mean()
        cov = self.outer / self.count - np.outer(mu, mu)
        return (cov + cov.T) / 2

    def ledoit_wolf_shrinkage(self) -> float:
        """sklearn's `ledoit_wolf_shrinkage` of the centred data, computed from the sums.

        sklearn needs Σ_k ‖x_k − μ‖⁴, a fourth moment about the mean; expanding
        ‖x−μ‖² = ‖x‖² − 2μᵀx + ‖μ‖² turns it into the raw sums kept here (errors lie in [0, 1]
        after min-max scaling, so the cancellation this invites is harmless in float64).
        """
        n, d, mu = self.count, self.dim, self.mean()
        s = self.covariance()
        c = float(mu @ mu)
        sum_a, sum_b2, sum_ab = np.trace(self.outer), float(mu @ self.outer @ mu), float(mu @ self.norm2_total)
        centred4 = self.norm4 + 4 * sum_b2 + n * c * c - 4 * sum_ab + 2 * c * sum_a - 4 * c * n * c
        m = np.trace(s) / d
        delta_ = float((s ** 2).sum())
        beta = (centred4 / n - delta_) / (d * n)
        delta = (delta_ - 2 * m * np.trace(s) + d * m * m) / d
        if delta <= 0:
            return 1.0
        return float(np.clip(min(beta, delta) / delta, 0.0, 1.0))

    def regularised_covariance(self, min_shrinkage: float = 1e-3) -> tuple[np.ndarray, float]:
        """(1−s)·S + s·(tr S / d)·I with s = max(Ledoit-Wolf s, min_shrinkage): always invertible.

        Shrinking towards a scaled identity keeps Σ positive definite even when a feature's error
        never varies on normal data (one-hot columns of categories normal traffic never uses) or
        there are fewer windows than features; the floor keeps that true when Ledoit-Wolf's own
        estimate is ~0 on very many windows.
        """
        s = self.covariance()
        shrinkage = max(self.ledoit_wolf_shrinkage(), min_shrinkage)
        scale = max(np.trace(s) / self.dim, 1e-12)
        cov = (1 - shrinkage) * s + shrinkage * scale * np.eye(self.dim)
        return cov, shrinkage

    def _need(self, n: int) -> None:
        if self.count < n:
            raise ValueError(f"error statistics of {self.count} windows; need at least {n} normal "
                             "validation windows (more validation data, or a shorter window)")

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, count=np.int64(self.count), total=self.total, outer=self.outer,
                 norm2_total=self.norm2_total, norm4=np.float64(self.norm4))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ErrorStats:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(int(z["count"]), z["total"], z["outer"], z["norm2_total"], float(z["norm4"]))


# --- ζ from histograms ---------------------------------------------------------------------------
def score_bin_edges(n_features: int, n_bins: int = 2000, low: float | None = None,
                    high: float | None = None) -> np.ndarray:
    """Lower edges of the score bins: [0, low) then log-spaced up to `high`, the last bin open.

    A squared Mahalanobis distance of normal windows is ~ d (its expectation under the fit), so
    the default range d·1e-3 .. d·1e9 spans every score we have seen with ~1.4% relative bins.
    Every site must use the same edges: the server broadcasts (n_bins, low, high).
    """
    low = n_features * 1e-3 if low is None else low
    high = n_features * 1e9 if high is None else high
    if not 0 < low < high or n_bins < 3:
        raise ValueError(f"score bins need 0 < low < high and >= 3 bins (got {low}, {high}, {n_bins})")
    return np.concatenate([[0.0], np.geomspace(low, high, n_bins - 1)])


@dataclass
class ScoreHistogram:
    """Counts of normal and anomalous validation windows per score bin; bin i = [edges[i], edges[i+1])."""

    edges: np.ndarray
    normal: np.ndarray  # int64
    anomalous: np.ndarray  # int64

    @classmethod
    def of(cls, scores: np.ndarray, is_anomaly: np.ndarray, edges: np.ndarray) -> ScoreHistogram:
        idx = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 1)
        is_anomaly = np.asarray(is_anomaly).astype(bool)
        return cls(np.asarray(edges, np.float64),
                   np.bincount(idx[~is_anomaly], minlength=len(edges)).astype(np.int64),
                   np.bincount(idx[is_anomaly], minlength=len(edges)).astype(np.int64))

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge score histograms with different bin edges")
        return ScoreHistogram(self.edges, self.normal + other.normal,
                              self.anomalous + other.anomalous)

    def _flagged(self) -> tuple[np.ndarray, np.ndarray]:
        """Normal and anomalous counts with score >= edges[j], for every j."""
        return (np.cumsum(self.normal[::-1])[::-1], np.cumsum(self.anomalous[::-1])[::-1])

    def f_beta(self, beta: float) -> np.ndarray:
        fp, tp = self._flagged()
        fn = self.anomalous.sum() - tp
        b2 = beta * beta
        denom = (1 + b2) * tp + b2 * fn + fp
        return np.divide((1 + b2) * tp, denom, out=np.zeros(len(tp)), where=denom > 0)

    def threshold_f_beta(self, beta: float = 0.5) -> float:
        """The bin edge maximising F-β (ties: the highest, i.e. fewest alerts)."""
        if self.anomalous.sum() == 0:
            raise ValueError("the validation set holds no labelled anomalies, so F-β is undefined; "
                             "use the label-free policy (threshold 'fpr' with a target FPR)")
        f = self.f_beta(beta)
        return float(self.edges[np.flatnonzero(f == f.max())[-1]])

    def threshold_for_fpr(self, target_fpr: float = 0.01) -> float:
        """The lowest bin edge whose share of normal windows at or above it is <= target_fpr."""
        n = self.normal.sum()
        if n == 0:
            raise ValueError("no normal validation windows to set a false-positive rate on")
        fpr = self._flagged()[0] / n
        return float(self.edges[np.flatnonzero(fpr <= target_fpr)[0]]) if (fpr <= target_fpr).any() \
            else float("inf")

    def threshold(self, policy: ThresholdPolicy, beta: float, target_fpr: float) -> float:
        return self.threshold_f_beta(beta) if policy == "f-beta" else self.threshold_for_fpr(target_fpr)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, normal=self.normal, anomalous=self.anomalous)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, edges: np.ndarray) -> ScoreHistogram:
        """Edges are not sent back: every site was given them."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if len(z["normal"]) != len(edges):
                raise ValueError(f"histogram of {len(z['normal'])} bins for {len(edges)} edges")
            return cls(np.asarray(edges, np.float64), z["normal"], z["anomalous"])


# --- the detector --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MahalanobisDetector(ModelBundle, kind="mahalanobis"):
    """A ModelBundle whose score is the Mahalanobis distance of the model's error vector.

    Same questions as the supervised bundle (`decision_function`, `threshold_`, `predict`), same
    bundle file (the manifest carries μ, Σ and the threshold policy under "anomaly").
    """

    threshold_policy: ThresholdPolicy = "f-beta"
    beta: float = 0.5
    target_fpr: float = 0.01
    min_shrinkage: float = 1e-3
    mean_: np.ndarray | None = None
    covariance_: np.ndarray | None = None
    shrinkage_: float | None = None
    calibration_: dict = field(default_factory=dict)  # counts behind μ, Σ and ζ (no records)

    # -- fitting (from mergeable statistics only) ---------------------------------------------
    def error_vectors(self, data: WindowSet) -> np.ndarray:
        return error_vectors(self.model, data)

    def fit_error_stats(self, stats: ErrorStats) -> MahalanobisDetector:
        self.mean_ = stats.mean()
        self.covariance_, self.shrinkage_ = stats.regularised_covariance(self.min_shrinkage)
        self._precision = None
        self.calibration_["normal_windows_for_mu_sigma"] = stats.count
        return self

    @property
    def score_threshold(self) -> float:
        """ζ, on the scale of the Mahalanobis scores (the sites' histograms)."""
        return self.threshold_

    def fit_threshold(self, hist: ScoreHistogram) -> MahalanobisDetector:
        self.threshold_ = hist.threshold(self.threshold_policy, self.beta, self.target_fpr)
        self.calibration_["threshold_windows"] = {"normal": int(hist.normal.sum()),
                                                  "anomalous": int(hist.anomalous.sum())}
        return self

    def calibrate(self, normal_val: WindowSet, threshold_val: WindowSet,
                  threshold_is_anomaly: np.ndarray) -> MahalanobisDetector:
        """Centralised calibration on validation windows (never test data): μ, Σ on the normal
        windows, then ζ on the labelled ones, through the same statistics a federation merges."""
        self.fit_error_stats(ErrorStats.of(self.error_vectors(normal_val)))
        hist = ScoreHistogram.of(self.decision_function(threshold_val), threshold_is_anomaly,
                                 self.bin_edges())
        return self.fit_threshold(hist)

    def bin_edges(self, n_bins: int = 2000) -> np.ndarray:
        return score_bin_edges(len(self.mean_), n_bins)

    # -- scoring --------------------------------------------------------------------------------
    @property
    def precision_(self) -> np.ndarray:
        if getattr(self, "_precision", None) is None:
            if self.covariance_ is None:
                raise RuntimeError("the detector is not calibrated: fit μ and Σ first")
            self._precision = np.linalg.inv(self.covariance_)
            self._precision = (self._precision + self._precision.T) / 2
        return self._precision

    def decomposition(self, data: WindowSet) -> np.ndarray:
        """Per-feature terms (e−μ)_i·[Σ⁻¹(e−μ)]_i; each row sums to the window's score."""
        diff = self.error_vectors(data) - self.mean_
        return diff * (diff @ self.precision_)

    def decision_function(self, data: WindowSet) -> np.ndarray:
        """Squared Mahalanobis distance (Eq. 12): larger = more anomalous."""
        return self.decomposition(data).sum(axis=1)

    def predict_proba(self, data: WindowSet) -> np.ndarray:
        raise NotImplementedError("an anomaly detector gives scores, not class probabilities; "
                                  "use decision_function")

    def top_features(self, data: WindowSet, k: int = 3) -> list[list[tuple[str, float]]]:
        """For each window, the k features with the largest terms of its Mahalanobis score."""
        terms = self.decomposition(data)
        names = self.preprocessor.feature_names_out_
        top = np.argsort(-terms, axis=1)[:, :k]
        return [[(names[j], float(row[j])) for j in cols] for row, cols in zip(terms, top)]

    # -- bundle ---------------------------------------------------------------------------------
    def extra_manifest(self) -> dict:
        if self.mean_ is None:
            raise RuntimeError("cannot save an uncalibrated anomaly detector")
        return {"detector": "mahalanobis", "anomaly": {
            "threshold_policy": self.threshold_policy, "beta": self.beta,
            "target_fpr": self.target_fpr, "min_shrinkage": self.min_shrinkage,
            "shrinkage": self.shrinkage_, "calibration": self.calibration_,
            "mean": self.mean_.tolist(), "covariance": self.covariance_.tolist()}}

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, manifest: Manifest) -> MahalanobisDetector:
        """The detector of a loaded bundle; `manifest` was validated (μ and Σ fit the model)."""
        a = manifest.anomaly
        base = {f: getattr(bundle, f) for f in ModelBundle.__dataclass_fields__}
        return cls(**base, threshold_policy=a.threshold_policy, beta=a.beta,
                   target_fpr=a.target_fpr, min_shrinkage=a.min_shrinkage,
                   mean_=np.array(a.mean, np.float64),
                   covariance_=np.array(a.covariance, np.float64), shrinkage_=a.shrinkage,
                   calibration_=dict(a.calibration))


def calibration_summary(detector: MahalanobisDetector) -> dict:
    return json.loads(json.dumps({"threshold": detector.threshold_, "shrinkage": detector.shrinkage_,
                                  "policy": detector.threshold_policy, "beta": detector.beta,
                                  "target_fpr": detector.target_fpr, **detector.calibration_}))
