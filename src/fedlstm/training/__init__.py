from fedlstm.training.loop import History, Reporter, fit, predict_proba
from fedlstm.training.metrics import binary_metrics, multiclass_metrics

__all__ = ["History", "Reporter", "binary_metrics", "fit", "multiclass_metrics", "predict_proba"]
