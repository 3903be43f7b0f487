"""Detectors and how they score traffic: model bundles (one class per detector kind, each saved
and loaded in the bundle format), classical baselines, streaming detection and the service."""

from fedlstm.detection.anomaly import MahalanobisDetector  # bundle kinds: import registers them
from fedlstm.detection.bundle import BundleError, ModelBundle
from fedlstm.detection.hybrid import HybridDetector

__all__ = ["BundleError", "HybridDetector", "MahalanobisDetector", "ModelBundle"]
