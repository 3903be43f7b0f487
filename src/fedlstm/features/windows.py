"""Windows of W consecutive records, formed inside one split (or one client's share) only.

A window is identified by the index of its last record; its label is that record's label. Windows
are never materialised: a batch gathers `features[end - W + 1 : end + 1]` for its ends, so memory
stays O(records) whatever W is. Because a WindowSet is built from one split's own arrays, a window
cannot span two splits; `segments` additionally keeps windows inside runs of equal segment id
(e.g. the files or clients pooled into one split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class WindowSet:
    features: torch.Tensor  # (n_records, n_features) float32
    labels: torch.Tensor  # (n_records,) int64, per record
    ends: torch.Tensor  # (n_windows,) int64, index of each window's last record
    window: int

    def __len__(self) -> int:
        return int(self.ends.numel())

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def window_labels(self) -> torch.Tensor:
        return self.labels[self.ends]

    def record_indices(self, ends: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.window - 1, -1, -1, device=ends.device)
        return ends.unsqueeze(1) - offsets

    def batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ends = self.ends[positions]
        return self.features[self.record_indices(ends)], self.labels[ends]

    def max_windows_per_record(self) -> int:
        """The most windows any one record sits in (ceil(W / stride) for a long run of windows,
        1 when no two windows share a record, 0 without windows): the size of the group of
        windows that one record's privacy is counted over."""
        if not len(self):
            return 0
        ends = self.ends.cpu().numpy()
        cover = np.zeros(len(self.features) + 1, np.int64)
        np.add.at(cover, ends - self.window + 1, 1)
        np.add.at(cover, ends + 1, -1)
        return int(np.cumsum(cover).max())

    def to(self, device: torch.device | str) -> WindowSet:
        return WindowSet(self.features.to(device), self.labels.to(device), self.ends.to(device),
                         self.window)

    def subset(self, positions: np.ndarray | torch.Tensor) -> WindowSet:
        return WindowSet(self.features, self.labels, self.ends[torch.as_tensor(positions)],
                         self.window)


def window_ends(n_records: int, window: int, stride: int = 1,
                segments: np.ndarray | None = None) -> np.ndarray:
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1 (got window={window}, stride={stride})")
    ends = np.arange(window - 1, n_records, stride, dtype=np.int64)
    if segments is not None and len(ends):
        segments = np.asarray(segments)
        ends = ends[segments[ends - window + 1] == segments[ends]]
        # A segment id can recur later; require no change anywhere inside the window.
        change = np.concatenate([[0], np.cumsum(segments[1:] != segments[:-1])])
        ends = ends[change[ends - window + 1] == change[ends]]
    return ends


def make_windows(features: np.ndarray, labels: np.ndarray, window: int, stride: int = 1,
                 segments: np.ndarray | None = None) -> WindowSet:
    if len(features) != len(labels):
        raise ValueError("features and labels differ in length")
    ends = window_ends(len(features), window, stride, segments)
    return WindowSet(torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32),
                     torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(ends), window)
