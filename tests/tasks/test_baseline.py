"""Gradient boosting beside a detector, on the split the detector was trained on
(`centralised.baseline_on_split`): what it is trained on, when it does not apply, and that
its failure never costs the detector's run."""

import logging

import numpy as np

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, carve_validation
from fedlstm.tasks import centralised
from fedlstm.tasks.centralised import baseline_on_split


def _split(records=None):
    records = records if records is not None else synthetic_records(600, seed=0)
    train, val = carve_validation(records, 0.2, 0)
    return Split(SYNTHETIC_SPEC, "random-split", train, val,
                 {"test": synthetic_records(200, seed=1)})


def _cfg(**model):
    return RunConfig.model_validate({"windows": {"window": 2},
                                     "model": {"hidden_size": 8, **model}})


def test_it_is_scored_on_the_splits_own_sets_with_the_detectors_task():
    split = _split()
    base = baseline_on_split(_cfg(), split)
    assert (base["method"], base["task"], base["on"]) == ("hgb", "binary", "the same split")
    assert {k: v["binary"]["n"] for k, v in base["evaluations"].items()} == \
        {"val": len(split.val), "test": len(split.tests["test"])}


def test_none_for_a_baseline_itself_and_for_training_data_of_one_class(caplog):
    assert baseline_on_split(_cfg(name="hgb"), _split()) is None
    records = synthetic_records(600, seed=0)
    normal = records.take(np.flatnonzero(records.is_attack == 0))
    assert len(normal) and not normal.is_attack.any()
    with caplog.at_level(logging.WARNING, logger=centralised.log.name):
        assert baseline_on_split(_cfg(), _split(normal)) is None
    assert "failed" not in caplog.text  # not tried, rather than tried and failed


def test_a_failed_baseline_is_logged_and_the_run_goes_on(monkeypatch, caplog):
    def broken(*_, **__):
        raise ValueError("out of bins")
    monkeypatch.setattr(centralised.ClassicalTask, "fit", broken)
    with caplog.at_level(logging.WARNING, logger=centralised.log.name):
        assert baseline_on_split(_cfg(), _split()) is None
    assert "gradient boosting on the same split failed" in caplog.text and "out of bins" in caplog.text
