"""Gradient boosting beside a training worker in a `reproduce` pool, with and without the
worker's OpenMP limit, side by side.

    python benchmarks/bench_worker_threads.py [--rows 9000] [--columns 1512] [--steps 1500] [--repeats 3]

`reproduce` runs its centralised steps in one spawned worker per core, each training on one
torch thread; scikit-learn's gradient boosting parallelises over every core with OpenMP unless
the worker limits it (`reproduce.start_worker`). Each repeat starts two jobs together in a pool
of two workers: a gradient boosting fit (generated data shaped like the Networks study's
UNSW-NB15 windows: 8 records x 189 features, most of them one-hot) and `--steps` LSTM training
steps. It does so once with workers set up as `reproduce` does, once with OpenMP unlimited.
What matters to `reproduce` is when both jobs are done (a faster fit that slows the training
beside it gains nothing), so it prints the median of that makespan for each, the fit's and the
training's own seconds, their ratio, and checks that both fits give the same model.
Target: makespan ratio <= 1.0 (the limit must never cost time); it measured 0.94 and 0.95
on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
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


def train(steps: int, flag: str) -> float:
    import torch

    torch.set_num_threads(1)  # as every fedlstm training step
    lstm = torch.nn.LSTM(189, 64, batch_first=True)
    opt = torch.optim.Adam(lstm.parameters())
    batch = torch.randn(256, 8, 189)
    t0 = time.perf_counter()
    for step in range(steps):
        opt.zero_grad()
        lstm(batch)[0].sum().backward()
        opt.step()
        if step == 0:
            open(flag + ".training", "w").close()
    return time.perf_counter() - t0


def one_run(limited: bool, args, repeat: int) -> tuple[float, float, float, np.ndarray]:
    context = multiprocessing.get_context("spawn")
    setup = ((start_worker, (worker_threads(WORKERS),)) if limited else (remember_reads, ()))
    flag = f"{os.environ.get('TMPDIR', '/tmp')}/bench_worker_threads.{os.getpid()}.{repeat}"
    with ProcessPoolExecutor(WORKERS, mp_context=context, initializer=setup[0],
                             initargs=setup[1]) as pool:
        pool.submit(time.sleep, 0).result()  # a worker is up before the clock starts
        t0 = time.perf_counter()
        trainer = pool.submit(train, args.steps, flag)
        fit_seconds, proba = pool.submit(fit, args.rows, args.columns, flag).result()
        train_seconds = trainer.result()
        makespan = time.perf_counter() - t0
    os.remove(flag + ".training")
    return makespan, fit_seconds, train_seconds, proba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=9_000)
    parser.add_argument("--columns", type=int, default=1_512)
    parser.add_argument("--steps", type=int, default=1_500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {WORKERS} workers: {worker_threads(WORKERS)} OpenMP "
          f"thread(s) each when limited")
    runs: dict[str, list[float]] = {"unlimited": [], "limited (reproduce)": []}
    training: dict[str, list[float]] = {name: [] for name in runs}
    probas = {}
    for repeat in range(args.repeats):
        for name, limited in (("unlimited", False), ("limited (reproduce)", True)):
            makespan, fit_s, train_s, probas[name] = one_run(limited, args, repeat)
            runs[name].append(makespan)
            training[name].append(train_s)
            print(f"{name}: both done {makespan:.1f} s (fit {fit_s:.1f} s, training {train_s:.1f} s)",
                  flush=True)
    same = np.array_equal(probas["unlimited"], probas["limited (reproduce)"])
    print(f"same model either way: {same}")
    print("the training beside the fit: " + ", ".join(
        f"{name} median {statistics.median(values):.1f} s" for name, values in training.items()))
    print_ratio(runs, "limited (reproduce)", "unlimited", 1.0)


if __name__ == "__main__":
    main()
