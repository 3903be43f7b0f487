"""Classical baselines (scikit-learn) on flattened windows, with the detector interface of bundles.

`decision_function` (larger = more anomalous) and a fitted `threshold_`, as PyOD detectors and our
LSTM bundles, so evaluation code does not care which it holds. Methods that do not scale to
hundreds of thousands of rows are approximated, and say so in `approximation`:
- `svm`: RBF kernel via a Nystroem feature map (300 components) + linear SVM, fit on <= 20k rows;
- `hgb`: gradient boosting on every training row while rows x columns stay <= 60M cells (all of
  NSL-KDD and KDD99 at W = 1); beyond that a random subsample of that size (its histogram
  building over W x features columns dominated the full reproduction's run time);
- `ae-ocsvm`: the paper's "autoencoder + SVM": an MLP autoencoder trained on <= 10k normal
  windows, a one-class RBF SVM on its codes and reconstruction errors (<= 5k normal rows),
  threshold maximising F1 on validation.
- `rf`: random forest of 100 trees, on every core.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from fedlstm.features import FlowPreprocessor
from fedlstm.features.windows import WindowSet
from fedlstm.training.metrics import best_f1_threshold

CLASSICAL = ("svm", "logreg", "rf", "hgb", "ae-ocsvm")
FAMILY_METHODS = ("logreg", "rf", "hgb")  # probabilistic classifiers: they name attack families
_LIMITS = {"svm": 20_000, "ae-ocsvm": 5_000}
_AUTOENCODER_ROWS = 10_000
_HGB_CELLS = 60_000_000


def flatten(data: WindowSet) -> np.ndarray:
    idx = data.record_indices(data.ends)
    return data.features[idx].reshape(len(data), -1).numpy()


def _subsample(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(rng.choice(n, limit, replace=False))


@dataclass
class ClassicalDetector:
    name: str
    preprocessor: FlowPreprocessor
    window: int
    seed: int = 0
    task: str = "binary"
    class_names: list[str] = field(default_factory=lambda: ["normal", "attack"])
    threshold_: float = 0.5
    metadata: dict = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def approximation(self) -> str | None:
        rows = getattr(self, "fit_rows_", None)
        if self.name == "hgb":
            return (f"fit on a random {rows[0]:,} of {rows[1]:,} training windows (<= 60M cells)"
                    if rows and rows[0] < rows[1] else None)
        return {"svm": "Nystroem RBF map (300) + linear SVM on <= 20k rows",
                "ae-ocsvm": "MLP autoencoder on <= 10k normal rows; one-class SVM on <= 5k codes",
                }.get(self.name)

    def _row_limit(self, x: np.ndarray) -> int | None:
        if self.name == "hgb":
            return max(1, _HGB_CELLS // max(1, x.shape[1]))
        return _LIMITS.get(self.name)

    def fit(self, train: WindowSet, val: WindowSet) -> ClassicalDetector:
        if self.name not in CLASSICAL:
            raise KeyError(f"unknown classical method {self.name!r}; known: {', '.join(CLASSICAL)}")
        rng = np.random.default_rng(self.seed)
        labels = train.window_labels.numpy()
        x, y = flatten(train), labels if self.task == "family" else (labels > 0).astype(int)
        if self.task == "family" and self.name not in FAMILY_METHODS:
            raise ValueError(f"{self.name} scores attack or normal only; attack families: "
                             f"{', '.join(FAMILY_METHODS)}")
        keep = _subsample(len(x), self._row_limit(x), rng)
        self.fit_rows_ = (len(keep), len(x))
        # scikit-learn is imported here, not at the top: every process that imports fedlstm's
        # tasks (a deployed site's, one per message) would pay about a second for it.
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPRegressor
        from sklearn.svm import OneClassSVM

        if self.name == "ae-ocsvm":
            normal = x[y == 0]
            normal = normal[_subsample(len(normal), _AUTOENCODER_ROWS, rng)]
            self.autoencoder_ = MLPRegressor(hidden_layer_sizes=(32, 8, 32), activation="tanh",
                                             max_iter=100, random_state=self.seed,
                                             early_stopping=len(normal) > 5000)
            with warnings.catch_warnings():
                # 100 epochs is a deliberate time budget, not a convergence criterion.
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.autoencoder_.fit(normal, normal)
            codes = self._encode(normal[_subsample(len(normal), _LIMITS[self.name], rng)])
            self.estimator_ = OneClassSVM(kernel="rbf", gamma="scale", nu=0.05).fit(codes)
            # The threshold is the only supervised choice, made on validation data.
            self.threshold_ = best_f1_threshold((val.window_labels.numpy() > 0).astype(int),
                                                self.decision_function(val))
            return self
        if self.name == "svm":
            self.estimator_ = self._kernel_svm(x[keep], y[keep])
            self.threshold_ = 0.0
            return self
        self.estimator_ = {
            "logreg": lambda: LogisticRegression(max_iter=1000),
            "rf": lambda: RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=self.seed),
            "hgb": lambda: HistGradientBoostingClassifier(random_state=self.seed),
        }[self.name]().fit(x[keep], y[keep])
        self.threshold_ = 0.5
        return self

    def _kernel_svm(self, x: np.ndarray, y: np.ndarray):
        # Nystroem draws its landmarks from the rows it is fitted on. Repeated rows (most of
        # KDD99's) make their kernel matrix singular, and the map then hinges on rounding: on
        # one machine 1 and 2 BLAS threads gave 0.893 and 0.885 test accuracy. Landmarks are
        # drawn from distinct rows; the SVM still trains on every row.
        from sklearn.kernel_approximation import Nystroem
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import LinearSVC

        distinct = np.unique(x, axis=0)
        feature_map = Nystroem(n_components=min(300, len(distinct)),
                               random_state=self.seed).fit(distinct)
        svm = LinearSVC(C=1.0).fit(feature_map.transform(x), y)
        return make_pipeline(feature_map, svm)  # both fitted: the pipeline only chains them

    def _encode(self, x: np.ndarray) -> np.ndarray:
        # The code (encoder half: two tanh layers) plus the reconstruction error: a code alone
        # can map an unseen pattern onto a normal-looking point; its error gives that away.
        h = x
        for w, b in zip(self.autoencoder_.coefs_[:2], self.autoencoder_.intercepts_[:2]):
            h = np.tanh(h @ w + b)
        error = np.sqrt(((self.autoencoder_.predict(x) - x) ** 2).mean(axis=1, keepdims=True))
        return np.hstack([h, error * 10])

    def decision_function(self, data: WindowSet) -> np.ndarray:
        x = flatten(data)
        if self.name == "ae-ocsvm":
            return -self.estimator_.decision_function(self._encode(x))
        if self.name == "svm":
            return self.estimator_.decision_function(x)
        if self.task == "family":  # class 0 is normal: the attack score is everything else
            return 1.0 - self.predict_proba(data)[:, 0]
        return self.estimator_.predict_proba(x)[:, 1]

    def predict_proba(self, data: WindowSet) -> np.ndarray:
        """(n, classes): every class of `class_names`, 0 for one the training data lacked."""
        proba = np.zeros((len(data), len(self.class_names)))
        proba[:, self.estimator_.classes_] = self.estimator_.predict_proba(flatten(data))
        return proba

    def predict(self, data: WindowSet) -> np.ndarray:
        return (self.decision_function(data) >= self.threshold_).astype(np.int64)
