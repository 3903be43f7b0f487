"""One network for the novelty-aware detector: an LSTM classifier of windows (the attacks seen
in training, with their family) and an LSTM autoencoder of normal traffic (whatever it cannot
reconstruct looks like no normal traffic it has seen). Both read the same windows, are trained
by the one training loop in the same batches, and are averaged together by FedAvg.

`SiteHybridLSTM` is the same pair for a site of a federation across schemas, where only the
classifier's shared body is federated."""

from __future__ import annotations

import torch
from torch import nn

from fedlstm.models.encoded import EncodedLSTM, SiteFamiliesLSTM
from fedlstm.models.lstm import LSTMClassifier
from fedlstm.models.sequence import LSTMAutoencoder


class _ClassifierAndNormalModel(nn.Module):
    """What the hybrid reads of its two parts: the classifier answers as a supervised model does
    (forward, forward_sliding); the autoencoder gives its reconstruction of the window."""

    classifier: nn.Module
    normal: LSTMAutoencoder

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


class HybridLSTM(_ClassifierAndNormalModel):
    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.classifier = LSTMClassifier(input_size, n_classes, hidden_size, num_layers, dropout)
        self.normal = LSTMAutoencoder(input_size, None, hidden_size, num_layers, dropout)


class SiteHybridLSTM(_ClassifierAndNormalModel):
    """A site's novelty-aware detector in a federation across schemas: the federation's
    classifier (the site's encoder, the shared body and head, and the site's head of families
    when `n_shared_classes` is given) and the site's own LSTM autoencoder of its normal traffic.
    The autoencoder reads the site's own columns, so, like the encoder, it is trained on the site
    after the last round and never leaves it."""

    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1, shared_dim: int = 32, n_common: int = 0,
                 n_shared_classes: int | None = None):
        super().__init__()
        shape = {"hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout,
                 "shared_dim": shared_dim, "n_common": n_common}
        self.classifier = EncodedLSTM(input_size, n_classes, **shape) if n_shared_classes is None \
            else SiteFamiliesLSTM(input_size, n_classes, n_shared_classes, **shape)
        self.normal = LSTMAutoencoder(input_size, None, hidden_size, num_layers, dropout)
