"""Classical baselines (scikit-learn, `fedlstm.detection.classical`) through the same split,
preprocessing, windows and evaluation as the LSTM: always binary, never federated (their models
are not averaged), fitted by their own estimators instead of the training loop."""

from __future__ import annotations

from fedlstm.data.spec import NORMAL_FAMILY
from fedlstm.detection.classical import ClassicalDetector
from fedlstm.tasks.base import SiteWindows, Task, windows_of
from fedlstm.training.loop import History


class ClassicalTask(Task):
    kind = "classical"
    federated = False
    test_curves = False

    def class_names(self, spec) -> list[str]:
        return [NORMAL_FAMILY, "attack"]

    def site_windows(self, train, val, preprocessor, classes) -> SiteWindows:
        cfg = self.cfg.model_copy(update={"model": self.cfg.model.model_copy(update={"task": "binary"})})
        return SiteWindows(windows_of(train, preprocessor, cfg, classes, stride=cfg.windows.stride),
                           windows_of(val, preprocessor, cfg, classes))

    def metadata(self, spec, protocol: str, mode: str) -> dict:
        return {"dataset": spec.name, "protocol": protocol, "mode": mode, "seed": self.cfg.seed}

    def fit(self, spec, preprocessor, windows, classes, metadata, val, reporter=None, curves=None):
        detector = ClassicalDetector(self.cfg.model.name, preprocessor, self.cfg.windows.window,
                                     self.cfg.seed, metadata=metadata)
        return detector.fit(windows.train, windows.val), History()
