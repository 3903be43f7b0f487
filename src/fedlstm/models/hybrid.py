"""One network for the novelty-aware detector: an LSTM classifier of windows (the attacks seen
in training, with their family) and an LSTM autoencoder of normal traffic (whatever it cannot
reconstruct looks like no normal traffic it has seen). Both read the same windows, are trained
by the one training loop in the same batches, and are averaged together by FedAvg."""

from __future__ import annotations

import torch
from torch import nn

from fedlstm.models.lstm import LSTMClassifier
from fedlstm.models.sequence import LSTMAutoencoder


class HybridLSTM(nn.Module):
    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.classifier = LSTMClassifier(input_size, n_classes, hidden_size, num_layers, dropout)
        self.normal = LSTMAutoencoder(input_size, None, hidden_size, num_layers, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits: the model answers what a supervised one does."""
        return self.classifier(x)

    def forward_sliding(self, records: torch.Tensor, ends: torch.Tensor, window: int,
                        batch_size: int = 1024, starts: torch.Tensor | None = None
                        ) -> torch.Tensor:
        return self.classifier.forward_sliding(records, ends, window, batch_size, starts)

    def prediction_and_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoencoder's reconstruction of the window, and the window."""
        return self.normal.prediction_and_target(x)
