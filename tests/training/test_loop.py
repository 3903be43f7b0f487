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
from fedlstm.training.objectives import Objective, predict_proba


def _windows(n, seed, window=4):
    """Unpadded windows only (ending at record W-1 on): the windows the batch counts and loss
    trajectories below were chosen on; padding is tested in tests/features."""
    recs = synthetic_records(n, seed)
    pre = FlowPreprocessor(["bytes", "rate"], ["flag", "proto"]).fit(synthetic_records(400, 99).frame)
    data = make_windows(pre.transform(recs.frame), recs.is_attack, window)
    return data.subset(np.arange(window - 1, len(data))), pre.n_features_out


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
    """The weights left in the model are the best validation epoch's, not the last epoch's."""
    train, d = _windows(300, 0)
    val, _ = _windows(100, 5)
    torch.manual_seed(0)  # the start weights: this test must not depend on the tests before it
    model = build_model("lstm", d, 2, hidden_size=8)
    history = fit(model, train, val, TrainConfig(epochs=30, batch_size=32, lr=0.05, patience=1),
                  n_classes=2)
    assert history.stopped_early and len(history.epochs) - history.best_epoch == 2
    best = min(e["val_loss"] for e in history.epochs)
    assert history.epochs[history.best_epoch - 1]["val_loss"] == best
    assert history.epochs[-1]["val_loss"] > best + 1e-3  # the last epoch is measurably worse
    assert Objective().evaluate(model, val)["loss"] == pytest.approx(best, abs=1e-6)


def test_without_validation_the_last_weights_stay():
    train, d = _windows(300, 0)
    torch.manual_seed(0)
    model = build_model("lstm", d, 2, hidden_size=8)
    history = fit(model, train, None, TrainConfig(epochs=4, batch_size=32, lr=0.05, patience=1),
                  n_classes=2)
    assert len(history.epochs) == 4 and not history.stopped_early  # nothing to stop on
    torch.manual_seed(0)
    again = build_model("lstm", d, 2, hidden_size=8)
    fit(again, train, None, TrainConfig(epochs=4, batch_size=32, lr=0.05, patience=None),
        n_classes=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


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


def test_an_epoch_reports_the_mean_loss_and_accuracy_over_every_window():
    train, d = _windows(300, 0)
    torch.manual_seed(0)
    model = build_model("lstm", d, 2, hidden_size=8, dropout=0.0)
    before = Objective().evaluate(model, train)
    # A step too small to move the weights: the epoch's loss is the loss of the start weights.
    history = fit(model, train, None, TrainConfig(epochs=1, batch_size=64, lr=1e-12), n_classes=2)
    record = history.epochs[0]
    assert record["train_loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert record["train_accuracy"] == pytest.approx(before["accuracy"])


def test_the_proximal_term_is_half_mu_times_the_squared_distance():
    from fedlstm.training.loop import _Step

    train, d = _windows(100, 0)
    torch.manual_seed(0)
    model = build_model("lstm", d, 2, hidden_size=4, dropout=0.0)
    step = _Step(model, Objective(), TrainConfig(lr=1e-12, proximal_mu=0.5), None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    x, y = train.batch(torch.arange(len(train)))
    plain, _ = Objective().step(model, x, y)
    distance = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), step.anchor))
    loss, correct = step.batch(x, y)
    assert float(loss) == pytest.approx(float(plain) + 0.5 * 0.5 * float(distance), rel=1e-5)
    assert int(correct) == int((model(x).argmax(1) == y).sum())
    assert _Step(model, Objective(), TrainConfig(proximal_mu=0.0), None).anchor is None


def test_dp_summary_counts_every_step_of_the_plan():
    train, d = _windows(300, 0)
    model = build_model("lstm", d, 2, hidden_size=4)
    cfg = TrainConfig(epochs=2, batch_size=64, dp=True, dp_noise_multiplier=1.3,
                      dp_max_grad_norm=0.7, dp_seeded_noise=True)
    history = fit(model, train, None, cfg, n_classes=2)
    p = history.privacy
    batches = -(-len(train) // 64)
    assert p["steps"] == p["planned_steps"] == 2 * batches
    assert p["sample_rate"] == 64 / len(train) and p["noise_multiplier"] == 1.3
    assert p["max_grad_norm"] == 0.7 and p["released_noise"] == []
    assert history.epochs[0]["epsilon"] < p["epsilon"]
    big = fit(build_model("lstm", d, 2, hidden_size=4), train, None,
              cfg.model_copy(update={"batch_size": 10_000, "epochs": 1}), n_classes=2)
    assert big.privacy["sample_rate"] == 1.0
    later = fit(build_model("lstm", d, 2, hidden_size=4), train, None, cfg, n_classes=2,
                dp_steps=(10, 100))
    assert later.privacy["steps"] == 10 + 2 * batches and later.privacy["planned_steps"] == 100


def test_dp_is_refused_for_models_it_cannot_clip():
    train, d = _windows(100, 0)
    with pytest.raises(ValueError, match="LSTM classifier's objective only"):
        fit(build_model("cnn", d, 2), train, None, TrainConfig(dp=True), n_classes=2)


def test_dp_with_the_proximal_term_keeps_weights_near_the_start():
    train, d = _windows(300, 0)
    distances = []
    for mu in (0.0, 50.0):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=8)
        start = [p.detach().clone() for p in model.parameters()]
        fit(model, train, None, TrainConfig(epochs=3, batch_size=32, lr=0.01, proximal_mu=mu,
                                            dp=True, dp_noise_multiplier=0.1,
                                            dp_seeded_noise=True), n_classes=2)
        distances.append(sum(((p - s) ** 2).sum().item() for p, s in zip(model.parameters(), start)))
    assert distances[1] < distances[0] * 0.5


def test_secret_sampling_differs_between_two_runs_of_one_seed():
    from fedlstm.training.loop import _DPState

    train, d = _windows(300, 0)
    model = build_model("lstm", d, 2, hidden_size=4)
    masks = []
    for seeded in (True, True, False, False):
        torch.manual_seed(0)
        state = _DPState(TrainConfig(dp=True, dp_seeded_noise=seeded), train, 5, 1, None, model,
                         Objective(), torch.Generator().manual_seed(0))
        masks.append(state.next_batch(torch.device("cpu")).tolist())
    assert masks[0] == masks[1] and masks[2] != masks[3]


def test_balanced_class_weights_change_what_is_learned():
    train, d = _windows(300, 0)
    weights = []
    for policy in ("none", "balanced"):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=8)
        history = fit(model, train, None, TrainConfig(epochs=1, batch_size=32, lr=0.01,
                                                      class_weights=policy), n_classes=2)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(weights[0], weights[1])
    d = history.to_dict()
    assert set(d) == {"epochs", "best_epoch", "stopped_early", "seconds", "privacy"}
    assert d["epochs"] == history.epochs and d["seconds"] == history.seconds > 0
    assert d["best_epoch"] == 1 and d["stopped_early"] is False and d["privacy"] is None
    assert 0 < d["seconds"] < 600


def test_balanced_class_weights_reach_an_objective_the_task_brings():
    """The hybrid (the default detector) brings its own objective; the option used to be ignored
    there, so a rare normal class was learned unweighted although the user asked otherwise."""
    from fedlstm.tasks.hybrid import MODEL, HybridObjective

    train, d = _windows(300, 0)
    weights, objectives = [], []
    for policy in ("none", "balanced"):
        torch.manual_seed(0)
        model, objective = build_model(MODEL, d, 2, hidden_size=8), HybridObjective()
        fit(model, train, None, TrainConfig(epochs=1, batch_size=32, lr=0.01,
                                            class_weights=policy), n_classes=2,
            objective=objective)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        objectives.append(objective)
    assert not torch.equal(weights[0], weights[1])
    assert objectives[0].loss_fn.weight is None
    assert torch.equal(objectives[1].loss_fn.weight, class_weights(train.window_labels, 2))


def test_min_steps_adds_epochs_only_where_an_epoch_has_few_batches():
    train, d = _windows(300, 0)  # 297 windows: 10 batches of 32
    planned = []

    class Plan(Reporter):
        def start(self, epochs, batches):
            planned.append((epochs, batches))

    for min_steps, epochs in ((0, 2), (35, 2), (10, 2)):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=8)
        history = fit(model, train, None, TrainConfig(epochs=epochs, batch_size=32,
                                                      min_steps=min_steps), n_classes=2,
                      reporter=Plan())
        assert len(history.epochs) == planned[-1][0]  # no validation data: no early stop
    assert planned == [(2, 10), (4, 10), (2, 10)]  # 35 batches: 4 epochs; 10 fit in 2
    torch.manual_seed(0)
    model = build_model("lstm", d, 2, hidden_size=8)
    fit(model, train, None, TrainConfig(epochs=2, batch_size=32, min_steps=35), n_classes=2,
        reporter=Plan(), epochs=1)  # a federated round's local epochs are what it asks
    assert planned[-1] == (1, 10)


def test_the_loop_reports_every_epoch_and_batch_count():
    train, d = _windows(300, 0, window=4)  # 297 windows
    seen, starts = [], []

    class Count(Reporter):
        def start(self, epochs, batches):
            starts.append((epochs, batches))

        def epoch_end(self, record):
            seen.append(dict(record))

    hooked = []
    for batch, batches in ((99, 3), (37, 9), (297, 1)):
        fit(build_model("lstm", d, 2, hidden_size=4), train, None,
            TrainConfig(epochs=2, batch_size=batch), n_classes=2, reporter=Count(),
            on_epoch=hooked.append)
        assert starts[-1] == (2, batches)
    assert [r["epoch"] for r in seen[:2]] == [1, 2] and hooked[:2] == seen[:2]
    one = make_windows(np.zeros((1, d), np.float32), np.zeros(1), 4)  # one padded window
    assert len(fit(build_model("lstm", d, 2, hidden_size=4), one, None, TrainConfig(epochs=1),
                   n_classes=2).epochs) == 1  # a single window trains
    with pytest.raises(ValueError, match="no training windows"):
        fit(build_model("lstm", d, 2), make_windows(np.zeros((0, d)), np.zeros(0), 4), None,
            TrainConfig(), n_classes=2)


def test_without_validation_a_rising_loss_neither_stops_nor_rewinds():
    train, d = _windows(300, 0)
    torch.manual_seed(0)
    model = build_model("lstm", d, 2, hidden_size=8)
    last = {}
    history = fit(model, train, None, TrainConfig(epochs=6, batch_size=32, lr=1.0, patience=1),
                  n_classes=2, on_epoch=lambda r: last.update(
                      {k: v.clone() for k, v in model.state_dict().items()}))
    losses = [e["train_loss"] for e in history.epochs]
    # Two epochs in a row above the best so far: what would stop a run that had validation.
    assert len(losses) == 6 and min(losses) < losses[-2] and min(losses) < losses[-1]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_dp_planned_steps_and_released_statistics():
    from fedlstm.training import privacy

    train, d = _windows(300, 0, window=4)
    z = privacy.gaussian_noise_for_epsilon(0.5, 1e-5)
    for batch, batches in ((99, 3), (37, 9)):
        h = fit(build_model("lstm", d, 2, hidden_size=4), train, None,
                TrainConfig(epochs=2, batch_size=batch, dp=True, dp_delta=1e-5,
                            dp_target_epsilon=3.0, dp_seeded_noise=True),
                n_classes=2, dp_released=(z,))
        assert h.privacy["planned_steps"] == 2 * batches and h.privacy["released_noise"] == [z]
        assert 2.95 <= h.privacy["epsilon"] <= 3.01  # the release counts in the target
        without = privacy.epsilon(h.privacy["sample_rate"], h.privacy["noise_multiplier"],
                                  h.privacy["steps"], 1e-5, h.privacy["windows_per_flow"])
        assert without < h.privacy["epsilon"]


def test_secret_noise_differs_even_when_every_window_is_sampled():
    train, d = _windows(100, 0, window=2)
    start = build_model("lstm", d, 2, hidden_size=4).state_dict()
    weights = []
    for _ in range(2):
        model = build_model("lstm", d, 2, hidden_size=4)
        model.load_state_dict(start)
        fit(model, train, None, TrainConfig(epochs=1, batch_size=10_000, dp=True), n_classes=2,
            seed=1)  # sample rate 1: the batch is fixed, only the noise can differ
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(weights[0], weights[1])


def test_dp_keeps_the_class_weights():
    train, d = _windows(300, 0)
    out = []
    for policy in ("none", "balanced"):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=4)
        fit(model, train, None, TrainConfig(epochs=1, batch_size=64, dp=True, class_weights=policy,
                                            dp_seeded_noise=True), n_classes=2)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(out[0], out[1])


def test_patience_needs_validation_data():
    """Without validation data nothing is monitored: a run never stops early on its own
    training loss, even when that loss rises for longer than the patience."""
    train, d = _windows(300, 0)
    torch.manual_seed(0)
    history = fit(build_model("lstm", d, 2, hidden_size=8), train, None,
                  TrainConfig(epochs=7, batch_size=32, lr=1.0, patience=1), n_classes=2)
    losses = [e["train_loss"] for e in history.epochs]
    assert len(losses) == 7 and min(losses[:4]) < min(losses[4:6])  # two worse epochs in a row


def test_weight_decay_and_objectives_without_accuracy():
    from fedlstm.training.objectives import SequenceObjective

    train, d = _windows(300, 0)
    out = []
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_model("lstm", d, 2, hidden_size=4)
        fit(model, train, None, TrainConfig(epochs=1, batch_size=64, weight_decay=decay),
            n_classes=2)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(out[0], out[1])
    ae = build_model("lstm-ae", d, 2, hidden_size=4)
    record = fit(ae, train, None, TrainConfig(epochs=1), n_classes=2,
                 objective=SequenceObjective()).epochs[0]
    assert "train_accuracy" not in record and record["train_loss"] > 0
