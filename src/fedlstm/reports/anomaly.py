"""Unsupervised detection report: the Mahalanobis detector, centralised and federated, on every
dataset's official split (random split where only one file exists), beside the supervised LSTM
and Fed-LSTM read at the same false-positive rate, with ROC and precision-recall figures.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedlstm.config import RunConfig
from fedlstm.data.registry import available_roles, data_dir
from fedlstm.data.schemas import get_spec
from fedlstm.data.splits import build_split
from fedlstm.federation.simulation import federate
from fedlstm.federation.sites import federated_data
from fedlstm.runs import plots
from fedlstm.runs.rundir import json_default, staged_dir, write_results
from fedlstm.tasks import task_for
from fedlstm.tasks.anomaly import matched_fpr_comparison
from fedlstm.tasks.base import evaluate_detector
from fedlstm.tasks.centralised import train

log = logging.getLogger(__name__)


def supervised_config(cfg: RunConfig) -> RunConfig:
    """The supervised LSTM the anomaly detector is compared with: same data, windows, seed."""
    return cfg.model_copy(update={"detector": "supervised", "model": cfg.model.model_copy(
        update={"name": "lstm", "task": "binary"})})


def dataset_config(cfg: RunConfig, dataset: str) -> RunConfig:
    """The official split where the training file is present, a random split otherwise."""
    spec = get_spec(dataset)
    protocol = cfg.data.protocol
    if protocol == "official" and "train" not in available_roles(spec, data_dir(cfg.data.data_dir)):
        protocol = "random-split"
    return cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"dataset": dataset, "protocol": protocol})})


def run_dataset(cfg: RunConfig, out: Path, engine: str, command: str | None,
                progress: Callable[[str], None] = lambda text: None) -> dict:
    """Centralised and federated detector plus the supervised comparators on one dataset."""
    ds = cfg.data.dataset
    sup_cfg = supervised_config(cfg)
    timings: dict = {}
    rows: dict = {}

    progress(f"{ds}: centralised anomaly detector")
    t = time.perf_counter()
    split = build_split(cfg.data, seed=cfg.seed)
    central = train(task_for(cfg), split)
    timings["centralised_anomaly_seconds"] = time.perf_counter() - t
    progress(f"{ds}: centralised supervised LSTM")
    t = time.perf_counter()
    sup = train(task_for(sup_cfg), split)
    timings["centralised_supervised_seconds"] = time.perf_counter() - t
    rows["centralised"] = _compare(central.evaluations, sup.evaluations)
    with staged_dir(out / ds / "centralised", overwrite=True) as stage:
        write_results(stage, cfg, central.bundle, central.evaluations,
                      {"data_notes": split.notes, "history": central.history.to_dict(),
                       "comparison": rows["centralised"]}, command)

    progress(f"{ds}: federated anomaly detector ({engine})")
    t = time.perf_counter()
    data = federated_data(cfg)
    seen = np.concatenate([c.attack for c in data.clients])
    with staged_dir(out / ds / "federated", overwrite=True) as stage:
        server = federate(cfg, data, stage, engine)
        fed_evals = {name: server.task.evaluate(server.result, recs, seen)
                     for name, recs in data.tests.items()}
        timings["federated_anomaly_seconds"] = time.perf_counter() - t
        progress(f"{ds}: supervised Fed-LSTM (in-process FedAvg)")
        t = time.perf_counter()
        fed_sup_cfg = sup_cfg.model_copy(update={"federation": sup_cfg.federation.model_copy(
            update={"server_test_curves": False})})
        sup_server = federate(fed_sup_cfg, data, engine="inprocess")
        fed_sup = {name: evaluate_detector(sup_server.result, recs)
                   for name, recs in data.tests.items()}
        timings["federated_supervised_seconds"] = time.perf_counter() - t
        rows["federated"] = _compare(fed_evals, fed_sup)
        write_results(stage, server.cfg, server.result, fed_evals,
                      {"data_notes": data.notes,
                       "rounds": [server.rounds[k] for k in sorted(server.rounds)],
                       "answers_received": server.answers_received,
                       "comparison": rows["federated"]}, command)
    figures = _figures(out / ds, ds, split.protocol, central.evaluations, sup.evaluations,
                       fed_evals, fed_sup)
    return {"dataset": ds, "protocol": split.protocol, "rows": rows, "timings": timings,
            "figures": figures, "data_notes": split.notes}


def _compare(anomaly_evals: dict, supervised_evals: dict) -> dict:
    out = {}
    for name, ev in anomaly_evals.items():
        if name == "val" or name not in supervised_evals:
            continue
        out[name] = {"binary": ev["binary"], "at_fpr": ev["at_fpr"], "unseen": ev["unseen"],
                     "supervised_binary": supervised_evals[name]["binary"],
                     "supervised": matched_fpr_comparison(ev, supervised_evals[name])}
    return out


def _figures(folder: Path, ds: str, protocol: str, central: dict, sup: dict, fed: dict,
             fed_sup: dict) -> list[str]:
    paths = []
    for name in (n for n in central if n != "val"):
        curves = {"anomaly, centralised": central[name], "anomaly, federated": fed.get(name),
                  "supervised LSTM": sup.get(name), "supervised Fed-LSTM": fed_sup.get(name)}
        curves = {k: (v["_curve"]["y"], v["_curve"]["score"]) for k, v in curves.items() if v}
        safe = name.replace("/", "_")
        title = f"{ds} / {protocol} / {name}"
        paths.append(str(plots.roc_curves(curves, folder / f"roc_{safe}.png", title)))
        paths.append(str(plots.pr_curves(curves, folder / f"pr_{safe}.png", title)))
    return paths


def markdown_table(results: list[dict], fpr: float) -> str:
    pct = f"{fpr:.0%}"
    head = ["dataset", "protocol", "mode", "test set", "accuracy", "precision", "recall", "F1",
            "ROC-AUC", "PR-AUC", "FPR at ζ", f"recall at {pct} test FPR (oracle)", "unseen n",
            "unseen recall at ζ", "supervised unseen recall at same test FPR (oracle)",
            f"unseen recall at {pct} test FPR (oracle)",
            f"supervised unseen recall at {pct} test FPR (oracle)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for mode, sets in r["rows"].items():
            for name, row in sets.items():
                b, u, s = row["binary"], row["unseen"], row["supervised"]
                cells = [r["dataset"], r["protocol"], mode, name,
                         *(_f(b[k]) for k in ("accuracy", "precision", "recall", "f1", "roc_auc",
                                              "pr_auc", "fpr")),
                         _f(row["at_fpr"]["recall"]), f"{u['n']:,}", _f(u["recall_at_threshold"]),
                         _f(s["at_threshold"]["supervised_unseen_recall"]),
                         _f(u["recall_at_fpr"]), _f(s["at_fpr"]["supervised_unseen_recall"])]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def anomaly_report(cfg: RunConfig, datasets: list[str], out: str | Path,
                   engine: str = "flower", command: str | None = None,
                   progress: Callable[[str], None] = lambda text: None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for ds in datasets:
        results.append(run_dataset(dataset_config(cfg, ds), out, engine, command, progress))
    a = cfg.anomaly
    text = ["# Unsupervised LSTM anomaly detection (Mahalanobis, Eq. 12)\n",
            f"Command: `{command}`\n" if command else "",
            f"Model `{a.model}`, W={cfg.windows.window}, hidden {cfg.model.hidden_size}, "
            f"{cfg.train.epochs} epochs (centralised) / {cfg.federation.rounds} rounds x "
            f"{cfg.federation.local_epochs} local epochs on {cfg.federation.clients} clients "
            f"({cfg.federation.partition}, engine {engine}); threshold policy `{a.threshold}` "
            f"(β={a.beta}, target FPR {a.target_fpr}); max_train_rows={cfg.data.max_train_rows}, "
            f"max_test_rows={cfg.data.max_test_rows}, seed {cfg.seed}.\n",
            "ζ is chosen on validation data carved from the training file; 'at the same FPR' "
            "reads the supervised detector's ROC on the same test windows at the FPR the anomaly "
            "detector has there (reporting only). Every 'at X FPR' column is an oracle operating "
            "point: its threshold is read off the test set's own ROC, which a deployed detector "
            "cannot do; the columns at ζ are what a deployment gets. 'Unseen' = attack types "
            "absent from the training file (training and validation records).\n",
            markdown_table(results, a.report_fpr), "",
            f"Total time {time.perf_counter() - t0:.0f} s.\n"]
    (out / "report.md").write_text("\n".join(text))
    (out / "report.json").write_text(json.dumps({"config": json.loads(cfg.model_dump_json()),
                                                 "engine": engine, "command": command,
                                                 "results": results}, indent=2, default=json_default))
    return out / "report.md"
