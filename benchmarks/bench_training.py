"""Training-loop throughput against a bare nn.LSTM step on identical shapes, in one process.

    python benchmarks/bench_training.py [--windows 40000] [--repeats 3] [--device cpu|cuda]
                                        [--batch-size 256]

Both sides train the same architecture (LSTM + linear head, Adam, cross-entropy) on windows of the
same shape with one torch thread. The bare side feeds pre-built batch tensors (no data pipeline);
our side runs `fedlstm.training.fit` (shuffling, window gathering, loss, optimiser, bookkeeping).
The sides alternate and the best of `repeats` is kept, so a busy neighbour core hurts both alike.
Target: ratio >= 0.8. `--device cuda` runs both sides on the GPU (the project never needs one).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from fedlstm.config import TrainConfig
from fedlstm.features.windows import make_windows
from fedlstm.models import build_model
from fedlstm.training.loop import fit

W, H, I = 8, 64, 122


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_loop(x: torch.Tensor, y: torch.Tensor, B: int, device: str) -> float:
    torch.manual_seed(0)
    lstm, head = nn.LSTM(I, H, batch_first=True).to(device), nn.Linear(H, 2).to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    n_batches = len(x) // B
    batches = [(x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]) for i in range(n_batches)]
    _sync(device)
    t0 = time.perf_counter()
    for xb, yb in batches:
        out, _ = lstm(xb)
        loss = loss_fn(head(out[:, -1]), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return n_batches * B / (time.perf_counter() - t0)


def our_loop(features: np.ndarray, labels: np.ndarray, B: int, device: str) -> float:
    data = make_windows(features, labels, W)
    model = build_model("lstm", I, 2, hidden_size=H, dropout=0.0)
    history = fit(model, data, None, TrainConfig(epochs=1, batch_size=B, threads=1, device=device),
                  n_classes=2)
    return len(data) / history.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    B = args.batch_size
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    features = rng.random((args.windows + W - 1, I), dtype=np.float32)
    labels = rng.integers(0, 2, len(features))
    x = torch.as_tensor(rng.random((args.windows, W, I), dtype=np.float32))
    y = torch.as_tensor(labels[: args.windows])
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(x, y, B, args.device))
        ours.append(our_loop(features, labels, B, args.device))
    b, o = max(bare), max(ours)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU, 1 thread"
    print(f"shapes: B={B} W={W} H={H} I={I}, {where}, {args.windows:,} windows, "
          f"best of {args.repeats}")
    print(f"bare nn.LSTM step : {b:10,.0f} windows/s")
    print(f"fedlstm fit loop  : {o:10,.0f} windows/s")
    print(f"ratio fedlstm/bare: {o / b:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
