"""The model of a federation across networks of different schemas: a private input encoder per
site and a shared LSTM body and head.

Each site's encoder maps its own preprocessed features (whatever their number) into one shared
d-dimensional space; the body (`LSTMClassifier` over that space) is what the sites average. With
harmonised inputs, the first `n_common` features are the common flow vocabulary
(`features.harmonise`), read by a shared layer, and only the rest go through the private encoder.
Encoder weights never leave a site: `shared_weights` is all that is sent.

`SiteFamiliesLSTM` is a site's detector: the trained `EncodedLSTM` plus a private head that names
the site's own attack families (e.g. UNSW-NB15's exploits, fuzzers, worms) from the body's hidden
state and the site's own features of the window's last record, while P(attack) stays the shared
head's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedlstm.models.lstm import LSTMClassifier

PRIVATE = "encoder."  # state_dict prefix of the weights that stay on their site


class EncodedLSTM(nn.Module):
    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1, shared_dim: int = 32, n_common: int = 0):
        super().__init__()
        if input_size <= n_common:
            raise ValueError(f"input_size {input_size} leaves no site features after "
                             f"{n_common} common ones")
        self.n_common = n_common
        self.encoder = nn.Linear(input_size - n_common, shared_dim)
        self.common = nn.Linear(n_common, shared_dim, bias=False) if n_common else None
        self.body = LSTMClassifier(shared_dim, n_classes, hidden_size, num_layers, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x[..., self.n_common:])
        if self.common is not None:
            z = z + self.common(x[..., :self.n_common])
        return torch.tanh(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.encode(x))

    @torch.inference_mode()
    def forward_sliding(self, records: torch.Tensor, ends: torch.Tensor, window: int,
                        batch_size: int = 1024, starts: torch.Tensor | None = None
                        ) -> torch.Tensor:
        # Encoding is per record, so encode each record once and slide the body over the codes.
        return self.body.forward_sliding(self.encode(records), ends, window, batch_size, starts)


class SiteFamiliesLSTM(nn.Module):
    """P(normal) from the shared head; P(family k) = P(attack) x the site head's softmax over the
    site's own attack families. Returned as log-probabilities, so softmax gives them back and
    1 - P(normal) is exactly the shared detector's attack score. `n_classes` counts the site's
    classes, normal first.

    The head reads the hidden state and the last record's own features: the body was trained to
    tell attacks from normal traffic, and its hidden state alone keeps too little of what tells
    one family from another (on the three benchmark networks' validation data the features lifted
    the head's macro-F1 in every network). The features are the site's, and so is the head."""

    def __init__(self, input_size: int, n_classes: int, n_shared_classes: int = 2,
                 hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.1,
                 shared_dim: int = 32, n_common: int = 0):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a site's classes are normal and at least one family, got {n_classes}")
        self.net = EncodedLSTM(input_size, n_shared_classes, hidden_size, num_layers, dropout,
                               shared_dim, n_common)
        self.site_head = nn.Linear(hidden_size + input_size, n_classes - 1)

    def freeze_shared(self) -> None:
        """Train the site head only: the encoder and the body stay as the federation left them."""
        self.net.requires_grad_(False)

    def _combine(self, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        shared = torch.log_softmax(self.net.body.head(hidden), dim=1)
        attack = torch.logsumexp(shared[:, 1:], dim=1, keepdim=True)
        families = torch.log_softmax(self.site_head(torch.cat([hidden, last], 1)), 1)
        return torch.cat([shared[:, :1], attack + families], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._combine(self.net.body.hidden(self.net.encode(x)), x[:, -1])

    @torch.inference_mode()
    def forward_sliding(self, records: torch.Tensor, ends: torch.Tensor, window: int,
                        batch_size: int = 1024, starts: torch.Tensor | None = None
                        ) -> torch.Tensor:
        return self._combine(self.net.body.hidden_sliding(self.net.encode(records), ends, window,
                                                          batch_size, starts), records[ends])


def _split(model: nn.Module, private: bool) -> list[str]:
    return [k for k in model.state_dict() if k.startswith(PRIVATE) == private]


def shared_weights(model: nn.Module) -> list[np.ndarray]:
    """What a site sends: every array but its encoder's, in state_dict order."""
    state = model.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in _split(model, private=False)]


def private_weights(model: nn.Module) -> list[np.ndarray]:
    state = model.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in _split(model, private=True)]


def load_weights(model: nn.Module, shared: list, private: list | None = None) -> None:
    """Set the shared arrays (and the site's own encoder, when it has one yet)."""
    keys = _split(model, private=False)
    if len(keys) != len(shared):
        raise ValueError(f"expected {len(keys)} shared arrays, got {len(shared)}")
    values = dict(zip(keys, shared))
    if private is not None:
        values.update(zip(_split(model, private=True), private))
    model.load_state_dict({k: torch.as_tensor(v) for k, v in values.items()}, strict=False)
