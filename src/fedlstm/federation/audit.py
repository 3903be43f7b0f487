"""A record of every message the server sends and receives: evidence of what leaves a site.

`AuditedGrid` wraps Flower's Grid (all traffic of the workflow API goes through it) and keeps,
for each message, its type, direction and a structural summary: every array's shape and dtype,
every config value's type and size. It stores no array contents except what `keep_arrays`
asks for, so the audit itself holds no more than the server already saw.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass
class MessageSummary:
    direction: str  # "sent" (server -> site) or "received" (site -> server)
    message_type: str
    node_id: int
    arrays: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    config: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (type, size)
    float_arrays: list[np.ndarray] = field(default_factory=list)  # only with keep_arrays

    @property
    def nbytes(self) -> int:
        arrays = sum(int(np.prod(s)) * _itemsize(d) for _, s, d in self.arrays)
        return arrays + sum(size for _, size in self.config.values())


def _decode(array) -> np.ndarray:
    """The array a record carries; Flower's legacy Parameters keep whole .npy files as bytes."""
    if not array.dtype and array.stype == "numpy.ndarray":
        return np.load(io.BytesIO(array.data), allow_pickle=False)
    return array.numpy()


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # arrays not serialised from numpy carry no numpy dtype
        return 8


def summarise(message, direction: str, keep_arrays: bool = False) -> MessageSummary:
    meta = message.metadata
    node = meta.dst_node_id if direction == "sent" else meta.src_node_id
    out = MessageSummary(direction, meta.message_type, int(node))
    if message.has_error():
        return out
    for rec_name, record in message.content.array_records.items():
        for name, array in record.items():
            value = _decode(array)
            out.arrays.append((f"{rec_name}/{name}", tuple(value.shape), str(value.dtype)))
            if keep_arrays and value.dtype.kind == "f":
                out.float_arrays.append(value)
    for rec_name, record in message.content.config_records.items():
        for key, value in record.items():
            size = len(value) if isinstance(value, (bytes, str, list)) else 8
            out.config[f"{rec_name}/{key}"] = (type(value).__name__, size)
    return out


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "?"


class AuditedGrid:
    """Delegates to a Flower Grid, summarising every message that crosses it."""

    def __init__(self, grid, keep_arrays: bool = False):
        self._grid, self.keep_arrays = grid, keep_arrays
        self.log: list[MessageSummary] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def _record(self, messages, direction: str) -> list:
        messages = list(messages)
        with self._lock:
            self.log += [summarise(m, direction, self.keep_arrays) for m in messages]
        return messages

    def send_and_receive(self, messages, *, timeout=None):
        replies = self._grid.send_and_receive(self._record(messages, "sent"), timeout=timeout)
        return self._record(replies, "received")

    def push_messages(self, messages):
        return self._grid.push_messages(self._record(messages, "sent"))

    def pull_messages(self, message_ids):
        return self._record(self._grid.pull_messages(message_ids), "received")
