"""Training data a detector cannot learn from is said before training: no normal records for a
model of normal traffic is an error that says why (it was "error statistics of 0 windows"), no
attacks for a classifier a warning (it was said only by the test summary afterwards). And a
federation whose sites cannot all be built, or whose sites' own preprocessing disagrees, says
so (a site failed every round in a Ray traceback, and the run exited 0)."""

import logging

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, carve_validation
from fedlstm.federation.client import ClientTask
from fedlstm.federation.sites import federated_data
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

CFG = {"windows": {"window": 2}, "model": {"hidden_size": 8},
       "train": {"epochs": 1, "batch_size": 32, "lr": 0.01}}


def _split(keep) -> Split:
    recs = synthetic_records(600, 0)
    rest, test = carve_validation(recs, 0.3, 0)
    train_part, val = carve_validation(rest, 0.2, 0)
    pick = lambda r: r.take(np.flatnonzero(keep(r.is_attack)))  # noqa: E731
    return Split(SYNTHETIC_SPEC, "random-split", pick(train_part), pick(val), {"test": test})


@pytest.mark.parametrize("detector", ["hybrid", "anomaly"])
def test_no_normal_training_records_is_an_error_that_says_why(detector):
    cfg = RunConfig.model_validate({**CFG, "detector": detector})
    with pytest.raises(ValueError, match=r"no normal records .* reads the label values "
                                         r"\['normal'\] as normal"):
        train(task_for(cfg), _split(lambda a: a == 1))


def test_no_attack_in_training_is_said_before_training(caplog):
    cfg = RunConfig.model_validate({**CFG, "detector": "supervised"})
    with caplog.at_level(logging.WARNING):
        train(task_for(cfg), _split(lambda a: a == 0))
    assert "holds no attack records" in caplog.text and "can never flag an attack" in caplog.text


def test_more_clients_than_blocks_is_refused_up_front(datasets_dir):
    cfg = RunConfig.model_validate({"data": {"data_dir": str(datasets_dir),
                                             "max_train_rows": 3000},
                                    "federation": {"clients": 13}})
    with pytest.raises(ValueError, match=r"client-12 gets no training records: 3,000 training "
                                         r"records in blocks of 256 make 12 blocks"):
        federated_data(cfg)


def test_a_site_whose_own_preprocessing_disagrees_says_why():
    """Under `local`, a site that saw other categories has another input width: the weights
    did not fit ("size mismatch") and the answer blamed a timeout."""
    cfg = RunConfig.model_validate({**CFG, "detector": "supervised",
                                    "federation": {"preprocessing": "local"}})
    task = task_for(cfg)
    full = synthetic_records(300, 0)
    narrow = full.take(np.flatnonzero(full.frame["proto"].to_numpy() != "icmp"))
    wide_site = ClientTask(task, full, SYNTHETIC_SPEC, "wide")
    narrow_site = ClientTask(task, narrow, SYNTHETIC_SPEC, "narrow")
    for site in (wide_site, narrow_site):
        site.use_preprocessing(None)
    weights = [w.detach().numpy() for w in wide_site.model(
        [p.detach().numpy() for p in task.new_model(
            wide_site.windows.train.n_features, 2).state_dict().values()]).state_dict().values()]
    with pytest.raises(ValueError, match="narrow: its own preprocessing .* same categorical"):
        narrow_site.model(weights)
