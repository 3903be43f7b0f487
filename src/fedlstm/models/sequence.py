"""LSTMs that model normal traffic: what they cannot reproduce is anomalous.

- `LSTMAutoencoder` reconstructs the window it reads (encoder LSTM -> its last state repeated W
  times -> decoder LSTM -> linear); works with W = 1.
- `LSTMForecaster` reads the first T records of a window of W = T + T' and predicts the last T'
  (paper Eq. 11).

Both expose `prediction_and_target(x)`, so one objective trains either with the one training loop
and one function turns a window into its error vector e: the per-feature absolute error on the
window's last record (the record whose label the window carries).
"""

from __future__ import annotations

import torch
from torch import nn


class LSTMAutoencoder(nn.Module):
    def __init__(self, input_size: int, n_classes: int | None = None, hidden_size: int = 64,
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()  # n_classes: accepted (build_model passes it) and unused
        drop = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True, dropout=drop)
        self.decoder = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True, dropout=drop)
        self.head = nn.Linear(hidden_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        code = h[-1].unsqueeze(1).expand(-1, x.shape[1], -1)
        out, _ = self.decoder(code)
        return self.head(out)

    def prediction_and_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), x


class LSTMForecaster(nn.Module):
    def __init__(self, input_size: int, n_classes: int | None = None, hidden_size: int = 64,
                 num_layers: int = 1, dropout: float = 0.0, horizon: int = 1):
        super().__init__()
        if horizon < 1:
            raise ValueError(f"horizon T' must be >= 1 (got {horizon})")
        self.horizon, self.input_size = horizon, input_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, horizon * input_size)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(batch, T, features) -> (batch, T', features)."""
        out, _ = self.lstm(history)
        return self.head(out[:, -1]).view(-1, self.horizon, self.input_size)

    def prediction_and_target(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] <= self.horizon:
            raise ValueError(f"the forecaster needs windows longer than T'={self.horizon} "
                             f"(got W={x.shape[1]}); raise windows.window")
        return self(x[:, :-self.horizon]), x[:, -self.horizon:]
