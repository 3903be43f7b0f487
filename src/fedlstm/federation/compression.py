"""Compressed federation traffic in Flower: a client mod and a strategy wrapper around `codec`.

Uplink: the site's mod turns its trained model into the update from the model it started from,
adds its error-feedback residual (kept in the node's Flower context state, which persists across
rounds in simulation and deployment), and sends the packed update; the server's wrapper unpacks
every update onto that starting model before the wrapped strategy sees it. Any strategy (FedAvg,
FedProx, FedAdam, client-level DP) therefore works unchanged.

Uncompressed (`none`): models travel as they are, but a site is never sent the model it holds:
the model a round's federated evaluation sent is the one the next round trains from, and went
twice (half of every round's downlink).

Downlink: the server keeps a reference model that every up-to-date site holds. Each new global
model is sent as the q8-packed difference from the reference (the reference then moves by exactly
what was sent, so rounding errors are sent later: server-side error feedback); a site that
missed the last version (new, returning, or failed) gets the full reference. The downlink is
never sparsified: sites train from the reference and the next global model is the reference
plus their updates, so a reference that lags behind would drag the global model back with it.

Order with privacy (docs/privacy.md): record-level DP-SGD noises the training itself, so any
compression after it is post-processing and costs no ε. With client-level DP the mod runs outside
Flower's clipping mod and rescales what it sends to the clipping bound, so the bound the server's
noise is calibrated to holds for the decoded update, error feedback included.

SecAgg+ sums masked arrays, so packed updates (per-site Top-k positions and q8 scales) cannot
travel under it. q8 can: the server sets one scale per array for the round (`shared_scales`), each
site sends its update divided by it, and Flower's SecAgg+ quantises that to 8-bit codes before
masking (`secagg_ranges`); the masked sums need 8 + log2(sites) bits, and travel in exactly
those (`pack_masked`, `UnpackedMasks`). Top-k is refused with SecAgg+ (the configuration says why).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS as SECAGG_CONFIGS,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE as SECAGG_STATE
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedlstm.federation.audit import ContractViolation
from fedlstm.federation.codec import (
    SECAGG_LEVELS,
    Codec,
    ErrorFeedback,
    decode,
    encode,
    parse,
    shared_scales,
    to_shared_scale,
)
from fedlstm.federation.robust import StrategyWrapper

log = logging.getLogger(__name__)

# Keys of the fit/evaluate configuration the wrapper adds (the site's mod removes them again).
KEY_SPEC, KEY_VERSION, KEY_BASE, KEY_FEEDBACK = ("compress", "compress_version", "compress_base",
                                                 "compress_feedback")
KEY_SCALES = "compress_scales"  # q8 under SecAgg+: the round's shared scale of each array
DOWNLINK = Codec(q8=True)  # how a new global model travels to sites holding the last one
_STATE_REFERENCE, _STATE_RESIDUAL, _STATE_META = ("compress.reference", "compress.residual",
                                                  "compress.meta")


# --- the site ----------------------------------------------------------------------------------
def compression_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower client mod: full models in, packed updates out, for runs whose server compresses."""
    kind = msg.metadata.message_type
    if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
        return call_next(msg, ctxt)
    train = kind == MessageType.TRAIN
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True) if train else \
        compat.recorddict_to_evaluateins(msg.content, keep_input=True)
    if KEY_SPEC not in ins.config:
        return call_next(msg, ctxt)
    codec = parse(str(ins.config[KEY_SPEC]))
    start = _received_model(ins, ctxt)
    config = {k: v for k, v in ins.config.items()
              if k not in (KEY_SPEC, KEY_VERSION, KEY_BASE, KEY_FEEDBACK, KEY_SCALES)}
    if train:
        msg.content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(start), config), True)
    else:
        msg.content = compat.evaluateins_to_recorddict(
            EvaluateIns(ndarrays_to_parameters(start), config), True)
    out = call_next(msg, ctxt)
    if not train or out.has_error() or not codec.active:  # none: the trained model as it is
        return out
    res = compat.recorddict_to_fitres(out.content, keep_input=True)
    update = [np.asarray(n, np.float32) - s for n, s in zip(parameters_to_ndarrays(res.parameters),
                                                             start)]
    feedback = ErrorFeedback(_state_arrays(ctxt, _STATE_RESIDUAL)) \
        if bool(ins.config.get(KEY_FEEDBACK, True)) else None
    target = feedback.compensate(update) if feedback else update
    bound = float(ins.config[KEY_CLIPPING_NORM]) if KEY_CLIPPING_NORM in ins.config else None
    if KEY_SCALES in ins.config:  # SecAgg+ quantises and masks what this hands it
        scales = np.frombuffer(ins.config[KEY_SCALES], np.float64).tolist()
        packed, sent = to_shared_scale(target, scales, max_norm=bound)
    else:
        rng = np.random.default_rng([int(ins.config.get("seed", 0)),
                                     int(ctxt.node_id) & 0xFFFFFFFF])
        packed = encode(target, codec, rng, max_norm=bound)
        sent = decode(packed, codec, [s.shape for s in start]) if feedback else None
    if feedback:
        feedback.keep(target, sent)
        ctxt.state[_STATE_RESIDUAL] = ArrayRecord(feedback.residual)
    res.parameters = ndarrays_to_parameters(packed)
    out.content = compat.fitres_to_recorddict(res, keep_input=True)
    return out


def secagg_ranges(codec: Codec, n_sites: int) -> dict:
    """Flower SecAggPlusWorkflow's quantisation for q8 updates (its defaults otherwise): [-1, 1]
    to codes 0..254, and the smallest power-of-two modulus that holds the sum of `n_sites` codes
    (and of their weights, which Flower quantises to the same range)."""
    if not codec.q8:
        return {}
    bits = int(np.ceil(np.log2(SECAGG_LEVELS * max(n_sites, 1) + 1)))
    return {"clipping_range": 1.0, "quantization_range": SECAGG_LEVELS, "modulus_range": 1 << bits}


def pack_masked(out: Message, ctxt: Context) -> Message:
    """Flower's SecAgg+ reply with its masked vectors bit-packed: every masked value is below the
    power-of-two modulus, so log2(modulus) bits carry it, where Flower sends int64. q8 sums of 5
    sites (modulus 2^11) travel in 11 bits, Flower's default modulus (2^32) in 32. One uint8
    array: the bit count, then the values of every vector in order (`unpack_masked`)."""
    record = None if out.has_error() else out.content.config_records.get(SECAGG_CONFIGS)
    if record is None or SecAggKey.MASKED_PARAMETERS not in record:
        return out
    bits = int(ctxt.state.config_records[SECAGG_STATE]["mod_range"]).bit_length() - 1
    values = np.concatenate([bytes_to_ndarray(b).ravel().astype("<u8")
                             for b in record[SecAggKey.MASKED_PARAMETERS]])
    planes = np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1,
                           bitorder="little")[:, :bits]
    packed = np.concatenate([np.array([bits], np.uint8),
                             np.packbits(planes.ravel(), bitorder="little")])
    record[SecAggKey.MASKED_PARAMETERS] = [ndarray_to_bytes(packed)]
    return out


def unpack_masked(blob: bytes, sizes: list[int]) -> list[np.ndarray]:
    """The masked vectors `pack_masked` packed, as int64 arrays of `sizes` values (Flower's
    weight factor first, then one per model array); a ValueError when they do not fit."""
    data = bytes_to_ndarray(blob)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size < 1:
        raise ValueError("masked vectors are one bit-packed uint8 array")
    bits, total = int(data[0]), sum(sizes)
    if not 1 <= bits <= 63 or data.size != 1 + -(-total * bits // 8):
        raise ValueError(f"{data.size - 1} bytes do not hold {total} values of {bits} bits")
    planes = np.unpackbits(data[1:], count=total * bits, bitorder="little").reshape(total, bits)
    wide = np.zeros((total, 64), np.uint8)
    wide[:, :bits] = planes
    values = np.packbits(wide, axis=1, bitorder="little").view("<u8").ravel().astype(np.int64)
    return np.split(values, np.cumsum(sizes)[:-1])


class UnpackedMasks:
    """The grid Flower's SecAgg+ workflow talks to: bit-packed masked vectors (`pack_masked`)
    are handed on as the arrays Flower's sites produced. It wraps the guarded grid, so bytes
    are counted and the message contract checked as they travelled. `shapes`: the model's."""

    def __init__(self, grid, shapes: Callable[[], tuple]):
        self._grid, self._shapes = grid, shapes

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        for reply in replies:
            record = None if reply.has_error() else reply.content.config_records.get(SECAGG_CONFIGS)
            if record is None or SecAggKey.MASKED_PARAMETERS not in record:
                continue
            shapes = [(1,), *self._shapes()]  # Flower's weight factor, then the model
            try:
                arrays = unpack_masked(record[SecAggKey.MASKED_PARAMETERS][0],
                                       [int(np.prod(s)) for s in shapes])
            except (ValueError, IndexError) as exc:
                raise ContractViolation(f"site {self._grid.ledger.name(reply.metadata.src_node_id)}"
                                        f": {SECAGG_CONFIGS}/{SecAggKey.MASKED_PARAMETERS}: "
                                        f"{exc}") from None
            record[SecAggKey.MASKED_PARAMETERS] = [
                ndarray_to_bytes(a.reshape(s)) for a, s in zip(arrays, shapes)]
        return replies


def _state_arrays(ctxt: Context, key: str) -> list[np.ndarray] | None:
    return ctxt.state[key].to_numpy_ndarrays() if key in ctxt.state else None


def _received_model(ins, ctxt: Context) -> list[np.ndarray]:
    """The model the server sent: in full, or as a packed difference from the version this site
    holds (stored in its context state for the next message)."""
    version = int(ins.config[KEY_VERSION])
    arrays = parameters_to_ndarrays(ins.parameters)
    meta = ctxt.state[_STATE_META] if _STATE_META in ctxt.state else ConfigRecord({"version": -1})
    held = int(meta["version"])
    if KEY_BASE not in ins.config:
        model = [np.asarray(a, np.float32) for a in arrays]
    else:
        base = int(ins.config[KEY_BASE])
        reference = _state_arrays(ctxt, _STATE_REFERENCE)
        if reference is None or base != held:
            raise ValueError(f"the server sent the model as a difference from version {base}, "
                             f"this site holds version {held}")
        if base == version:
            return reference
        model = [r + d for r, d in zip(reference, decode(arrays, DOWNLINK,
                                                         [r.shape for r in reference]))]
    ctxt.state[_STATE_REFERENCE] = ArrayRecord(model)
    ctxt.state[_STATE_META] = ConfigRecord({"version": version})
    return model


# --- the server --------------------------------------------------------------------------------
class CodecStrategy(Strategy):
    """Wraps any strategy with the run's codec, `none` included: sends models as packed
    differences to sites that hold the reference (with `none`, sends a site no model it already
    holds), and unpacks the sites' updates before the wrapped strategy aggregates them."""

    def __init__(self, strategy: Strategy, codec: Codec, error_feedback: bool = True,
                 downlink: bool = True, seed: int = 0, secagg: bool = False):
        super().__init__()
        if secagg and codec.topk is not None:
            raise ValueError(f"only q8 composes with SecAgg+, not {codec}")
        self.strategy, self.codec, self.secagg = strategy, codec, secagg
        self.scales: list[float] = []  # SecAgg+: this round's shared scale of each array
        self.last_update: list[np.ndarray] | None = None  # SecAgg+: the last mean update
        # none: the models go as they are, and only the model a site holds is not sent again
        self.error_feedback, self.downlink = error_feedback, downlink and codec.active
        self.rng = np.random.default_rng(seed)
        self.reference: list[np.ndarray] | None = None  # what up-to-date sites hold
        self.version = 0
        self.delta: list[np.ndarray] | None = None  # packed reference change version-1 -> version
        self._source: list[np.ndarray] | None = None  # the global model the reference tracks
        self.held: dict[str, int] = {}  # site -> version it holds
        self.sent: dict[str, int] = {}  # site -> version sent in the current exchange

    def __repr__(self) -> str:
        return f"CodecStrategy({self.codec}, {self.strategy!r})"

    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def _track(self, parameters: Parameters) -> None:
        """Move the reference towards the current global model (once per new global model)."""
        current = [np.asarray(a, np.float32) for a in parameters_to_ndarrays(parameters)]
        if self._source is not None and all(np.array_equal(a, b) for a, b in
                                            zip(current, self._source)):
            return
        self._source = current
        if self.reference is None or not self.downlink:
            self.reference, self.delta = [a.copy() for a in current], None
        else:
            change = [c - r for c, r in zip(current, self.reference)]
            self.delta = encode(change, DOWNLINK, self.rng)
            sent = decode(self.delta, DOWNLINK, [r.shape for r in self.reference])
            self.reference = [r + s for r, s in zip(self.reference, sent)]
        self.version += 1

    def _instructions(self, instructions, make, extra: dict | None = None):
        out = []
        for proxy, ins in instructions:
            held = self.held.get(proxy.cid)
            config = {**ins.config, KEY_SPEC: str(self.codec), KEY_VERSION: self.version,
                      KEY_FEEDBACK: self.error_feedback, **(extra or {})}
            if held == self.version:
                payload = []
                config[KEY_BASE] = self.version
            elif held == self.version - 1 and self.delta is not None:
                payload = self.delta
                config[KEY_BASE] = held
            else:
                payload = self.reference
            self.sent[proxy.cid] = self.version
            out.append((proxy, make(ndarrays_to_parameters(payload), config)))
        return out

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        self._track(parameters)
        self.sent = {}
        if not self.secagg or not self.codec.active:
            return self._instructions(instructions, FitIns)
        self.scales = shared_scales(self.reference, self.last_update)
        # As bytes: Flower's legacy configuration holds scalars only.
        return self._instructions(instructions, FitIns,
                                  {KEY_SCALES: np.asarray(self.scales, np.float64).tobytes()})

    def configure_evaluate(self, server_round, parameters, client_manager):
        instructions = self.strategy.configure_evaluate(server_round, parameters, client_manager)
        if not instructions:
            return instructions
        self._track(parameters)
        self.sent = {}
        return self._instructions(instructions, EvaluateIns)

    def _settle(self, results, failures) -> None:
        """Which version each site now holds: what it was sent if it replied, else unknown."""
        for proxy, _ in results:
            if proxy.cid in self.sent:
                self.held[proxy.cid] = self.sent[proxy.cid]
        for failure in failures:
            if isinstance(failure, tuple):
                self.held.pop(failure[0].cid, None)
        for cid in set(self.sent) - {p.cid for p, _ in results}:
            self.held.pop(cid, None)

    def aggregate_fit(self, server_round, results, failures):
        if not self.codec.active:  # the sites' models, as they sent them
            self._settle(results, failures)
            return self.strategy.aggregate_fit(server_round, results, failures)
        shapes = [r.shape for r in self.reference]
        unpacked, failures = [], list(failures)
        for proxy, res in results:
            try:
                update = self._unpack(parameters_to_ndarrays(res.parameters), shapes)
            except (ValueError, zlib.error) as exc:
                log.warning("site %s sent an update that does not unpack: %s", proxy.cid, exc)
                failures.append((proxy, res))
                continue
            weights = [r + u for r, u in zip(self.reference, update)]
            unpacked.append((proxy, FitRes(res.status, ndarrays_to_parameters(weights),
                                           res.num_examples, res.metrics)))
            if self.secagg:  # every result holds the same mean: the next round's scales
                self.last_update = update
        self._settle(unpacked, failures)
        return self.strategy.aggregate_fit(server_round, unpacked, failures)

    def _unpack(self, arrays: list[np.ndarray], shapes) -> list[np.ndarray]:
        if not self.secagg:
            return decode(arrays, self.codec, shapes)
        # SecAgg+ hands every result the unmasked mean of what the sites sent: scaled values.
        if [tuple(np.shape(a)) for a in arrays] != [tuple(s) for s in shapes]:
            raise ValueError("the SecAgg+ sum does not have the model's array shapes")
        return [(np.asarray(a, np.float64) * s).astype(np.float32)
                for a, s in zip(arrays, self.scales)]

    def aggregate_evaluate(self, server_round, results, failures):
        self._settle(results, failures)
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)


class Float32Model(StrategyWrapper):
    """Keeps the global model float32. SecAgg+'s unmasked sums and client-level DP's noise come
    back as float64, and a float64 model would travel to every site at twice its size."""

    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if parameters is not None:
            parameters = ndarrays_to_parameters(
                [np.asarray(a, np.float32) if np.asarray(a).dtype == np.float64 else a
                 for a in parameters_to_ndarrays(parameters)])
        return parameters, metrics
