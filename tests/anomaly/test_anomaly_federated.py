"""The detector end to end on synthetic records: centralised, federated (in-process), bundles."""

import json
import zipfile

import numpy as np
import pytest

from conftest import SYNTHETIC_SPEC, synthetic_records
from fedlstm.anomaly_pipeline import (AnomalyRunConfig, load_anomaly_config, new_anomaly_model,
                                      new_detector, site_windows, train_anomaly)
from fedlstm.data.splits import Split, carve_validation
from fedlstm.detection import ModelBundle
from fedlstm.detection.anomaly import ErrorStats, MahalanobisDetector, ScoreHistogram
from fedlstm.federation.anomaly import (AnomalyClientTask, AnomalyServerTask, answer,
                                        arrays_to_bytes, run_inprocess)
from fedlstm.models import set_weights

CFG = load_anomaly_config(None, ["windows.window=2", "model.hidden_size=8", "train.batch_size=32",
                                 "train.lr=0.01", "train.epochs=2", "federation.rounds=2",
                                 "federation.clients=3", "anomaly.score_bins=500"])


def _split(n=600, seed=0):
    recs = synthetic_records(n, seed)
    rest, test = carve_validation(recs, 0.3, seed)
    train, val = carve_validation(rest, 0.2, seed)
    return Split(SYNTHETIC_SPEC, "random-split", train, val, {"test": test})


def test_config_carries_the_anomaly_section():
    assert isinstance(CFG, AnomalyRunConfig) and CFG.model.name == "lstm-ae"
    assert CFG.model.task == "binary" and CFG.anomaly.beta == 0.5
    with pytest.raises(ValueError):
        load_anomaly_config(None, ["anomaly.bogus=1"])


@pytest.mark.parametrize("model", ["lstm-ae", "lstm-forecast"])
def test_centralised_detector_separates_attacks_and_round_trips(model, tmp_path):
    cfg = CFG.model_copy(update={"anomaly": CFG.anomaly.model_copy(update={"model": model}),
                                 "model": CFG.model.model_copy(update={"name": model})})
    result = train_anomaly(cfg, _split())
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
    a = train_anomaly(CFG, split)
    other = Split(split.spec, split.protocol, split.train, split.val,
                  {"test": synthetic_records(300, seed=9)})
    b = train_anomaly(CFG, other)
    assert a.bundle.threshold_ == b.bundle.threshold_
    np.testing.assert_array_equal(a.bundle.mean_, b.bundle.mean_)


def _sites():
    return [AnomalyClientTask(synthetic_records(400, seed=i), CFG, SYNTHETIC_SPEC, f"c{i}")
            for i in range(3)]


def test_federated_mu_sigma_threshold_equal_centralised_on_the_same_data():
    sites = _sites()
    server = run_inprocess(AnomalyServerTask(CFG, SYNTHETIC_SPEC), sites)
    fed = server.detector
    # centralised: the same global model and preprocessing, every site's windows pooled
    model = new_anomaly_model(CFG, server.preprocessor.n_features_out)
    set_weights(model, server.weights)
    central = new_detector(SYNTHETIC_SPEC, server.preprocessor, model, CFG, {})
    errors = np.vstack([central.error_vectors(s.site.sigma) for s in sites])
    central.fit_error_stats(ErrorStats.of(errors))
    np.testing.assert_allclose(fed.mean_, central.mean_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fed.covariance_, central.covariance_, rtol=1e-7, atol=1e-12)
    assert fed.shrinkage_ == pytest.approx(central.shrinkage_, rel=1e-6)
    scores = np.concatenate([central.decision_function(s.site.threshold) for s in sites])
    labels = np.concatenate([s.site.threshold_is_anomaly for s in sites])
    central.fit_threshold(ScoreHistogram.of(scores, labels, central.bin_edges(CFG.anomaly.score_bins)))
    assert fed.threshold_ == central.threshold_
    assert labels.any() and fed.calibration_["threshold_windows"]["anomalous"] == labels.sum()


def test_server_receives_only_aggregates():
    sites = _sites()
    server = run_inprocess(AnomalyServerTask(CFG, SYNTHETIC_SPEC), sites)
    phases = {r["phase"] for r in server.answers_received}
    assert phases == {"error-stats", "score-histogram"}
    d = server.preprocessor.n_features_out
    for r in server.answers_received:
        assert r["keys"] in (["client", "error_stats"], ["client", "histogram"])
    # answer sizes depend on the feature count and bin count, never on the number of records
    query = {**server.base_query(), "phase": "error-stats"}
    small = AnomalyClientTask(synthetic_records(120, seed=5), CFG, SYNTHETIC_SPEC, "small")
    big = AnomalyClientTask(synthetic_records(1200, seed=5), CFG, SYNTHETIC_SPEC, "big")
    a_small, a_big = answer(small, query), answer(big, query)
    assert len(a_small["error_stats"]) == len(a_big["error_stats"])
    stats = ErrorStats.from_bytes(a_big["error_stats"])
    assert stats.total.shape == (d,) and stats.outer.shape == (d, d) and stats.count > ErrorStats.from_bytes(a_small["error_stats"]).count
    hq = {**server.base_query(), "phase": "score-histogram", "n_features": d, "bins": 500,
          "bin_low": d * 1e-3, "bin_high": d * 1e9,
          "mean_cov": arrays_to_bytes([server.detector.mean_, server.detector.covariance_])}
    h_small, h_big = answer(small, hq), answer(big, hq)
    assert len(h_small["histogram"]) == len(h_big["histogram"])
    assert all(isinstance(v, (bytes, str)) for v in {**h_big, **a_big}.values())


def test_federated_rounds_reduce_reconstruction_loss():
    server = run_inprocess(AnomalyServerTask(CFG.model_copy(update={
        "federation": CFG.federation.model_copy(update={"rounds": 3})}), SYNTHETIC_SPEC), _sites())
    losses = [server.rounds[r]["val_loss"] for r in sorted(server.rounds) if "val_loss" in server.rounds[r]]
    assert losses[-1] < losses[0]


def test_site_windows_use_normal_training_records_only():
    split = _split()
    from fedlstm.pipeline import make_preprocessor

    pre = make_preprocessor(SYNTHETIC_SPEC, CFG).fit(split.train.frame)
    w = site_windows(split.train, split.val, pre, CFG)
    assert not w.train.window_labels.any() and not w.sigma.window_labels.any()
    assert w.threshold_is_anomaly.any() and (~w.threshold_is_anomaly).any()
