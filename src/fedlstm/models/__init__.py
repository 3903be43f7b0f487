"""Models by name, so baselines plug into the same pipeline, training loop and bundles."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedlstm.models.baselines import CNNClassifier, RNNClassifier
from fedlstm.models.encoded import EncodedLSTM, SiteFamiliesLSTM
from fedlstm.models.hybrid import HybridLSTM, SiteHybridLSTM
from fedlstm.models.lstm import LSTMClassifier
from fedlstm.models.sequence import LSTMAutoencoder, LSTMForecaster

MODELS: dict[str, Callable[..., nn.Module]] = {"lstm": LSTMClassifier, "rnn": RNNClassifier,
                                                 "cnn": CNNClassifier, "lstm-hybrid": HybridLSTM,
                                                 "lstm-encoded": EncodedLSTM,
                                                 "lstm-encoded-families": SiteFamiliesLSTM,
                                                 "lstm-encoded-hybrid": SiteHybridLSTM}
# Models of normal traffic (reconstruct or forecast windows; no classes): the anomaly detector's.
SEQUENCE_MODELS: dict[str, Callable[..., nn.Module]] = {"lstm-ae": LSTMAutoencoder,
                                                          "lstm-forecast": LSTMForecaster}


def build_model(name: str, input_size: int, n_classes: int, **params) -> nn.Module:
    known = {**MODELS, **SEQUENCE_MODELS}
    if name not in known:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(known)}")
    return known[name](input_size=input_size, n_classes=n_classes, **params)


def get_weights(model: nn.Module) -> list:
    """Model state as numpy arrays in state_dict order: what federation moves between sites."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list) -> None:
    import torch

    keys = list(model.state_dict())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
    model.load_state_dict({k: torch.as_tensor(w) for k, w in zip(keys, weights)}, strict=True)
