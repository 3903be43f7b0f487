"""The detector end to end on synthetic records: centralised, federated (in-process), bundles."""

import json
import zipfile

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.config import RunConfig
from fedlstm.data.splits import Split, carve_validation
from fedlstm.detection import ModelBundle
from fedlstm.detection.anomaly import ErrorStats, MahalanobisDetector, ScoreHistogram
from fedlstm.federation.client import ClientTask
from fedlstm.federation.inprocess import run_inprocess
from fedlstm.federation.server import ServerTask
from fedlstm.models import set_weights
from fedlstm.tasks import task_for
from fedlstm.tasks.anomaly import CLASSES, AnomalyTask, anomaly_config, arrays_to_bytes
from fedlstm.tasks.centralised import train

CFG = anomaly_config(None, ["windows.window=2", "model.hidden_size=8", "train.batch_size=32",
                                 "train.lr=0.01", "train.epochs=2", "federation.rounds=2",
                                 "federation.clients=3", "anomaly.score_bins=500"])


def _split(n=600, seed=0):
    recs = synthetic_records(n, seed)
    rest, test = carve_validation(recs, 0.3, seed)
    train, val = carve_validation(rest, 0.2, seed)
    return Split(SYNTHETIC_SPEC, "random-split", train, val, {"test": test})


def test_config_carries_the_anomaly_section():
    assert isinstance(CFG, RunConfig) and CFG.detector == "anomaly" and CFG.model.name == "lstm-ae"
    assert CFG.model.task == "binary" and CFG.anomaly.beta == 0.5
    with pytest.raises(ValueError):
        anomaly_config(None, ["anomaly.bogus=1"])


@pytest.mark.parametrize("model", ["lstm-ae", "lstm-forecast"])
def test_centralised_detector_separates_attacks_and_round_trips(model, tmp_path):
    cfg = CFG.model_copy(update={"anomaly": CFG.anomaly.model_copy(update={"model": model}),
                                 "model": CFG.model.model_copy(update={"name": model})})
    result = train(task_for(cfg), _split())
    det, ev = result.bundle, result.evaluations["test"]
    assert ev["binary"]["roc_auc"] > 0.8 and np.isfinite(det.threshold_)
    assert {"recall", "fpr", "threshold"} <= set(ev["at_fpr"]) and "unseen" in ev
    # the same bundle format, loaded by the plain loader, gives the same scores
    path = det.save(tmp_path / "model.fedlstm")
    back = ModelBundle.load(path)
    assert isinstance(back, MahalanobisDetector) and back.threshold_ == det.threshold_
    data = det.windows(result.split.tests["test"])
    np.testing.assert_allclose(back.decision_function(data), det.decision_function(data))
    np.testing.assert_array_equal(back.predict(data), det.predict(data))
    top = back.top_features(data.subset(np.arange(3)), k=2)
    assert len(top) == 3 and all(name in det.preprocessor.feature_names_out_ for name, _ in top[0])
    assert top[0][0][1] >= top[0][1][1]
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["detector"] == "mahalanobis" and manifest["format_version"] == 1


def test_threshold_never_depends_on_test_data():
    split = _split()
    a = train(task_for(CFG), split)
    other = Split(split.spec, split.protocol, split.train, split.val,
                  {"test": synthetic_records(300, seed=9)})
    b = train(task_for(CFG), other)
    assert a.bundle.threshold_ == b.bundle.threshold_
    np.testing.assert_array_equal(a.bundle.mean_, b.bundle.mean_)


def _sites():
    return [ClientTask(task_for(CFG), synthetic_records(400, seed=i), SYNTHETIC_SPEC, f"c{i}")
            for i in range(3)]


def test_federated_mu_sigma_threshold_equal_centralised_on_the_same_data():
    sites = _sites()
    server = run_inprocess(ServerTask(task_for(CFG), SYNTHETIC_SPEC), sites)
    fed = server.result
    # centralised: the same global model and preprocessing, every site's windows pooled
    task = AnomalyTask(CFG)
    model = task.new_model(server.preprocessor.n_features_out, len(CLASSES))
    set_weights(model, server.weights)
    central = task.detector(SYNTHETIC_SPEC, server.preprocessor, model, CLASSES, {})
    errors = np.vstack([central.error_vectors(s.windows.val) for s in sites])
    central.fit_error_stats(ErrorStats.of(errors))
    np.testing.assert_allclose(fed.mean_, central.mean_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fed.covariance_, central.covariance_, rtol=1e-7, atol=1e-12)
    assert fed.shrinkage_ == pytest.approx(central.shrinkage_, rel=1e-6)
    scores = np.concatenate([central.decision_function(s.windows.calibration) for s in sites])
    labels = np.concatenate([s.windows.calibration_is_attack for s in sites])
    central.fit_threshold(ScoreHistogram.of(scores, labels, central.bin_edges(CFG.anomaly.score_bins)))
    assert fed.threshold_ == central.threshold_
    assert labels.any() and fed.calibration_["threshold_windows"]["anomalous"] == labels.sum()


def test_server_receives_only_aggregates():
    sites = _sites()
    server = run_inprocess(ServerTask(task_for(CFG), SYNTHETIC_SPEC), sites)
    phases = {r["phase"] for r in server.answers_received}
    assert phases == {"error-stats", "score-histogram"}
    d = server.preprocessor.n_features_out
    for r in server.answers_received:
        assert r["keys"] in (["client", "error_stats"], ["client", "histogram"])
    # answer sizes depend on the feature count and bin count, never on the number of records
    base = {"preprocessor": json.dumps(server.preprocessor.to_dict()),
            "weights": arrays_to_bytes(server.weights)}
    query = {**base, "phase": "error-stats"}
    small = ClientTask(task_for(CFG), synthetic_records(120, seed=5), SYNTHETIC_SPEC, "small")
    big = ClientTask(task_for(CFG), synthetic_records(1200, seed=5), SYNTHETIC_SPEC, "big")
    a_small, a_big = small.answer(query), big.answer(query)
    assert len(a_small["error_stats"]) == len(a_big["error_stats"])
    stats = ErrorStats.from_bytes(a_big["error_stats"])
    assert stats.total.shape == (d,) and stats.outer.shape == (d, d) and stats.count > ErrorStats.from_bytes(a_small["error_stats"]).count
    hq = {**base, "phase": "score-histogram", "n_features": d, "bins": 500,
          "bin_low": d * 1e-3, "bin_high": d * 1e9,
          "mean_cov": arrays_to_bytes([server.result.mean_, server.result.covariance_])}
    h_small, h_big = small.answer(hq), big.answer(hq)
    assert len(h_small["histogram"]) == len(h_big["histogram"])
    assert all(isinstance(v, (bytes, str)) for v in {**h_big, **a_big}.values())


def test_federated_rounds_reduce_reconstruction_loss():
    server = run_inprocess(ServerTask(task_for(CFG.model_copy(update={
        "federation": CFG.federation.model_copy(update={"rounds": 3})})), SYNTHETIC_SPEC), _sites())
    losses = [server.rounds[r]["val_loss"] for r in sorted(server.rounds) if "val_loss" in server.rounds[r]]
    assert losses[-1] < losses[0]


def test_site_windows_use_normal_training_records_only():
    split = _split()
    from fedlstm.tasks.base import make_preprocessor

    pre = make_preprocessor(SYNTHETIC_SPEC, CFG).fit(split.train.frame)
    w = AnomalyTask(CFG).site_windows(split.train, split.val, pre, CLASSES)
    assert not w.train.window_labels.any() and not w.val.window_labels.any()
    assert w.calibration_is_attack.any() and (~w.calibration_is_attack).any()
