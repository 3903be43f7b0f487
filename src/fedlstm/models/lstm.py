"""The paper's LSTM detector: stacked LSTM over a window, classification from the last step."""

from __future__ import annotations

import torch
from torch import nn


class LSTMClassifier(nn.Module):
    def __init__(self, input_size: int, n_classes: int, hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(self.dropout(out[:, -1]))

    @torch.inference_mode()
    def forward_sliding(self, records: torch.Tensor, ends: torch.Tensor, window: int,
                        batch_size: int = 4096) -> torch.Tensor:
        """Logits of the windows `records[e - window + 1 : e + 1]` for each e in `ends`.

        Equal to `forward` on the gathered windows (eval mode), but overlapping windows share
        their records, so the first layer's input projection (input_size x 4H, the larger
        product) is computed once per record rather than `window` times. No library offers this
        for overlapping windows; the gate arithmetic below follows `nn.LSTM`'s documented
        equations (gate order i, f, g, o). Stacked LSTMs fall back to `forward`.
        """
        if self.lstm.num_layers != 1 or self.lstm.bidirectional or self.training:
            offsets = torch.arange(window - 1, -1, -1)
            return torch.cat([self(records[ends[s:s + batch_size].unsqueeze(1) - offsets])
                              for s in range(0, len(ends), batch_size)]) if len(ends) else \
                torch.empty(0, self.head.out_features)
        lstm = self.lstm
        projected = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, records, lstm.weight_ih_l0.t())
        w_hh = lstm.weight_hh_l0.t()
        out = []
        for s in range(0, len(ends), batch_size):
            last = ends[s:s + batch_size]
            h = c = None
            for back in range(window - 1, -1, -1):
                gates = projected[last - back]
                if h is not None:
                    gates = gates.addmm_(h, w_hh)
                i, f, g, o = gates.chunk(4, 1)
                i, g, o = i.sigmoid_(), g.tanh_(), o.sigmoid_()
                c = i * g if c is None else f.sigmoid_().mul_(c).add_(i * g)
                h = o * torch.tanh(c)
            out.append(self.head(h))
        return torch.cat(out) if out else torch.empty(0, self.head.out_features)
