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
from fedlstm.federation.simulation import one_ray_runtime, run_federated  # noqa: E402

ATTACKS = ("label-flip", "sign-flip", "scale:10", "noise", "backdoor", "free-rider")
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4)
# Defences by name -> federation settings. `robust` is the recommended setting: trimmed mean
# sized for 30% malicious sites, updates clipped to 2x the round's median norm, and reputation.
DEFENCES = {
    "fedavg": {"strategy": "fedavg", "defences": []},
    "median": {"strategy": "median", "defences": []},
    "multikrum": {"strategy": "multikrum", "defences": []},
    "trimmed-mean": {"strategy": "trimmed-mean", "defences": []},
    "robust": {"strategy": "trimmed-mean", "defences": ["norm-bound", "reputation"]},
}


def cell_config(cfg: RunConfig, defence: str, attack: str | None, share: float) -> RunConfig:
    fed = {**DEFENCES[defence], "attack": attack if share > 0 else None,
           "malicious": share if share > 0 else 0.0}
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update=fed)})


def _cell(cfg: RunConfig, out: Path, command: str | None, progress) -> dict:
    fed = cfg.federation
    attack = (fed.attack or "none").replace(":", "")
    run_dir = out / "runs" / f"{attack}--{fed.malicious:g}--{fed.strategy}-{'+'.join(fed.defences) or 'plain'}"
    config_file = run_dir / "config.json"
    same = config_file.exists() and json.loads(config_file.read_text()) == json.loads(
        cfg.model_dump_json())
    if not (same and (run_dir / "metrics.json").exists()):
        progress(f"{fed.attack or 'clean'} by {fed.malicious:.0%} of the sites, {fed.strategy} "
                 f"{' + '.join(fed.defences)}")
        run_federated(cfg, run_dir, overwrite=True, command=command)
    m = json.loads((run_dir / "metrics.json").read_text())
    test = m["evaluations"]["test"]["binary"]
    backdoor = m.get("attack", {}).get("backdoor", {}).get("test", {})
    return {"run_dir": str(run_dir), "accuracy": test["accuracy"], "fpr": test["fpr"],
            "attack_success_rate": backdoor.get("attack_success_rate"),
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
             "accuracy (FPR); for `backdoor` also the attack success rate, the share of test "
             "attacks carrying the trigger that are let through (without the trigger in "
             "brackets). Share 0% is the clean run of each defence. Defences: "
             + "; ".join(f"`{d}` = {DEFENCES[d]['strategy']}"
                         + (" + " + " + ".join(DEFENCES[d]["defences"]) if DEFENCES[d]["defences"]
                            else "") for d in defences)
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
                    text += f", ASR {r['attack_success_rate']:.3f} ({r['missed_without_trigger']:.3f})"
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
