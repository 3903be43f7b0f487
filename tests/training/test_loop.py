import numpy as np
import pytest
import torch

from conftest import synthetic_records
from fedlstm.config import TrainConfig
from fedlstm.features import FlowPreprocessor
from fedlstm.features.windows import make_windows
from fedlstm.models import build_model
from fedlstm.tasks.base import class_names_for, encode_labels
from fedlstm.training.loop import Reporter, class_weights, fit
from fedlstm.training.metrics import best_f1_threshold, binary_metrics
from fedlstm.training.objectives import predict_proba


def _windows(n, seed, window=4):
    recs = synthetic_records(n, seed)
    pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(synthetic_records(400, 99).frame)
    return make_windows(pre.transform(recs.frame), recs.is_attack, window), pre.n_features_out


def test_training_learns_and_records_history():
    train, d = _windows(600, 0)
    val, _ = _windows(200, 1)
    model = build_model("lstm", d, 2, hidden_size=16)
    seen = []

    class Count(Reporter):
        def advance(self, n=1):
            seen.append(n)

    history = fit(model, train, val, TrainConfig(epochs=8, batch_size=64, lr=5e-3, patience=None),
                  n_classes=2, reporter=Count())
    assert len(history.epochs) == 8 and len(seen) == 8 * 10
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    acc = ((predict_proba(model, val)[:, 1] > 0.5) == val.window_labels.numpy()).mean()
    assert acc > 0.9


def test_same_seed_same_weights():
    train, d = _windows(300, 0)
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model("lstm", d, 2, hidden_size=8)
        fit(model, train, None, TrainConfig(epochs=2, batch_size=32), n_classes=2, seed=7)
        states.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(states[0], states[1])


def test_early_stopping_restores_best_epoch():
    train, d = _windows(300, 0)
    val, _ = _windows(100, 5)
    model = build_model("lstm", d, 2, hidden_size=8)
    history = fit(model, train, val, TrainConfig(epochs=30, batch_size=32, lr=0.05, patience=1),
                  n_classes=2)
    if history.stopped_early:
        assert len(history.epochs) - history.best_epoch == 2
    best = min(e["val_loss"] for e in history.epochs)
    assert history.epochs[history.best_epoch - 1]["val_loss"] == best


def test_proximal_term_keeps_weights_near_the_start():
    train, d = _windows(300, 0)
    distances = []
    for mu in (0.0, 10.0):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=8)
        start = [p.detach().clone() for p in model.parameters()]
        fit(model, train, None, TrainConfig(epochs=3, batch_size=32, lr=0.01, proximal_mu=mu),
            n_classes=2)
        distances.append(sum(((p - s) ** 2).sum().item() for p, s in zip(model.parameters(), start)))
    assert distances[1] < distances[0] * 0.5


def test_balanced_class_weights():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == 0


def test_labels_for_binary_and_family_tasks():
    recs = synthetic_records(50)
    from fedlstm.data.schemas import NSL_KDD
    classes = class_names_for(NSL_KDD, "family")
    fam = encode_labels(recs, "family", classes)
    assert set(np.unique(fam)) <= {0, 1, 2} and (fam[recs.is_attack == 0] == 0).all()
    assert (encode_labels(recs, "binary", ["normal", "attack"]) == recs.is_attack).all()


def test_metrics_and_validation_threshold():
    y = np.array([0, 0, 1, 1, 1])
    score = np.array([0.1, 0.6, 0.55, 0.8, 0.9])
    m = binary_metrics(y, score, 0.5)
    assert m["confusion_matrix"] == [[1, 1], [0, 3]] and m["fpr"] == 0.5
    t = best_f1_threshold(y, score)
    assert binary_metrics(y, score, t)["f1"] >= m["f1"]


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    train, d = _windows(50, 0)
    with pytest.raises(RuntimeError, match="no CUDA"):
        fit(build_model("lstm", d, 2), train, None, TrainConfig(device="cuda"), n_classes=2)
