"""Operating points come from validation data by one rule whatever trains the model: score
bins as configured, federated val-f1 from merged validation statistics, one meaning of unseen."""

import json

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, carve_validation
from fedlstm.detection.anomaly import ScoreHistogram
from fedlstm.federation.client import ClientTask
from fedlstm.federation.inprocess import run_inprocess
from fedlstm.federation.server import ServerTask
from fedlstm.runs.rundir import unseen_attack_recall, write_run
from fedlstm.tasks import task_for
from fedlstm.tasks.anomaly import anomaly_config
from fedlstm.tasks.centralised import train
from fedlstm.tasks.supervised import SCORE_HISTOGRAM, score_edges
from fedlstm.training.objectives import predict_proba


def _split(n=600, seed=0):
    recs = synthetic_records(n, seed)
    rest, test = carve_validation(recs, 0.3, seed)
    train_part, val = carve_validation(rest, 0.2, seed)
    return Split(SYNTHETIC_SPEC, "random-split", train_part, val, {"test": test})


def test_centralised_anomaly_calibration_uses_the_configured_score_bins():
    thresholds = {}
    for bins in (3, 2000):
        cfg = anomaly_config(None, ["windows.window=2", "model.hidden_size=8", "train.epochs=1",
                                    f"anomaly.score_bins={bins}"])
        detector = train(task_for(cfg), _split()).bundle
        thresholds[bins] = detector.threshold_
        assert detector.threshold_ in detector.bin_edges(bins)
    assert thresholds[3] != thresholds[2000]


def _val_f1_cfg(**train):
    return RunConfig.model_validate({
        "windows": {"window": 2}, "model": {"hidden_size": 8},
        "train": {"batch_size": 32, "lr": 0.01, "threshold": "val-f1", **train},
        "federation": {"clients": 3, "rounds": 2, "evaluate_clients": False}})


def _pooled(server, sites):
    """The attack scores and labels of every site's validation windows under the final model,
    and the threshold of best F1 on their histogram, pooled by hand."""
    model = server.model()
    scores = np.concatenate([1 - predict_proba(model, s.windows.val)[:, 0] for s in sites])
    labels = np.concatenate([s.windows.val.window_labels.numpy() != 0 for s in sites])
    return scores, labels, ScoreHistogram.of(scores, labels, score_edges()).threshold_f_beta(1.0)


def test_federated_val_f1_threshold_comes_from_merged_validation_histograms():
    cfg = _val_f1_cfg()
    sites = [ClientTask(task_for(cfg), synthetic_records(300, seed=i), SYNTHETIC_SPEC, f"s{i}")
             for i in range(3)]
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    threshold = server.result.threshold_
    scores, labels, pooled = _pooled(server, sites)
    assert threshold == pooled and threshold != cfg.train.fixed_threshold
    asked = [a for a in server.answers_received if a["phase"] == SCORE_HISTOGRAM]
    assert len(asked) == 3 and all(a["keys"] == ["client", "histogram"] for a in asked)
    check = server.reply_contract().answers[SCORE_HISTOGRAM]["histogram"]
    assert check(ScoreHistogram.of(scores, labels, score_edges()).to_bytes()) is None
    assert check(json.dumps(scores.tolist()).encode()) is not None  # per-window scores refused


def test_federated_hybrid_takes_its_classifier_threshold_from_merged_validation_histograms():
    """train.threshold=val-f1 was silently ignored by a federated hybrid (the default detector):
    its classifier kept the fixed 0.5, where centralised training chooses best F1."""
    from fedlstm.tasks.hybrid import KNOWN_SCORE_HISTOGRAM

    def federate(threshold):
        cfg = _val_f1_cfg(threshold=threshold).model_copy(update={"detector": "hybrid"})
        sites = [ClientTask(task_for(cfg), synthetic_records(300, seed=i), SYNTHETIC_SPEC,
                            f"s{i}") for i in range(3)]
        return cfg, sites, run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)

    cfg, sites, server = federate("val-f1")
    threshold = server.result.supervised_threshold_
    assert threshold == _pooled(server, sites)[2] and threshold != cfg.train.fixed_threshold
    phases = [a["phase"] for a in server.answers_received]
    assert phases.count(KNOWN_SCORE_HISTOGRAM) == 3 and "error-stats" in phases
    _, _, fixed = federate("fixed")
    assert fixed.result.supervised_threshold_ == cfg.train.fixed_threshold
    assert KNOWN_SCORE_HISTOGRAM not in {a["phase"] for a in fixed.answers_received}


def test_fixed_threshold_asks_nothing():
    cfg = _val_f1_cfg(threshold="fixed")
    sites = [ClientTask(task_for(cfg), synthetic_records(200, seed=i), SYNTHETIC_SPEC, f"s{i}")
             for i in range(2)]
    server = run_inprocess(ServerTask(task_for(cfg), SYNTHETIC_SPEC), sites)
    assert server.result.threshold_ == 0.5 and not server.answers_received


def test_unseen_attacks_mean_the_same_in_the_run_and_in_the_anomaly_evaluation(tmp_path):
    """An attack type present only in the validation records is seen (it calibrated the
    detector): neither the run's metrics nor the anomaly evaluation count it as unseen."""
    split = _split(900)
    split.val.attack = split.val.attack.copy()
    first_attack = int(np.flatnonzero(split.val.is_attack == 1)[0])
    split.val.attack[first_attack] = "val_only_x"
    test = split.tests["test"]
    test.attack = test.attack.copy()
    test.attack[np.flatnonzero(test.is_attack == 1)[:30]] = "val_only_x"
    test.attack[np.flatnonzero(test.is_attack == 1)[30:60]] = "never_x"
    cfg = anomaly_config(None, ["windows.window=2", "model.hidden_size=8", "train.epochs=1"])
    result = train(task_for(cfg), split)
    run = write_run(result, cfg, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    in_run = metrics["unseen_attacks"]["test"]
    in_anomaly = result.evaluations["test"]["unseen"]
    assert in_run["attacks"] == in_anomaly["attacks"] == ["never_x"]
    assert in_run["n"] == in_anomaly["n"]
    assert in_run["recall"] == pytest.approx(in_anomaly["recall_at_threshold"])
    assert unseen_attack_recall(np.array(["normal"]), SYNTHETIC_SPEC, {}) == {}
