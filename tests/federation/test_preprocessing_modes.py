"""What sites send for the shared preprocessing, and what their peers receive, in every mode;
and the record-level budget of a site that takes part in only some rounds."""

import json

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.features.stats import DP_BINS, agreed_file_of, dp_histogram_from_bytes
from fedlstm.federation.apps import build_strategy
from fedlstm.federation.client import PREPROCESSING, ClientTask
from fedlstm.federation.inprocess import run_inprocess
from fedlstm.federation.server import ServerTask
from fedlstm.tasks import task_for
from fedlstm.tasks.base import make_preprocessor


def _cfg(**federation) -> RunConfig:
    return RunConfig.model_validate({
        "windows": {"window": 3}, "model": {"hidden_size": 8},
        "train": {"batch_size": 32, "lr": 0.01, "dp_seeded_noise": True},
        "federation": {"clients": 3, "rounds": 1, "evaluate_clients": False, **federation}})


def _sites(cfg, rows=(300, 300, 300), rare_category=True):
    # The third site alone holds the largest byte counts (and the category "icmp-x").
    records = [synthetic_records(n, seed=i) for i, n in enumerate(rows)]
    records[2].frame.loc[0, "bytes"] = 9e8
    if rare_category:
        records[2].frame.loc[1, "proto"] = "icmp-x"
    return [ClientTask(task_for(cfg), r, SYNTHETIC_SPEC, f"s{i}") for i, r in enumerate(records)]


def _agreed_file(tmp_path) -> str:
    """Ranges and categories from public knowledge of the schema (here: other records)."""
    public = synthetic_records(500, seed=99)
    stats = make_preprocessor(SYNTHETIC_SPEC, _cfg()).compute_stats(public.frame)
    path = tmp_path / "agreed.json"
    path.write_text(json.dumps(agreed_file_of(stats)))
    return str(path)


def _broadcast(server: ServerTask) -> dict:
    """What every site receives about the preprocessing: the fit configuration's preprocessor."""
    return build_strategy(server).strategy.on_fit_config_fn(1)  # inside CodecStrategy


def test_federated_mode_sends_every_site_the_others_extremes():
    cfg = _cfg()
    sites = _sites(cfg)
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    received = json.loads(_broadcast(server)["preprocessor"])
    assert received["clip_max_"][0] == 9e8  # site 2's largest value reaches sites 0 and 1
    assert "icmp-x" in received["categories_"]["proto"]


def test_agreed_mode_sends_nothing_and_receives_only_the_agreed_file(tmp_path):
    cfg = _cfg(preprocessing="agreed", preprocessing_file=_agreed_file(tmp_path))
    sites = _sites(cfg)
    server = ServerTask(task_for(cfg), SYNTHETIC_SPEC)
    assert PREPROCESSING not in server.reply_contract().answers  # a site's statistics would stop the run
    with pytest.raises(ValueError, match="sends no statistics"):
        sites[0].answer({"phase": PREPROCESSING})
    asked = []
    server.prepare_preprocessing(lambda question: asked.append(question) or [])
    assert asked == []  # no site was asked anything
    run_inprocess(server, sites)
    received = json.loads(_broadcast(server)["preprocessor"])
    agreed = json.loads((tmp_path / "agreed.json").read_text())
    assert received["data_min_"][1] == agreed["ranges"]["rate"][0]
    assert received["categories_"]["proto"] == agreed["categories"]["proto"]
    assert 9e8 not in received["clip_max_"] and "icmp-x" not in received["categories_"]["proto"]
    assert server.result is not None


def test_agreed_mode_with_secagg_needs_a_bound_of_the_record_counts(tmp_path):
    cfg = _cfg(preprocessing="agreed", preprocessing_file=_agreed_file(tmp_path), secagg=True)
    with pytest.raises(ValueError, match="max_site_records"):
        ServerTask(task_for(cfg), SYNTHETIC_SPEC).use_agreed()
    with pytest.raises(ValueError, match="preprocessing_file"):
        ServerTask(task_for(_cfg(preprocessing="agreed")), SYNTHETIC_SPEC).use_agreed()


def test_dp_mode_sends_a_noisy_histogram_only(tmp_path):
    cfg = _cfg(preprocessing="dp", preprocessing_file=_agreed_file(tmp_path),
               preprocessing_epsilon=1.0)
    sites = _sites(cfg)
    answer = sites[2].answer({"phase": PREPROCESSING})
    assert set(answer) == {"dp_histogram", "client"}
    noisy, sigma = dp_histogram_from_bytes(answer["dp_histogram"])
    exact = sites[2].statistics().histogram.reshape(2, DP_BINS, -1).sum(axis=2)
    assert noisy.shape == (2, DP_BINS) and sigma > 1
    assert not np.array_equal(noisy, exact) and (noisy - exact).std() == pytest.approx(
        sigma, rel=0.25)
    server = ServerTask(task_for(cfg), SYNTHETIC_SPEC)
    assert server.reply_contract().answers[PREPROCESSING]["dp_histogram"](
        answer["dp_histogram"]) is None
    assert server.reply_contract().answers[PREPROCESSING]["dp_histogram"](b"rows") is not None
    run_inprocess(server, sites)
    received = json.loads(_broadcast(server)["preprocessor"])
    assert received["clip_max_"][0] < 9e8  # one site's single extreme record stays hidden
    assert "icmp-x" not in received["categories_"]["proto"]
    assert server.rounds[1]["epsilon"] == pytest.approx(1.0)  # the release is the budget spent


def test_dp_preprocessing_and_dp_sgd_share_one_budget(tmp_path):
    cfg = _cfg(preprocessing="dp", preprocessing_file=_agreed_file(tmp_path),
               preprocessing_epsilon=1.0)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"dp": True, "dp_target_epsilon": 4.0})})
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), _sites(cfg))
    for site in server.rounds[1]["clients_fit"].values():
        assert 3.9 <= site["epsilon"] <= 4.0 + 0.01 and site["delta"] == 1 / (10 * 270)


def test_local_mode_never_sends_a_site_the_merged_statistics():
    cfg = _cfg(preprocessing="local")
    sites = _sites(cfg, rare_category=False)  # own one-hot columns must match the global model
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    assert "preprocessor" not in _broadcast(server)
    assert "preprocessor" not in build_strategy(server).strategy.on_evaluate_config_fn(1)
    own = make_preprocessor(SYNTHETIC_SPEC, cfg).fit(sites[0].train_records.frame)
    np.testing.assert_array_equal(sites[0].windows.train.features.numpy(),
                                  own.transform(sites[0].train_records.frame))


@pytest.mark.parametrize("detector, threshold", [("hybrid", "fixed"), ("anomaly", "fixed"),
                                                  ("supervised", "val-f1")])
def test_local_mode_calibration_questions_carry_no_merged_statistics(detector, threshold):
    """The questions after the last round (μ, Σ, score histograms, the val-f1 histogram) carried
    the merged preprocessor to every site under `local` too."""
    cfg = _cfg(preprocessing="local").model_copy(update={"detector": detector})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threshold": threshold})})
    sites = _sites(cfg, rare_category=False)
    asked = []
    for site in sites:
        site.answer = lambda config, answer=site.answer: (asked.append(config), answer(config))[1]
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    questions = [q for q in asked if q.get("phase") != PREPROCESSING]
    assert questions and server.result is not None
    assert not [q["phase"] for q in questions if "preprocessor" in q]
    assert {site._windows_key for site in sites} == {"local"}  # each answered from its own


def test_a_site_sampled_in_some_rounds_never_reports_more_than_the_target():
    """fraction_fit < 1: the budget is planned for every round, and a site that skipped rounds
    counts them as spent (an upper bound), so no report exceeds the target."""
    cfg = _cfg(rounds=5, fraction_fit=0.5, min_fit_clients=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"dp": True, "dp_target_epsilon": 2.0})})
    site = _sites(cfg)[0]
    server = ServerTask(task_for(cfg), SYNTHETIC_SPEC)
    server.merge_statistics([site.statistics()])
    site.use_preprocessing(server.preprocessor.to_dict())
    weights = server.initial_weights()
    reported = {}
    for rnd in (2, 5):  # sampled in rounds 2 and 5 only
        weights, _, metrics = site.fit(weights, 1, seed=rnd, server_round=rnd)
        reported[rnd] = metrics["epsilon"]
    assert reported[2] < reported[5] <= 2.0 + 0.01
    assert reported[5] == pytest.approx(2.0, abs=0.05)  # as if it had trained in all 5 rounds

