"""Check that every number in a reproduction report equals the step file it names.

Reads report.md table by table (with the heading and the paragraph before each table, which say
which steps a table shows) and recomputes every cell from `steps/*.json` alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from fedlstm.reports.report import LABELS, NETWORKS

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

    def values(self, ds, prot, method, test, metric) -> list[float]:
        return [s["evaluations"][test][metric] for s in self.seeds(ds, prot, method)
                if test in s["evaluations"] and s["evaluations"][test].get(metric) is not None]


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
        claim = row[-1]
        return [row[0], *(mean_std(steps.values(ds, prot, method, "test", m)) for m in METRICS),
                claim if method == "fed-lstm" else "-"]
    if heading.startswith("Table II"):
        prot = re.search(r"`([^`]+)`", paragraph).group(1)
        method = METHOD_OF[row[0]]
        return [row[0], *(mean_std(steps.values(DATASET_OF.get(n, n), prot, method, "test", "accuracy"))
                          for n in header[1:])]
    if heading == "All methods, all test sets":
        ds, prot, method, test = row[0], row[1], METHOD_OF[row[2]], row[3]
        return row[:4] + [mean_std(steps.values(ds, prot, method, test, m))
                          for m in (*METRICS, "roc_auc", "fpr")]
    if heading == "Train/test overlap":
        r = steps.files[f"overlap--{DATASET_OF.get(row[0], row[0])}--{row[1]}"]
        v = r["tests"][row[2]]
        return [row[0], row[1], row[2], f"{v['n']:,}", f"{v['overlap']:.4f}", f"{v['n_dedup']:,}",
                f"{v['overlap_dedup']:.4f}", f"{r['duplicates_removed']:,}"]
    if heading.startswith("Privacy"):
        prot = re.search(r"protocol `([^`]+)`", paragraph).group(1)
        if row[0].startswith("∞"):
            ev = steps.files[f"nsl-kdd--{prot}--fed-lstm--s0"]["evaluations"][row[3]]
            return [row[0], "-", "-", row[3], *(_score(ev.get(k)) for k in ("accuracy", "f1", "roc_auc"))]
        r = steps.files[f"privacy--eps{row[0]}--s0"]
        ev = r["evaluations"][row[3]]
        return [f"{r['target_epsilon']:g}", f"{r['epsilon']:.2f}",
                "-" if r.get("delta") is None else f"{r['delta']:.1e}", row[3],
                *(_score(ev.get(k)) for k in ("accuracy", "f1", "roc_auc"))]
    if heading.startswith("Non-IID"):
        prot = re.search(r"protocol `([^`]+)`", paragraph).group(1)
        if row[0] == "IID, FedAvg":
            r = steps.files[f"nsl-kdd--{prot}--fed-lstm--s0"]
        else:
            r = steps.files["noniid--fedavg--s0" if row[0].endswith("FedAvg")
                            else "noniid--fedprox--s0"]
            mu = r["config"]["federation"]["proximal_mu"]
            assert row[0] in ("Dirichlet, FedAvg", f"Dirichlet, FedProx (μ = {mu:g})"), row
        ev = r["evaluations"][row[1]]
        return [row[0], row[1], *(_score(ev.get(k)) for k in ("accuracy", "f1", "roc_auc"))]
    if heading.startswith("Unsupervised"):
        ev = steps.files["anomaly--nsl-kdd--s0"]["evaluations"][row[0]]
        unseen = (f"{ev['unseen_recall']:.4f} (n = {ev['unseen_n']:,})"
                  if ev.get("unseen_recall") is not None else "- (none)")
        return [row[0], *(_score(ev.get(k)) for k in ("accuracy", "precision", "recall", "f1",
                                                      "roc_auc", "recall_at_fpr")), unseen]
    if heading == "Wall time of every step":
        return [row[0], f"{steps.files[row[0]].get('seconds', 0):.1f}"]
    return None
