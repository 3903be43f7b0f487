"""Privacy-utility trade-off: Fed-LSTM accuracy and FPR for a range of ε per flow record
(δ = 1/(10 n) for a site of n training records); in a federation across networks
(`federation.partition=networks`), one row per network's own test set.

Each ε is one federated run with DP-SGD on every client, the noise calibrated so that the planned
rounds spend exactly that budget; ε = inf is the same run without DP. Runs are cached in the
output folder: a run is reused only where its `config.json` holds the same settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.federation.simulation import one_ray_runtime, run_federated
from fedlstm.runs.rundir import ran_with, staged_file  # noqa: E402


def _scored(evaluations: dict) -> dict[str, dict]:
    """The test sets a sweep reports: `test`, or in a federation across networks each
    network's own (`NETWORK/test`)."""
    return {name: ev["binary"] for name, ev in evaluations.items()
            if name == "test" or name.endswith("/test")}


def point_config(cfg: RunConfig, eps: float) -> RunConfig:
    """The run of one ε: DP-SGD calibrated to spend `eps` per flow record (inf: no DP)."""
    train = cfg.train.model_copy(update={"dp": not math.isinf(eps),
                                         "dp_target_epsilon": None if math.isinf(eps) else eps})
    return cfg.model_copy(update={"train": train})


def _sweep_point(cfg: RunConfig, eps: float, out: Path, command: str | None,
                 progress) -> list[dict]:
    name = "eps-inf" if math.isinf(eps) else f"eps-{eps:g}"
    run_dir = out / name
    run_cfg = point_config(cfg, eps)
    if not ran_with(run_dir, run_cfg):
        progress(f"Fed-LSTM with ε = {eps:g}")
        run_federated(run_cfg, run_dir, overwrite=True, command=command)
    m = json.loads((run_dir / "metrics.json").read_text())
    last = m["rounds"][-1]
    deltas = [c["delta"] for c in last.get("clients_fit", {}).values() if "delta" in c]
    return [{"epsilon": eps, "spent_epsilon": last.get("epsilon"), "run_dir": str(run_dir),
             "delta": max(deltas, default=None), "test": test,
             **{k: ev[k] for k in ("accuracy", "fpr", "f1", "roc_auc")}}
            for test, ev in _scored(m["evaluations"]).items()]


def sweep(cfg: RunConfig, epsilons: list[float], out: str | Path, command: str | None = None,
          progress=None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda text: None)
    with one_ray_runtime():
        rows = [row for eps in epsilons for row in _sweep_point(cfg, eps, out, command, progress)]
    fed = cfg.federation
    what = (f"{len(fed.networks)} networks ({', '.join(fed.networks)}), one site each, each "
            "scored on its own test set" if fed.partition == "networks" else
            f"{cfg.data.dataset}, protocol {cfg.data.protocol}, {fed.clients} clients "
            f"({fed.partition})")
    lines = ["# Privacy-utility: Fed-LSTM with record-level DP-SGD",
             f"{what}; {fed.rounds} rounds x {fed.local_epochs} local epochs; DP-SGD per site; "
             "ε per flow record (a record inside W windows counted as a group), "
             "δ = 1/(10 n) for a site of n training records.", "",
             f"Command: `{command}`" if command else "", "",
             "| target ε per flow | ε spent (worst site) | δ | test set | accuracy | FPR | F1 | "
             "ROC-AUC | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spent = "-" if r["spent_epsilon"] is None else f"{r['spent_epsilon']:.2f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:.1e}"
        lines.append(f"| {r['epsilon']:g} | {spent} | {delta} | {r['test']} | "
                     f"{r['accuracy']:.4f} | {r['fpr']:.4f} | {r['f1']:.4f} | "
                     f"{r['roc_auc']:.4f} | {Path(r['run_dir']).name} |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, test in enumerate(dict.fromkeys(r["test"] for r in rows)):
        mine = [r for r in rows if r["test"] == test]
        finite = [r for r in mine if not math.isinf(r["epsilon"])]
        label = "" if test == "test" else f" {test}"
        ax.plot([r["epsilon"] for r in finite], [r["accuracy"] for r in finite], marker="o",
                color=f"C{i}", label=f"DP-SGD{label}")
        for r in mine:
            if math.isinf(r["epsilon"]):
                ax.axhline(r["accuracy"], ls="--", color=f"C{i}", label=f"no DP (ε = ∞){label}")
    if any(not math.isinf(r["epsilon"]) for r in rows):  # a log axis of no point failed
        ax.set_xscale("log")
    ax.set_xlabel("ε per flow record (δ = 1/(10 n))")
    ax.set_ylabel("test accuracy")
    title = "networks" if fed.partition == "networks" else f"{cfg.data.dataset}, {cfg.data.protocol}"
    ax.set_title(f"Fed-LSTM privacy-utility ({title})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "privacy_utility.png", dpi=110)
    plt.close(fig)
    # Written last, each whole: a run that failed had already replaced the earlier table.
    for name, text in (("privacy_utility.json", json.dumps(rows, indent=2)),
                       ("privacy_utility.md", "\n".join(lines) + "\n")):
        with staged_file(out / name) as fh:
            fh.write(text)
    return out / "privacy_utility.md"
