"""Gradient boosting in a `reproduce` worker beside a training worker, with and without the
worker's OpenMP limit, side by side.

    python benchmarks/bench_worker_threads.py [--rows 9000] [--columns 1512] [--repeats 3]

`reproduce` runs its centralised steps in one spawned worker per core, each training on one
torch thread; scikit-learn's gradient boosting parallelises over every core with OpenMP unless
the worker limits it (`reproduce.start_worker`). Each repeat fits the same gradient boosting
model (generated data shaped like the Networks study's UNSW-NB15 windows: 8 records x 189
features, most of them one-hot) in a pool of two workers, while the other worker trains an
LSTM until the fit ends: once with workers set up as `reproduce` does, once with OpenMP
unlimited. Prints the median fit seconds of each and their ratio, and checks that both fits
give the same model. Target: ratio <= 0.8 on a machine whose workers fill every core.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _ratio import print_ratio

from fedlstm.data.readers import remember_reads
from fedlstm.reports.reproduce import start_worker, worker_threads

WORKERS = 2


def data(rows: int, columns: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = columns // 5
    x = np.zeros((rows, columns), np.float32)
    x[:, :numeric] = rng.random((rows, numeric))
    x[np.arange(rows)[:, None], numeric + rng.integers(0, columns - numeric, (rows, 8))] = 1.0
    signal = x[:, :numeric:7].sum(1) + x[:, numeric:numeric + 40].sum(1)
    y = (signal + rng.normal(0, 0.5, rows) > np.median(signal)).astype(int)
    return x, y


def fit(rows: int, columns: int, flag: str) -> tuple[float, np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = data(rows, columns)
    while not os.path.exists(flag + ".training"):  # the fit starts once the other trains
        time.sleep(0.01)
    t0 = time.perf_counter()
    model = HistGradientBoostingClassifier(random_state=0, early_stopping=False).fit(x, y)
    return time.perf_counter() - t0, model.predict_proba(x[:500])


def train_until(flag: str) -> int:
    import torch

    torch.set_num_threads(1)  # as every fedlstm training step
    lstm = torch.nn.LSTM(189, 64, batch_first=True)
    opt = torch.optim.Adam(lstm.parameters())
    batch = torch.randn(256, 8, 189)
    steps = 0
    while not os.path.exists(flag):
        opt.zero_grad()
        lstm(batch)[0].sum().backward()
        opt.step()
        steps += 1
        if steps == 1:
            open(flag + ".training", "w").close()
    return steps


def one_run(limited: bool, rows: int, columns: int, repeat: int) -> tuple[float, np.ndarray]:
    context = multiprocessing.get_context("spawn")
    setup = ((start_worker, (worker_threads(WORKERS),)) if limited else (remember_reads, ()))
    flag = f"{os.environ.get('TMPDIR', '/tmp')}/bench_worker_threads.{os.getpid()}.{repeat}"
    with ProcessPoolExecutor(WORKERS, mp_context=context, initializer=setup[0],
                             initargs=setup[1]) as pool:
        trainer = pool.submit(train_until, flag)
        seconds, proba = pool.submit(fit, rows, columns, flag).result()
        open(flag, "w").close()
        trainer.result()
    os.remove(flag)
    os.remove(flag + ".training")
    return seconds, proba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=9_000)
    parser.add_argument("--columns", type=int, default=1_512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {WORKERS} workers: {worker_threads(WORKERS)} OpenMP "
          f"thread(s) each when limited")
    runs: dict[str, list[float]] = {"unlimited": [], "limited (reproduce)": []}
    probas = {}
    for repeat in range(args.repeats):
        for name, limited in (("unlimited", False), ("limited (reproduce)", True)):
            seconds, probas[name] = one_run(limited, args.rows, args.columns, repeat)
            runs[name].append(seconds)
    same = np.array_equal(probas["unlimited"], probas["limited (reproduce)"])
    print(f"same model either way: {same}")
    print_ratio(runs, "limited (reproduce)", "unlimited", 0.8)


if __name__ == "__main__":
    main()
