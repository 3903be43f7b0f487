"""Bytes per round and accuracy of each `--compress` mode, side by side (issue 16's table).

    .venv/bin/python benchmarks/communication.py --out /tmp/comm            # NSL-KDD and KDD99, seeds 0-2
    .venv/bin/python benchmarks/communication.py --datasets nsl-kdd --seeds 0 --out /tmp/comm
    .venv/bin/python benchmarks/communication.py --modes "none,q8,none + SecAgg+,q8 + SecAgg+"
    .venv/bin/python benchmarks/communication.py --modes "none,topk:0.05,topk:0.2+q8,topk:0.05 x 10 rounds"

Every cell is `fedlstm federate --dataset D --clients 5 --compress MODE --seed S` with the
product's defaults (the hybrid detector, the dataset's rounds x local epochs, every training row),
its run directory kept in --out (a run already there is reused). Prints, per dataset and mode,
the mean over seeds of: uplink and downlink bytes per round (as serialised for the wire; ratio
to `none`), test accuracy and its change against `none` (per seed, then averaged), FPR,
ROC-AUC, and the sites' validation loss after the last round. About 35 s per NSL-KDD run and
70 s per KDD99 run on 2 cores. The SecAgg+ rows run the same with `--secagg`: their bytes
include the key exchange, and their `none` is Flower's 22-bit quantisation of the update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MODES = {"none": [], "q8": [], "topk:0.05": [],
         "topk:0.05 (no error feedback)": ["--set", "federation.compress_feedback=false"],
         "topk:0.01+q8": [],
         "none + SecAgg+": ["--secagg"], "q8 + SecAgg+": ["--secagg"]}
# Other ways to spend about topk:0.05's bytes (run only when named in --modes): q8 values leave
# room for more entries, and more rounds give the error feedback longer to catch up.
OTHER_MODES = {"topk:0.05+q8": [], "topk:0.1+q8": [], "topk:0.2+q8": [],
               "topk:0.05 x 10 rounds": ["--rounds", "10"]}
ALL_MODES = {**MODES, **OTHER_MODES}


def run(dataset: str, mode: str, seed: int, out: Path) -> dict:
    spec = mode.split(" ")[0]
    name = f"{dataset}--{mode.replace(' ', '').replace(':', '').replace('+', '-')}--s{seed}"
    run_dir = out / name
    if not (run_dir / "metrics.json").exists():
        subprocess.run([sys.executable, "-m", "fedlstm.cli", "federate", "--dataset", dataset,
                        "--clients", "5", "--compress", spec, "--seed", str(seed), "--out",
                        str(run_dir), "--overwrite", *ALL_MODES[mode]], check=True,
                       stdout=subprocess.DEVNULL)
    m = json.loads((run_dir / "metrics.json").read_text())
    rounds = [r for r in m["rounds"] if r["round"] > 0]
    test = m["evaluations"]["test"]["binary"]
    return {"up": statistics.mean(r["bytes_up"] for r in rounds),
            "down": statistics.mean(r["bytes_down"] + r.get("eval_bytes_down", 0) for r in rounds),
            "accuracy": test["accuracy"], "fpr": test["fpr"], "roc_auc": test["roc_auc"],
            "val_loss": rounds[-1].get("val_loss", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="nsl-kdd,kdd99")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated; none first")
    parser.add_argument("--out", type=Path, default=Path("runs/communication"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    if modes[0] != "none" or set(modes) - set(ALL_MODES):
        parser.error(f"--modes: 'none' first, then any of {', '.join(ALL_MODES)}")
    print("| dataset | mode | uplink kB/round | vs none | downlink kB/round | vs none | accuracy "
          "| Δ pp vs none | FPR | ROC-AUC | val loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        cells = {mode: [run(dataset, mode, s, args.out) for s in seeds] for mode in modes}
        base = cells["none"]
        up0 = statistics.mean(c["up"] for c in base)
        down0 = statistics.mean(c["down"] for c in base)
        for mode, runs in cells.items():
            def mean(key):
                return statistics.mean(c[key] for c in runs)
            delta = statistics.mean(100 * (c["accuracy"] - b["accuracy"]) for c, b in zip(runs, base))
            print(f"| {dataset} | {mode} | {mean('up') / 1e3:,.1f} | {mean('up') / up0:.3f}x | "
                  f"{mean('down') / 1e3:,.1f} | {mean('down') / down0:.3f}x | "
                  f"{mean('accuracy'):.4f} | {delta:+.2f} | {mean('fpr'):.4f} | "
                  f"{mean('roc_auc'):.4f} | {mean('val_loss'):.4f} |")


if __name__ == "__main__":
    main()
