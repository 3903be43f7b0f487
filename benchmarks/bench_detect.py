"""Detection throughput against bare nn.LSTM inference, and the service's single-record latency.

    python benchmarks/bench_detect.py [--records 200000] [--repeats 3] [--requests 2000]

Batch: an NSL-KDD-format file (rows of KDDTest+ repeated, or synthetic rows when the dataset is
absent) goes through `fedlstm.detection.stream.detect`: parse -> validate -> preprocess -> window
-> LSTM (W=8, H=64, 122 inputs) -> alerts with top features, written as JSON lines. The bare side
runs the same LSTM on pre-built window tensors of the same shape. One torch thread; the sides
alternate and the best of `repeats` is kept. The threshold is set so ~1% of records alert (the
alert rate is reported; alerts cost a gradient and a JSON line each).

Service: `fedlstm serve`'s configuration (API key, read deadlines) on 127.0.0.1 in a
child process; after warm-up, `--clients` concurrent clients send single-record POST /score
requests (bounded load) and we report p50/p99 latency. Then `--crowd` clients send `--requests`
mixed requests (records on many streams, unknown paths, invalid records): we report the statuses
and the server's RSS before and after.
Targets: ratio such that >= 80k records/s; p99 <= 10 ms; no 5xx and flat RSS under the crowd.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedlstm.data.readers import read_records
from fedlstm.data.schemas import get_spec
from fedlstm.detection.bundle import ModelBundle
from fedlstm.detection.stream import AlertWriter, detect
from fedlstm.features import FlowPreprocessor
from fedlstm.models import build_model

W, H, BATCH = 8, 64, 4096


def kdd_rows(n: int) -> tuple[list[str], Path | None]:
    root = Path(os.environ.get("FEDLSTM_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    source = root / "nsl-kdd" / "KDDTest+.txt"
    if not source.exists():
        sys.exit(f"needs {source} (set FEDLSTM_DATA)")
    lines = source.read_text().splitlines()
    return [lines[i % len(lines)] for i in range(n)], source


def make_bundle(source: Path) -> ModelBundle:
    spec = get_spec("nsl-kdd")
    recs = read_records(source, spec)
    pre = FlowPreprocessor(spec.numeric_columns, spec.categorical).fit(recs.frame)
    torch.manual_seed(0)
    model = build_model("lstm", pre.n_features_out, 2, hidden_size=H, dropout=0.0).eval()
    bundle = ModelBundle(spec=spec, preprocessor=pre, model=model, model_name="lstm",
                         model_params={"hidden_size": H}, task="binary",
                         class_names=["normal", "attack"], window=W, threshold_=0.5)
    windows = bundle.windows(recs)
    bundle.threshold_ = float(np.quantile(bundle.decision_function(windows), 0.99))
    return bundle


def bare(n_windows: int, n_features: int) -> float:
    torch.manual_seed(0)
    lstm, head = nn.LSTM(n_features, H, batch_first=True).eval(), nn.Linear(H, 2)
    x = torch.rand(BATCH, W, n_features)
    t = time.perf_counter()
    done = 0
    with torch.inference_mode():
        while done < n_windows:
            out, _ = lstm(x)
            torch.softmax(head(out[:, -1]), 1)
            done += BATCH
    return done / (time.perf_counter() - t)


def ours(bundle: ModelBundle, path: Path) -> tuple[float, int]:
    sink = io.StringIO()
    summary = detect(bundle, [path], AlertWriter(sink, "jsonl", bundle.class_names))
    return summary.records / summary.seconds, summary.alerts


API_KEY = "bench-" + "k" * 27


def _serve(bundle_path: str, port: int) -> None:
    import uvicorn

    from fedlstm.detection.service import create_app, server_config
    torch.set_num_threads(1)
    # The bench's own throwaway bundle, written unsigned (no key home is touched).
    app = create_app(ModelBundle.load(bundle_path, allow_unsigned=True), api_key=API_KEY)
    uvicorn.Server(server_config(app, port=port, log_level="error")).run()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _load(url: str, jobs: list[tuple[str, list | None, dict]], clients: int
          ) -> tuple[list[float], list[int]]:
    """Send `jobs` (path, body or None for GET, query) over `clients` keep-alive connections;
    latencies and status codes in completion order."""
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def worker(k: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as c:
            for path, body, params in jobs[k::clients]:
                t = time.perf_counter()
                r = c.get(url + path) if body is None else c.post(url + path, json=body,
                                                                   params=params)
                latencies.append(time.perf_counter() - t)
                statuses.append(r.status_code)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return latencies, statuses


def service_bench(bundle: ModelBundle, rows: list[str], requests: int, clients: int,
                  crowd: int) -> dict:
    """p50/p99 of single-record POST /score at `clients` concurrency; then `requests` mixed
    requests at `crowd` concurrency (single records on `crowd` named streams, one in ten to an
    unknown path, one in ten invalid): their statuses, and the server's RSS before and after."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        path = bundle.save(Path(tmp) / "b.fedlstm", sign=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = mp.get_context("spawn").Process(target=_serve, args=(str(path), port), daemon=True)
        proc.start()
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(url + "/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            cols = bundle.spec.columns
            records = [dict(zip(cols, r.split(","))) for r in rows[:requests + W]]
            _load(url, [("/score", records[:W], {})], 1)  # fill the stream's history
            single = [("/score", [records[W + i]], {}) for i in range(requests)]
            latencies, statuses = _load(url, single, clients)
            assert set(statuses) == {200}, set(statuses)
            mixed = []
            for i in range(requests):
                if i % 10 == 3:
                    mixed.append((f"/probe/{i}", None, {}))
                elif i % 10 == 7:
                    mixed.append(("/score", [{"bogus": i}], {}))
                else:
                    mixed.append(("/score", [records[W + i]], {"stream": f"s{i % crowd}"}))
            rss_before = rss_bytes(proc.pid)
            crowd_latencies, crowd_statuses = _load(url, mixed, crowd)
            rss_after = rss_bytes(proc.pid)
        finally:
            proc.terminate()
            proc.join(10)
    q = np.quantile(latencies, [0.5, 0.99]) * 1000
    qc = np.quantile(crowd_latencies, [0.5, 0.99]) * 1000
    return {"p50": float(q[0]), "p99": float(q[1]), "crowd_p50": float(qc[0]),
            "crowd_p99": float(qc[1]), "statuses": dict(sorted(Counter(crowd_statuses).items())),
            "rss_before": rss_before, "rss_after": rss_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--crowd", type=int, default=16, help="clients of the load round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, source = kdd_rows(args.records)
    bundle = make_bundle(source)
    ours_best = bare_best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flows.txt"
        path.write_text("\n".join(rows) + "\n")
        for _ in range(args.repeats):
            rate, alerts = ours(bundle, path)
            ours_best = max(ours_best, rate)
            bare_best = max(bare_best, bare(args.records, bundle.preprocessor.n_features_out))
    print(f"batch detection, W={W} H={H} inputs={bundle.preprocessor.n_features_out}, 1 thread, "
          f"{args.records:,} records, {alerts / args.records:.1%} alerts")
    print(f"  ours (parse..alerts): {ours_best:,.0f} records/s")
    print(f"  bare nn.LSTM:         {bare_best:,.0f} windows/s")
    print(f"  ratio ours/bare:      {ours_best / bare_best:.2f}  (target >= 80k records/s)")
    sv = service_bench(bundle, rows, args.requests, args.clients, args.crowd)
    print(f"service POST /score (API key, read deadlines), 1 record, {args.clients} "
          f"concurrent clients, {args.requests} requests: p50 {sv['p50']:.2f} ms, "
          f"p99 {sv['p99']:.2f} ms (target p99 <= 10 ms)")
    server_errors = sum(n for code, n in sv["statuses"].items() if code >= 500)
    print(f"service under {args.crowd} concurrent clients, {args.requests} mixed requests: "
          f"statuses {sv['statuses']}, {server_errors} 5xx (target 0); p50 "
          f"{sv['crowd_p50']:.2f} ms, p99 {sv['crowd_p99']:.2f} ms; server RSS "
          f"{sv['rss_before'] / 2**20:.1f} -> {sv['rss_after'] / 2**20:.1f} MiB, ratio "
          f"after/before {sv['rss_after'] / sv['rss_before']:.3f} (target flat, ~1.0)")


if __name__ == "__main__":
    main()
