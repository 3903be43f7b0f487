"""The novelty-aware detector: a window is an alert when the classifier says attack (a known
attack, with its family) OR its autoencoder error is further from normal traffic (Mahalanobis,
paper Eq. 12) than the alert budget allows on normal validation traffic.

Both parts live in one network (`fedlstm.models.hybrid.HybridLSTM`) and one bundle. The score is
max(P(attack) / t_s, d² / ζ), so `threshold_` is 1 and a window is flagged exactly when one of
the parts fires; `parts` says which, for alerts that explain themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlstm.detection.anomaly import MahalanobisDetector, ScoreHistogram
from fedlstm.detection.bundle import Manifest, ModelBundle
from fedlstm.features.windows import WindowSet

KNOWN, ANOMALOUS, BOTH = "known attack", "anomalous", "known attack and anomalous"


@dataclass(kw_only=True)
class HybridDetector(MahalanobisDetector, kind="hybrid"):
    supervised_threshold_: float = 0.5  # t_s, on P(attack)
    anomaly_threshold_: float = float("inf")  # ζ, on the Mahalanobis score

    def __post_init__(self):
        self.threshold_ = 1.0
        self.threshold_policy = "fpr"  # ζ is set by the alert budget (target_fpr)

    # -- calibration ----------------------------------------------------------------------------
    def fit_threshold(self, hist: ScoreHistogram) -> HybridDetector:
        """ζ: the lowest score that flags at most `target_fpr` (the alert budget) of the normal
        validation windows."""
        self.anomaly_threshold_ = hist.threshold_for_fpr(self.target_fpr)
        self.threshold_ = 1.0
        self.calibration_["threshold_windows"] = {"normal": int(hist.normal.sum()),
                                                  "anomalous": int(hist.anomalous.sum())}
        return self

    @property
    def score_threshold(self) -> float:
        return self.anomaly_threshold_

    # -- scoring --------------------------------------------------------------------------------
    def attack_probability(self, data: WindowSet) -> np.ndarray:
        return ModelBundle.decision_function(self, data)

    def anomaly_score(self, data: WindowSet) -> np.ndarray:
        return MahalanobisDetector.decision_function(self, data)

    def parts(self, data: WindowSet) -> tuple[np.ndarray, np.ndarray]:
        """Per window: P(attack) / t_s and d² / ζ; a part fires where its ratio is >= 1."""
        known = self.attack_probability(data) / max(self.supervised_threshold_, 1e-12)
        zeta = self.anomaly_threshold_
        anomalous = np.zeros(len(data)) if not np.isfinite(zeta) \
            else self.anomaly_score(data) / max(zeta, 1e-12)
        return known, anomalous

    def decision_function(self, data: WindowSet) -> np.ndarray:
        return np.maximum(*self.parts(data))

    def predict_proba(self, data: WindowSet) -> np.ndarray:
        return ModelBundle.predict_proba(self, data)

    def fired(self, data: WindowSet) -> np.ndarray:
        """Which part made each window an alert ("" where none did)."""
        known, anomalous = (part >= 1.0 for part in self.parts(data))
        return np.where(known & anomalous, BOTH, np.where(known, KNOWN,
                                                          np.where(anomalous, ANOMALOUS, "")))

    # -- bundle ---------------------------------------------------------------------------------
    def extra_manifest(self) -> dict:
        manifest = super().extra_manifest()
        return {**manifest, "detector": "hybrid",
                "hybrid": {"supervised_threshold": self.supervised_threshold_,
                           "anomaly_threshold": self.anomaly_threshold_}}

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, manifest: Manifest) -> HybridDetector:
        detector = super().from_bundle(bundle, manifest)
        detector.supervised_threshold_ = manifest.hybrid.supervised_threshold
        detector.anomaly_threshold_ = manifest.hybrid.anomaly_threshold
        return detector
