"""DP-SGD counts ε per flow record: a record inside k training windows is a group of k."""

import math

import numpy as np
import pytest

from conftest import synthetic_records
from fedlstm.config import RunConfig, TrainConfig
from fedlstm.features import FlowPreprocessor
from fedlstm.features.windows import make_windows
from fedlstm.models.lstm import LSTMClassifier
from fedlstm.tasks import task_for
from fedlstm.tasks.base import training_stride
from fedlstm.training import privacy
from fedlstm.training.loop import fit


def _data(n=600, window=4, stride=1):
    recs = synthetic_records(n)
    pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(recs.frame)
    return make_windows(pre.transform(recs.frame), recs.is_attack, window, stride), pre


@pytest.mark.parametrize("window,stride,expected", [(4, 1, 4), (4, 2, 2), (4, 4, 1), (4, 6, 1),
                                                    (1, 1, 1), (5, 2, 3)])
def test_windows_per_record(window, stride, expected):
    data = make_windows(np.zeros((40, 2)), np.zeros(40), window, stride)
    assert data.max_windows_per_record() == expected
    assert make_windows(np.zeros((0, 2)), np.zeros(0), 3).max_windows_per_record() == 0
    # Two records, W = 3: both windows hold record 0 (the second as padding).
    assert make_windows(np.zeros((2, 2)), np.zeros(2), 3).max_windows_per_record() == 2


def test_group_privacy_follows_mironov_proposition_11():
    orders, rdp = privacy.sgd_rdp(0.05, 1.0, 100)
    group_orders, group_rdp = privacy.sgd_rdp(0.05, 1.0, 100, windows_per_flow=3)  # 2^2 >= 3
    from opacus.accountants.analysis.rdp import compute_rdp

    base = compute_rdp(q=0.05, noise_multiplier=1.0, steps=100, orders=[16.0])[0]
    i = list(group_orders).index(4.0)  # order 16 / 4
    assert group_rdp[i] == pytest.approx(9 * base)  # 3^c with c = 2
    assert min(group_orders) >= 2 and len(orders) == len(rdp)
    eps1 = privacy.epsilon(0.05, 1.0, 100, 1e-5)
    assert privacy.epsilon(0.05, 1.0, 100, 1e-5, windows_per_flow=8) > 5 * eps1
    assert privacy.epsilon(0.05, 1.0, 100, 1e-5, windows_per_flow=1) == eps1


def test_calibration_meets_the_per_flow_target():
    for k in (1, 4):
        z = privacy.noise_for_epsilon(2.0, 1e-5, 0.1, 50, windows_per_flow=k)
        assert 1.97 <= privacy.epsilon(0.1, z, 50, 1e-5, k) <= 2.0
    assert privacy.noise_for_epsilon(2.0, 1e-5, 0.1, 50, 4) > privacy.noise_for_epsilon(
        2.0, 1e-5, 0.1, 50, 1)
    z = privacy.gaussian_noise_for_epsilon(0.5, 1e-5)
    assert privacy.epsilon(0.1, 1.0, 0, 1e-5, released=(z,)) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="preprocessing release alone"):
        privacy.noise_for_epsilon(0.4, 1e-5, 0.1, 50, released=(z,))


def test_released_statistics_count_in_the_budget():
    z = privacy.gaussian_noise_for_epsilon(0.5, 1e-5)
    alone = privacy.epsilon(0.1, 2.0, 50, 1e-5)
    both = privacy.epsilon(0.1, 2.0, 50, 1e-5, released=(z,))
    assert alone < both < alone + 0.5 + 1e-9  # RDP composition beats adding the two ε
    assert privacy.epsilon(0.1, 0.0, 10, 1e-5) == math.inf
    assert privacy.epsilon(0.1, 1.0, 0, 1e-5) == 0.0


def test_default_delta_is_a_tenth_of_one_over_the_records():
    assert privacy.default_delta(2000) == 1 / 20_000
    data, pre = _data(600, window=4)
    model = LSTMClassifier(pre.n_features_out, 2, hidden_size=4)
    history = fit(model, data, None, TrainConfig(epochs=1, batch_size=64, dp=True,
                                                 dp_target_epsilon=3.0), n_classes=2)
    p = history.privacy
    assert p["delta"] == 1 / (10 * 600) and p["n_records"] == 600 and p["unit"] == "flow"
    assert p["windows_per_flow"] == 4 and p["epsilon"] <= 3.0 + 0.01
    assert p["window_epsilon"] < p["epsilon"]  # per window, the same run looks far safer
    assert history.epochs[-1]["epsilon"] == p["epsilon"]


def test_disjoint_windows_make_the_window_guarantee_the_flow_guarantee():
    cfg = RunConfig.model_validate({"windows": {"window": 4},
                                    "train": {"dp": True, "dp_windows": "disjoint"}})
    assert training_stride(cfg) == 4
    assert training_stride(cfg.model_copy(update={"train": TrainConfig()})) == 1
    overlapping = cfg.model_copy(update={"train": TrainConfig(dp=True, dp_windows="overlapping")})
    assert training_stride(overlapping) == 1
    data, pre = _data(600, window=4, stride=training_stride(cfg))
    history = fit(LSTMClassifier(pre.n_features_out, 2, hidden_size=4), data, None,
                  TrainConfig(epochs=2, batch_size=32, dp=True, dp_target_epsilon=2.0),
                  n_classes=2)
    assert history.privacy["windows_per_flow"] == 1
    assert history.privacy["epsilon"] == history.privacy["window_epsilon"] <= 2.0 + 0.01


def test_the_site_windows_of_a_dp_task_follow_the_choice():
    from conftest import SYNTHETIC_SPEC

    recs = synthetic_records(200)
    for choice, expected in (("disjoint", 4), ("overlapping", 1)):
        cfg = RunConfig.model_validate({"windows": {"window": 4},
                                        "train": {"dp": True, "dp_windows": choice}})
        task = task_for(cfg)
        pre = task.fit_preprocessor(SYNTHETIC_SPEC, recs)
        site = task.site_windows(recs, recs, pre, task.class_names(SYNTHETIC_SPEC))
        assert site.train.max_windows_per_record() == 4 // expected
        assert len(site.val) == 200  # evaluation windows still end at every record


def test_noise_and_sampling_do_not_come_from_the_run_seed_unless_asked():
    data, pre = _data(300, window=2)

    def weights(seeded: bool):
        model = LSTMClassifier(pre.n_features_out, 2, hidden_size=4)
        model.load_state_dict(start)
        fit(model, data, None, TrainConfig(epochs=1, batch_size=32, dp=True,
                                           dp_seeded_noise=seeded), n_classes=2, seed=3)
        return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])

    start = LSTMClassifier(pre.n_features_out, 2, hidden_size=4).state_dict()
    assert np.array_equal(weights(True), weights(True))  # reproducible on request
    assert not np.array_equal(weights(False), weights(False))  # the server cannot replay it
