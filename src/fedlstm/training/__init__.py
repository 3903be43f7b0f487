from fedlstm.training.loop import History, Reporter, fit
from fedlstm.training.metrics import binary_metrics, multiclass_metrics
from fedlstm.training.objectives import predict_proba

__all__ = ["History", "Reporter", "binary_metrics", "fit", "multiclass_metrics", "predict_proba"]
