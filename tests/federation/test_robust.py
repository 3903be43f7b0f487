"""Robust aggregation against poisoned updates: Flower's robust rules, norm bounding, count capping,
reputation, and the refusal to combine per-update defences with SecAgg+."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, Strategy

from fedlstm.federation.robust import (
    CappedCounts,
    NormBounded,
    Reputation,
    check_robust,
    robust_strategy,
    trimmed_beta,
)

SHAPES = [(6, 5), (20,)]
OK = Status(Code.OK, "")
# Enough of a ClientManager for FedAvg.configure_fit: nobody to sample.
NO_CLIENTS = SimpleNamespace(num_available=lambda: 10, wait_for=lambda *a, **k: True,
                             sample=lambda **k: [])


def _arrays(rng, scale=1.0):
    return [rng.normal(0, scale, s) for s in SHAPES]


def _flat(arrays):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class Round:
    """One round: a global model, an honest direction of norm 1, and the sites' fit results."""

    def __init__(self, seed=0, global_weights=None, direction=None):
        self.rng = np.random.default_rng(seed)
        self.g = global_weights if global_weights is not None else \
            [a.astype(np.float32) for a in _arrays(self.rng)]
        d = direction if direction is not None else _arrays(self.rng)
        norm = np.linalg.norm(_flat(d))
        self.d = [a / norm for a in d]
        self.honest: list[np.ndarray] = []
        self.results: list = []

    def site(self, cid, factor=1.0, count=100, noise=0.01, honest=None):
        """Sends factor x (honest direction + noise); honest unless told otherwise."""
        update = [factor * (a + self.rng.normal(0, noise, a.shape)) for a in self.d]
        if honest if honest is not None else factor > 0:
            self.honest.append(_flat(update))
        weights = [(g + u).astype(np.float32) for g, u in zip(self.g, update)]
        self.results.append((SimpleNamespace(cid=cid),
                             FitRes(OK, ndarrays_to_parameters(weights), count, {})))

    def update_of(self, parameters):
        return _flat(parameters_to_ndarrays(parameters)) - _flat(self.g)

    @property
    def honest_mean(self):
        return np.mean(self.honest, axis=0)

    @property
    def parameters(self):
        return ndarrays_to_parameters(self.g)


def poisoned_round(n_sites=10, n_bad=3, factor=-10.0, seed=0):
    rnd = Round(seed)
    for i in range(n_sites):
        rnd.site(str(i), factor if i >= n_sites - n_bad else 1.0)
    return rnd


def _common(rnd, n):
    return {"fraction_fit": 1.0, "min_fit_clients": n, "min_available_clients": n,
            "fraction_evaluate": 0.0, "min_evaluate_clients": 0,
            "initial_parameters": rnd.parameters,
            "on_fit_config_fn": lambda r: {"server_round": r},
            "fit_metrics_aggregation_fn": lambda metrics: {}}


def _close_to_honest(rnd, parameters):
    got, want = rnd.update_of(parameters), rnd.honest_mean
    return _cosine(got, want), np.linalg.norm(got - want) / np.linalg.norm(want)


# --- Flower's robust rules -----------------------------------------------------------------------
def test_fedavg_is_dragged_off_by_sign_flipped_scaled_updates():
    rnd = poisoned_round()
    parameters, _ = FedAvg(**_common(rnd, 10)).aggregate_fit(1, rnd.results, [])
    cosine, error = _close_to_honest(rnd, parameters)
    assert cosine < 0 and error > 2


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multikrum"])
def test_robust_rules_stay_with_the_honest_sites(name):
    rnd = poisoned_round()
    strategy = robust_strategy(name, num_malicious=3, n_sites=10, **_common(rnd, 10))
    parameters, metrics = strategy.aggregate_fit(1, rnd.results, [])
    cosine, error = _close_to_honest(rnd, parameters)
    assert cosine > 0.9 and error < 0.1, (name, cosine, error)
    assert metrics == {}


def test_bulyan_stays_with_the_honest_sites():
    rnd = poisoned_round(n_sites=15, n_bad=3)
    strategy = robust_strategy("bulyan", num_malicious=3, n_sites=15, **_common(rnd, 15))
    parameters, _ = strategy.aggregate_fit(1, rnd.results, [])
    cosine, error = _close_to_honest(rnd, parameters)
    assert cosine > 0.9 and error < 0.1


def test_robust_strategies_are_configured_from_the_malicious_count():
    rnd = poisoned_round()
    krum = robust_strategy("krum", num_malicious=3, n_sites=10, **_common(rnd, 10))
    multi = robust_strategy("multikrum", num_malicious=3, n_sites=10, **_common(rnd, 10))
    assert (krum.num_malicious_clients, krum.num_clients_to_keep) == (3, 0)
    assert (multi.num_malicious_clients, multi.num_clients_to_keep) == (3, 7)
    trimmed = robust_strategy("trimmed-mean", num_malicious=3, n_sites=10)
    assert 0.3 <= trimmed.beta < 0.5
    assert robust_strategy("bulyan", num_malicious=1, n_sites=7).num_malicious_clients == 1
    assert krum.initialize_parameters(None) is not None  # the common arguments reached it


def test_trimmed_beta_trims_exactly_the_malicious_count():
    for n in range(1, 40):
        for f in range((n + 1) // 2):
            beta = trimmed_beta(f, n)
            assert int(beta * n) == f and 0 <= beta < 0.5, (f, n)


@pytest.mark.parametrize("name, f, n, needed", [
    ("krum", 3, 8, "at least 9 sites"), ("multikrum", 1, 4, "at least 5 sites"),
    ("bulyan", 3, 14, "at least 15 sites"), ("bulyan", 1, 6, "at least 7 sites"),
    ("median", 3, 6, "at most 2"), ("trimmed-mean", 2, 4, "at most 1"),
    ("krum", 0, 2, "at least 3 sites)"), ("bulyan", 0, 2, "at least 3 sites)"),
])
def test_impossible_configurations_name_the_numbers(name, f, n, needed):
    with pytest.raises(ValueError) as err:
        robust_strategy(name, num_malicious=f, n_sites=n)
    message = str(err.value)
    assert name in message and f"{n} sites" in message and f"{f} malicious" in message
    assert needed in message


def test_boundary_configurations_are_accepted():
    check_robust("krum", 3, 9)
    check_robust("bulyan", 3, 15)
    check_robust("median", 2, 5)
    check_robust("trimmed-mean", 0, 1)


def test_unknown_robust_strategy():
    with pytest.raises(ValueError, match="krum, multikrum, bulyan, median, trimmed-mean"):
        robust_strategy("geomed", num_malicious=1, n_sites=10)


# --- wrappers ------------------------------------------------------------------------------------
class Spy(Strategy):
    """Records what a wrapper passes on."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.results = self.failures = None

    def initialize_parameters(self, client_manager):
        self.calls.append("initialize_parameters")
        return "initial"

    def configure_fit(self, server_round, parameters, client_manager):
        self.calls.append("configure_fit")
        return ["fit-ins"]

    def aggregate_fit(self, server_round, results, failures):
        self.calls.append("aggregate_fit")
        self.results, self.failures = results, failures
        return "aggregated", {"n": len(results)}

    def configure_evaluate(self, server_round, parameters, client_manager):
        self.calls.append("configure_evaluate")
        return ["evaluate-ins"]

    def aggregate_evaluate(self, server_round, results, failures):
        self.calls.append("aggregate_evaluate")
        return 0.5, {}

    def evaluate(self, server_round, parameters):
        self.calls.append("evaluate")
        return 0.25, {}

    def counts(self):
        return {p.cid: res.num_examples for p, res in self.results}

    def updates(self, rnd):
        return {p.cid: rnd.update_of(res.parameters) for p, res in self.results}


@pytest.mark.parametrize("wrap", [NormBounded, CappedCounts, Reputation])
def test_wrappers_delegate_every_method(wrap):
    spy = Spy()
    strategy = wrap(spy)
    rnd = Round()
    assert strategy.initialize_parameters(None) == "initial"
    assert strategy.configure_fit(1, rnd.parameters, None) == ["fit-ins"]
    assert strategy.configure_evaluate(1, rnd.parameters, None) == ["evaluate-ins"]
    assert strategy.aggregate_evaluate(1, [], []) == (0.5, {})
    assert strategy.evaluate(1, rnd.parameters) == (0.25, {})
    rnd.site("a")
    assert strategy.aggregate_fit(1, rnd.results, []) == ("aggregated", {"n": 1})
    assert spy.calls == ["initialize_parameters", "configure_fit", "configure_evaluate",
                         "aggregate_evaluate", "evaluate", "aggregate_fit"]
    res = spy.results[0][1]
    assert res.status.code == Code.OK and res.metrics == {}


@pytest.mark.parametrize("wrap", [NormBounded, Reputation])
def test_wrappers_need_the_global_model(wrap):
    rnd = Round()
    rnd.site("a")
    with pytest.raises(RuntimeError, match="configure_fit"):
        wrap(Spy()).aggregate_fit(1, rnd.results, [])


def _norm_bounded_round(strategy):
    rnd = Round(seed=1)
    for i in range(9):
        rnd.site(str(i))
    rnd.site("bad", factor=100.0, honest=False)
    strategy.configure_fit(1, rnd.parameters, None)
    return rnd


@pytest.mark.parametrize("options, bound", [({"max_norm": 2.0}, 2.0), ({}, None)])
def test_norm_bounded_clips_a_scaled_update_and_leaves_honest_ones(options, bound):
    spy = Spy()
    strategy = NormBounded(spy, **options)
    rnd = _norm_bounded_round(strategy)
    strategy.aggregate_fit(1, rnd.results, [])
    last = strategy.last_round
    if bound is None:  # adaptive: 2 x the median norm of the round
        bound = 2.0 * float(np.median(list(last["norms"].values())))
        assert 1.9 < bound < 2.1
    assert last["round"] == 1 and last["bound"] == pytest.approx(bound)
    assert set(last["clipped"]) == {"bad"}
    assert last["clipped"]["bad"]["norm"] == pytest.approx(100, rel=0.01)
    assert last["clipped"]["bad"]["scale"] == pytest.approx(bound / last["clipped"]["bad"]["norm"])
    updates = spy.updates(rnd)
    assert np.linalg.norm(updates["bad"]) == pytest.approx(bound, rel=1e-4)
    assert _cosine(updates["bad"], _flat(rnd.d)) > 0.99  # same direction, shorter
    sent = {p.cid: res for p, res in rnd.results}
    for cid, res in spy.results:
        if cid.cid != "bad":
            assert res is sent[cid.cid]  # honest results pass untouched
    clipped = parameters_to_ndarrays(spy.results[-1][1].parameters)
    assert [a.dtype for a in clipped] == [np.float32, np.float32]
    assert spy.results[-1][1].num_examples == 100


def test_norm_bounded_fedavg_survives_a_scaled_update():
    rnd = Round(seed=2)
    for i in range(9):
        rnd.site(str(i))
    rnd.site("bad", factor=-100.0)
    plain, _ = FedAvg(**_common(rnd, 10)).aggregate_fit(1, rnd.results, [])
    assert _close_to_honest(rnd, plain)[0] < 0
    strategy = NormBounded(FedAvg(**_common(rnd, 10)), max_norm=1.5)
    strategy.configure_fit(1, rnd.parameters, NO_CLIENTS)
    parameters, _ = strategy.aggregate_fit(1, rnd.results, [])
    assert _close_to_honest(rnd, parameters)[0] > 0.9


def test_norm_bounded_moves_malformed_updates_to_failures():
    spy = Spy()
    strategy = NormBounded(spy, max_norm=1.0)
    rnd = Round()
    strategy.configure_fit(1, rnd.parameters, None)
    rnd.site("ok")
    nan = [np.full(s, np.nan, np.float32) for s in SHAPES]
    wrong = [np.zeros((2, 2), np.float32)]
    for cid, weights in (("nan", nan), ("wrong", wrong)):
        rnd.results.append((SimpleNamespace(cid=cid),
                            FitRes(OK, ndarrays_to_parameters(weights), 10, {})))
    strategy.aggregate_fit(1, rnd.results, [])
    assert [p.cid for p, _ in spy.results] == ["ok"]
    assert [p.cid for p, _ in spy.failures] == ["nan", "wrong"]


def test_norm_bounded_rejects_bad_bounds():
    with pytest.raises(ValueError):
        NormBounded(Spy(), max_norm=0.0)
    with pytest.raises(ValueError):
        NormBounded(Spy(), multiplier=-1)


def test_capped_counts_caps_a_million_claim():
    spy = Spy()
    strategy = CappedCounts(spy)
    rnd = Round()
    for i in range(9):
        rnd.site(str(i), count=100 + i)
    rnd.site("rider", count=1_000_000)
    strategy.aggregate_fit(3, rnd.results, [])
    counts = spy.counts()
    assert counts["rider"] == 209  # 2 x the median claim (104.5)
    assert all(counts[str(i)] == 100 + i for i in range(9))
    assert strategy.last_round == {"round": 3, "cap": 209, "capped": {"rider": 1_000_000}}
    fixed = CappedCounts(spy, max_count=104)
    fixed.aggregate_fit(3, rnd.results, [])
    assert max(spy.counts().values()) == 104 and len(fixed.last_round["capped"]) == 5


def test_capped_counts_keeps_fedavg_with_the_contributors():
    rnd = Round(seed=3)
    for i in range(9):
        rnd.site(str(i))
    rnd.site("rider", factor=0.0, count=1_000_000, honest=False)  # sends what it received
    plain, _ = FedAvg(**_common(rnd, 10)).aggregate_fit(1, rnd.results, [])
    assert np.linalg.norm(rnd.update_of(plain)) < 0.01 * np.linalg.norm(rnd.honest_mean)
    capped, _ = CappedCounts(FedAvg(**_common(rnd, 10))).aggregate_fit(1, rnd.results, [])
    got = rnd.update_of(capped)
    assert _cosine(got, rnd.honest_mean) > 0.99
    assert np.linalg.norm(got) > 0.8 * np.linalg.norm(rnd.honest_mean)


def _reputation_rounds(strategy, rounds, attack=lambda r: True, factor=-1.0, n_bad=1):
    """Rounds in which the model moves on; the last n_bad of 10 sites attack when attack(r).
    Each round's (Round, aggregate_fit result)."""
    rng = np.random.default_rng(10)
    g = [a.astype(np.float32) for a in _arrays(rng)]
    out = []
    for r in range(1, rounds + 1):
        rnd = Round(seed=r, global_weights=g)
        for i in range(10):
            bad = i >= 10 - n_bad and attack(r)
            rnd.site(str(i), factor if bad else 1.0, honest=not bad)
        strategy.configure_fit(r, rnd.parameters, NO_CLIENTS)
        out.append((rnd, strategy.aggregate_fit(r, rnd.results, [])))
        g = [(a + 0.1 * d).astype(np.float32) for a, d in zip(g, rnd.d)]
    return out


def test_reputation_flags_and_down_weights_a_repeated_sign_flipper():
    spy = Spy()
    strategy = Reputation(spy)
    _reputation_rounds(strategy, 3)
    assert strategy.reputation["9"] == pytest.approx(0.125)  # 0.5 per flagged round
    assert all(strategy.reputation[str(i)] == 1.0 for i in range(9))
    assert spy.counts()["9"] == round(100 * 0.125)
    assert all(spy.counts()[str(i)] == 100 for i in range(9))
    history = strategy.history
    assert len(history) == 30 and set(history[0]) == {"round", "site", "cosine", "norm",
                                                      "flagged", "reputation", "dropped"}
    bad = [h for h in history if h["site"] == "9"]
    assert [h["round"] for h in bad] == [1, 2, 3]
    assert all(h["flagged"] and h["cosine"] < -0.9 and not h["dropped"] for h in bad)
    assert [h["reputation"] for h in bad] == pytest.approx([0.5, 0.25, 0.125])
    honest = [h for h in history if h["site"] != "9"]
    assert not any(h["flagged"] for h in honest)
    assert all(h["cosine"] > 0.9 and h["reputation"] == 1.0 for h in honest)
    _reputation_rounds(strategy, 1)  # a fourth attack: under the floor, dropped
    assert "9" not in spy.counts() and len(spy.results) == 9
    dropped = [h for h in strategy.history if h["dropped"]]
    assert [(h["round"], h["site"]) for h in dropped] == [(1, "9")]  # rounds count per call
    assert dropped[0]["reputation"] == pytest.approx(0.0625)


def test_reputation_flags_scaled_updates_by_norm_and_recovers():
    spy = Spy()
    strategy = Reputation(spy)
    _reputation_rounds(strategy, 3, attack=lambda r: r == 1, factor=10.0)
    first = [h for h in strategy.history if h["site"] == "9"]
    assert first[0]["flagged"] and first[0]["cosine"] > 0.9  # right direction, too long
    assert not first[1]["flagged"] and not first[2]["flagged"]
    assert strategy.reputation["9"] == pytest.approx(0.7)  # 0.5, then +0.1 per honest round


def test_reputation_rescues_fedavg_from_repeated_attackers():
    strategy = Reputation(FedAvg(**_common(Round(), 10)))
    rounds = _reputation_rounds(strategy, 4, factor=-10.0, n_bad=3)
    assert all(strategy.reputation[str(i)] < 0.1 for i in (7, 8, 9))
    assert not any(h["flagged"] for h in strategy.history if h["site"] not in {"7", "8", "9"})
    first, (parameters, _) = rounds[0][0], rounds[0][1]
    assert _close_to_honest(first, parameters)[0] < 0  # halved weight is not enough yet
    last, (parameters, _) = rounds[-1][0], rounds[-1][1]
    cosine, error = _close_to_honest(last, parameters)
    assert cosine > 0.9 and error < 0.1  # the attackers are dropped


def test_reputation_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Reputation(Spy(), decay=1.5)
    with pytest.raises(ValueError):
        Reputation(Spy(), norm_ratio=0.5)


# --- SecAgg+ -------------------------------------------------------------------------------------


def test_per_update_defences_are_refused_with_secagg():
    from pydantic import ValidationError

    from fedlstm.config import FederationConfig

    FederationConfig(strategy="fedprox", secagg=True)
    FederationConfig(strategy="krum", defences=["reputation"])
    for strategy, defences in (("krum", []), ("trimmed-mean", []), ("fedavg", ["norm-bound"]),
                               ("fedavg", ["reputation"]), ("fedavg", ["cap-counts"]),
                               ("fedavg", ["robust-calibration"])):
        with pytest.raises(ValidationError, match="cannot run with SecAgg.*client_dp"):
            FederationConfig(strategy=strategy, defences=defences, secagg=True)


def test_robust_calibration_needs_a_detector_that_is_calibrated():
    from pydantic import ValidationError

    from fedlstm.config import RunConfig

    RunConfig.model_validate({"detector": "hybrid",
                              "federation": {"defences": ["robust-calibration"]}})
    with pytest.raises(ValidationError, match="supervised detector has none"):
        RunConfig.model_validate({"detector": "supervised",
                                  "federation": {"defences": ["robust-calibration"]}})
