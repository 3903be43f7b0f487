"""The side-by-side summary the timing benchmarks print: each variant's median and their ratio."""

from __future__ import annotations

import statistics


def print_ratio(seconds: dict[str, list[float]], new: str, old: str, target: float) -> float:
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"{name}: median {median[name]:.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    ratio = median[new] / median[old]
    print(f"ratio {new}/{old}: {ratio:.2f} (target <= {target})")
    return ratio
