"""A summary never hides a useless model: it says when a model flags most normal traffic or no
attack, in plain runs and in every model of a --compare run; and it says how much of the attack
types unseen in training it caught."""

from fedlstm.cli.common import (
    comparison_warnings,
    unseen_attack_lines,
    useless_model_warnings,
)


def _binary(tn, fp, fn, tp):
    n = tn + fp + fn + tp
    return {"n": n, "accuracy": (tn + tp) / n, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "f1": 0.0, "roc_auc": None, "pr_auc": None,
            "fpr": fp / max(tn + fp, 1), "confusion_matrix": [[tn, fp], [fn, tp]]}


def test_a_model_that_flags_everything_is_called_unusable_though_its_accuracy_is_high():
    metrics = {"evaluations": {"test": {"binary": _binary(0, 80, 0, 672)}}}
    assert metrics["evaluations"]["test"]["binary"]["accuracy"] > 0.89
    assert useless_model_warnings(metrics) == [
        "the model flags 100% of the normal traffic of 'test': it is not usable as it stands"]


def test_a_model_that_flags_no_attack_is_named_and_a_sound_one_is_not():
    metrics = {"evaluations": {"test": {"binary": _binary(90, 0, 10, 0)},
                               "test-21": {"binary": _binary(40, 5, 3, 50)}}}
    assert useless_model_warnings(metrics) == [
        "the model flags none of the 10 attacks of 'test': it is not usable as it stands"]


def test_every_model_of_a_comparison_is_checked_and_named():
    summary = {"methods": {"local-a": {"test": _binary(0, 80, 0, 672)},
                           "fed-lstm": {"test": _binary(70, 10, 20, 652)}}}
    warnings = comparison_warnings(summary)
    assert len(warnings) == 1 and warnings[0].startswith("local-a: the model flags 100%")


def test_the_summary_says_how_much_of_the_unseen_attack_types_was_caught():
    metrics = {"unseen_attacks": {
        "test": {"n": 553, "recall": 0.7233, "attacks": ["BruteForce"]},
        "test-21": {"n": 3750, "recall": 0.5, "attacks": [f"a{i}" for i in range(7)]}}}
    assert unseen_attack_lines(metrics) == [
        "test: 72% of the 553 records of attack types unseen in training flagged (BruteForce)",
        "test-21: 50% of the 3,750 records of attack types unseen in training flagged "
        "(a0, a1, a2, a3, a4 and 2 more)"]
    assert unseen_attack_lines({"unseen_attacks": {}}) == unseen_attack_lines({}) == []


def test_a_test_set_mostly_seen_in_training_is_said():
    """The same file as --train-file and --test-file was only recorded in metrics.json."""
    from fedlstm.cli.common import overlap_warnings

    metrics = {"data_notes": {"test_overlap_with_train": {"test": 0.9, "test-21": 0.04}}}
    assert overlap_warnings(metrics) == [
        "90% of the records of 'test' also occur in the training data: its scores partly "
        "measure memorised records"]
    assert overlap_warnings({"evaluations": {}}) == []


def test_the_round_table_says_its_accuracy_is_the_classifiers_alone(capsys, monkeypatch):
    """Its accuracy (argmax over windows) was read as the detector's, which a hybrid's summary
    then contradicted."""
    from fedlstm.cli import common

    monkeypatch.setattr(common.out_console, "_width", 1000)
    common.print_rounds([{"round": 1, "val_loss": 0.1, "val_accuracy": 0.9,
                          "test_accuracy/test": 0.8}])
    out = " ".join(capsys.readouterr().out.split())  # the title wraps to the table's width
    assert "accuracy of the classifier alone (argmax over windows)" in out
    assert "detector is scored after the last round" in out and "0.8000" in out


def test_the_summary_says_when_gradient_boosting_on_the_same_split_is_more_accurate():
    from fedlstm.cli.common import baseline_warnings

    metrics = {"evaluations": {"val": {"binary": _binary(90, 10, 0, 100)},
                               "test": {"binary": _binary(90, 10, 0, 100)},
                               "test-21": {"binary": _binary(95, 5, 0, 100)}},
               "baseline": {"method": "hgb", "title": "gradient boosting", "on": "the same split",
                            "evaluations": {"val": {"binary": _binary(100, 0, 0, 100)},
                                            "test": {"binary": _binary(100, 0, 0, 100)},
                                            "test-21": {"binary": _binary(97, 3, 2, 98)}}}}
    # 'test': 5 points; 'test-21': as accurate (fewer false alarms); 'val' is not a test set
    assert baseline_warnings(metrics) == [
        "gradient boosting on the same split is more accurate on 'test': 1.0000 against 0.9500 "
        "(FPR 0.0000 against 0.1000)"]
    assert baseline_warnings({"evaluations": metrics["evaluations"]}) == []


def test_the_summary_table_shows_the_baseline_rows_of_the_detectors_sets_only(monkeypatch):
    """A federated run is scored on its test sets only; the baseline's validation row would be a
    row with nothing beside it."""
    from fedlstm.cli import common

    metrics = {"dataset": "d", "protocol": "p", "mode": "federated",
               "evaluations": {"test": {"binary": _binary(90, 10, 0, 100)}},
               "baseline": {"method": "hgb", "title": "gradient boosting",
                            "on": "the sites' pooled shares",
                            "evaluations": {"val": {"binary": _binary(100, 0, 0, 100)},
                                            "test": {"binary": _binary(99, 1, 0, 100)}}}}
    monkeypatch.setattr(common.out_console, "_width", 1000)
    with common.out_console.capture() as captured:
        common.out_console.print(common.summary_table(metrics))
    out = captured.get()
    assert "test, hgb" in out and "val, hgb" not in out and "99 / 1 / 0 / 100" in out
    assert "hgb: gradient boosting on the sites' pooled shares" in out
