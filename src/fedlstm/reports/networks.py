"""Networks A, B and C in one Fed-LSTM (the paper's Table II / Fig. 5d), measured honestly.

For each seed, every network (NSL-KDD, KDD99, UNSW-NB15 by default) is scored on its own test
set (official, or its random split where only one file exists) by:
- its local-only model: the same encoder + LSTM, trained on that network alone for the same
  rounds x local epochs (a federation of one site: the same code path);
- the same-schema federation (A+B: one plain model, merged preprocessing), where one exists;
- the cross-schema federation (A+B+C: private encoders, shared body), with each input mode;
- its centralised model (`fedlstm train` on that network: its tuned model settings, with the
  study's detector, threshold and training rows) and gradient
  boosting on the same split (the strongest simple baseline).
Each site's detector also names the site's own attack families (its private head); those are
scored next to gradient boosting trained on the same families.
Then one network is starved (a small share of its training rows) and its local-only model is
compared with the federation that includes it. Zero-shot: each local-only model on the other
networks of its own schema (another schema's records cannot be read by its encoder).
Every site's detector is its own: its classifier's threshold is `train.fixed_threshold` (with
`train.threshold=val-f1`, best F1 on the site's own validation data), a hybrid's ζ comes from the
site's own normal validation traffic; test sets only score.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedlstm.config import RunConfig, load_config  # noqa: E402
from fedlstm.federation.inprocess import run_inprocess  # noqa: E402
from fedlstm.federation.networks import (  # noqa: E402
    NetworkServer,
    NetworkSite,
)
from fedlstm.federation.sites import FederatedData, federated_data, network_split  # noqa: E402
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.base import training_attacks  # noqa: E402

log = logging.getLogger(__name__)
NETWORKS = ("nsl-kdd", "kdd99", "unsw-nb15")
LETTERS = {"nsl-kdd": "A", "kdd99": "B", "unsw-nb15": "C"}
MODES = ("encoders", "harmonised")
COLUMNS = ("local", "same-schema", "encoders", "harmonised", "centralised", "hgb")
FAMILY_COLUMNS = ("local", "encoders", "harmonised", "hgb-family")
VALIDATION_HEADING = "network (its validation data)"
HEADINGS = {"local": "local-only", "same-schema": "same-schema fed. (A+B)",
            "encoders": "cross-schema fed., encoders", "harmonised": "cross-schema fed., harmonised",
            "centralised": "centralised LSTM", "hgb": "gradient boosting",
            "hgb-family": "gradient boosting, same families"}
STUDY_ROWS = 20_000  # training rows per network (`fedlstm networks`, reproduce)
STARVE_FRACTION = 0.02


DETECTOR_VAL_TEXT = ("Each site's final detector on its own validation data (mean accuracy over "
                     "seeds, ROC-AUC in brackets):")


def _score(ev: dict) -> dict:
    b = ev["binary"]
    out = {"accuracy": b["accuracy"], "fpr": b["fpr"], "f1": b["f1"],
           "confusion_matrix": b["confusion_matrix"]}
    if "family" in ev:  # a site report's, or a whole evaluation's
        fam = ev["family"]
        out["family"] = {"accuracy": fam["accuracy"],
                         "macro_f1": fam["macro_f1"] if "macro_f1" in fam else fam["macro"]["f1"]}
    return out


def _main_test(tests: dict) -> str:
    return sorted(tests, key=lambda k: (k.count("-21"), k))[0]  # test+ before test-21


def _with_inputs(cfg: RunConfig, inputs: str, networks: list[str]) -> RunConfig:
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update={
        "partition": "networks", "networks": networks, "inputs": inputs,
        "clients": len(networks), "server_test_curves": False})})


def _federate_sites(cfg: RunConfig, data: FederatedData, which: list[int]):
    """The in-process federation of the sites `which` (one site: its local-only model)."""
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"clients": len(which)})})
    server = NetworkServer(task_for(cfg))
    sites = [NetworkSite(server.task, data.clients[i], data.specs[i], data.names[i],
                         data.site_tests(i)) for i in which]
    run_inprocess(server, sites)  # ends with every site's report on its own test sets
    val = server.rounds[max(server.rounds)].get("clients_val", {})
    return {s.name: {"tests": {k: _score(v) for k, v in server.reports[s.name]["tests"].items()},
                     "val_accuracy": val.get(s.name, {}).get("val_accuracy"),
                     "validation": server.reports[s.name]["validation"],
                     "train_records": len(s.train_records)} for s in sites}, sites


def _same_schema(cfg: RunConfig, networks: list[str]) -> dict:
    from fedlstm.federation.client import ClientTask
    from fedlstm.federation.server import ServerTask

    cfg = _with_inputs(cfg, "shared", networks)
    data = federated_data(cfg)
    server = ServerTask(task_for(cfg), data.spec, data.tests)
    run_inprocess(server, [ClientTask(server.task, r, data.spec, n)
                           for r, n in zip(data.clients, data.names)])
    evaluations, _ = server.results(training_attacks(*data.clients), None, {}, {})
    return {ds: {"tests": {k: _score(v) for k, v in evaluations.items()
                           if k.startswith(f"{ds}/")}}
            for ds in networks}


def _centralised(base: RunConfig, dataset: str, model: str, task: str = "binary") -> dict:
    """`fedlstm train --dataset DATASET` (its tuned defaults) on the network's own split."""
    from fedlstm.tasks.centralised import train

    # gradient boosting is the supervised baseline; the LSTM is the study's detector
    detector = base.detector if model == "lstm" else "supervised"
    overrides = [f"data.dataset={dataset}", f"seed={base.seed}", f"model.name={model}",
                 f"model.task={task}", f"detector={detector}",
                 f"data.protocol={base.data.protocol}", f"train.threshold={base.train.threshold}"]
    if base.data.max_train_rows:
        overrides.append(f"data.max_train_rows={base.data.max_train_rows}")
    if base.data.max_test_rows:
        overrides.append(f"data.max_test_rows={base.data.max_test_rows}")
    if base.data.data_dir:
        overrides.append(f"data.data_dir={base.data.data_dir}")
    cfg = load_config(None, overrides)
    result = train(task_for(cfg), network_split(cfg, dataset, carve_val=True))
    return {"tests": {f"{dataset}/{k}": _score(v) for k, v in result.evaluations.items()
                      if k != "val"}}


def starve(data: FederatedData, index: int, fraction: float, seed: int) -> FederatedData:
    """The same sites with site `index` keeping a seeded random `fraction` of its rows."""
    recs = data.clients[index]
    keep = max(int(round(fraction * len(recs))), 50)
    idx = np.sort(np.random.default_rng(seed).choice(len(recs), min(keep, len(recs)),
                                                     replace=False))
    clients = list(data.clients)
    clients[index] = recs.take(idx)
    return replace(data, clients=clients)


def _zero_shot(sites: list[NetworkSite], data: FederatedData) -> dict:
    """Each local-only model on the test sets of the other networks of its schema."""
    out = {}
    for site in sites:
        columns = tuple(site.spec.feature_columns)
        for j, other in enumerate(data.specs):
            if other.name == site.spec.name:
                continue
            if tuple(other.feature_columns) != columns:
                out[f"{site.name}->{other.name}"] = None  # its encoder cannot read that schema
                continue
            tests = data.site_tests(j)
            recs = site.scored_records(tests[_main_test(tests)])  # one schema: one vocabulary
            out[f"{site.name}->{other.name}"] = _score(site.task.evaluate(
                site.detector, recs, training_attacks(site.train_records)))
    return out


def run_seed(cfg: RunConfig, networks: list[str], modes=MODES, starved: tuple[str, ...] = (),
             starve_fraction: float = STARVE_FRACTION, progress=None) -> dict:
    progress = progress or (lambda text: None)
    out: dict = {"seed": cfg.seed, "cells": {}, "val": {}, "detector_val": {}, "starved": {}}
    cells = out["cells"]
    base = _with_inputs(cfg, MODES[0], networks)
    data = federated_data(base)
    out["protocols"] = {n: data.notes.get(n, {}).get("protocol", cfg.data.protocol)
                        for n in data.names}
    for mode in modes:
        progress(f"seed {cfg.seed}: A+B+C federation ({mode})")
        fed, _ = _federate_sites(_with_inputs(cfg, mode, networks), data,
                                 list(range(len(networks))))
        for name, r in fed.items():
            cells.setdefault(name, {})[mode] = r["tests"]
            out["val"].setdefault(name, {})[mode] = r["val_accuracy"]
            out["detector_val"].setdefault(name, {})[mode] = r["validation"]
    local_sites = []
    for i, name in enumerate(data.names):
        progress(f"seed {cfg.seed}: {name} alone")
        local, sites = _federate_sites(base, data, [i])
        cells[name]["local"] = local[name]["tests"]
        out["detector_val"][name]["local"] = local[name]["validation"]
        local_sites += sites
    out["zero_shot"] = _zero_shot(local_sites, data)
    same = [n for n in networks if n in ("nsl-kdd", "kdd99")]
    if len(same) >= 2:
        progress(f"seed {cfg.seed}: same-schema federation {'+'.join(same)}")
        for name, r in _same_schema(cfg, same).items():
            cells[name]["same-schema"] = r["tests"]
    for name in data.names:
        for model, key, task in (("lstm", "centralised", "binary"), ("hgb", "hgb", "binary"),
                                 ("hgb", "hgb-family", "family")):
            progress(f"seed {cfg.seed}: {name} {key}")
            cells[name][key] = _centralised(cfg, name, model, task)["tests"]
    for name in starved:
        i = data.names.index(name)
        thin = starve(data, i, starve_fraction, cfg.seed)
        progress(f"seed {cfg.seed}: {name} starved to {starve_fraction:.0%}")
        local, _ = _federate_sites(base, thin, [i])
        fed, _ = _federate_sites(base, thin, list(range(len(networks))))
        out["starved"][name] = {"fraction": starve_fraction,
                                "train_records": local[name]["train_records"],
                                "local": local[name]["tests"], "federated": fed[name]["tests"],
                                "validation": {"local": local[name]["validation"],
                                               "federated": fed[name]["validation"]}}
    return out


def seed_result(cfg: RunConfig, out: str | Path, networks=NETWORKS, modes=MODES,
                starved: tuple[str, ...] = NETWORKS, starve_fraction: float = STARVE_FRACTION,
                progress=None) -> dict:
    """One seed (`cfg.seed`) of the study, cached in `out/seeds/seed<N>.json` under its settings.
    Seeds are independent: `reproduce` runs each as its own step, side by side."""
    out = Path(out)
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    networks = list(networks)
    path = out / "seeds" / f"seed{cfg.seed}.json"
    key = json.dumps({"cfg": json.loads(cfg.model_dump_json()), "networks": networks,
                      "modes": list(modes), "starved": list(starved),
                      "fraction": starve_fraction}, sort_keys=True)
    if path.exists() and json.loads(path.read_text()).get("key") == key:
        return json.loads(path.read_text())["result"]
    result = run_seed(cfg, networks, modes, tuple(starved), starve_fraction, progress)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    tmp.replace(path)  # complete on disk or absent
    return result


def write_study(cfg: RunConfig, out: str | Path, results: list[dict], networks=NETWORKS,
                modes=MODES, command: str | None = None) -> dict:
    """networks.md, networks.json and networks.png in `out` from the seeds' results; returns
    their summary."""
    out, networks = Path(out), list(networks)
    summary = summarise(results, networks, modes)
    (out / "networks.json").write_text(json.dumps({"summary": summary, "seeds": results},
                                                  indent=1))
    (out / "networks.md").write_text(table(cfg, summary, networks, modes, command))
    figure(summary, networks, out / "networks.png")
    return summary


def study(cfg: RunConfig, out: str | Path, networks=NETWORKS, seeds=(0, 1, 2), modes=MODES,
          starved: tuple[str, ...] = NETWORKS, starve_fraction: float = STARVE_FRACTION,
          command: str | None = None, progress=None) -> Path:
    """Every seed (cached per seed in `out`), then networks.md, networks.json, networks.png."""
    results = [seed_result(cfg.model_copy(update={"seed": seed}), out, networks, modes, starved,
                           starve_fraction, progress) for seed in seeds]
    write_study(cfg, out, results, networks, modes, command)
    return Path(out) / "networks.md"


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _sd(values: list[float]) -> float:
    """Sample standard deviation over seeds (as every report table), 0 for one seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(results: list[dict], networks: list[str], modes=MODES) -> dict:
    first = results[0]
    summary: dict = {"seeds": [r["seed"] for r in results], "protocols": first["protocols"],
                     "cells": {}, "val": {}, "detector_val": {}, "zero_shot": {}, "starved": {},
                     "families": {}}
    for name in networks:
        test = _main_test(first["cells"][name]["local"])
        summary["cells"][name] = {"test": test}
        for col in COLUMNS:
            runs = [r["cells"][name].get(col, {}).get(test) for r in results]
            runs = [x for x in runs if x]
            if runs:
                summary["cells"][name][col] = {
                    "accuracy": _mean([x["accuracy"] for x in runs]),
                    "accuracy_sd": _sd([x["accuracy"] for x in runs]),
                    "fpr": _mean([x["fpr"] for x in runs]), "n_seeds": len(runs),
                    "confusion_matrix": np.sum([x["confusion_matrix"] for x in runs], 0).tolist()}
        summary["val"][name] = {m: _mean([r["val"][name].get(m) for r in results]) for m in modes}
        summary["detector_val"][name] = {
            col: {k: _mean([r["detector_val"][name][col][k] for r in results])
                  for k in ("accuracy", "roc_auc")} for col in ("local", *modes)}
        families = {}
        for col in FAMILY_COLUMNS:
            runs = [(r["cells"][name].get(col, {}).get(test) or {}).get("family") for r in results]
            runs = [x for x in runs if x]
            if runs:
                families[col] = {"macro_f1": _mean([x["macro_f1"] for x in runs]),
                                 "macro_f1_sd": _sd([x["macro_f1"] for x in runs]),
                                 "accuracy": _mean([x["accuracy"] for x in runs]),
                                 "n_seeds": len(runs)}
        if families:
            summary["families"][name] = families
    for key in first.get("zero_shot", {}):
        runs = [r["zero_shot"][key] for r in results]
        summary["zero_shot"][key] = None if runs[0] is None else {
            "accuracy": _mean([x["accuracy"] for x in runs]), "fpr": _mean([x["fpr"] for x in runs])}
    for name, s in first.get("starved", {}).items():
        test = _main_test(s["local"])
        summary["starved"][name] = {
            "fraction": s["fraction"], "train_records": s["train_records"], "test": test,
            **{k: {"accuracy": _mean([r["starved"][name][k][test]["accuracy"] for r in results]),
                   "accuracy_sd": _sd([r["starved"][name][k][test]["accuracy"]
                                       for r in results]),
                   "fpr": _mean([r["starved"][name][k][test]["fpr"] for r in results]),
                   "n_seeds": len(results)}
               for k in ("local", "federated")}}
    return summary


def _cell(c: dict | None) -> str:
    if not c:
        return "–"
    sd = f" ± {c['accuracy_sd']:.3f}" if c.get("n_seeds", 1) > 1 else ""
    return f"{c['accuracy']:.4f}{sd} ({c['fpr']:.3f})"


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def main_rows(summary: dict, networks: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["network", "test set", *(HEADINGS[c] for c in COLUMNS)]
    rows = []
    for name in networks:
        c = summary["cells"][name]
        proto = summary["protocols"].get(name, "")
        rows.append([f"{LETTERS.get(name, '')} {name}".strip(), f"{c['test']} ({proto})",
                     *(_cell(c.get(col)) for col in COLUMNS)])
    return header, rows


def transfer_text(summary: dict, networks: list[str]) -> str:
    parts = []
    for n in networks:
        c = summary["cells"][n]
        if c.get("encoders") and c.get("local"):
            delta = 100 * (c["encoders"]["accuracy"] - c["local"]["accuracy"])
            parts.append(f"{n} {delta:+.2f} pp ({'met' if _ge(summary, n) else 'NOT met'})")
    return ("No negative transfer (cross-schema federation with encoders against local-only, "
            "mean over seeds): " + ", ".join(parts) + ".")


def val_rows(summary: dict, networks: list[str], modes) -> tuple[list[str], list[list[str]]]:
    val = summary["val"]
    return ["network", *modes], [[n, *(f"{val[n][m]:.4f}" if val[n].get(m) is not None else "–"
                                       for m in modes)] for n in networks]


def detector_val_rows(summary: dict, networks: list[str], modes
                      ) -> tuple[list[str], list[list[str]]]:
    """Each site's final detector (after its encoder is aligned and its threshold set) on its own
    validation data: what settings of the study are chosen on."""
    cols = ("local", *modes)

    def cell(c: dict) -> str:  # ROC-AUC is None where a validation set has one class only
        auc = f" ({c['roc_auc']:.4f})" if c["roc_auc"] is not None else ""
        return f"{c['accuracy']:.4f}{auc}"

    val = summary["detector_val"]
    return ([VALIDATION_HEADING, *(HEADINGS[c] for c in cols)],
            [[n, *(cell(val[n][c]) for c in cols)] for n in networks])


def starved_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name, s in summary.get("starved", {}).items():
        gain = s["federated"]["accuracy"] - s["local"]["accuracy"]
        rows.append([f"{name} ({s['fraction']:.0%})", f"{s['train_records']:,}",
                     _cell(s["local"]), _cell(s["federated"]), f"{100 * gain:+.1f} pp"])
    return ["starved network", "its training records", "local-only",
            "in the A+B+C federation", "gain"], rows


def family_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    def cell(c):
        if not c:
            return "–"
        sd = f" ± {c['macro_f1_sd']:.3f}" if c["n_seeds"] > 1 else ""
        return f"{c['macro_f1']:.4f}{sd} ({c['accuracy']:.4f})"

    names = list(summary.get("families", {}))
    return (["network", *(HEADINGS[c] for c in FAMILY_COLUMNS)],
            [[n, *(cell(summary["families"][n].get(c)) for c in FAMILY_COLUMNS)] for n in names])


FAMILY_TEXT = ("Each site's own attack families (its private head on the final model; the "
               "server never sees it): macro-F1 over the families present in the test set, "
               "mean ± sd over seeds (accuracy over all classes, normal included); gradient "
               "boosting is trained on the same families of the same split.")


def zero_shot_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    rows = [[key.replace("->", " -> "),
             "n/a: another schema, its encoder cannot read it" if v is None
             else f"{v['accuracy']:.4f} ({v['fpr']:.3f})"]
            for key, v in summary.get("zero_shot", {}).items()]
    return ["local-only model -> test set of", "accuracy (FPR)"], rows


def description(cfg: RunConfig, summary: dict) -> str:
    fed = cfg.federation
    rows = cfg.data.max_train_rows
    return (f"Seeds {summary['seeds']}; {fed.rounds} rounds x {fed.local_epochs} local epochs; "
            f"{'at most ' + format(rows, ',') if rows else 'all'} training rows per network; "
            "every network's own detector (threshold "
            + ("best F1 on its own validation data" if cfg.train.threshold == "val-f1"
               else f"{cfg.train.fixed_threshold:g} on P(attack)") + "). Cells: test accuracy, "
            "mean ± sd over seeds (FPR). Local-only is the same encoder + LSTM trained on that "
            "network alone for the same epochs (a federation of one site); same-schema is the "
            "plain Fed-LSTM of NSL-KDD and KDD99 (merged preprocessing, one model); "
            "cross-schema is all three, each site with its private encoder (or, harmonised, "
            "the common flow vocabulary through a shared layer as well); centralised is "
            f"`fedlstm train --detector {cfg.detector}` on that network (its tuned model "
            "settings, with the threshold and training rows above); gradient boosting "
            "(`--detector supervised --set model.name=hgb`) on the same split."
            + (" Detector: the hybrid in every column but gradient boosting (each site adds its "
               "own model of normal traffic after the last round; centralised: `fedlstm train "
               "--detector hybrid`)." if cfg.detector == "hybrid" else ""))


def table(cfg: RunConfig, summary: dict, networks: list[str], modes, command) -> str:
    lines = ["# Networks A, B, C: one Fed-LSTM across three schemas", "",
             description(cfg, summary), "", f"Command: `{command}`" if command else "", "",
             *_md(*main_rows(summary, networks)), "", transfer_text(summary, networks), "",
             "Input modes compared on validation (mean validation accuracy of the last round):",
             "", *_md(*val_rows(summary, networks, modes)), "", DETECTOR_VAL_TEXT, "",
             *_md(*detector_val_rows(summary, networks, modes))]
    if summary.get("families"):
        lines += ["", "## Each network's own attack families", "", FAMILY_TEXT, "",
                  *_md(*family_rows(summary))]
    if summary.get("starved"):
        lines += ["", "## One network starved: it keeps a small share of its training rows, "
                  "the others keep theirs", "", *_md(*starved_rows(summary))]
    if summary.get("zero_shot"):
        lines += ["", "## Zero-shot (for transparency): each local-only model on another "
                  "network", "", *_md(*zero_shot_rows(summary))]
    return "\n".join(lines) + "\n"


def section(steps: list[dict], figs: Path, doc) -> None:
    """reproduce's "Networks A, B, C" section, from its per-seed `networks-abc--sN` steps (it
    also writes the study's networks.md, .json and .png into their run folder)."""
    seeds = sorted((s for s in steps if s.get("kind") == "networks"), key=lambda s: s["seed"])
    if not seeds:
        return
    step, networks = seeds[0], seeds[0]["networks"]
    cfg = RunConfig.model_validate(step["config"])
    summary = write_study(cfg, step["out"], [s["result"] for s in seeds], networks, step["modes"])
    doc.h(2, "Networks A, B, C: one Fed-LSTM across three schemas")
    files = ", ".join(f"`steps/{s['key']}.json`" for s in seeds)
    doc.p(description(cfg, summary) + f" ({files}, `{step['out']}`; "
          "`fedlstm networks` runs the same study.)")
    doc.table(*main_rows(summary, networks))
    doc.p(transfer_text(summary, networks))
    doc.p("Input modes compared on validation (mean validation accuracy of the last round); "
          "the default, `federation.inputs=auto`, uses encoders:")
    doc.table(*val_rows(summary, networks, step["modes"]))
    doc.p(DETECTOR_VAL_TEXT)
    doc.table(*detector_val_rows(summary, networks, step["modes"]))
    if summary.get("families"):
        doc.p(FAMILY_TEXT)
        doc.table(*family_rows(summary))
    if summary.get("starved"):
        doc.p("One network starved: it keeps a small share of its training rows, the others "
              "keep theirs.")
        doc.table(*starved_rows(summary))
    if summary.get("zero_shot"):
        doc.p("Zero-shot, for transparency: each local-only model on another network.")
        doc.table(*zero_shot_rows(summary))
    path = figs / "networks_abc.png"
    shutil.copyfile(Path(step["out"]) / "networks.png", path)  # write_study drew it
    doc.image(path, "Per-network test accuracy: local-only, same-schema federation, "
                    "cross-schema federation, centralised, gradient boosting")


def _ge(summary: dict, name: str) -> bool:
    c = summary["cells"][name]
    return bool(c.get("encoders") and c.get("local")
                and c["encoders"]["accuracy"] >= c["local"]["accuracy"])


def figure(summary: dict, networks: list[str], path: Path) -> None:
    cols = [c for c in COLUMNS if any(summary["cells"][n].get(c) for n in networks)]
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(networks), 3.6))
    width = 0.8 / len(cols)
    for k, col in enumerate(cols):
        xs = [i + (k - (len(cols) - 1) / 2) * width for i in range(len(networks))]
        ys = [(summary["cells"][n].get(col) or {}).get("accuracy") or 0.0 for n in networks]
        ax.bar(xs, ys, width, label=HEADINGS[col])
    ax.set_xticks(range(len(networks)), [f"{LETTERS.get(n, '')} {n}" for n in networks])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


