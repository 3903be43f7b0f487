"""Building one step's data split again, with and without remembered reads, side by side.

    python benchmarks/bench_repeated_reads.py [--dataset kdd99] [--repeats 3]

`reproduce` builds the split of the same benchmark files in dozens of steps; with
`readers.remembered_reads` (as `reproduce` runs) each file is parsed once per process and
later reads get a copy. This builds the quick profile's first Fed-LSTM step's split of
`--dataset` (official protocol, every file read in full) once to warm up, then, `--repeats`
times, once parsing every file and once from reads remembered by an untimed build before it.
Prints the median seconds of each and their ratio. Target: ratio <= 0.5.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("FEDLSTM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))

from _ratio import print_ratio  # noqa: E402

from fedlstm.data.readers import remembered_reads  # noqa: E402
from fedlstm.data.splits import build_split  # noqa: E402
from fedlstm.reports import reproduce as R  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kdd99")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile, root = R.PROFILES["quick"], Path(os.environ["FEDLSTM_DATA"])
    step = next(s for s in R.plan(profile, root, [args.dataset]).steps if s.method == "fed-lstm")
    cfg = R.step_config(step, profile, root).data

    def seconds() -> float:
        start = time.perf_counter()
        build_split(cfg, seed=0)
        return time.perf_counter() - start

    print(f"{step.key}: warm-up build {seconds():.2f} s")
    runs: dict[str, list[float]] = {"parsed every time": [], "remembered": []}
    for _ in range(args.repeats):
        runs["parsed every time"].append(seconds())
        with remembered_reads():
            seconds()  # parses and remembers: the timed build below only copies
            runs["remembered"].append(seconds())
    print_ratio(runs, "remembered", "parsed every time", 0.5)


if __name__ == "__main__":
    main()
