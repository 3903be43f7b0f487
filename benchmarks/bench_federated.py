"""Federated simulation against centralised training over the same total sample-epochs.

    python benchmarks/bench_federated.py [--rows 60000] [--rounds 3] [--clients 5]

One process, one invocation. Fed-LSTM runs in Flower's simulation engine with `--clients` IID
clients (1 CPU, 1 torch thread each), `--rounds` rounds of 1 local epoch, no evaluation; the
centralised LSTM trains on the same rows for `--rounds` epochs with 1 thread. Engine start-up
(Ray, actors, statistics exchange) is reported separately from the rounds. Target: ratio <= 1.3.
The same federation then runs with Flower's SecAgg+ to show its per-round overhead.
Note: with 2 cores the engine runs two clients at once, while centralised training uses one core.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("FEDLSTM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))

from fedlstm.config import RunConfig  # noqa: E402
from fedlstm.data.readers import concat_records  # noqa: E402
from fedlstm.federation.server import ServerTask  # noqa: E402
from fedlstm.federation.sites import federated_data  # noqa: E402
from fedlstm.tasks import task_for  # noqa: E402
from fedlstm.tasks.base import windows_of  # noqa: E402
from fedlstm.training.loop import fit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args()
    cfg = RunConfig.model_validate({
        "data": {"max_train_rows": args.rows},
        "federation": {"clients": args.clients, "rounds": args.rounds, "local_epochs": 1,
                       "evaluate_clients": False, "server_test_curves": False}})

    # Centralised: the clients' own training rows (each carves 10% validation), pooled.
    from fedlstm.federation.client import ClientTask

    data = federated_data(cfg)
    task = task_for(cfg)
    sites = [ClientTask(task, c, data.spec) for c in data.clients]
    pooled = concat_records([s.train_records for s in sites])
    classes = task.class_names(data.spec)
    pre = task.fit_preprocessor(data.spec, pooled)
    train = windows_of(pooled, pre, cfg, classes)
    model = task.new_model(pre.n_features_out, len(classes))
    central = fit(model, train, None, cfg.train, len(classes), epochs=args.rounds).seconds

    # Federated: the same rows through Flower's simulation engine.
    from flwr.simulation import run_simulation

    from fedlstm.federation.apps import make_client_app, make_server_app
    from fedlstm.federation.partitions import save_records

    def simulate(secagg: bool) -> tuple[float, float, float]:
        run_cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
            update={"secagg": secagg})})
        with tempfile.TemporaryDirectory() as tmp:
            for i, recs in enumerate(data.clients):
                save_records(recs, os.path.join(tmp, f"client-{i}.parquet"))
            server = ServerTask(task_for(run_cfg), data.spec)
            t0 = time.perf_counter()
            run_simulation(server_app=make_server_app(server),
                           client_app=make_client_app(tmp, run_cfg),
                           num_supernodes=len(data.clients),
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"logging_level": "error",
                                                         "log_to_driver": False}})
            total = time.perf_counter() - t0
        return (server.round_times[0] - t0,
                server.round_times[args.rounds] - server.round_times[0], total)

    logging.getLogger("flwr").setLevel(logging.ERROR)
    startup, rounds, total = simulate(secagg=False)
    _, rounds_sa, _ = simulate(secagg=True)
    print(f"{len(train):,} training windows, {args.clients} IID clients, {args.rounds} rounds x 1 "
          f"local epoch vs {args.rounds} centralised epochs (1 thread)")
    print(f"centralised training      : {central:7.1f} s")
    print(f"federated rounds          : {rounds:7.1f} s  (engine start-up {startup:.1f} s, "
          f"whole simulation {total:.1f} s)")
    print(f"ratio federated/centralised (rounds only): {rounds / central:.2f}  (target <= 1.3)")
    print(f"ratio including start-up                 : {total / central:.2f}")
    print(f"federated rounds with SecAgg+            : {rounds_sa:7.1f} s  -> overhead "
          f"{(rounds_sa - rounds) / args.rounds:.2f} s per round ({rounds_sa / rounds:.2f}x)")


if __name__ == "__main__":
    main()
