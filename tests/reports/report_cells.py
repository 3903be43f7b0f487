"""Check that every number in a reproduction report equals the step file it names.

Reads report.md table by table (with the heading and the paragraph before each table, which say
which steps a table shows) and recomputes every cell from `steps/*.json` alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fedlstm.reports import communication
from fedlstm.reports.report import (
    LABELS,
    NETWORKS,
    PAPER_TABLE_I,
    PAPER_TABLE_II,
    accuracy_fpr,
    confusion_cell,
    unseen_recall,
)

METHOD_OF = {label: method for method, label in LABELS.items()}
DATASET_OF = {label: ds for ds, label in NETWORKS.items()}
METRICS = ("accuracy", "precision", "recall", "f1")


def blocks(markdown: str) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(heading, previous paragraph, header, rows) of every table."""
    out, heading, paragraph, lines = [], "", "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("| "):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(_cells(lines[i]))
                i += 1
            out.append((heading, paragraph, header, rows))
            continue
        elif line.strip():
            paragraph = line
        i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _score(value) -> str:
    return "-" if value is None else f"{value:.4f}"


class Steps:
    def __init__(self, folder: Path):
        self.files = {p.stem: json.loads(p.read_text()) for p in (folder / "steps").glob("*.json")}

    def seeds(self, ds: str, prot: str, method: str) -> list[dict]:
        prefix = f"{ds}--{prot}--{method}--s"
        return [s for k, s in sorted(self.files.items()) if k.startswith(prefix)]

    def values(self, ds, prot, method, test, metric) -> list:
        """A metric over the seeds; `method` may name a hybrid's part (`fed-lstm:anomaly`)."""
        method, _, part = method.partition(":")
        out = []
        for s in self.seeds(ds, prot, method):
            ev = s["evaluations"].get(test)
            if ev is not None and part:
                ev = ev.get("parts", {}).get(part)
            if ev is not None and ev.get(metric) is not None:
                out.append(ev[metric])
        return out

    def scores(self, ds, prot, method, test) -> dict:
        return {m: self.values(ds, prot, method, test, m)
                for m in (*METRICS, "roc_auc", "fpr", "confusion_matrix")}


def check_report(folder: Path) -> int:
    """Assert every table cell of folder/report.md against the step files; the cells checked."""
    steps = Steps(folder)
    checked = 0
    for heading, paragraph, header, rows in blocks((folder / "report.md").read_text()):
        for row in rows:
            expected = _expected(steps, heading, paragraph, header, row)
            assert expected is not None, (heading, row)
            assert row == expected, (heading, paragraph, row, expected)
            checked += len(row)
    return checked


def _expected(steps: Steps, heading: str, paragraph: str, header, row):
    if heading.startswith("Table I:"):
        ds = re.match(r"\*\*(.+), protocol", paragraph).group(1)
        ds = DATASET_OF.get(ds, ds)
        prot = re.search(r"protocol `([^`]+)`", paragraph).group(1)
        method = METHOD_OF[row[0]]
        sc = steps.scores(ds, prot, method, "test")
        claim = PAPER_TABLE_I.get(method)
        return [row[0], *(mean_std(sc[m]) for m in (*METRICS, "fpr")),
                confusion_cell(sc["confusion_matrix"]), f"{claim:.4f}" if claim else "-"]
    if heading.startswith("Table II"):
        prot = re.search(r"`([^`]+)`", paragraph).group(1)
        nets = [DATASET_OF.get(n, n) for n in header[1:]]
        if row[0] == "Fed-LSTM, paper's claim":
            return [row[0], *(f"{PAPER_TABLE_II[('fed-lstm', d)]:.4f}"
                              if ("fed-lstm", d) in PAPER_TABLE_II else "-" for d in nets)]
        method = METHOD_OF[row[0]]
        return [row[0], *(accuracy_fpr(steps.scores(d, prot, method, "test")) for d in nets)]
    if heading == "All methods, all test sets":
        ds, prot, method, test = row[0], row[1], METHOD_OF[row[2]], row[3]
        sc = steps.scores(ds, prot, method, test)
        return row[:4] + [mean_std(sc[m]) for m in (*METRICS, "roc_auc", "fpr")] + \
            [confusion_cell(sc["confusion_matrix"])]
    if heading == "Targets":
        return _target_row(steps, row)
    if heading == "Attack types unseen in training":
        ds, prot, test, attack = DATASET_OF.get(row[0], row[0]), row[1], row[2], row[3]
        fed = steps.files[f"{ds}--{prot}--fed-lstm--s0"]["evaluations"][test]
        names = fed["unseen"]["attacks"] if attack == "all unseen" else [attack]
        cols = [fed["by_attack"], fed["parts_by_attack"]["supervised"],
                fed["parts_by_attack"]["anomaly"]]
        for m in ("lstm", "hgb"):
            other = steps.files.get(f"{ds}--{prot}--{m}--s0", {})
            cols.append(other.get("evaluations", {}).get(test, {}).get("by_attack", {}))
        n = sum(fed["by_attack"][a]["n"] for a in names)
        return [*row[:4], f"{n:,}", *(unseen_recall(c, names) for c in cols)]
    if heading == "The alert budget's trade-off":
        ds, prot, test = DATASET_OF.get(row[0], row[0]), row[1], row[2]
        curve = steps.files[f"{ds}--{prot}--fed-lstm--s0"]["budget_curve"]
        point = next(p for p in curve if f"{p['budget']:g}" == row[3].split()[0])
        return [*row[:3], f"{point['budget']:g}" + (" (default)" if point["default"] else ""),
                *(_score(point[test][m]) for m in ("accuracy", "recall", "fpr"))]
    if heading == "Train/test overlap":
        r = steps.files[f"overlap--{DATASET_OF.get(row[0], row[0])}--{row[1]}"]
        v = r["tests"][row[2]]
        return [row[0], row[1], row[2], f"{v['n']:,}", f"{v['overlap']:.4f}", f"{v['n_dedup']:,}",
                f"{v['overlap_dedup']:.4f}", f"{r['duplicates_removed']:,}"]
    cells = ("accuracy", "fpr", "f1", "roc_auc")
    if heading.startswith("Privacy"):
        r = steps.files["privacy--epsinf--s0" if row[0].startswith("∞")
                        else f"privacy--eps{row[0]}--s0"]
        ev = r["evaluations"][row[3]]
        target = "∞ (no DP)" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        return [target, "-" if r.get("epsilon") is None else f"{r['epsilon']:.2f}",
                "-" if r.get("delta") is None else f"{r['delta']:.1e}", row[3],
                *(_score(ev.get(k)) for k in cells)]
    if heading.startswith("Non-IID"):
        if row[0] == "IID, FedAvg":
            r = steps.files["noniid--iid--s0"]
        else:
            r = steps.files["noniid--fedavg--s0" if row[0].endswith("FedAvg")
                            else "noniid--fedprox--s0"]
            mu = r["config"]["federation"]["proximal_mu"]
            assert row[0] in ("Dirichlet, FedAvg", f"Dirichlet, FedProx (μ = {mu:g})"), row
        ev = r["evaluations"][row[1]]
        return [row[0], row[1], *(_score(ev.get(k)) for k in cells)]
    if heading.startswith("Unsupervised"):
        ev = steps.files["anomaly--nsl-kdd--s0"]["evaluations"][row[0]]
        unseen = (f"{ev['unseen_recall']:.4f} (n = {ev['unseen_n']:,})"
                  if ev.get("unseen_recall") is not None else "- (none)")
        return [row[0], *(_score(ev.get(k)) for k in ("accuracy", "fpr", "precision", "recall",
                                                      "f1", "roc_auc", "recall_at_fpr")), unseen]
    if heading.startswith("Communication"):
        return _communication_row(steps, row)
    if heading.startswith("Robustness"):
        run = steps.files[f"robust--{row[0]}--{row[1]}--s0"]
        clean = steps.files[f"robust--clean--{row[1]}--s0"]
        ev, acc0 = run["evaluations"]["test"], clean["evaluations"]["test"]["accuracy"]
        left_out = run["left_out_of_calibration"]
        return [row[0], row[1], f"{ev['accuracy']:.4f}", f"{100 * (ev['accuracy'] - acc0):+.2f}",
                f"{ev['fpr']:.4f}", ", ".join(run["malicious_sites"]) or "-",
                "-" if left_out is None else ", ".join(left_out) or "none",
                f"{run['normal_windows']:,}"]
    if heading.startswith("Networks A, B, C"):
        return _networks_row(steps, header, row)
    if heading == "Wall time of every step":
        return [row[0], f"{steps.files[row[0]].get('seconds', 0):.1f}"]
    return None


def _communication_row(steps: Steps, row: list[str]) -> list[str]:
    """A row of the communication table, recomputed from the study's step files."""
    ds = DATASET_OF.get(row[0], row[0])
    runs = {k.split("--")[2]: v for k, v in steps.files.items() if k.startswith(f"comm--{ds}--")}
    runs["none"] = next(v for v in steps.files.values()  # the dataset's Fed-LSTM step, seed 0
                        if v.get("comm_reference") and v["step"]["dataset"] == ds)
    mode = next(m for m in runs if communication.label(m) == row[1])

    def bytes_per_round(run):
        rounds = [r for r in run["curves"] if "bytes_up" in r]
        return (np.mean([r["bytes_up"] for r in rounds]),
                np.mean([r["bytes_down"] + r.get("eval_bytes_down", 0) for r in rounds]))

    (up, down), (up0, down0) = bytes_per_round(runs[mode]), bytes_per_round(runs["none"])
    ev, acc0 = runs[mode]["evaluations"]["test"], runs["none"]["evaluations"]["test"]["accuracy"]
    val = [r["val_loss"] for r in runs[mode]["curves"] if "val_loss" in r]
    delta = 100 * (ev["accuracy"] - acc0)
    target = "-"
    if mode in communication.TARGETS:
        cap, pp = communication.TARGETS[mode]
        target = "met" if up / up0 <= cap and delta >= -pp else "missed"
    traffic, traffic0 = runs[mode].get("traffic_bytes"), runs["none"].get("traffic_bytes")
    cal = (f"{traffic['get_properties_up'] / 1e3:,.1f} / "
           f"{traffic['get_properties_down'] / 1e3:,.1f}") if traffic else "-"
    up_all = [sum(v for k, v in t.items() if k.endswith("_up")) if t else None
              for t in (traffic, traffic0)]
    whole = f"{up_all[0] / up_all[1]:.3f}x" if traffic and traffic0 else "-"
    return [row[0], row[1], f"{up / 1e3:,.1f}", f"{up / up0:.3f}x", f"{down / 1e3:,.1f}",
            f"{down / down0:.3f}x", cal, whole, f"{ev['accuracy']:.4f}", f"{delta:+.2f}", f"{ev['fpr']:.4f}",
            f"{ev['roc_auc']:.4f}", f"{val[-1]:.4f}" if val else "-", target]


def _target_row(steps: Steps, row: list[str]) -> list[str]:
    """A row of the targets table, recomputed: the Fed-LSTM mean accuracy and met/missed."""
    what = row[0]
    name = re.match(r"(.+?) `([^`]+)`", what)
    ds, prot = DATASET_OF.get(name.group(1), name.group(1)), name.group(2)
    test = "test-21" if what.endswith("Test-21") else "test"
    fed = float(np.mean(steps.values(ds, prot, "fed-lstm", test, "accuracy")))
    if "vs centralised" in what:
        central = float(np.mean(steps.values(ds, prot, "lstm", "test", "accuracy")))
        target, text = central - 0.005, f"≥ {central:.4f} − 0.5 pp"
    elif "vs best baseline" in what:
        label = re.search(r"\(([^()]+)\)$", what).group(1)
        best = float(np.mean(steps.values(ds, prot, METHOD_OF[label], "test", "accuracy")))
        target, text = best - 0.003, f"≥ {best:.4f} − 0.3 pp"
    elif "vs the paper" in what:
        target = PAPER_TABLE_II[("fed-lstm", ds)]
        text = f"≥ {target:.4f} (paper)"
    else:
        target = {"test-21": 0.80}.get(test, 0.90 if ds == "nsl-kdd" else 0.945)
        text = f"≥ {target:.4f}"
    return [what, f"{fed:.4f}", text, "met" if fed >= target - 1e-12 else "**missed**"]


def _networks_row(steps: Steps, header: list[str], row: list[str]) -> list[str]:
    """A row of the Networks A, B, C tables, recomputed from the study's per-seed files."""
    from fedlstm.reports.networks import HEADINGS, VALIDATION_HEADING

    step = next(s for s in steps.files.values() if s.get("kind") == "networks")
    seeds = [json.loads(p.read_text())["result"]
             for p in sorted(Path(step["out"], "seeds").glob("seed*.json"))]

    def cell(runs: list[dict], value: str = "accuracy", bracket: str = "fpr",
             places: int = 3) -> str:
        if not runs:
            return "–"
        values = [r[value] for r in runs]
        sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
        return f"{np.mean(values):.4f}{sd} ({np.mean([r[bracket] for r in runs]):.{places}f})"

    column = {v: k for k, v in HEADINGS.items()}
    if header[:2] == ["network", "test set"]:
        name, test = row[0].split()[-1], row[1].split(" (")[0]
        return row[:2] + [cell([s["cells"][name][column[h]][test] for s in seeds
                                if column[h] in s["cells"][name]]) for h in header[2:]]
    if header[:2] == ["network", HEADINGS["local"]]:  # each network's own families
        name = row[0]
        test = sorted(seeds[0]["cells"][name]["local"], key=lambda k: (k.count("-21"), k))[0]
        return [name, *(cell([s["cells"][name][column[h]][test]["family"] for s in seeds
                              if column[h] in s["cells"][name]], "macro_f1", "accuracy", 4)
                        for h in header[1:])]
    if header[0] == VALIDATION_HEADING:  # each site's detector on its validation data
        def val_cell(runs: list[dict]) -> str:
            auc = [r["roc_auc"] for r in runs if r["roc_auc"] is not None]
            return f"{np.mean([r['accuracy'] for r in runs]):.4f}" + (
                f" ({np.mean(auc):.4f})" if auc else "")
        return [row[0], *(val_cell([s["detector_val"][row[0]][column[h]] for s in seeds])
                          for h in header[1:])]
    if header[0] == "network":  # input modes on validation
        return [row[0], *(f"{np.mean([s['val'][row[0]][m] for s in seeds]):.4f}"
                          for m in header[1:])]
    if header[0] == "starved network":
        name = row[0].split(" (")[0]
        runs = [s["starved"][name] for s in seeds]
        test = sorted(runs[0]["local"], key=lambda k: (k.count("-21"), k))[0]
        local = [r["local"][test] for r in runs]
        fed = [r["federated"][test] for r in runs]
        gain = 100 * (np.mean([r["accuracy"] for r in fed]) - np.mean([r["accuracy"] for r in local]))
        return [row[0], f"{runs[0]['train_records']:,}", cell(local), cell(fed), f"{gain:+.1f} pp"]
    key = row[0].replace(" -> ", "->")
    runs = [s["zero_shot"][key] for s in seeds]
    if runs[0] is None:
        return [row[0], "n/a: another schema, its encoder cannot read it"]
    return [row[0], f"{np.mean([r['accuracy'] for r in runs]):.4f} "
                    f"({np.mean([r['fpr'] for r in runs]):.3f})"]
