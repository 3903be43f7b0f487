"""Mutation score of the modules that decide correctness: one command, not part of CI.

    .venv/bin/python benchmarks/mutation.py            # all modules (about an hour on 2 cores)
    .venv/bin/python benchmarks/mutation.py --module features/windows.py --jobs 2

mutmut (pinned in the `test` extra) changes one operator, constant or call at a time in the
modules below and runs the tests that reach the changed function; a mutant is killed when a test
fails. The run happens in a copy of src/, tests/ and pyproject.toml (under --workdir), so the
repository is never touched and no benchmark file is visible: tests that need the real datasets
skip, and every mutant runs only fast, synthetic tests. The last lines printed are the score per
module, the total, and every surviving mutant (`--show NAME` prints its diff).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each module with the fast tests that are meant to catch its mistakes.
MODULES = {
    "data/splits.py": ["tests/data/test_splits.py", "tests/features/test_windows.py"],
    "features/windows.py": ["tests/features/test_windows.py"],
    "features/preprocessor.py": ["tests/features/test_preprocessor.py"],
    "features/stats.py": ["tests/features/test_preprocessor.py", "tests/features/test_stats.py"],
    "training/loop.py": ["tests/training/test_loop.py", "tests/training/test_dp_accounting.py",
                         "tests/federation/test_privacy.py"],
    "training/metrics.py": ["tests/training/test_metrics.py"],
    "federation/audit.py": ["tests/federation/test_audit.py",
                            "tests/federation/test_audit_contract.py"],
}
KILLED = {"killed", "timeout", "caught by type check"}


def write_config(work: Path, modules: list[str]) -> None:
    tests = sorted({t for m in modules for t in MODULES[m] if (ROOT / t).exists()})
    pyproject = (ROOT / "pyproject.toml").read_text()
    config = {
        "source_paths": ["src"],
        "only_mutate": [f"src/fedlstm/{m}" for m in modules],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:warnings", "-p", "no:cacheprovider", "-q"],
        "also_copy": ["tests/"],
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")


def prepare(work: Path, modules: list[str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.rmtree(work / "mutants", ignore_errors=True)
    write_config(work, modules)


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FEDLSTM_DATA"}
    env.update(MPLBACKEND="Agg", PYTHONHASHSEED="0")
    return env


def statuses(work: Path) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         env=environment(), capture_output=True, text=True, check=True).stdout
    result = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("fedlstm."):
            result[name] = status.strip()
    return result


def module_of(mutant: str, modules: list[str]) -> str:
    dotted = mutant.split(".x_")[0].split(".xǁ")[0]
    for m in modules:
        if dotted == "fedlstm." + m.removesuffix(".py").replace("/", "."):
            return m
    return "?"


def report(work: Path, modules: list[str]) -> float:
    found = statuses(work)
    per = {m: Counter() for m in modules}
    for name, status in found.items():
        per.setdefault(module_of(name, modules), Counter())[status] += 1
    print(f"\n{'module':28} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'score':>6}")
    total = Counter()
    for m, counts in per.items():
        killed = sum(counts[s] for s in KILLED)
        n = sum(counts.values())
        total.update(counts)
        print(f"{m:28} {n:7d} {killed:7d} {counts['survived']:8d} {counts['no tests']:8d} "
              f"{(100 * killed / n if n else 0):5.1f}%")
    killed, n = sum(total[s] for s in KILLED), sum(total.values())
    score = 100 * killed / n if n else 0.0
    print(f"{'all':28} {n:7d} {killed:7d} {total['survived']:8d} {total['no tests']:8d} "
          f"{score:5.1f}%")
    left = sorted(k for k, s in found.items() if s not in KILLED)
    if left:
        print("\nnot killed (`benchmarks/mutation.py --show NAME` prints the change):")
        for name in left:
            print(f"  {name}: {found[name]}")
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="limit to these modules (default: all)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "fedlstm-mutation")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--report-only", action="store_true", help="print the last run's score")
    parser.add_argument("--show", metavar="MUTANT", help="print one mutant's diff")
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    if args.show:
        subprocess.run([sys.executable, "-m", "mutmut", "show", args.show], cwd=args.workdir,
                       env=environment(), check=True)
        return
    if not args.report_only:
        prepare(args.workdir, modules)
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs)],
                       cwd=args.workdir, env=environment(), check=False)
    report(args.workdir, modules)


if __name__ == "__main__":
    main()
