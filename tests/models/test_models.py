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


def test_the_kernel_svm_draws_its_landmarks_from_distinct_rows():
    """Repeated rows (most of KDD99's) would make Nystroem's kernel matrix singular and the
    SVM's scores depend on floating-point rounding: its landmarks are distinct rows."""
    from fedlstm.features.windows import WindowSet

    pre, train = _data(0, window=1, n=60)
    _, val = _data(2, window=1)
    repeat = torch.arange(len(train)).repeat(20)  # every window 20 times
    repeated = WindowSet(train.features, train.labels, train.ends[repeat], 1)
    det = ClassicalDetector("svm", pre, window=1).fit(repeated, val)
    landmarks = det.estimator_[0].components_
    assert len(np.unique(landmarks, axis=0)) == len(landmarks) <= len(train)
    assert det.fit_rows_ == (len(repeated), len(repeated))  # the SVM itself sees every row


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


def test_a_site_head_names_its_own_families_and_leaves_the_attack_score_alone():
    """A site's private head of its own families trains on the frozen encoder and body with the
    one loop: P(attack) stays the shared model's, the shared weights do not move, and the head
    learns the families (here: dos is the attacks over ICMP)."""
    from fedlstm.models.encoded import SiteFamiliesLSTM

    def family_windows(seed):
        recs = synthetic_records(600, seed)
        family = np.where(recs.is_attack == 0, 0, np.where(recs.frame["proto"] == "icmp", 1, 2))
        pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(
            synthetic_records(400, 99).frame)
        return pre, make_windows(pre.transform(recs.frame), family, 3)

    pre, train = family_windows(0)
    _, test = family_windows(1)
    torch.manual_seed(0)
    model = SiteFamiliesLSTM(pre.n_features_out, 3, n_shared_classes=2, hidden_size=8,
                             shared_dim=4)
    shared = {k: v.clone() for k, v in model.net.state_dict().items()}
    shared_score = 1.0 - predict_proba(model.net, test)[:, 0]
    model.freeze_shared()
    fit(model, train, None, TrainConfig(epochs=15, batch_size=64, lr=2e-2), n_classes=3)
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in shared.items())
    proba = predict_proba(model, test)  # the sliding pass
    assert proba.sum(1) == pytest.approx(1.0, abs=1e-5)
    assert 1.0 - proba[:, 0] == pytest.approx(shared_score, abs=1e-5)
    model.eval()
    with torch.no_grad():
        plain = torch.softmax(model(test.batch(torch.arange(len(test)))[0]), 1).numpy()
    assert plain == pytest.approx(proba, abs=1e-5)
    y = test.window_labels.numpy()
    attacks = y > 0
    assert (1 + proba[attacks, 1:].argmax(1) == y[attacks]).mean() > 0.8  # chance: 0.5


def test_probabilistic_baselines_name_families_and_the_others_stay_binary():
    from fedlstm.config import RunConfig
    from fedlstm.data.schemas import get_spec
    from fedlstm.tasks import task_for

    pre, train = _data(0)
    _, test = _data(1)
    labels = np.where(train.labels.numpy() == 0, 0, 1 + (train.features[:, 0] > 0.001).numpy())
    train.labels = torch.as_tensor(labels)
    det = ClassicalDetector("hgb", pre, 3, task="family",
                            class_names=["normal", "dos", "probe", "u2r"]).fit(train, train)
    proba = det.predict_proba(test)
    assert proba.shape == (len(test), 4) and (proba[:, 3] == 0).all()  # u2r: no training row
    assert det.decision_function(test) == pytest.approx(1.0 - proba[:, 0])
    spec = get_spec("nsl-kdd")
    for name, classes in (("hgb", spec.family_order), ("svm", ["normal", "attack"])):
        cfg = RunConfig.model_validate({"model": {"name": name, "task": "family"}})
        assert task_for(cfg).class_names(spec) == list(classes)


def test_family_scores_name_a_record_as_detect_does():
    """A flagged record is named by its most likely attack family even where P(normal) is the
    largest single class (0.4 against 0.35 + 0.25); an unflagged one by its most likely class."""
    from types import SimpleNamespace

    from fedlstm.tasks.base import evaluate_detector

    recs = synthetic_records(2, 0)
    recs.family[:] = ["dos", "normal"]
    recs.is_attack[:] = [1, 0]
    pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(recs.frame)
    proba = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    detector = SimpleNamespace(preprocessor=pre, window=1, task="family", threshold_=0.5,
                               class_names=["normal", "dos", "probe"],
                               decision_function=lambda data: 1.0 - proba[:, 0],
                               predict_proba=lambda data: proba)
    family = evaluate_detector(detector, recs)["family"]
    assert family["accuracy"] == 1.0 and family["confusion_matrix"][1][1] == 1
