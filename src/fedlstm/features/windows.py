"""Windows of W consecutive records, formed inside one split (or one client's share) only.

A window is identified by the index of its last record; its label is that record's label. Every
record ends a window (stride 1): the first W-1 records of a segment (a run of equal segment id:
an entity, or a file or client pooled into one split) get a window left-padded with copies of the
segment's first record. Padding by repetition rather than with zeros plus a mask: a zero row is a
legal input (every scaled feature at its training minimum), so zeros would need a validity mask in
every model (LSTM/RNN packing, CNN pooling, the autoencoder's loss, the forecaster, the flattened
classical baselines, the fast sliding LSTM, Captum); repeated real records need none, a padded
window still holds only that entity's own traffic, and training sees padded windows too.
Windows are never materialised: a batch gathers `features[max(end - W + 1 .. end, start)]` for
its ends, so memory stays O(records) whatever W is. Because a WindowSet is built from one split's
own arrays, a window cannot span two splits.
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
    # (n_records,) int64: the first record of each record's segment, which pads its window;
    # None: one segment starting at record 0.
    starts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.ends.numel())

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def window_labels(self) -> torch.Tensor:
        return self.labels[self.ends]

    def starts_of(self, ends: torch.Tensor) -> torch.Tensor:
        """The first record of the segment of each window ending at `ends` (its padding)."""
        return torch.zeros_like(ends) if self.starts is None else self.starts[ends]

    def record_indices(self, ends: torch.Tensor) -> torch.Tensor:
        return window_indices(ends, self.starts_of(ends), self.window)

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
        firsts = np.maximum(ends - self.window + 1, self.starts_of(self.ends).cpu().numpy())
        cover = np.zeros(len(self.features) + 1, np.int64)
        np.add.at(cover, firsts, 1)
        np.add.at(cover, ends + 1, -1)
        return int(np.cumsum(cover).max())

    def to(self, device: torch.device | str) -> WindowSet:
        return WindowSet(self.features.to(device), self.labels.to(device), self.ends.to(device),
                         self.window, None if self.starts is None else self.starts.to(device))

    def subset(self, positions: np.ndarray | torch.Tensor) -> WindowSet:
        return WindowSet(self.features, self.labels, self.ends[torch.as_tensor(positions)],
                         self.window, self.starts)


def window_indices(ends: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """(n, W) record indices of the windows ending at `ends`, oldest first; positions before a
    window's segment start repeat that start (left padding)."""
    offsets = torch.arange(window - 1, -1, -1, device=ends.device)
    return torch.maximum(ends.unsqueeze(1) - offsets, starts.unsqueeze(1))


def segment_starts(n_records: int, segments: np.ndarray | None = None) -> np.ndarray:
    """(n_records,) int64: the index of the first record of each record's segment, a run of
    equal segment id (an id can recur later; a new run is a new segment)."""
    if segments is None or not n_records:
        return np.zeros(n_records, np.int64)
    segments = np.asarray(segments)
    new = np.r_[True, segments[1:] != segments[:-1]]
    return np.flatnonzero(new)[np.cumsum(new) - 1].astype(np.int64)


def window_ends(n_records: int, window: int, stride: int = 1,
                segments: np.ndarray | None = None) -> np.ndarray:
    """The records that end a window: all of them at stride 1; at stride s, every s-th record
    counted back from each segment's last, so a segment's last record always ends one and, at
    s = W, every record sits in exactly one window (short segments included)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1 (got window={window}, stride={stride})")
    ends = np.arange(n_records, dtype=np.int64)
    if stride == 1 or not n_records:
        return ends
    starts = segment_starts(n_records, segments)
    lasts = np.r_[starts[1:][starts[1:] != starts[:-1]] - 1, n_records - 1]
    last = lasts[np.searchsorted(lasts, ends)]  # each record's segment's last record
    return ends[(last - ends) % stride == 0]


def make_windows(features: np.ndarray, labels: np.ndarray, window: int, stride: int = 1,
                 segments: np.ndarray | None = None) -> WindowSet:
    if len(features) != len(labels):
        raise ValueError("features and labels differ in length")
    ends = window_ends(len(features), window, stride, segments)
    starts = None if segments is None else torch.as_tensor(segment_starts(len(features), segments))
    return WindowSet(torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32),
                     torch.as_tensor(labels, dtype=torch.int64), torch.as_tensor(ends), window,
                     starts)
