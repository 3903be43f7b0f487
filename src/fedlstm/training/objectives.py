"""What a batch's loss is, and how a trained model is read on windows.

`Objective` is classification (cross-entropy over window labels); `SequenceObjective` trains a
model of normal traffic (reconstruct or forecast windows, `models.sequence`), whose per-feature
errors (`error_vectors`) the anomaly detector scores. The one training loop takes either.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedlstm.features.windows import WindowSet


class Objective:
    """What a batch's loss is. Classification (cross-entropy over window labels) by default;
    other tasks (e.g. reconstructing normal traffic) subclass `step` and `evaluate`."""

    def __init__(self, loss_fn: nn.Module | None = None):
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss of the batch and, where it means something, the number of correct outputs."""
        logits = model(x)
        return self.loss_fn(logits, y), (logits.detach().argmax(1) == y).sum()

    def evaluate(self, model: nn.Module, data: WindowSet, device: torch.device | None = None) -> dict:
        return evaluate_loss(model, data, self.loss_fn, device)


class SequenceObjective(Objective):
    """Mean squared error of the reconstruction (autoencoder) or forecast (forecaster)."""

    def __init__(self):
        super().__init__(nn.MSELoss())

    def step(self, model, x, y):
        prediction, target = model.prediction_and_target(x)
        return self.loss_fn(prediction, target), None

    def evaluate(self, model, data: WindowSet, device=None) -> dict:
        errors = error_vectors(model, data, device=device)
        return {"loss": float((errors ** 2).mean()) if len(errors) else float("nan")}


@torch.no_grad()
def error_vectors(model: nn.Module, data: WindowSet, batch_size: int = 4096,
                  device: torch.device | None = None) -> np.ndarray:
    """(n_windows, n_features) float64: |x - x̂| on each window's last record."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    data = data.to(device)
    out = np.empty((len(data), data.n_features), np.float64)
    for s in range(0, len(data), batch_size):
        x, _ = data.batch(torch.arange(s, min(s + batch_size, len(data)), device=device))
        prediction, target = model.prediction_and_target(x)
        out[s:s + len(x)] = (prediction[:, -1] - target[:, -1]).abs().double().cpu().numpy()
    model.train(was_training)
    return out


@torch.no_grad()
def predict_logits(model: nn.Module, data: WindowSet, batch_size: int = 2048,
                   device: torch.device | None = None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    model.eval()
    if device.type == "cpu" and hasattr(model, "forward_sliding"):  # shares overlapping windows
        return model.forward_sliding(data.features, data.ends, data.window,
                                     starts=data.starts_of(data.ends))
    data = data.to(device)
    outs = [model(data.batch(torch.arange(s, min(s + batch_size, len(data)), device=device))[0])
            for s in range(0, len(data), batch_size)]
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def predict_proba(model: nn.Module, data: WindowSet, batch_size: int = 2048) -> np.ndarray:
    return torch.softmax(predict_logits(model, data, batch_size), dim=1).numpy()


def evaluate_loss(model: nn.Module, data: WindowSet, loss_fn: nn.Module,
                  device: torch.device | None = None) -> dict:
    logits = predict_logits(model, data, device=device)
    y = data.window_labels.cpu()
    weight = getattr(loss_fn, "weight", None)
    loss = nn.functional.cross_entropy(logits, y, weight=None if weight is None else weight.cpu())
    return {"loss": float(loss), "accuracy": float((logits.argmax(1) == y).float().mean())}
