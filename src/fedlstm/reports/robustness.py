"""Robustness: Fed-LSTM accuracy when a share of the sites is malicious, for each simulated
attack and each defence, side by side on the same sites and seed.

Each cell is one federated run (`fedlstm federate --attack A --malicious S` with the defence's
strategy); a share of 0 is the clean run of that defence, shared by every attack. Runs are cached
in the output folder: a cell whose run directory holds the same resolved configuration is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.runs.rundir import ran_with  # noqa: E402

ATTACKS = ("label-flip", "sign-flip", "scale:10", "noise", "backdoor", "free-rider")
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4)
# Defences by name -> federation settings. `robust` is the recommended setting: trimmed mean
# sized for 30% malicious sites, updates clipped to 2x the round's median norm, reputation, and
# a calibration that leaves out sites whose normal-traffic statistics are outliers.
DEFENCES = {
    "fedavg": {"strategy": "fedavg", "defences": []},
    "median": {"strategy": "median", "defences": []},
    "multikrum": {"strategy": "multikrum", "defences": []},
    "trimmed-mean": {"strategy": "trimmed-mean", "defences": []},
    "robust": {"strategy": "trimmed-mean",
               "defences": ["norm-bound", "reputation", "robust-calibration"]},
}


# The small version `reproduce` runs: Network A, each attack by 30% of the sites.
STUDY_ATTACKS = ("sign-flip", "scale:-10", "label-flip")
STUDY_DEFENCES = ("fedavg", "robust")
STUDY_SHARE = 0.3


def study_keys(attacks: tuple[str, ...]) -> list[str]:
    if not attacks:
        return []
    return [f"robust--{attack}--{defence}--s0" for attack in ("clean", *attacks)
            for defence in STUDY_DEFENCES]


def study_cell(key: str) -> tuple[str | None, str, float]:
    """(attack, defence, share) of a study step."""
    _, attack, defence, _ = key.split("--")
    return (None, defence, 0.0) if attack == "clean" else (attack, defence, STUDY_SHARE)


def section(steps: list[dict], doc) -> None:
    runs = {(s["attack"], s["defence"]): s for s in steps if s.get("kind") == "robust"}
    if not runs:
        return
    first = next(iter(runs.values()))
    fed = first["config"]["federation"]
    rows_n = first["config"]["data"].get("max_train_rows")
    doc.h(2, "Robustness: malicious sites")
    doc.p(f"Fed-LSTM ({first['config']['detector']}) on Network A (NSL-KDD), "
          f"{fed['clients']} IID sites, {'at most ' + format(rows_n, ',') if rows_n else 'all'} "
          f"training rows, {fed['rounds']} rounds x {fed['local_epochs']} local epoch(s), seed 0 "
          "(`steps/robust--*--s0.json`, `runs/robust--*--s0/`). Each attack is run by "
          f"{STUDY_SHARE:.0%} of the sites: `sign-flip` sends the update reversed, `scale:-10` "
          "reversed and ten times larger, `label-flip` trains on its attacks relabelled benign. "
          "`robust` = trimmed mean sized for 30% malicious sites + norm bound + reputation + "
          "robust calibration "
          "(`fedlstm robustness` runs the full grid). Δ against the same defence without "
          "attackers. The last two columns: the sites the robust calibration left out, and the "
          "normal validation windows the novelty part's μ, Σ came from (the sites left in).")
    rows = []
    for attack in ("clean", *STUDY_ATTACKS):
        for defence in STUDY_DEFENCES:
            r, clean = runs.get((attack, defence)), runs.get(("clean", defence))
            if r is None or clean is None:
                continue
            ev, ev0 = r["evaluations"]["test"], clean["evaluations"]["test"]
            rows.append([attack, defence, f"{ev['accuracy']:.4f}",
                         f"{100 * (ev['accuracy'] - ev0['accuracy']):+.2f}", f"{ev['fpr']:.4f}",
                         *calibration_cells(r)])
    doc.table(["attack", "defence", "accuracy", "Δ pp", "FPR", "malicious sites",
               "left out of calibration", "normal windows (μ, Σ)"], rows)


def calibration_cells(step: dict) -> list[str]:
    """Malicious sites, the sites the robust calibration left out (- where it did not run),
    and the normal windows μ, Σ came from."""
    left_out = step.get("left_out_of_calibration")
    windows = step.get("normal_windows")
    return [", ".join(step.get("malicious_sites") or []) or "-",
            "-" if left_out is None else ", ".join(left_out) or "none",
            "-" if windows is None else f"{windows:,}"]


def cell_config(cfg: RunConfig, defence: str, attack: str | None, share: float) -> RunConfig:
    fed = {**DEFENCES[defence], "attack": attack if share > 0 else None,
           "malicious": share if share > 0 else 0.0}
    if cfg.detector == "supervised":  # no novelty part to calibrate
        fed["defences"] = [d for d in fed["defences"] if d != "robust-calibration"]
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update=fed)})


def _cell(cfg: RunConfig, out: Path, command: str | None, progress) -> dict:
    fed = cfg.federation
    attack = (fed.attack or "none").replace(":", "")
    run_dir = out / "runs" / f"{attack}--{fed.malicious:g}--{fed.strategy}-{'+'.join(fed.defences) or 'plain'}"
    if not ran_with(run_dir, cfg):
        from fedlstm.federation.simulation import run_federated

        progress(f"{fed.attack or 'clean'} by {fed.malicious:.0%} of the sites, {fed.strategy} "
                 f"{' + '.join(fed.defences)}")
        run_federated(cfg, run_dir, overwrite=True, command=command)
    m = json.loads((run_dir / "metrics.json").read_text())
    test = m["evaluations"]["test"]["binary"]
    backdoor = m.get("attack", {}).get("backdoor", {}).get("test", {})
    return {"run_dir": str(run_dir), "accuracy": test["accuracy"], "fpr": test["fpr"],
            "attack_success_rate": backdoor.get("attack_success_rate"),
            "missed_with_trigger": backdoor.get("missed_with_trigger"),
            "missed_without_trigger": backdoor.get("missed_without_trigger"),
            "malicious_sites": m.get("attack", {}).get("malicious_sites", [])}


def sweep(cfg: RunConfig, out: str | Path, attacks=ATTACKS, defences=tuple(DEFENCES),
          shares=SHARES, command: str | None = None, progress=None) -> Path:
    """Run every (attack, defence, share) cell and write robustness.md/.json/.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda text: None)
    unknown = [d for d in defences if d not in DEFENCES]
    if unknown:
        raise ValueError(f"unknown defence(s) {unknown}; use {', '.join(DEFENCES)}")
    from fedlstm.federation.simulation import one_ray_runtime

    results: dict[str, dict] = {}
    with one_ray_runtime():
        for defence in defences:
            clean = _cell(cell_config(cfg, defence, None, 0.0), out, command, progress)
            for attack in attacks:
                for share in shares:
                    cell = clean if share == 0 else _cell(cell_config(cfg, defence, attack, share),
                                                          out, command, progress)
                    results[f"{attack}|{defence}|{share:g}"] = cell
    (out / "robustness.json").write_text(json.dumps(results, indent=2))
    _table(cfg, results, attacks, defences, shares, out, command)
    _figure(results, attacks, defences, shares, out / "robustness.png")
    return out / "robustness.md"


def _table(cfg, results, attacks, defences, shares, out: Path, command) -> None:
    fed = cfg.federation
    lines = [f"# Robustness: Fed-LSTM ({cfg.detector}) on {cfg.data.dataset}, protocol "
             f"{cfg.data.protocol}", "",
             f"{fed.clients} sites ({fed.partition}), {fed.rounds} rounds x {fed.local_epochs} "
             "local epochs, seed "
             f"{cfg.seed}; malicious sites drawn with seed {fed.attack_seed}. Each cell: test "
             "accuracy (FPR); for `backdoor` also the attack success rate (ASR): of the test "
             "attacks the detector flags, the share let through once they carry the trigger; "
             "in brackets the share of all test attacks let through with and without the "
             "trigger. Share 0% is the clean run of each defence. Defences: "
             + "; ".join(f"`{d}` = {DEFENCES[d]['strategy']}"
                         + (" + " + " + ".join(DEFENCES[d]["defences"]) if DEFENCES[d]["defences"]
                            else "") for d in defences)
             + (" (robust-calibration only where the detector has a novelty part)"
                if any("robust-calibration" in DEFENCES[d]["defences"] for d in defences)
                else "")
             + f" (robust rules sized for {fed.tolerate:.0%} malicious sites).", "",
             f"Command: `{command}`" if command else "", "",
             "| attack | defence | " + " | ".join(f"{s:.0%}" for s in shares) + " |",
             "|---|---|" + "---|" * len(shares)]
    for attack in attacks:
        for defence in defences:
            cells = []
            for share in shares:
                r = results[f"{attack}|{defence}|{share:g}"]
                text = f"{r['accuracy']:.4f} ({r['fpr']:.3f})"
                if attack.startswith("backdoor") and share > 0 and r["attack_success_rate"] is not None:
                    text += (f", ASR {r['attack_success_rate']:.3f} "
                             f"({r['missed_with_trigger']:.3f} / {r['missed_without_trigger']:.3f})")
                cells.append(text)
            lines.append(f"| {attack} | {defence} | " + " | ".join(cells) + " |")
    (out / "robustness.md").write_text("\n".join(lines) + "\n")


def _figure(results, attacks, defences, shares, path: Path) -> None:
    cols = min(len(attacks), 3)
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, attack in zip(axes.ravel(), attacks):
        for defence in defences:
            ax.plot([100 * s for s in shares],
                    [results[f"{attack}|{defence}|{s:g}"]["accuracy"] for s in shares],
                    marker="o", ms=3, label=defence)
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("malicious sites (%)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(attacks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
