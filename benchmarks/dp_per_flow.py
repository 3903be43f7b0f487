"""DP-SGD per flow record: which training windows give more utility at the same ε per flow?

    .venv/bin/python benchmarks/dp_per_flow.py            # NSL-KDD official, 3,000 training rows
    .venv/bin/python benchmarks/dp_per_flow.py --epsilons 1,8 --seeds 0,1,2 --rows 3000

Three ways to train the centralised LSTM with DP-SGD, all scored on the same test rows:
- `landed`: what fedlstm did before ε was counted per flow: stride-1 windows, noise calibrated
  for ε per *window* at δ = 1/n_windows. Printed with the ε per flow it really gives (RDP group
  privacy over the W windows a flow sits in) at the same δ and at δ = 1/(10 n_records).
- `overlapping`: stride-1 windows, noise calibrated for ε per *flow* (group privacy).
- `disjoint`: stride-W windows, each flow in one window, noise calibrated for ε per flow.
Prints one line per run and a summary (mean over seeds) that compares the three.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from functools import lru_cache

from fedlstm.config import DataConfig, RunConfig
from fedlstm.data.splits import build_split
from fedlstm.tasks import task_for
from fedlstm.tasks.base import windows_of
from fedlstm.tasks.centralised import train
from fedlstm.training import privacy


def config(seed: int, rows: int, epochs: int, batch: int, **train_cfg) -> RunConfig:
    return RunConfig.model_validate({
        "seed": seed, "data": {"dataset": "nsl-kdd", "protocol": "official",
                               "max_train_rows": rows, "max_test_rows": 3000},
        "windows": {"window": 8}, "model": {"hidden_size": 32},
        "train": {"epochs": epochs, "batch_size": batch, "patience": None, "lr": 3e-3,
                  "dp": True, "dp_seeded_noise": True, **train_cfg}})


@lru_cache(maxsize=4)
def split_of(data_json: str, seed: int):
    return build_split(DataConfig.model_validate_json(data_json), seed=seed)


def landed_noise(cfg: RunConfig, target: float) -> tuple[float, float, int, int]:
    """The noise the landed code chose for `target` ε per window: (z, δ, windows, steps)."""
    split = split_of(cfg.data.model_dump_json(), cfg.seed)
    task = task_for(cfg)
    pre = task.fit_preprocessor(split.spec, split.train)
    n = len(windows_of(split.train, pre, cfg, task.class_names(split.spec)))
    steps = cfg.train.epochs * -(-n // cfg.train.batch_size)
    delta = 1.0 / n
    q = min(cfg.train.batch_size / n, 1.0)
    return privacy.noise_for_epsilon(target, delta, q, steps), delta, n, steps


def run(cfg: RunConfig) -> dict:
    t0 = time.perf_counter()
    result = train(task_for(cfg), split_of(cfg.data.model_dump_json(), cfg.seed))
    test = result.evaluations["test"]["binary"]
    p = result.history.privacy
    return {"accuracy": test["accuracy"], "f1": test["f1"], "roc_auc": test["roc_auc"],
            "fpr": test["fpr"], "epsilon_flow": p["epsilon"], "epsilon_window": p["window_epsilon"],
            "delta": p["delta"], "windows_per_flow": p["windows_per_flow"],
            "noise": p["noise_multiplier"], "sample_rate": p["sample_rate"], "steps": p["steps"],
            "n_records": p["n_records"], "seconds": time.perf_counter() - t0}


def main() -> None:
    warnings.filterwarnings("ignore", message="Optimal order")  # opacus, on every ε it computes
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilons", default="1,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", help="also write every run here")
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for eps in epsilons:
        for seed in seeds:
            base = config(seed, args.rows, args.epochs, args.batch_size)
            z, delta, _, steps = landed_noise(base, eps)
            variants = {
                "landed": config(seed, args.rows, args.epochs, args.batch_size,
                                 dp_windows="overlapping", dp_noise_multiplier=z,
                                 dp_delta=delta),
                "overlapping": config(seed, args.rows, args.epochs, args.batch_size,
                                      dp_windows="overlapping", dp_target_epsilon=eps),
                "disjoint": config(seed, args.rows, args.epochs, args.batch_size,
                                   dp_windows="disjoint", dp_target_epsilon=eps),
            }
            for name, cfg in variants.items():
                r = {"variant": name, "target": eps, "seed": seed, **run(cfg)}
                if name == "landed":  # the same run, counted per flow at the new default δ
                    r["epsilon_flow_new_delta"] = privacy.epsilon(
                        r["sample_rate"], z, steps, privacy.default_delta(r["n_records"]),
                        r["windows_per_flow"])
                rows.append(r)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in r.items()}), flush=True)
    print("\nmean over seeds (test = KDDTest+ subsample; ε per flow; δ as printed)")
    print(f"{'variant':12} {'target':>6} {'ε/window':>9} {'ε/flow':>9} {'δ':>9} {'accuracy':>9} "
          f"{'F1':>7} {'ROC-AUC':>8}")
    for eps in epsilons:
        for name in ("landed", "overlapping", "disjoint"):
            group = [r for r in rows if r["variant"] == name and r["target"] == eps]
            mean = {k: statistics.mean(r[k] for r in group)
                    for k in ("epsilon_window", "epsilon_flow", "delta", "accuracy", "f1", "roc_auc")}
            spread = statistics.stdev(r["accuracy"] for r in group) if len(group) > 1 else 0.0
            print(f"{name:12} {eps:6g} {mean['epsilon_window']:9.2f} {mean['epsilon_flow']:9.2f} "
                  f"{mean['delta']:9.2e} {mean['accuracy']:9.4f} {mean['f1']:7.4f} "
                  f"{mean['roc_auc']:8.4f}  (accuracy ± {spread:.4f})")
            if name == "landed":
                new = statistics.mean(r["epsilon_flow_new_delta"] for r in group)
                print(f"{'':12} {'':6} landed run counted per flow at δ = 1/(10 n_records): "
                      f"ε = {new:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
