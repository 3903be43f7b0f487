"""Detection metrics and the validation-F1 threshold: exact values on hand-checked examples."""

import numpy as np
import pytest

from fedlstm.training.metrics import (
    best_f1_threshold,
    binary_metrics,
    multiclass_metrics,
    recall_by_group,
)


def test_binary_metrics_flag_scores_at_or_above_the_threshold():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    score = np.array([0.1, 0.5, 0.7, 0.5, 0.6, 0.9, 0.2])
    m = binary_metrics(y, score, 0.5)  # 0.5 itself is flagged
    assert m["confusion_matrix"] == [[1, 2], [1, 3]]
    assert m["n"] == 7 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(3 / 5) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m["fpr"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(7.5 / 12) and 0 < m["pr_auc"] <= 1


def test_binary_metrics_of_one_class_have_no_auc_and_no_nan():
    m = binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]), 0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["fpr"] == 0.0
    assert m["recall"] == 0.5 and m["confusion_matrix"] == [[0, 0], [1, 1]]
    none_flagged = binary_metrics(np.array([0, 1]), np.array([0.1, 0.2]), 0.5)
    assert none_flagged["precision"] == 0.0 and none_flagged["f1"] == 0.0


def test_multiclass_metrics_per_class_and_averages():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = multiclass_metrics(y, pred, ["normal", "dos", "probe"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["dos"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                     "f1": pytest.approx(0.8), "support": 2}
    assert m["macro"]["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["weighted"]["recall"] == pytest.approx(4 / 6)
    absent = multiclass_metrics(np.array([0, 0]), np.array([0, 0]), ["normal", "dos"])
    assert absent["per_class"]["dos"]["support"] == 0


def test_recall_by_group():
    flagged = np.array([1, 0, 1, 1, 0])
    groups = np.array(["dos", "dos", "probe", "probe", "normal"])
    assert recall_by_group(flagged, groups) == {
        "dos": {"n": 2, "flagged": 0.5}, "normal": {"n": 1, "flagged": 0.0},
        "probe": {"n": 2, "flagged": 1.0}}


def test_best_f1_threshold_is_the_score_that_maximises_f1():
    y = np.array([0, 0, 1, 0, 1, 1])
    score = np.array([0.1, 0.3, 0.35, 0.4, 0.8, 0.9])
    t = best_f1_threshold(y, score)
    assert t == 0.35  # flags 0.35, 0.4, 0.8, 0.9: F1 = 6/7, the best of all cut points
    f1 = {c: binary_metrics(y, score, c)["f1"] for c in score}
    assert binary_metrics(y, score, t)["f1"] == max(f1.values())


def test_best_f1_threshold_prefers_the_first_best_and_handles_no_cut():
    y = np.array([0, 1, 0, 1])
    score = np.array([0.2, 0.4, 0.6, 0.8])
    assert best_f1_threshold(y, score) == 0.4  # F1 0.8 against 0.67 at 0.2 and at 0.8
    assert best_f1_threshold(np.array([1, 1]), np.array([0.7, 0.7])) == 0.7


def test_degenerate_sets_score_zero_not_one():
    all_flagged = binary_metrics(np.array([1, 1]), np.array([0.9, 0.8]), 0.5)
    assert all_flagged["confusion_matrix"] == [[0, 0], [0, 2]] and all_flagged["recall"] == 1.0
    quiet = binary_metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)
    assert quiet["recall"] == 0.0 and quiet["f1"] == 0.0 and quiet["precision"] == 0.0
    assert quiet["confusion_matrix"] == [[2, 0], [0, 0]] and quiet["accuracy"] == 1.0


def test_classes_absent_from_a_test_set_do_not_count_in_the_macro_average():
    m = multiclass_metrics(np.array([0, 0, 0]), np.array([0, 0, 0]), ["normal", "dos"])
    assert m["per_class"]["dos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert m["confusion_matrix"] == [[3, 0], [0, 0]]
    assert m["weighted"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # The case: every present class scores >= 0.98, two families have no test rows.
    y = np.r_[np.zeros(100), np.ones(50), np.full(50, 2)].astype(int)
    pred = y.copy()
    pred[0] = 1  # one normal record taken for dos
    m = multiclass_metrics(y, pred, ["normal", "dos", "probe", "r2l", "u2r"])
    present = [m["per_class"][c]["f1"] for c in ("normal", "dos", "probe")]
    assert min(present) > 0.98 and m["macro"]["f1"] == pytest.approx(np.mean(present))
    # A prediction of an absent class still costs the present class it was taken from.
    wrong = multiclass_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), ["n", "a", "b"])
    assert wrong["macro"]["recall"] == pytest.approx((0.5 + 1) / 2)


def test_a_cut_that_flags_no_attack_is_never_the_best():
    # At 0.9 nothing true is flagged (precision = recall = 0): F1 is 0 there, not undefined.
    assert best_f1_threshold(np.array([1, 0]), np.array([0.1, 0.9])) == 0.1
