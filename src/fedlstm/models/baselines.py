"""The paper's neural comparison methods, trained by the same loop as the LSTM."""

from __future__ import annotations

import torch
from torch import nn


class RNNClassifier(nn.Module):
    """Plain (Elman) RNN over the window, classification from the last step."""

    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.dropout(out[:, -1]))


class CNNClassifier(nn.Module):
    """1-D convolution over the window's time axis, then global max pooling."""

    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1, kernel_size: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = input_size
        for _ in range(max(num_layers, 1)):
            layers += [nn.Conv1d(channels, hidden_size, kernel_size, padding=kernel_size // 2),
                       nn.ReLU()]
            channels = hidden_size
        self.conv = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))  # (batch, channels, time)
        return self.head(self.dropout(h.amax(dim=2)))
