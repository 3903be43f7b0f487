"""Classical baselines (scikit-learn, `fedlstm.detection.classical`) through the same split,
preprocessing, windows and evaluation as the LSTM: binary (the probabilistic ones also name attack
families with `model.task=family`), never federated (their models are not averaged), fitted by
their own estimators instead of the training loop."""

from __future__ import annotations

from fedlstm.detection.classical import FAMILY_METHODS, ClassicalDetector
from fedlstm.tasks.base import SiteWindows, Task, class_names_for, windows_of
from fedlstm.training.loop import History


class ClassicalTask(Task):
    kind = "classical"
    federated = False
    test_curves = False

    def __init__(self, cfg):
        # Only the probabilistic classifiers name families; the others stay binary.
        if cfg.model.name not in FAMILY_METHODS:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"task": "binary"})})
        super().__init__(cfg)

    def class_names(self, spec) -> list[str]:
        return class_names_for(spec, self.cfg.model.task)

    def site_windows(self, train, val, preprocessor, classes) -> SiteWindows:
        cfg = self.cfg  # binary unless its model names families (`__init__`)
        return SiteWindows(windows_of(train, preprocessor, cfg, classes, stride=cfg.windows.stride),
                           windows_of(val, preprocessor, cfg, classes))

    def metadata(self, spec, protocol: str, mode: str) -> dict:
        return {"dataset": spec.name, "protocol": protocol, "mode": mode, "seed": self.cfg.seed}

    def fit(self, spec, preprocessor, windows, classes, metadata, val, reporter=None, curves=None):
        detector = ClassicalDetector(self.cfg.model.name, preprocessor, self.cfg.windows.window,
                                     self.cfg.seed, task=self.cfg.model.task,
                                     class_names=list(classes), metadata=metadata)
        return detector.fit(windows.train, windows.val), History()
