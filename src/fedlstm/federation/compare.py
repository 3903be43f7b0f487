"""The paper's comparison (Fig. 5/6, Table II): local-only LSTMs, centralised LSTM and Fed-LSTM.

All three see the same clients' data and are scored on the same held-out test sets. Local-only
models train on one site's share (with that site's own preprocessing), the centralised model on
the pooled shares (windows never cross sites), Fed-LSTM through the federation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.data.splits import run_protocol  # noqa: E402
from fedlstm.federation.simulation import run_federated  # noqa: E402
from fedlstm.federation.sites import federated_data, pooled_split, site_shares  # noqa: E402
from fedlstm.runs.rundir import staged_dir, write_run  # noqa: E402
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.centralised import baseline_on_split, train  # noqa: E402

log = logging.getLogger(__name__)


def run_comparison(cfg: RunConfig, out: str | Path, overwrite: bool = False,
                   command: str | None = None, progress=None, baseline: bool = False) -> dict:
    """`baseline`: gradient boosting on the pooled shares too (method `hgb`), the centralised
    LSTM's split."""
    progress = progress or (lambda text: None)
    data = federated_data(cfg)
    protocol = run_protocol(cfg.data)
    summary: dict = {"dataset": data.spec.name, "protocol": protocol,
                     "partition": cfg.federation.partition, "clients": data.names, "methods": {}}
    curves: dict[str, list[tuple[float, float]]] = {}
    with staged_dir(out, overwrite) as stage:
        shares = site_shares(cfg, data)
        jobs = [(f"local-{name}", [share]) for name, share in zip(data.names, shares)]
        jobs.append(("centralised", shares))
        splits = {}
        for method, parts in jobs:
            progress(f"training {method}")
            splits[method] = split = pooled_split(cfg, data, parts, notes={"method": method})
            result = train(task_for(cfg), split, curves=True,
                           mode="centralised" if method == "centralised" else "local")
            write_run(result, cfg, stage / method, command=command)
            summary["methods"][method] = _scores(result.evaluations)
            curves[method] = _curve(result.history.epochs, "epoch")
        if baseline:  # on the centralised LSTM's split: every site's share pooled
            progress("training gradient boosting (hgb) on the pooled shares")
            reference = baseline_on_split(cfg, splits["centralised"])
            if reference is not None:
                summary["methods"][reference["method"]] = _scores(reference["evaluations"])
        progress("training fed-lstm (Flower simulation)")
        run_federated(cfg, stage / "fed-lstm", command=command)
        fed = json.loads((stage / "fed-lstm" / "metrics.json").read_text())
        summary["methods"]["fed-lstm"] = _scores(fed["evaluations"])
        curves["fed-lstm"] = _curve([r for r in fed["rounds"] if r["round"] > 0], "round")
        (stage / "comparison.json").write_text(json.dumps(summary, indent=2))
        (stage / "comparison.md").write_text(comparison_markdown(summary, command))
        _plot(curves, stage / "comparison_curves.png",
              f"{data.spec.name} / {protocol} / {cfg.federation.partition}")
    return summary


SCORES = ("accuracy", "precision", "recall", "f1", "roc_auc", "fpr", "confusion_matrix")


def _scores(evaluations: dict) -> dict:
    return {name: {m: ev["binary"][m] for m in SCORES}
            for name, ev in evaluations.items() if name != "val"}


def _curve(records: list[dict], x_key: str) -> list[tuple[float, float]]:
    key = next((k for r in records for k in r if k.startswith("test_accuracy/")), None)
    return [(r[x_key], r[key]) for r in records if key and key in r]


def comparison_markdown(summary: dict, command: str | None) -> str:
    tests = sorted({t for scores in summary["methods"].values() for t in scores})
    lines = [f"# {summary['dataset']}: local-only vs centralised vs Fed-LSTM",
             f"Protocol **{summary['protocol']}**, partition `{summary['partition']}`, "
             f"clients: {', '.join(summary['clients'])}.", "",
             f"Command: `{command}`" if command else "", "",
             "| method | " + " | ".join(f"{t} acc | {t} F1 | {t} FPR | {t} tn/fp/fn/tp"
                                      for t in tests) + " |",
             "|---|" + "---|---|---|---|" * len(tests)]
    for method, scores in summary["methods"].items():
        cells = [_cells(scores[t]) if t in scores else "- | - | - | -" for t in tests]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cells(s: dict) -> str:
    (tn, fp), (fn, tp) = s["confusion_matrix"]
    fpr = "-" if s["fpr"] is None else f"{s['fpr']:.4f}"
    return f"{s['accuracy']:.4f} | {s['f1']:.4f} | {fpr} | {tn}/{fp}/{fn}/{tp}"


def _plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=method,
                    lw=2.5 if method == "fed-lstm" else 1.2)
    ax.set_xlabel("epoch (local / centralised) or round (Fed-LSTM)")
    ax.set_ylabel("test accuracy of the classifier (argmax; reporting only)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
