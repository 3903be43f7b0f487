"""Model bundles: everything needed to score new traffic, in one file, without the training data.

A bundle is a zip of `manifest.json` (format version, fedlstm version, schema, preprocessing,
labels, threshold, model architecture, sha256 of the weights), `weights.pt` (a state_dict),
`manifest.sha256` and `signature.json` (who wrote it: see `fedlstm.detection.signing`).

Loading treats the file as untrusted until it is checked, in this order: only the expected
members, each within a size cap read through a bounded reader (a zip bomb stops at the cap);
the hashes (intact); the format version; the signature by a trusted key (authentic); the manifest
against a typed, bounded schema, and its sizes against each other (consistent); the state_dict's
shapes against the architecture built on torch's meta device (no memory) — and only then the
model is allocated. Every failure is a BundleError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from fedlstm import __version__
from fedlstm.data.readers import Records
from fedlstm.data.spec import DatasetSpec
from fedlstm.detection.signing import (
    KeyHome,
    PublicKey,
    SignatureError,
    SigningKey,
    TrustStore,
    sign_bundle,
    verify_bundle,
)
from fedlstm.features import FlowPreprocessor
from fedlstm.features.harmonise import COMMON_FEATURES, HarmonisedPreprocessor
from fedlstm.features.windows import WindowSet, make_windows
from fedlstm.models import MODELS, SEQUENCE_MODELS, build_model
from fedlstm.training.objectives import predict_proba

log = logging.getLogger(__name__)

FORMAT = "fedlstm-bundle"
FORMAT_VERSION = 1
MANIFEST, WEIGHTS, DIGEST, SIGNATURE = ("manifest.json", "weights.pt", "manifest.sha256",
                                        "signature.json")
REQUIRED_MEMBERS = (MANIFEST, WEIGHTS, DIGEST)
# Largest decompressed size of each member: what a zip bomb can cost before it is refused. The
# weights' cap is the real bound on a model's size (an LSTM of hidden size 2048 and two layers is
# ~200 MB); a manifest is mostly the Mahalanobis covariance (d² numbers). `save` keeps to both.
MEMBER_LIMITS = {MANIFEST: 64 << 20, WEIGHTS: 256 << 20, DIGEST: 1 << 10, SIGNATURE: 16 << 10}
MAX_BUNDLE_BYTES = sum(MEMBER_LIMITS.values()) + (1 << 20)
MAX_HIDDEN, MAX_LAYERS, MAX_WINDOW, MAX_FEATURES, MAX_CLASSES = 4096, 16, 4096, 100_000, 1000


class BundleError(ValueError):
    pass


# --- the manifest, as a bounded schema -----------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelParams(_Strict):
    """Constructor arguments of the model (only those fedlstm's models take, each bounded)."""

    hidden_size: int = Field(64, ge=1, le=MAX_HIDDEN)
    num_layers: int = Field(1, ge=1, le=MAX_LAYERS)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    horizon: int | None = Field(None, ge=1, le=MAX_WINDOW)  # the forecaster's T'
    kernel_size: int | None = Field(None, ge=1, le=64)  # the CNN baseline's
    shared_dim: int | None = Field(None, ge=1, le=MAX_HIDDEN)  # a site's encoder (networks)
    n_common: int | None = Field(None, ge=0, le=MAX_FEATURES)  # harmonised features in front
    # a site's detector with its own head of families: the shared head's classes
    n_shared_classes: int | None = Field(None, ge=2, le=MAX_CLASSES)


class ModelSection(_Strict):
    name: str = Field(max_length=64)
    params: ModelParams
    input_size: int = Field(ge=1, le=MAX_FEATURES)
    n_classes: int = Field(ge=1, le=MAX_CLASSES)


class PreprocessorParams(_Strict):
    numeric_columns: list[str] = Field(max_length=MAX_FEATURES)
    categorical_columns: list[str] = Field(max_length=MAX_FEATURES)
    feature_range: tuple[float, float]
    outliers: Literal["none", "log", "clip", "log+clip"]
    log_threshold: float
    clip_quantile: float = Field(gt=0.0, le=1.0)


class PreprocessorState(_Strict):
    """`FlowPreprocessor.to_dict()`: per-column arrays must have one entry per numeric column."""

    params: PreprocessorParams
    log_columns_: list[bool]
    clip_max_: list[float]
    data_min_: list[float]
    data_max_: list[float]
    categories_: dict[str, list[str]]
    n_records_: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessorState:
        n = len(self.params.numeric_columns)
        for name in ("log_columns_", "clip_max_", "data_min_", "data_max_"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} numeric "
                                 "columns")
        if set(self.categories_) != set(self.params.categorical_columns):
            raise ValueError(f"categories_ are given for {list(self.categories_)}, not the "
                             f"categorical columns {self.params.categorical_columns}")
        return self

    @property
    def n_features_out(self) -> int:
        """What `FlowPreprocessor.n_features_out` will be: numeric + one-hot (+ unseen) columns."""
        return len(self.params.numeric_columns) + sum(len(v) + 1 for v in self.categories_.values())


class AnomalySection(_Strict):
    """The Mahalanobis detector's state (`MahalanobisDetector.extra_manifest`)."""

    threshold_policy: Literal["f-beta", "fpr"]
    beta: float = Field(gt=0.0)
    target_fpr: float = Field(ge=0.0, le=1.0)
    min_shrinkage: float = Field(ge=0.0, le=1.0)
    shrinkage: float | None = Field(None, ge=0.0, le=1.0)
    calibration: dict[str, Any] = Field(default_factory=dict)
    mean: list[float]
    covariance: list[list[float]]


class HybridSection(_Strict):
    """The novelty-aware detector's two operating points (`HybridDetector.extra_manifest`)."""

    supervised_threshold: float = Field(ge=0.0, le=1.0)
    anomaly_threshold: float = Field(ge=0.0)


class Manifest(BaseModel):
    """manifest.json. Unknown top-level keys are ignored (a later fedlstm may add some)."""

    format: Literal["fedlstm-bundle"]
    format_version: int
    fedlstm_version: str | None = Field(None, max_length=64)
    spec: DatasetSpec
    preprocessor: PreprocessorState
    model: ModelSection
    task: Literal["binary", "family"]
    class_names: list[str] = Field(min_length=2, max_length=MAX_CLASSES)
    window: int = Field(ge=1, le=MAX_WINDOW)
    threshold: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    sha256: dict[str, str]
    detector: Literal["mahalanobis", "hybrid"] | None = None
    # harmonised inputs (a federation across schemas): the common flow vocabulary in front of
    # the preprocessor's features, by name, so a bundle made under another one is refused
    common_features: list[str] | None = Field(None, max_length=256)
    anomaly: AnomalySection | None = None
    hybrid: HybridSection | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        m, anomalous = self.model, self.detector in ("mahalanobis", "hybrid")
        registry = SEQUENCE_MODELS if self.detector == "mahalanobis" else MODELS
        if m.name not in registry:
            kind = "sequence model of the anomaly detector" if self.detector == "mahalanobis" \
                else "classifier"
            raise ValueError(f"model.name {m.name!r} is not a known {kind}; known: "
                             f"{', '.join(registry)}")
        if self.common_features is not None and self.common_features != COMMON_FEATURES:
            raise ValueError(f"common_features {self.common_features[:5]}... are not this "
                             f"version's common flow vocabulary {COMMON_FEATURES[:5]}...")
        width = self.preprocessor.n_features_out + len(self.common_features or [])
        if m.input_size != width:
            raise ValueError(f"model.input_size is {m.input_size} but the preprocessing gives "
                             f"{width} features")
        if m.n_classes != len(self.class_names):
            raise ValueError(f"model.n_classes is {m.n_classes} but there are "
                             f"{len(self.class_names)} class_names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names repeat a name")
        if self.task == "binary" and len(self.class_names) != 2:
            raise ValueError(f"a binary detector has 2 class_names, not {len(self.class_names)}")
        if m.params.horizon is not None and m.params.horizon >= self.window:
            raise ValueError(f"model.params.horizon {m.params.horizon} must be below the window "
                             f"{self.window}")
        columns = set(self.spec.feature_columns)
        unknown = [c for c in (*self.preprocessor.params.numeric_columns,
                               *self.preprocessor.params.categorical_columns) if c not in columns]
        if unknown:
            raise ValueError(f"preprocessor columns {unknown[:5]} are not feature columns of the "
                             f"schema {self.spec.name!r}")
        if math.isnan(self.threshold):
            raise ValueError("threshold is NaN")
        if anomalous:
            if self.anomaly is None:
                raise ValueError("a mahalanobis detector needs its 'anomaly' section")
            d = m.input_size
            if len(self.anomaly.mean) != d or len(self.anomaly.covariance) != d or any(
                    len(row) != d for row in self.anomaly.covariance):
                raise ValueError(f"anomaly.mean and anomaly.covariance must be {d} and {d}x{d} "
                                 f"(the model's {d} features)")
            mean, cov = np.asarray(self.anomaly.mean), np.asarray(self.anomaly.covariance)
            if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
                raise ValueError("anomaly.mean and anomaly.covariance must be finite numbers")
            try:  # Σ⁻¹ is taken at the first score: a Σ that has none fails here, not there
                np.linalg.cholesky((cov + cov.T) / 2)
            except np.linalg.LinAlgError as exc:
                raise ValueError("anomaly.covariance is not positive definite") from exc
            if self.threshold < 0:
                raise ValueError(f"a Mahalanobis threshold is >= 0, not {self.threshold}")
            if self.detector == "hybrid" and self.hybrid is None:
                raise ValueError("a hybrid detector needs its 'hybrid' section")
        elif not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not a probability in [0, 1], so it "
                             "would flag every window or none")
        if not isinstance(self.sha256.get(WEIGHTS), str) or len(self.sha256[WEIGHTS]) != 64:
            raise ValueError("sha256 lacks the weights' hash")
        return self


@dataclass(kw_only=True)
class ModelBundle:
    """A supervised detector: `decision_function` gives P(attack), `predict` compares to threshold_.

    Detectors built on this format subclass it with `kind=NAME` (the manifest's `detector`), and
    `load` returns an instance of the kind a file holds; the kinds are listed in
    `fedlstm.detection`, which imports every one of them.
    """

    KINDS = {}  # manifest "detector" -> class (not annotated: a class attribute, not a field)

    def __init_subclass__(cls, kind: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if kind is not None:
            ModelBundle.KINDS[kind] = cls

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
    # Where a loaded bundle came from: file, fedlstm_version, signed_by (fingerprint or None).
    provenance: dict = field(default_factory=dict, repr=False, compare=False)

    def windows(self, records: Records, labels: np.ndarray | None = None) -> WindowSet:
        features = self.preprocessor.transform(records.frame)
        if labels is None:
            labels = np.zeros(len(records), np.int64)
        return make_windows(features, labels, self.window,
                            segments=getattr(records, "segment", None))

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

    def save(self, path: str | Path, key: SigningKey | None = None, *, sign: bool = True) -> Path:
        """Write the bundle, signed with `key` (default: the local key, created on first use).

        `sign=False` writes an unsigned bundle, which loading refuses without `allow_unsigned`.
        """
        path = Path(path)
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, buffer)
        weights = buffer.getvalue()
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "fedlstm_version": __version__,
            "spec": self.spec.model_dump(), **_preprocessor_entries(self.preprocessor),
            "model": {"name": self.model_name, "params": self.model_params,
                      "input_size": self.preprocessor.n_features_out,
                      "n_classes": len(self.class_names)},
            "task": self.task, "class_names": self.class_names, "window": self.window,
            "threshold": self.threshold_, "metadata": self.metadata, **self.extra_manifest(),
            "sha256": {WEIGHTS: hashlib.sha256(weights).hexdigest()},
        }
        body = json.dumps(manifest, indent=1).encode()
        # Never write a bundle that `load` would refuse.
        _validated(path, json.loads(body))
        for name, data in ((MANIFEST, body), (WEIGHTS, weights)):
            if len(data) > MEMBER_LIMITS[name]:
                raise BundleError(f"{path}: {name} would be {len(data):,} bytes, more than the "
                                  f"{MEMBER_LIMITS[name]:,} a bundle member may hold (a smaller "
                                  "model, or fewer features)")
        signature = None
        if sign:
            signature = sign_bundle(key or KeyHome.default().signing_key(), body, weights)
        _write_members(path, body, weights, signature)
        return path

    @classmethod
    def load(cls, path: str | Path, trust: TrustStore | None = None,
             allow_unsigned: bool = False) -> ModelBundle:
        """Check and load a bundle (see the module docstring for what is checked, in which order).

        `trust`: the keys whose signatures are accepted (default: the own key and the trusted
        keys of the key home). `allow_unsigned` accepts a bundle without a signature, or signed by
        a key outside `trust`, with a logged warning; a signature that does not match the
        contents is refused either way.
        """
        path = Path(path)
        members = read_members(path)
        raw = _checked_manifest(path, members)
        signer = _check_signature(path, members, trust, allow_unsigned)
        manifest = _validated(path, raw)
        if manifest.fedlstm_version != __version__:
            log.warning("%s was written by fedlstm %s; this is fedlstm %s (same bundle format v%d, "
                        "so it loads; re-train if its results look off)", path,
                        manifest.fedlstm_version or "(unknown version)", __version__,
                        FORMAT_VERSION)
        m = manifest.model
        params = m.params.model_dump(exclude_unset=True)
        model = _build_model(path, m, params, _state_dict(path, members[WEIGHTS]))
        bundle = cls(spec=manifest.spec, preprocessor=_loaded_preprocessor(path, manifest),
                     model=model, model_name=m.name, model_params=params, task=manifest.task,
                     class_names=manifest.class_names, window=manifest.window,
                     threshold_=manifest.threshold, metadata=manifest.metadata,
                     provenance={"file": str(path), "fedlstm_version": manifest.fedlstm_version,
                                 "signed_by": signer.fingerprint if signer else None,
                                 "signer": signer.label if signer else None})
        if manifest.detector is not None:  # a kind with state of its own (e.g. μ and Σ)
            return ModelBundle.KINDS[manifest.detector].from_bundle(bundle, manifest)
        return bundle


# --- reading, step by step -----------------------------------------------------------------------
def read_members(path: Path) -> dict[str, bytes]:
    """The bundle's members, each read through a bounded reader after checking its declared size."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from exc
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: {size:,} bytes is larger than any fedlstm bundle can be "
                          f"({MAX_BUNDLE_BYTES:,})")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            unexpected = sorted(set(names) - set(MEMBER_LIMITS))
            if unexpected:
                raise BundleError(f"{path}: unexpected members {unexpected[:5]}; a bundle holds "
                                  f"only {', '.join(MEMBER_LIMITS)}")
            if len(set(names)) != len(names):
                raise BundleError(f"{path}: a member appears twice; the bundle was tampered with")
            missing = [n for n in REQUIRED_MEMBERS if n not in names]
            if missing:
                raise BundleError(f"{path}: not a fedlstm model bundle (no {', '.join(missing)})")
            return {info.filename: _read_member(path, zf, info) for info in infos}
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError,
            ValueError) as exc:  # damaged zip, corrupt deflate stream, encrypted member, ...
        raise BundleError(f"{path}: not a fedlstm model bundle, or a damaged one ({exc})") from exc


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    limit = MEMBER_LIMITS[info.filename]
    too_big = (f"{path}: {info.filename} decompresses to more than {limit:,} bytes, the most a "
               "bundle member may hold; refusing it (a damaged file or a zip bomb)")
    if info.file_size > limit:
        raise BundleError(too_big)
    with zf.open(info) as f:
        data = f.read(limit + 1)  # bounded even when the declared size lies
    if len(data) > limit:
        raise BundleError(too_big)
    return data


def _checked_manifest(path: Path, members: dict[str, bytes]) -> dict:
    """Hashes and format version: enough to know the file is an intact bundle we can read."""
    body = members[MANIFEST]
    digest = members[DIGEST].decode("ascii", "replace").strip()
    if hashlib.sha256(body).hexdigest() != digest:
        raise BundleError(f"{path}: manifest does not match its hash; the bundle was modified")
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{path}: manifest.json is not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: manifest.json is not a JSON object")
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {str(raw.get('format'))[:40]} "
                          f"v{str(raw.get('format_version'))[:10]} is not supported by fedlstm "
                          f"{__version__} (expects v{FORMAT_VERSION})")
    hashes = raw.get("sha256")
    expected = hashes.get(WEIGHTS) if isinstance(hashes, dict) else None
    if hashlib.sha256(members[WEIGHTS]).hexdigest() != expected:
        raise BundleError(f"{path}: weights do not match their hash; the bundle was modified")
    return raw


def _check_signature(path: Path, members: dict[str, bytes], trust: TrustStore | None,
                     allow_unsigned: bool) -> PublicKey | None:
    try:
        return verify_bundle(str(path), members.get(SIGNATURE), members[MANIFEST],
                             members[WEIGHTS], trust if trust is not None else TrustStore.default())
    except SignatureError as exc:
        if not allow_unsigned or exc.reason == "invalid":
            raise BundleError(str(exc)) from exc
        who = "is not signed" if exc.reason == "unsigned" else \
            f"is signed by key {exc.fingerprint}, which is not trusted"
        log.warning("%s %s; loaded anyway because unsigned bundles were allowed", path, who)
        return None


def _validated(path: Path, raw: dict) -> Manifest:
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors()[:3]:
            where = ".".join(map(str, e["loc"]))
            got = e.get("input")
            shown = f" (got {got!r})" if isinstance(got, (int, float, str)) and len(repr(got)) < 40 \
                and e["type"] != "value_error" else ""
            problems.append(f"{where + ': ' if where else ''}"
                            f"{e['msg'].removeprefix('Value error, ')}{shown}")
        raise BundleError(f"{path}: manifest.json does not describe a model fedlstm can load: "
                          + "; ".join(problems)) from exc


def _preprocessor_entries(preprocessor) -> dict:
    """The manifest's preprocessor state, and with harmonised inputs the common vocabulary."""
    if isinstance(preprocessor, HarmonisedPreprocessor):
        return {"preprocessor": preprocessor.preprocessor.to_dict(),
                "common_features": list(COMMON_FEATURES)}
    return {"preprocessor": preprocessor.to_dict()}


def _loaded_preprocessor(path: Path, manifest: Manifest):
    pre = FlowPreprocessor.from_dict(manifest.preprocessor.model_dump())
    if manifest.common_features is None:
        return pre
    try:
        return HarmonisedPreprocessor(pre, manifest.spec)
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{path}: its schema {manifest.spec.name!r} cannot be harmonised "
                          f"({exc})") from exc


def _state_dict(path: Path, weights: bytes) -> dict[str, torch.Tensor]:
    # torch's format is a zip too: its records must be stored, not compressed, so what it
    # allocates is bounded by the (capped) size of weights.pt.
    try:
        with zipfile.ZipFile(io.BytesIO(weights)) as inner:
            if any(i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size
                   for i in inner.infolist()):
                raise BundleError(f"{path}: weights.pt holds compressed records; torch never "
                                  "writes those")
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{path}: weights.pt is not a torch state_dict ({exc})") from exc
    try:
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 -- untrusted bytes: any unpickler failure is a bad file
        raise BundleError(f"{path}: weights.pt cannot be read as a state_dict ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BundleError(f"{path}: weights.pt is not a state_dict of named tensors")
    return state


def _build_model(path: Path, m: ModelSection, params: dict,
                 state: dict[str, torch.Tensor]) -> nn.Module:
    """The model, allocated only once the weights fit the architecture the manifest describes."""
    try:
        with torch.device("meta"):  # shapes without memory
            skeleton = build_model(m.name, m.input_size, m.n_classes, **params)
    except (TypeError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: the manifest's model cannot be built ({exc})") from exc
    expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    got = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = [f"{k} is {list(got[k][0])} {got[k][1]}, expected {list(expected[k][0])} "
                 f"{expected[k][1]}" for k in expected if k in got and got[k] != expected[k]]
        detail = "; ".join([*([f"missing {missing[:3]}"] if missing else []),
                            *([f"unexpected {extra[:3]}"] if extra else []), *wrong[:3]])
        raise BundleError(f"{path}: the weights do not fit the {m.name} the manifest describes "
                          f"(input {m.input_size}, hidden {params.get('hidden_size')}): {detail}")
    model = build_model(m.name, m.input_size, m.n_classes, **params)
    model.load_state_dict(state)
    model.eval()
    return model


# --- writing -----------------------------------------------------------------------------------
def _write_members(path: Path, body: bytes, weights: bytes, signature: bytes | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, body)
            zf.writestr(WEIGHTS, weights)
            zf.writestr(DIGEST, hashlib.sha256(body).hexdigest())
            if signature is not None:
                zf.writestr(SIGNATURE, signature)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sign_file(path: str | Path, key: SigningKey | None = None, trust: TrustStore | None = None,
              force: bool = False) -> str | None:
    """Sign an existing bundle with `key` (default: the local key) after checking that it loads:
    a bundle written before fedlstm signed bundles, or one whose signer you vouch for.

    Returns the fingerprint of the key that signed it before, or None. A bundle whose signature
    by a trusted key does not match its contents was modified after signing: it is re-signed
    only with `force` (when you made that change yourself).
    """
    path = Path(path)
    key = key or KeyHome.default().signing_key()
    members = read_members(path)
    raw = _checked_manifest(path, members)
    try:
        before = verify_bundle(str(path), members.get(SIGNATURE), members[MANIFEST],
                               members[WEIGHTS], trust if trust is not None else TrustStore.default()
                               ).fingerprint
    except SignatureError as exc:
        if exc.reason == "invalid" and not force:
            raise BundleError(f"{exc}; re-sign it only if you made that change yourself") from exc
        before = exc.fingerprint
    manifest = _validated(path, raw)
    _build_model(path, manifest.model, manifest.model.params.model_dump(exclude_unset=True),
                 _state_dict(path, members[WEIGHTS]))
    _write_members(path, members[MANIFEST], members[WEIGHTS],
                   sign_bundle(key, members[MANIFEST], members[WEIGHTS]))
    return before
