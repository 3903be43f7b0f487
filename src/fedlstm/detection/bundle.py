"""Model bundles: everything needed to score new traffic, in one file, without the training data.

A bundle is a zip of `manifest.json` (format version, schema, preprocessing, labels, threshold,
model architecture, sha256 of every member) and `weights.pt` (a state_dict). Loading checks the
format version and the hashes, so a tampered or foreign file is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedlstm import __version__
from fedlstm.data.readers import Records
from fedlstm.data.schemas import DatasetSpec
from fedlstm.features import FlowPreprocessor
from fedlstm.models import build_model
from fedlstm.training.loop import predict_proba
from fedlstm.windows import WindowSet, make_windows

FORMAT = "fedlstm-bundle"
FORMAT_VERSION = 1


class BundleError(ValueError):
    pass


@dataclass
class ModelBundle:
    """A supervised detector: `decision_function` gives P(attack), `predict` compares to threshold_."""

    spec: DatasetSpec
    preprocessor: FlowPreprocessor
    model: nn.Module
    model_name: str
    model_params: dict
    task: str
    class_names: list[str]
    window: int
    threshold_: float
    metadata: dict = field(default_factory=dict)

    def windows(self, records: Records, labels: np.ndarray | None = None) -> WindowSet:
        features = self.preprocessor.transform(records.frame)
        if labels is None:
            labels = np.zeros(len(records), np.int64)
        return make_windows(features, labels, self.window)

    def predict_proba(self, data: WindowSet) -> np.ndarray:
        return predict_proba(self.model, data)

    def decision_function(self, data: WindowSet) -> np.ndarray:
        # Class 0 is always "normal", so the attack score is everything else.
        return 1.0 - self.predict_proba(data)[:, 0]

    def predict(self, data: WindowSet) -> np.ndarray:
        return (self.decision_function(data) >= self.threshold_).astype(np.int64)

    def extra_manifest(self) -> dict:
        """State of detectors built on this format (e.g. the Mahalanobis detector's μ and Σ)."""
        return {}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fedlstm_version": __version__,
            "spec": self.spec.model_dump(), "preprocessor": self.preprocessor.to_dict(),
            "model": {"name": self.model_name, "params": self.model_params,
                      "input_size": self.preprocessor.n_features_out,
                      "n_classes": len(self.class_names)},
            "task": self.task, "class_names": self.class_names, "window": self.window,
            "threshold": self.threshold_, "metadata": self.metadata, **self.extra_manifest(),
            "sha256": {"weights.pt": hashlib.sha256(weights).hexdigest()},
        }
        body = json.dumps(manifest, indent=1).encode()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", body)
            zf.writestr("weights.pt", weights)
            zf.writestr("manifest.sha256", hashlib.sha256(body).hexdigest())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as zf:
                body, weights = zf.read("manifest.json"), zf.read("weights.pt")
                digest = zf.read("manifest.sha256").decode().strip()
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise BundleError(f"{path}: not a fedlstm model bundle ({exc})") from exc
        if hashlib.sha256(body).hexdigest() != digest:
            raise BundleError(f"{path}: manifest does not match its hash; the bundle was modified")
        manifest = json.loads(body)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format {manifest.get('format')} "
                              f"v{manifest.get('format_version')} is not supported by fedlstm "
                              f"{__version__} (expects v{FORMAT_VERSION})")
        if hashlib.sha256(weights).hexdigest() != manifest["sha256"]["weights.pt"]:
            raise BundleError(f"{path}: weights do not match their hash; the bundle was modified")
        m = manifest["model"]
        model = build_model(m["name"], m["input_size"], m["n_classes"], **m["params"])
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        model.eval()
        bundle = cls(DatasetSpec.model_validate(manifest["spec"]),
                     FlowPreprocessor.from_dict(manifest["preprocessor"]), model, m["name"],
                     m["params"], manifest["task"], manifest["class_names"], manifest["window"],
                     manifest["threshold"], manifest.get("metadata", {}))
        if manifest.get("detector") == "mahalanobis":  # the unsupervised detector's extra state
            from fedlstm.detection.anomaly import MahalanobisDetector  # noqa: PLC0415 (cycle)

            return MahalanobisDetector.from_bundle(bundle, manifest)
        return bundle
