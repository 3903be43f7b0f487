"""Detectors and how they score traffic: model bundles (one class per detector kind, each saved
and loaded in the bundle format), classical baselines, streaming detection and the service."""

from fedlstm.detection.anomaly import MahalanobisDetector  # a bundle kind: import registers it
from fedlstm.detection.bundle import BundleError, ModelBundle

__all__ = ["BundleError", "MahalanobisDetector", "ModelBundle"]
