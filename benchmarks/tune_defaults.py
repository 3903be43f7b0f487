"""Choose each dataset's default model settings with a small Optuna search on validation data only
(window, hidden size, dropout, epochs, learning rate; the hybrid's objective has no class weights).

    .venv/bin/python benchmarks/tune_defaults.py --dataset nsl-kdd --trials 12

Each trial trains the default detector (hybrid) centrally on the training part and scores it on
the validation part carved from it (`validation_score`). No test set is read (the split is built with its test sets, which are never scored). The best settings are
printed ("best"), and so is the setting copied by hand into `DATASET_DEFAULTS` of
`fedlstm.config` ("chosen"): the fastest trial whose validation score is within TOLERANCE of
the best.
Optional dependency: `pip install -e '.[tune]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("FEDLSTM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "datasets"))

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.data.splits import build_split  # noqa: E402
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.centralised import train  # noqa: E402


def validation_score(result) -> float:
    """Both parts, each where validation can judge it: the classifier's balanced accuracy, the
    normal-traffic model's ROC-AUC (separating normal from attack windows). The hybrid's own
    accuracy would mostly measure the alert budget, which is fixed."""
    parts = result.evaluations["val"]["parts"]
    sup = parts["supervised"]
    balanced = 0.5 * (sup["recall"] + 1 - sup["fpr"])
    return 0.5 * (balanced + parts["anomaly"]["roc_auc"])


def main() -> None:
    import optuna

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nsl-kdd")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=None, help="subsample training (speed)")
    parser.add_argument("--windows", default="1", help="comma-separated W to search")
    args = parser.parse_args()
    protocol = "random-split" if args.dataset == "unsw-nb15" else "official"
    base = RunConfig.model_validate({
        "detector": "hybrid", "data": {"dataset": args.dataset, "protocol": protocol,
                                       "max_train_rows": args.rows}})
    split = build_split(base.data, seed=0)
    windows = [int(w) for w in args.windows.split(",")]

    def objective(trial) -> float:
        cfg = base.model_copy(deep=True)
        cfg.windows.window = trial.suggest_categorical("window", windows)
        cfg.model.hidden_size = trial.suggest_categorical("hidden_size", [32, 64, 128])
        cfg.model.dropout = trial.suggest_float("dropout", 0.0, 0.3)
        cfg.train.epochs = trial.suggest_int("epochs", 5, 25, step=5)
        cfg.train.lr = trial.suggest_float("lr", 3e-4, 3e-3, log=True)
        t = time.perf_counter()
        score = validation_score(train(task_for(cfg), split))
        trial.set_user_attr("seconds", time.perf_counter() - t)
        print(json.dumps({"trial": trial.number, **trial.params, "validation_score":
                          round(score, 5), "seconds": round(time.perf_counter() - t)}), flush=True)
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.trials)
    best = study.best_params
    print("best", json.dumps({"dataset": args.dataset, **best,
                              "validation_score": round(study.best_value, 5)}))
    chosen = cheapest_within(study.trials, study.best_value)
    print("chosen", json.dumps({"dataset": args.dataset, **chosen.params,
                                "validation_score": round(chosen.value, 5),
                                "seconds": round(chosen.user_attrs["seconds"])}))


# Validation scores closer than this are treated as a tie (about the spread of one setting's
# score across seeds), and the tie goes to the cheapest trial: a default must also fit the
# full reproduction's time budget on two cores.
TOLERANCE = 0.002


def cheapest_within(trials, best: float, tolerance: float = TOLERANCE):
    """The fastest completed trial whose validation score is within `tolerance` of the best."""
    done = [t for t in trials if t.value is not None and "seconds" in t.user_attrs]
    return min((t for t in done if t.value >= best - tolerance),
               key=lambda t: t.user_attrs["seconds"])


if __name__ == "__main__":
    main()
