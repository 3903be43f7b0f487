"""The novelty-aware (hybrid) detector on synthetic records: its decision rule, an operating point
set on validation data only, federated calibration equal to pooled, the bundle and its alerts."""

import numpy as np
import pandas as pd
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, carve_validation
from fedlstm.detection import HybridDetector, ModelBundle
from fedlstm.detection.anomaly import ErrorStats, ScoreHistogram
from fedlstm.detection.stream import StreamScorer, alert_records
from fedlstm.federation.client import ClientTask
from fedlstm.federation.inprocess import run_inprocess
from fedlstm.federation.server import ServerTask
from fedlstm.models import set_weights
from fedlstm.tasks import task_for
from fedlstm.tasks.base import windows_of
from fedlstm.tasks.centralised import train
from fedlstm.tasks.hybrid import HybridTask

CFG = RunConfig.model_validate({
    "detector": "hybrid", "windows": {"window": 2}, "model": {"hidden_size": 8},
    "train": {"batch_size": 32, "lr": 0.01, "epochs": 3},
    "federation": {"clients": 3, "rounds": 2}, "anomaly": {"score_bins": 500, "alert_budget": 0.05}})


def _split(n=600, seed=0, test=None):
    recs = synthetic_records(n, seed)
    rest, held = carve_validation(recs, 0.3, seed)
    fit, val = carve_validation(rest, 0.2, seed)
    return Split(SYNTHETIC_SPEC, "random-split", fit, val, {"test": test or held})


def test_an_alert_is_a_known_attack_or_an_anomaly():
    result = train(task_for(CFG), _split())
    det = result.bundle
    assert isinstance(det, HybridDetector) and det.threshold_ == 1.0
    data = windows_of(result.split.tests["test"], det.preprocessor, CFG, det.class_names)
    p, d2 = det.attack_probability(data), det.anomaly_score(data)
    expected = (p >= det.supervised_threshold_) | (d2 >= det.anomaly_threshold_)
    np.testing.assert_array_equal(det.predict(data), expected.astype(int))
    fired = det.fired(data)
    assert set(fired[expected]) <= {"known attack", "anomalous", "known attack and anomalous"}
    assert (fired[~expected] == "").all()
    ev = result.evaluations["test"]
    assert {"supervised", "anomaly"} <= set(ev["parts"]) and ev["binary"]["roc_auc"] > 0.8


def test_the_operating_point_comes_from_validation_only():
    """ζ flags at most the alert budget of normal validation windows, and no test record can
    move t_s or ζ."""
    split = _split()
    a = train(task_for(CFG), split)
    other = Split(split.spec, split.protocol, split.train, split.val,
                  {"test": synthetic_records(300, seed=9)})
    b = train(task_for(CFG), other)
    assert a.bundle.anomaly_threshold_ == b.bundle.anomaly_threshold_
    assert a.bundle.supervised_threshold_ == b.bundle.supervised_threshold_
    windows = HybridTask(CFG).site_windows(split.train, split.val, a.bundle.preprocessor,
                                           a.bundle.class_names)
    normal = windows.calibration.subset(np.flatnonzero(~windows.calibration_is_attack))
    flagged = (a.bundle.anomaly_score(normal) >= a.bundle.anomaly_threshold_).mean()
    assert flagged <= CFG.anomaly.alert_budget + 1e-9


def test_federated_calibration_equals_pooled_statistics():
    sites = [ClientTask(task_for(CFG), synthetic_records(400, seed=i), SYNTHETIC_SPEC, f"c{i}")
             for i in range(3)]
    server = run_inprocess(ServerTask(task_for(CFG), SYNTHETIC_SPEC), sites)
    fed = server.result
    task = HybridTask(CFG)
    model = task.new_model(server.preprocessor.n_features_out, len(server.classes))
    set_weights(model, server.weights)
    pooled = task.detector(SYNTHETIC_SPEC, server.preprocessor, model, server.classes, {})
    pooled.fit_error_stats(ErrorStats.of(np.vstack([pooled.error_vectors(s.windows.normal)
                                                    for s in sites])))
    np.testing.assert_allclose(fed.mean_, pooled.mean_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fed.covariance_, pooled.covariance_, rtol=1e-7, atol=1e-12)
    scores = np.concatenate([pooled.anomaly_score(s.windows.calibration) for s in sites])
    labels = np.concatenate([s.windows.calibration_is_attack for s in sites])
    pooled.fit_threshold(ScoreHistogram.of(scores, labels, pooled.bin_edges(CFG.anomaly.score_bins)))
    assert fed.anomaly_threshold_ == pooled.anomaly_threshold_
    assert {r["phase"] for r in server.answers_received} == {"error-stats", "score-histogram"}


def test_bundle_round_trip_and_alerts_that_say_which_part_fired(tmp_path):
    result = train(task_for(CFG), _split())
    det = result.bundle
    back = ModelBundle.load(det.save(tmp_path / "hybrid.fedlstm"))
    assert isinstance(back, HybridDetector)
    assert (back.supervised_threshold_, back.anomaly_threshold_) == \
        (det.supervised_threshold_, det.anomaly_threshold_)
    test = result.split.tests["test"]
    data = windows_of(test, det.preprocessor, CFG, det.class_names)
    np.testing.assert_allclose(back.decision_function(data), det.decision_function(data),
                               rtol=1e-6)
    # an unmistakable novelty: values far outside anything seen, with a category never seen
    odd = pd.DataFrame({"bytes": [1e9] * 3, "rate": [50.0] * 3, "flag": ["zz"] * 3,
                        "proto": ["sctp"] * 3})
    frame = pd.concat([test.frame.head(20), odd], ignore_index=True)
    scores = StreamScorer(back, explain_top=2).score(frame)
    assert scores.alert[-1] and scores.fired[len(frame) - 1] in ("anomalous",
                                                                  "known attack and anomalous")
    items = alert_records(back, frame, scores, np.flatnonzero(scores.alert))
    assert all(item["score_type"] == "hybrid" and item["fired"] and item["reason"]
               for item in items)
    assert any(item["reason"].startswith(("anomalous", "known attack")) for item in items)


def test_the_budget_curve_trades_false_alarms_for_recall():
    split = _split()
    result = train(task_for(CFG), split)
    curve = HybridTask(CFG).budget_curve(result.bundle, split, budgets=(0.01, 0.05, 0.2))
    fpr = [row["test"]["fpr"] for row in curve]
    recall = [row["test"]["recall"] for row in curve]
    assert fpr == sorted(fpr) and recall == sorted(recall)
    default = next(row for row in curve if row["default"])
    assert default["test"]["accuracy"] == pytest.approx(
        result.evaluations["test"]["binary"]["accuracy"])
