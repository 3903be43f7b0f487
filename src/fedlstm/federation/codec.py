"""Compression of model updates (deltas from the model both sides hold), with no Flower in sight.

`--compress` is `none`, `q8`, `topk:RATIO` or `topk:RATIO+q8`:
- `topk:RATIO` keeps the RATIO largest-magnitude entries of each array. Which entries were kept
  travels as a bit mask compressed with zlib (a sparse mask costs far less than one index per
  kept entry: about 0.3 bits per entry at 5%), the kept values as float32 or, with `+q8`, as
  8-bit codes.
- `q8` is stochastic quantisation to 255 levels per array with one float32 scale per array
  (max |x|); the rounding is random and unbiased: E[decode(encode(x))] = x.
- Error feedback (`ErrorFeedback`) keeps what compression dropped on the sender and adds it to
  the next update, so nothing is lost for good, only delayed (Karimireddy et al. 2019).

Everything of one update is packed into at most three arrays (Flower serialises each array with
its own header, so ten small headers would eat the savings of q8 on a small model). Written by
hand because no maintained library does this for Flower: Flower's size mods only log sizes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedlstm.config import compression_spec

DENSE_UP_TO = 1024  # Top-k leaves arrays this small whole
_LEVELS = 254  # q8 codes 0..254: symmetric around 127, so 0.0 is a level


@dataclass(frozen=True)
class Codec:
    """How an update is encoded: `topk` is the kept share of each array (None: all), `q8`
    whether values travel as 8-bit codes."""

    topk: float | None = None
    q8: bool = False

    @property
    def active(self) -> bool:
        return self.topk is not None or self.q8

    def __str__(self) -> str:
        parts = ([f"topk:{self.topk:g}"] if self.topk is not None else []) + (["q8"] if self.q8 else [])
        return "+".join(parts) or "none"


def parse(spec: str) -> Codec:
    """`none`, `q8`, `topk:0.05`, `topk:0.01+q8`; a ValueError naming the accepted forms."""
    text = compression_spec(spec)
    if text == "none":
        return Codec()
    if text == "q8":
        return Codec(q8=True)
    return Codec(topk=float(text[5:].split("+")[0]), q8=text.endswith("+q8"))


def _quantise(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.float32]:
    """8-bit codes and the scale of one array, rounded up or down at random so that the
    expected decoded value is the value itself."""
    scale = np.float32(np.max(np.abs(values))) if values.size else np.float32(0)
    if scale == 0:
        return np.full(values.shape, _LEVELS // 2, np.uint8), scale
    level = (values.astype(np.float64) / scale + 1.0) * (_LEVELS / 2)
    low = np.floor(level)
    codes = low + (rng.random(level.shape) < (level - low))
    return np.clip(codes, 0, _LEVELS).astype(np.uint8), scale


def _dequantise(codes: np.ndarray, scale: float) -> np.ndarray:
    return ((codes.astype(np.float32) * (2.0 / _LEVELS)) - 1.0) * np.float32(scale)


def _kept(values: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean mask of the round(ratio * n) (at least one) largest-magnitude entries; arrays of
    at most DENSE_UP_TO entries (biases, a classifier head) are kept whole: they cost little, and
    a head that learns 5% of itself per round would hold the whole model back."""
    flat = np.abs(values.ravel())
    if flat.size <= DENSE_UP_TO:
        return np.ones(flat.size, bool)
    k = min(max(int(round(ratio * flat.size)), 1), flat.size)
    mask = np.zeros(flat.size, bool)
    mask[np.argpartition(flat, flat.size - k)[flat.size - k:]] = True
    return mask


def encode(arrays: list[np.ndarray], codec: Codec, rng: np.random.Generator,
           max_norm: float | None = None) -> list[np.ndarray]:
    """The packed update; `max_norm` rescales it so that the decoded update's L2 norm is at
    most that (client-level DP's clipping bound holds for what is actually sent)."""
    if not codec.active:
        packed = [np.asarray(a, np.float32) for a in arrays]
        return _bounded(packed, codec, [a.shape for a in arrays], max_norm)
    flats = [np.asarray(a, np.float32).ravel() for a in arrays]
    if codec.topk is not None:
        masks = [_kept(f, codec.topk) for f in flats]
        kept = [f[m] for f, m in zip(flats, masks)]
        bits = np.packbits(np.concatenate(masks)) if masks else np.zeros(0, np.uint8)
        head = [np.frombuffer(zlib.compress(bits.tobytes(), 9), np.uint8)]
    else:
        kept, head = flats, []
    if codec.q8:
        coded = [_quantise(v, rng) for v in kept]
        body = [np.concatenate([c for c, _ in coded]) if coded else np.zeros(0, np.uint8),
                np.array([s for _, s in coded], np.float32)]
    else:
        body = [np.concatenate(kept) if kept else np.zeros(0, np.float32)]
    return _bounded(head + body, codec, [a.shape for a in arrays], max_norm)


def _bounded(packed: list[np.ndarray], codec: Codec, shapes, max_norm: float | None):
    if max_norm is None:
        return packed
    norm = float(np.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64)))
                             for d in decode(packed, codec, shapes))))
    if norm <= max_norm:
        return packed
    factor = np.float32(max_norm / norm * (1 - 1e-6))
    # The decoded update is linear in the float parts (values, or the q8 scales).
    if not codec.active:
        return [p * factor for p in packed]
    return [*packed[:-1], packed[-1] * factor]


def decode(packed: list[np.ndarray], codec: Codec, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The update `encode` packed, as arrays of `shapes` (float32); a ValueError when the
    packed arrays do not fit those shapes."""
    sizes = [int(np.prod(s)) for s in shapes]
    if not codec.active:
        if [tuple(np.shape(p)) for p in packed] != [tuple(s) for s in shapes]:
            raise ValueError("an uncompressed update must have the model's array shapes")
        return [np.asarray(p, np.float32) for p in packed]
    parts = list(packed)
    if codec.topk is not None:
        try:
            bits = np.frombuffer(zlib.decompress(np.asarray(parts.pop(0), np.uint8).tobytes()),
                                 np.uint8)
        except zlib.error as exc:
            raise ValueError(f"the Top-k mask does not decompress ({exc})") from None
        mask = np.unpackbits(bits, count=sum(sizes)).astype(bool) if sizes else np.zeros(0, bool)
        if bits.size * 8 < sum(sizes):
            raise ValueError("the Top-k mask is shorter than the model")
        counts = [int(m.sum()) for m in np.split(mask, np.cumsum(sizes)[:-1])]
    else:
        mask, counts = None, sizes
    if codec.q8:
        if len(parts) != 2 or len(parts[1]) != len(shapes):
            raise ValueError("a q8 update holds codes and one scale per array")
        codes, scales = np.asarray(parts[0]), np.asarray(parts[1], np.float32)
        if codes.size != sum(counts):
            raise ValueError(f"{codes.size} codes for {sum(counts)} values")
        values = np.concatenate([_dequantise(c, s) for c, s in
                                 zip(np.split(codes, np.cumsum(counts)[:-1]), scales)]) \
            if counts else np.zeros(0, np.float32)
    else:
        if len(parts) != 1 or np.size(parts[0]) != sum(counts):
            raise ValueError(f"expected {sum(counts)} kept values")
        values = np.asarray(parts[0], np.float32)
    if mask is None:
        flat = values
    else:
        flat = np.zeros(sum(sizes), np.float32)
        flat[mask] = values
    return [f.reshape(s) for f, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]


# --- q8 under SecAgg+ ------------------------------------------------------------------------
# SecAgg+ sums what the sites send, so every site must quantise to the same grid: Flower's
# secaggplus_mod quantises [-1, 1] to codes 0..SECAGG_LEVELS (stochastic rounding), and each
# array is first divided by a scale the server sets for the round and sends to every site.
SECAGG_LEVELS = _LEVELS
SCALE_MARGIN = 2.0  # scale = this x the largest entry of the last mean update, per array


def shared_scales(model: list[np.ndarray], last_update: list[np.ndarray] | None) -> list[float]:
    """One scale per array for the round. The server sees only the mean update, so the scale is
    SCALE_MARGIN x the largest entry of the last mean update of that array (before the first
    round: the largest weight). What a site's update holds beyond the scale is clipped and kept
    as its error feedback, so a scale that is too small delays part of an update, and the next
    scale, taken from a mean that then sits at the bound, grows by SCALE_MARGIN."""
    source = model if last_update is None else last_update
    scales = [float(np.max(np.abs(a))) * (1.0 if last_update is None else SCALE_MARGIN)
              if np.size(a) else 0.0 for a in source]
    return [s if s > 0 else 1e-8 for s in scales]


def to_shared_scale(arrays: list[np.ndarray], scales: list[float],
                    max_norm: float | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What a site hands SecAgg+ (each array divided by its scale, clipped to [-1, 1]) and the
    update that stands for; `max_norm` bounds that update's L2 norm, as `encode` does."""
    sent = [np.clip(np.asarray(a, np.float64) / s, -1.0, 1.0) for a, s in zip(arrays, scales)]
    if max_norm is not None:
        norm = float(np.sqrt(sum(float(np.sum(np.square(x * s))) for x, s in zip(sent, scales))))
        if norm > max_norm:
            sent = [x * (max_norm / norm * (1 - 1e-6)) for x in sent]
    return ([x.astype(np.float32) for x in sent],
            [(x * s).astype(np.float32) for x, s in zip(sent, scales)])


class ErrorFeedback:
    """What compression dropped from earlier updates, added back to the next one."""

    def __init__(self, residual: list[np.ndarray] | None = None):
        self.residual = residual

    def compensate(self, update: list[np.ndarray]) -> list[np.ndarray]:
        if self.residual is None or [r.shape for r in self.residual] != [u.shape for u in update]:
            return [np.asarray(u, np.float32) for u in update]
        return [np.asarray(u, np.float32) + r for u, r in zip(update, self.residual)]

    def keep(self, target: list[np.ndarray], sent: list[np.ndarray]) -> None:
        """After sending `sent` (decoded) for `target` (the compensated update)."""
        self.residual = [(t - s).astype(np.float32) for t, s in zip(target, sent)]


def payload_bytes(packed: list[np.ndarray]) -> int:
    return sum(int(np.asarray(p).nbytes) for p in packed)
