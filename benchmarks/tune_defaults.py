"""Choose default model settings with a small Optuna search on validation data only: each
benchmark dataset's (window, hidden size, dropout, epochs, learning rate), or those of a flow-log
schema on a file of yours (hidden size, dropout, learning rate, minimum batches).

    .venv/bin/python benchmarks/tune_defaults.py --dataset nsl-kdd --trials 12
    .venv/bin/python benchmarks/tune_defaults.py --schema cicflowmeter --trials 20 \
        --train-file ../shared/datasets/cicids2017-sample/CICIDS2017_sample.csv --seeds 0,1,2,3,4

Each trial trains the default detector (hybrid) centrally on the training part, once per seed,
and scores it on the validation part carved from it (`validation_score`, the mean over seeds).
On a file of yours each seed also draws its own split, as `fedlstm train --seed S` does: a small
log's validation part holds few normal flows (18 on the CIC-IDS2017 sample), too few to judge
settings by one split. No test set is read (the split is built with its test sets, which are
never scored). The best settings are printed ("best"), and so is the setting to copy by hand
into the defaults of `fedlstm.config` (`DATASET_DEFAULTS`, `OWN_FLOW_DEFAULTS`) if it beats them
("chosen"): the fastest trial whose validation score is within TOLERANCE of the best. A schema's
search keeps the window (per-host windows by default) and the class weights (which way
`balanced` moves the alerts depends on the log's mix of normal and attack flows, not on its
schema); its trials start from the own-log defaults, whose `train.min_steps` replaces the epochs.
Optional dependency: `pip install -e '.[tune]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("FEDLSTM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                   "datasets"))

from fedlstm.config import load_config  # noqa: E402
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
    parser.add_argument("--schema", default=None, help="a flow-log schema: search on --train-file")
    parser.add_argument("--train-file", default=None)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=None, help="subsample training (speed)")
    parser.add_argument("--windows", default="1", help="comma-separated W to search")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds per trial")
    args = parser.parse_args()
    if args.schema:
        if not args.train_file:
            parser.error("--schema needs --train-file")
        overrides = [f"data.schema={args.schema}",
                     f"data.train_files={json.dumps([args.train_file])}"]
        label = args.schema
    else:
        protocol = "random-split" if args.dataset == "unsw-nb15" else "official"
        overrides = [f"data.dataset={args.dataset}", f"data.protocol={protocol}"]
        label = args.dataset
    if args.rows:
        overrides.append(f"data.max_train_rows={args.rows}")
    base = load_config(None, [*overrides, "detector=hybrid"])
    seeds = [int(x) for x in args.seeds.split(",")]
    split_seed = {seed: seed if args.schema else 0 for seed in seeds}  # benchmarks: one split
    splits = {k: build_split(base.data, seed=k) for k in set(split_seed.values())}
    windows = [int(w) for w in args.windows.split(",")]

    def objective(trial) -> float:
        cfg = base.model_copy(deep=True)
        if not args.schema:
            cfg.windows.window = trial.suggest_categorical("window", windows)
        cfg.model.hidden_size = trial.suggest_categorical("hidden_size", [32, 64, 128])
        cfg.model.dropout = trial.suggest_float("dropout", 0.0, 0.3)
        if args.schema:
            cfg.train.min_steps = trial.suggest_categorical("min_steps", [500, 1000, 2000])
        else:
            cfg.train.epochs = trial.suggest_int("epochs", 5, 25, step=5)
        cfg.train.lr = trial.suggest_float("lr", 3e-4, 3e-3, log=True)
        t = time.perf_counter()
        scores = [validation_score(train(task_for(cfg.model_copy(update={"seed": seed})),
                                         splits[split_seed[seed]])) for seed in seeds]
        score = sum(scores) / len(scores)
        trial.set_user_attr("seconds", time.perf_counter() - t)
        print(json.dumps({"trial": trial.number, **trial.params, "validation_score":
                          round(score, 5), "per_seed": [round(x, 5) for x in scores],
                          "seconds": round(time.perf_counter() - t)}), flush=True)
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.schema:  # trial 0: today's defaults, the score a new setting has to beat
        study.enqueue_trial({"hidden_size": base.model.hidden_size, "dropout": base.model.dropout,
                             "min_steps": base.train.min_steps, "lr": base.train.lr})
    study.optimize(objective, n_trials=args.trials)
    best = study.best_params
    print("best", json.dumps({"dataset": label, **best,
                              "validation_score": round(study.best_value, 5)}))
    chosen = cheapest_within(study.trials, study.best_value)
    print("chosen", json.dumps({"dataset": label, **chosen.params,
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
