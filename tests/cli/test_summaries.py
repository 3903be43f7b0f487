"""A summary never hides a useless model: it says when a model flags most normal traffic or no
attack, in plain runs and in every model of a --compare run."""

from fedlstm.cli.common import comparison_warnings, useless_model_warnings


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
    assert useless_model_warnings(metrics) == ["the model flags none of the 10 attacks of 'test'"]


def test_every_model_of_a_comparison_is_checked_and_named():
    summary = {"methods": {"local-a": {"test": _binary(0, 80, 0, 672)},
                           "fed-lstm": {"test": _binary(70, 10, 20, 652)}}}
    warnings = comparison_warnings(summary)
    assert len(warnings) == 1 and warnings[0].startswith("local-a: the model flags 100%")
