import numpy as np
import pytest
import torch

from conftest import synthetic_records
from fedlstm.config import TrainConfig
from fedlstm.detection.classical import CLASSICAL, ClassicalDetector
from fedlstm.features import FlowPreprocessor
from fedlstm.features.windows import make_windows
from fedlstm.models import MODELS, build_model, get_weights, set_weights
from fedlstm.training.loop import fit
from fedlstm.training.metrics import binary_metrics
from fedlstm.training.objectives import predict_proba


def _data(seed, window=3, n=500):
    recs = synthetic_records(n, seed)
    pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(synthetic_records(400, 99).frame)
    return pre, make_windows(pre.transform(recs.frame), recs.is_attack, window)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_neural_models_learn_with_the_one_loop(name):
    torch.manual_seed(0)  # initial weights: the outcome must not depend on test order
    pre, train = _data(0)
    _, test = _data(1)
    model = build_model(name, pre.n_features_out, 2, hidden_size=16)
    # 8 epochs: at 6 the LSTM is still learning and its accuracy spreads 0.71-0.85 over seeds.
    fit(model, train, None, TrainConfig(epochs=8, batch_size=64, lr=5e-3), n_classes=2)
    acc = ((predict_proba(model, test)[:, 1] > 0.5) == test.window_labels.numpy()).mean()
    assert acc > 0.8  # base rate of the majority class is 0.6


def test_weights_round_trip_between_models():
    a, b = build_model("lstm", 5, 2), build_model("lstm", 5, 2)
    set_weights(b, get_weights(a))
    x = torch.randn(4, 3, 5)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError):
        set_weights(b, get_weights(a)[:-1])


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_baselines_share_the_detector_interface(name):
    pre, train = _data(0)
    _, val = _data(2)
    _, test = _data(1)
    det = ClassicalDetector(name, pre, window=3).fit(train, val)
    score = det.decision_function(test)
    assert score.shape == (len(test),)
    y = test.window_labels.numpy()
    m = binary_metrics(y, score, det.threshold_)
    # The unsupervised hybrid never sees attacks in training: better than chance, not as sharp.
    assert m["roc_auc"] > (0.65 if name == "ae-ocsvm" else 0.8)
    assert (det.predict(test) == (score >= det.threshold_)).all()


def test_unknown_classical_method():
    pre, train = _data(0)
    with pytest.raises(KeyError):
        ClassicalDetector("knn", pre, 3).fit(train, train)


@pytest.mark.parametrize("ends", [torch.arange(4, 300),  # one stream: consecutive windows
                                  torch.tensor([4, 5, 9, 10, 11, 40, 299]),  # entity gaps
                                  torch.tensor([4, 6, 5, 7])])  # any order
def test_sliding_window_inference_equals_forward(ends):
    torch.manual_seed(0)
    model = build_model("lstm", 12, 3, hidden_size=16).eval()
    records = torch.rand(300, 12)
    windows = records[ends.unsqueeze(1) - torch.arange(4, -1, -1)]  # W = 5
    with torch.inference_mode():
        expected = model(windows)
    got = model.forward_sliding(records, ends, 5, batch_size=64)  # several batches
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ends", [torch.arange(0, 300), torch.tensor([0, 1, 2, 9, 3, 120, 121])])
def test_sliding_window_inference_pads_like_the_window_set(ends):
    """Windows that reach before their segment repeat its first record, in the fast path as in
    `WindowSet.batch`."""
    torch.manual_seed(0)
    model = build_model("lstm", 12, 3, hidden_size=16).eval()
    records = np.random.default_rng(0).random((300, 12), dtype=np.float32)
    segments = np.repeat(np.arange(100), 3)  # hosts of 3 records, W = 5
    data = make_windows(records, np.zeros(300), 5, segments=segments).subset(ends)
    with torch.inference_mode():
        expected = model(data.batch(torch.arange(len(data)))[0])
    got = model.forward_sliding(data.features, data.ends, 5, batch_size=64,
                                starts=data.starts_of(data.ends))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
