"""Short Flower simulations with and without the prompt-shutdown queues, side by side.

    python benchmarks/bench_short_simulations.py [--repeats 3]

One process, one Ray runtime (as `reproduce` runs its Flower steps): the quick profile's
`comm--nsl-kdd--none` step (3,000 rows, 2 rounds, 3 sites) is simulated once to start Ray and
the actors, then `--repeats` times with Flower's own runtime queues (a 1 s wait between stop
checks) and `--repeats` times with `simulation._PromptQueue` (50 ms), alternating. Prints the
median simulation seconds of each and their ratio. Target: ratio <= 0.8 (a short simulation
ends within 50 ms of its ServerApp instead of about 0.9 s later).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("FEDLSTM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))

from _ratio import print_ratio  # noqa: E402

from fedlstm.federation import simulation  # noqa: E402
from fedlstm.reports import reproduce as R  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile, root = R.PROFILES["quick"], Path(os.environ["FEDLSTM_DATA"])
    key = "comm--nsl-kdd--none--s0"
    cfg = R.extra_config(key, R.plan(profile, root), profile, root)
    prompt = simulation._prompt_shutdown
    seconds: dict[str, list[float]] = {"flower queues": [], "prompt queues": []}
    with tempfile.TemporaryDirectory() as tmp, simulation.one_ray_runtime():
        def run() -> float:
            simulation.run_federated(cfg, Path(tmp) / "run", overwrite=True, plots=False)
            return json.loads((Path(tmp) / "run" / "metrics.json").read_text())[
                "timings"]["simulation_seconds"]

        print(f"start-up (Ray, actors): {run():.1f} s")
        for _ in range(args.repeats):
            simulation._prompt_shutdown = contextlib.nullcontext
            seconds["flower queues"].append(run())
            simulation._prompt_shutdown = prompt
            seconds["prompt queues"].append(run())
    print_ratio(seconds, "prompt queues", "flower queues", 0.8)


if __name__ == "__main__":
    main()
