"""Defences against poisoned sites, for Flower's legacy Strategy API.

FedAvg is a weighted mean: one site that reverses or scales its update, or claims a million
records, moves the global model wherever it likes. The defences here limit what a minority of
malicious sites (`fedlstm.federation.attacks`) can do:

- `robust_strategy`: Flower's Byzantine-robust aggregators (Krum, MultiKrum, Bulyan, coordinate
  median, trimmed mean), configured from the number of malicious sites to tolerate and refused
  when that number is too large for the rule's guarantee;
- `NormBounded`: clips each update (weights - global model) to an L2 bound, so a scaled update
  weighs no more than an honest one;
- `CappedCounts`: caps the record count a site claims, which FedAvg (and MultiKrum's final
  average) use as weights; median, Krum, Bulyan and trimmed mean ignore counts anyway;
- `Reputation`: remembers across rounds which sites sent outlying updates and down-weights or
  drops them, so a site that attacks repeatedly loses its influence.

The wrappers delegate everything to the strategy they wrap and change only the fit results it
aggregates; they all need plain model weights, so they go inside `CodecStrategy`. Suggested
nesting, outermost first: CappedCounts(Reputation(NormBounded(robust or FedAvg))) - reputation
sees the updates before they are clipped, and scales counts that were already capped.

None of them works under SecAgg+, where the server sees only the sum of the masked updates (and
counts): the configuration refuses that combination.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, Strategy

log = logging.getLogger(__name__)

ROBUST_STRATEGIES = ("krum", "multikrum", "bulyan", "median", "trimmed-mean")
DEFENCES = ("norm-bound", "cap-counts", "reputation")  # the wrappers below, as named in configs


# --- robust aggregation rules --------------------------------------------------------------------
def check_robust(name: str, num_malicious: int, n_sites: int) -> None:
    """Raise ValueError unless `name` can tolerate `num_malicious` of `n_sites` sites."""
    if name not in ROBUST_STRATEGIES:
        raise ValueError(f"unknown robust strategy {name!r}; accepted: {', '.join(ROBUST_STRATEGIES)}")
    if num_malicious < 0 or n_sites < 1:
        raise ValueError(f"need num_malicious >= 0 and n_sites >= 1, got {num_malicious} and {n_sites}")
    f, n = num_malicious, n_sites
    if name in ("krum", "multikrum") and n <= 2 * f + 2:
        raise ValueError(_too_many(name, "n > 2f + 2", f, n, 2 * f + 3, (n - 3) // 2))
    if name == "bulyan" and n < 4 * f + 3:
        raise ValueError(_too_many(name, "n >= 4f + 3", f, n, 4 * f + 3, (n - 3) // 4))
    if name in ("median", "trimmed-mean") and n <= 2 * f:
        raise ValueError(_too_many(name, "an honest majority, n > 2f", f, n, 2 * f + 1,
                                   (n - 1) // 2))


def _too_many(name: str, rule: str, f: int, n: int, sites: int, most: int) -> str:
    fix = f"at least {sites} sites" + (f", or at most {most} malicious" if most >= 0 else "")
    return f"{name} needs {rule}: {n} sites cannot tolerate {f} malicious (needs {fix})"


def trimmed_beta(num_malicious: int, n_sites: int) -> float:
    """Trimmed mean's cut per tail: Flower trims int(beta * n) updates from each end, so
    (f + 0.25) / n trims exactly f of n (the 0.25 guards against float rounding down), and stays
    below 0.5 whenever n > 2f. With fewer results than n_sites in a round, proportionally fewer."""
    return (num_malicious + 0.25) / n_sites


def robust_strategy(name: str, *, num_malicious: int, n_sites: int, **common) -> Strategy:
    """A Flower robust strategy tolerating `num_malicious` of `n_sites` sites per round;
    `common`: the usual FedAvg keyword arguments. MultiKrum averages the n - f best-scored
    updates (weighted by their counts: pair it with CappedCounts)."""
    check_robust(name, num_malicious, n_sites)
    f = num_malicious
    if name == "krum":
        return Krum(num_malicious_clients=f, num_clients_to_keep=0, **common)
    if name == "multikrum":
        return Krum(num_malicious_clients=f, num_clients_to_keep=n_sites - f, **common)
    if name == "bulyan":  # its first rule is Krum, which takes `to_keep` (0: plain Krum)
        return Bulyan(num_malicious_clients=f, to_keep=0, **common)
    if name == "median":
        return FedMedian(**common)
    return FedTrimmedAvg(beta=trimmed_beta(f, n_sites), **common)


# --- wrappers ------------------------------------------------------------------------------------
class StrategyWrapper(Strategy):
    """Delegates everything to `strategy`; remembers the global model each fit round starts
    from, so that subclasses can look at the sites' updates."""

    def __init__(self, strategy: Strategy):
        super().__init__()
        self.strategy = strategy
        self.global_weights: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r})"

    def initialize_parameters(self, client_manager):
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        self.global_weights = [np.asarray(a) for a in parameters_to_ndarrays(parameters)]
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.strategy.evaluate(server_round, parameters)

    def summary(self, name) -> dict:
        """What this defence did in the last round, for the round record; `name` turns a
        site's cid into its name."""
        return {}

    def _updates(self, results, failures):
        """(results, updates, failures): each site's update as float64 arrays; a site whose
        weights do not fit the model or are not finite is moved to the failures."""
        if self.global_weights is None:
            raise RuntimeError(f"{type(self).__name__}: aggregate_fit before configure_fit "
                               "(the global model the updates start from is unknown)")
        kept, updates, failures = [], [], list(failures)
        for proxy, res in results:
            weights = parameters_to_ndarrays(res.parameters)
            if len(weights) != len(self.global_weights) or any(
                    w.shape != g.shape or not np.all(np.isfinite(w))
                    for w, g in zip(weights, self.global_weights)):
                log.warning("site %s sent weights that do not fit the model; ignored", proxy.cid)
                failures.append((proxy, res))
                continue
            kept.append((proxy, res))
            updates.append([np.asarray(w, np.float64) - g for w, g in zip(weights,
                                                                          self.global_weights)])
        return kept, updates, failures


def _norm(update: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(u * u)) for u in update))


def _with_weights(res: FitRes, weights: list[np.ndarray]) -> FitRes:
    return FitRes(res.status, ndarrays_to_parameters(weights), res.num_examples, res.metrics)


def _with_count(res: FitRes, count: int) -> FitRes:
    return FitRes(res.status, res.parameters, count, res.metrics)


class NormBounded(StrategyWrapper):
    """Clips each site's update to an L2 bound before the wrapped strategy aggregates.

    The bound is `max_norm` when given, else `multiplier` x the median of this round's update
    norms. The default multiplier 2.0 leaves the natural spread of honest norms (sites differ
    in size and data) alone, where 1.0 (FLAME's choice) would shrink half of the honest sites
    every round, and still holds a scaled update to twice a typical one. The median needs an
    honest majority. `last_round`: {"round", "bound", "norms": {cid: norm},
    "clipped": {cid: {"norm", "scale"}}}, scale being the factor the update was multiplied by.
    """

    def __init__(self, strategy: Strategy, *, max_norm: float | None = None,
                 multiplier: float = 2.0):
        super().__init__(strategy)
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        if not multiplier > 0:
            raise ValueError(f"multiplier must be > 0, got {multiplier}")
        self.max_norm, self.multiplier = max_norm, multiplier
        self.last_round: dict = {}

    def bound(self, norms: list[float]) -> float:
        if self.max_norm is not None:
            return float(self.max_norm)
        return self.multiplier * float(np.median(norms)) if norms else 0.0

    def aggregate_fit(self, server_round, results, failures):
        results, updates, failures = self._updates(results, failures)
        norms = [_norm(u) for u in updates]
        bound = self.bound(norms)
        out, clipped = [], {}
        for (proxy, res), update, norm in zip(results, updates, norms):
            if norm > bound:
                scale = bound / norm
                clipped[proxy.cid] = {"norm": norm, "scale": scale}
                dtypes = [w.dtype for w in parameters_to_ndarrays(res.parameters)]
                res = _with_weights(res, [(g + u * scale).astype(d) for g, u, d in
                                          zip(self.global_weights, update, dtypes)])
            out.append((proxy, res))
        self.last_round = {"round": server_round, "bound": bound, "clipped": clipped,
                           "norms": {p.cid: n for (p, _), n in zip(results, norms)}}
        return self.strategy.aggregate_fit(server_round, out, failures)

    def summary(self, name) -> dict:
        if not self.last_round:
            return {}
        return {"norm_bound": {"bound": self.last_round["bound"],
                               "sites": sorted(name(c) for c in self.last_round["clipped"])}}


class CappedCounts(StrategyWrapper):
    """Caps the record count each site claims at `max_count` when given, else `max_ratio` x the
    median claim of the round (at least 1), so a free-rider cannot outweigh the others in a
    weighted average. Only weighted rules care (FedAvg, FedProx, FedAdam, MultiKrum's average,
    and the fit-metrics average); median, Krum, Bulyan and trimmed mean ignore counts.
    `last_round`: {"round", "cap", "capped": {cid: claimed count}}."""

    def __init__(self, strategy: Strategy, *, max_ratio: float = 2.0,
                 max_count: int | None = None):
        super().__init__(strategy)
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        if not max_ratio > 0:
            raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
        self.max_ratio, self.max_count = max_ratio, max_count
        self.last_round: dict = {}

    def cap(self, counts: list[int]) -> int:
        if self.max_count is not None:
            return int(self.max_count)
        return max(1, int(self.max_ratio * float(np.median(counts)))) if counts else 1

    def aggregate_fit(self, server_round, results, failures):
        cap = self.cap([res.num_examples for _, res in results])
        capped = {p.cid: res.num_examples for p, res in results if res.num_examples > cap}
        out = [(p, _with_count(res, cap) if res.num_examples > cap else res) for p, res in results]
        self.last_round = {"round": server_round, "cap": cap, "capped": capped}
        return self.strategy.aggregate_fit(server_round, out, failures)

    def summary(self, name) -> dict:
        if not self.last_round:
            return {}
        return {"capped_counts": {"cap": self.last_round["cap"],
                                  "sites": sorted(name(c) for c in self.last_round["capped"])}}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0.0 when either vector is zero (no direction to compare)."""
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denominator if denominator > 0 else 0.0


class Reputation(StrategyWrapper):
    """Per-site reputation across rounds, from how each update compares with the round's
    coordinate-wise median update (robust to a malicious minority).

    An update is flagged when its cosine similarity to the median is below `min_cosine` (it
    pulls against the consensus: sign flips, label flips that reverse the gradient) or its norm
    exceeds `norm_ratio` x the median norm (scaled updates). Cosine and norm are checked apart
    because a single distance to the median mixes direction and size, and its scale changes with
    the learning rate and round; the cosine does not. A flagged site's reputation is multiplied
    by `decay`, an unflagged one's rises by `recovery` up to 1 (sites start at 1), so one odd
    round costs little and repeated attacks compound. Each site's count is then multiplied by its
    reputation and sites under `floor` are dropped from the round: weighted rules (FedAvg) see
    the down-weighting, unweighted ones (median, Krum) only the dropping.

    `reputation`: {cid: score}; `history`: one dict per site and round with round, site, cosine,
    norm, flagged, reputation and dropped.
    """

    def __init__(self, strategy: Strategy, *, decay: float = 0.5, recovery: float = 0.1,
                 floor: float = 0.1, min_cosine: float = 0.0, norm_ratio: float = 3.0):
        super().__init__(strategy)
        if not 0.0 <= decay < 1.0 or not 0.0 <= recovery <= 1.0 or not 0.0 <= floor < 1.0:
            raise ValueError("need 0 <= decay < 1, 0 <= recovery <= 1 and 0 <= floor < 1")
        if not norm_ratio > 1.0:
            raise ValueError(f"norm_ratio must be > 1, got {norm_ratio}")
        self.decay, self.recovery, self.floor = decay, recovery, floor
        self.min_cosine, self.norm_ratio = min_cosine, norm_ratio
        self.reputation: dict[str, float] = {}
        self.history: list[dict] = []

    def summary(self, name) -> dict:
        if not self.reputation:
            return {}
        return {"reputation": {name(c): round(v, 4) for c, v in self.reputation.items()}}

    def _score(self, cid: str, flagged: bool) -> float:
        old = self.reputation.get(cid, 1.0)
        new = old * self.decay if flagged else min(1.0, old + self.recovery)
        self.reputation[cid] = new
        return new

    def aggregate_fit(self, server_round, results, failures):
        results, updates, failures = self._updates(results, failures)
        if not results:
            return self.strategy.aggregate_fit(server_round, results, failures)
        flat = [np.concatenate([u.ravel() for u in update]) for update in updates]
        median = np.median(np.stack(flat), axis=0)
        norms = [float(np.linalg.norm(v)) for v in flat]
        norm_limit = self.norm_ratio * float(np.median(norms))
        out = []
        for (proxy, res), vector, norm in zip(results, flat, norms):
            cosine = _cosine(vector, median)
            flagged = cosine < self.min_cosine or norm > norm_limit
            score = self._score(proxy.cid, flagged)
            dropped = score < self.floor
            self.history.append({"round": server_round, "site": proxy.cid, "cosine": cosine,
                                 "norm": norm, "flagged": flagged, "reputation": score,
                                 "dropped": dropped})
            if not dropped:
                out.append((proxy, _with_count(res, max(1, round(res.num_examples * score)))))
        if not out:
            log.warning("round %s: every site is under the reputation floor %s", server_round,
                        self.floor)
        return self.strategy.aggregate_fit(server_round, out, failures)
