"""The model of a federation across networks of different schemas: a private input encoder per
site and a shared LSTM body and head.

Each site's encoder maps its own preprocessed features (whatever their number) into one shared
d-dimensional space; the body (`LSTMClassifier` over that space) is what the sites average. With
harmonised inputs, the first `n_common` features are the common flow vocabulary
(`features.harmonise`), read by a shared layer, and only the rest go through the private encoder.
Encoder weights never leave a site: `shared_weights` is all that is sent.
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
