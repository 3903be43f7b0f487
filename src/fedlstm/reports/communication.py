"""The communication study of `reproduce`: bytes on the wire and accuracy for each `--compress`
mode, side by side on the same sites, settings and seed; and its report section and figure.

Bytes are those every federated run measures (`bytes_up`, `bytes_down`, `eval_bytes_*` per round
in metrics.json): each message's content as Flower serialises it for the wire.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Study modes: name in step keys -> (--compress, error feedback). The targets of issue 16:
# uplink bytes per round at most this share of `none`, accuracy at most this many pp below it.
MODES = {"none": ("none", True), "q8": ("q8", True), "topk5": ("topk:0.05", True),
         "topk5-noef": ("topk:0.05", False), "topk1-q8": ("topk:0.01+q8", True)}
TARGETS = {"q8": (0.26, 0.2), "topk5": (0.10, 0.5), "topk1-q8": (0.02, 1.0)}
DATASETS = ("nsl-kdd", "kdd99")


def study_keys(datasets: list[str], modes: tuple[str, ...]) -> list[str]:
    """The study's own steps: the compressed modes. Its `none` row is the dataset's Fed-LSTM
    step of seed 0, run with the same settings (`reproduce.comm_references`)."""
    return [f"comm--{ds}--{mode}--s0" for ds in DATASETS if ds in datasets for mode in modes
            if mode != "none"]


def study_runs(steps: list[dict]) -> list[dict]:
    """The study's runs: its compressed steps, and each reference Fed-LSTM step as `none`."""
    found = [s for s in steps if s.get("kind") == "comm"]
    for s in steps:
        if s.get("comm_reference"):
            found.append({**s, "kind": "comm", "mode": "none", "dataset": s["step"]["dataset"],
                          "protocol": s["step"]["protocol"]})
    return found


def federation_update(key: str) -> dict:
    """The federation settings of a study step (the rest is the dataset's Fed-LSTM step)."""
    _, _, mode, _ = key.split("--")
    spec, feedback = MODES[mode]
    return {"compress": spec, "compress_feedback": feedback}


def label(mode: str) -> str:
    spec, feedback = MODES[mode]
    return spec + ("" if feedback or spec == "none" else ", no error feedback")


def per_round(run: dict) -> tuple[float, float]:
    """Mean bytes per round: uplink (training replies), downlink (training and evaluation
    instructions: both carry the global model)."""
    rounds = [r for r in run["curves"] if "bytes_up" in r]
    if not rounds:
        return float("nan"), float("nan")
    up = sum(r["bytes_up"] for r in rounds) / len(rounds)
    down = sum(r["bytes_down"] + r.get("eval_bytes_down", 0) for r in rounds) / len(rounds)
    return up, down


def final_val_loss(run: dict) -> str:
    """The sites' mean validation loss after the last round: how far training got, without the
    threshold effects that move test accuracy."""
    losses = [r["val_loss"] for r in run["curves"] if "val_loss" in r]
    return f"{losses[-1]:.4f}" if losses else "-"


def _cumulative_mb(run: dict) -> list[tuple[float, float]]:
    total, points = 0.0, []
    for r in run["curves"]:
        total += sum(r.get(k, 0) for k in ("bytes_up", "bytes_down", "eval_bytes_up",
                                            "eval_bytes_down"))
        if "test_accuracy/test" in r:
            points.append((total / 1e6, r["test_accuracy/test"]))
    return points


def calibration(run: dict) -> tuple[float, float] | None:
    """Bytes (up, down) of the calibration after the last round (the sites' error statistics
    and score histograms, Flower's get_properties messages): once per run, and not compressed."""
    traffic = run.get("traffic_bytes")
    if not traffic:
        return None
    return traffic.get("get_properties_up", 0), traffic.get("get_properties_down", 0)


def whole_run_up(run: dict) -> float | None:
    """Every byte the sites sent in the run: training, evaluation and calibration replies."""
    traffic = run.get("traffic_bytes")
    return sum(v for k, v in traffic.items() if k.endswith("_up")) if traffic else None


def section(steps: list[dict], figs: Path, doc, networks: dict[str, str]) -> None:
    runs = study_runs(steps)
    if not runs:
        return
    doc.h(2, "Communication: compressed updates")
    first = runs[0]["config"]
    fed = first["federation"]
    doc.p(f"Fed-LSTM ({first['detector']}) with each `--compress` mode, seed 0, the dataset's "
          f"default settings ({fed['rounds']} rounds x {fed['local_epochs']} local epochs over "
          f"{fed['clients']} IID sites) (`steps/comm--*--s0.json`, `runs/comm--*--s0/`; the "
          "`none` rows are the datasets' Fed-LSTM steps of seed 0, `steps/*--fed-lstm--s0.json`). "
          "Bytes are the messages' content as Flower serialises it for the wire (gRPC and TLS "
          "framing not counted), averaged over rounds: uplink = the sites' training replies, "
          "downlink = training and evaluation instructions. Uplink: the update (trained minus "
          "received model), Top-k per array (arrays of at most 1,024 values whole) with error "
          "feedback unless marked. Downlink: under `none` the model as it is, sent only to a site "
          "that does not hold it already (a round's evaluation sends the model the next round "
          "trains from, so that training instruction carries none); under the compressed modes "
          "the q8-packed difference from the model the sites hold, the full model to a site "
          "that missed a version. Accuracy and FPR on the "
          "test set of the dataset's main protocol (official where both files exist); Δ "
          "against `none`. Test accuracy moves with the alert threshold (a "
          "detector that flags more scores higher on the attack-heavy NSL-KDD Test+), so the "
          "ROC-AUC and the sites' validation loss after the last round show how far training "
          "got. Targets (issue 16): q8 ≤ 0.26x uplink and within "
          "0.2 pp; topk:0.05 ≤ 0.10x and within 0.5 pp; topk:0.01+q8 ≤ 0.02x and within 1 pp, "
          "uplink per round. After the last round each site sends the statistics that calibrate "
          "the novelty part (its error statistics and score histograms); that traffic, once "
          "per run and uncompressed, is its own column, and the whole-run uplink ratio counts "
          "it with the rounds.")
    rows = []
    for ds in DATASETS:
        by_mode = {r["mode"]: r for r in runs if r["dataset"] == ds}
        base = by_mode.get("none")
        if not base:
            continue
        up0, down0 = per_round(base)
        acc0 = base["evaluations"]["test"]["accuracy"]
        for mode in MODES:
            r = by_mode.get(mode)
            if r is None:
                continue
            up, down = per_round(r)
            ev = r["evaluations"]["test"]
            delta = 100 * (ev["accuracy"] - acc0)
            met = "-"
            if mode in TARGETS:
                bytes_cap, pp = TARGETS[mode]
                met = "met" if up / up0 <= bytes_cap and delta >= -pp else "missed"
            cal, whole, whole0 = calibration(r), whole_run_up(r), whole_run_up(base)
            rows.append([networks.get(ds, ds), label(mode), f"{up / 1e3:,.1f}",
                         f"{up / up0:.3f}x", f"{down / 1e3:,.1f}", f"{down / down0:.3f}x",
                         f"{cal[0] / 1e3:,.1f} / {cal[1] / 1e3:,.1f}" if cal else "-",
                         f"{whole / whole0:.3f}x" if whole and whole0 else "-",
                         f"{ev['accuracy']:.4f}", f"{delta:+.2f}", f"{ev['fpr']:.4f}",
                         f"{ev['roc_auc']:.4f}", final_val_loss(r), met])
    doc.table(["network", "mode", "uplink kB/round", "vs none", "downlink kB/round", "vs none",
               "calibration kB up / down (once)", "whole-run uplink vs none", "accuracy",
               "Δ pp", "FPR", "ROC-AUC", "val loss", "target"], rows)
    path = figs / "communication.png"
    _figure(runs, path, networks)
    doc.image(path, "Test accuracy of the global model's classifier alone (argmax over windows) "
                    "after each round (reporting only) against the megabytes sent and received "
                    "so far, per compression mode; the star is the detector's accuracy in the "
                    "table, after the calibration traffic.")


def _figure(runs: list[dict], path: Path, networks: dict[str, str]) -> None:
    datasets = [ds for ds in DATASETS if any(r["dataset"] == ds for r in runs)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for r in (r for r in runs if r["dataset"] == ds):
            points = _cumulative_mb(r)
            if points:
                line, = ax.plot(*zip(*points), marker="o", ms=3, label=label(r["mode"]))
                cal = calibration(r)
                if cal:  # the detector, as the table scores it, once calibrated
                    ax.plot([points[-1][0] + sum(cal) / 1e6],
                            [r["evaluations"]["test"]["accuracy"]], marker="*", ms=10, ls="",
                            color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("cumulative MB (up + down)")
        ax.set_ylabel("test accuracy: classifier (argmax), ★ detector")
        ax.set_title(networks.get(ds, ds))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
