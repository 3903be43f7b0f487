"""DP-SGD epoch time against plain training on the same shapes, in one process.

    python benchmarks/bench_privacy.py [--windows 20000] [--repeats 2]

Same LSTM (W=8, H=64, I=122, B=256, 1 thread), same data, one epoch each through
`fedlstm.training.fit`: plain Adam against DP-SGD (Poisson batches, per-sample clipping,
Gaussian noise, RDP accounting). The same pair again for the model of a federation across
schemas (a site's private encoder into a 32-dimensional shared space, then the LSTM), whose
encoder's per-sample gradients join the clip. For reference it also times Opacus's own route
for recurrent models (DPLSTM + GradSampleModule + DPOptimizer) on a few batches.
Target: ratio <= 3 for both.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from torch import nn

from fedlstm.config import TrainConfig
from fedlstm.features.windows import make_windows
from fedlstm.models import build_model
from fedlstm.models.encoded import EncodedLSTM
from fedlstm.training.loop import fit

B, W, H, I = 256, 8, 64, 122


def epoch_seconds(data, dp: bool, encoded: bool = False) -> float:
    model = EncodedLSTM(I, 2, hidden_size=H, dropout=0.0, shared_dim=32) if encoded else \
        build_model("lstm", I, 2, hidden_size=H, dropout=0.0)
    cfg = TrainConfig(epochs=1, batch_size=B, threads=1, device="cpu", dp=dp,
                      dp_noise_multiplier=1.0)
    return fit(model, data, None, cfg, n_classes=2).seconds


def opacus_batch_seconds(batches: int = 10) -> tuple[float, float]:
    from opacus import GradSampleModule
    from opacus.layers import DPLSTM
    from opacus.optimizers import DPOptimizer

    class Model(nn.Module):
        def __init__(self, dp):
            super().__init__()
            self.lstm = (DPLSTM if dp else nn.LSTM)(I, H, batch_first=True)
            self.head = nn.Linear(H, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    x, y = torch.rand(B, W, I), torch.randint(0, 2, (B,))
    times = []
    for dp in (False, True):
        model = Model(dp)
        if dp:
            model = GradSampleModule(model)
            opt = DPOptimizer(torch.optim.Adam(model.parameters()), noise_multiplier=1.0,
                              max_grad_norm=1.0, expected_batch_size=B)
        else:
            opt = torch.optim.Adam(model.parameters())
        t0 = time.perf_counter()
        for _ in range(batches):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        times.append((time.perf_counter() - t0) / batches)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = make_windows(rng.random((args.windows + W - 1, I), dtype=np.float32),
                        rng.integers(0, 2, args.windows + W - 1), W)
    plain, private, enc_plain, enc_private = [], [], [], []
    for _ in range(args.repeats):  # alternate, keep the best: a busy core hurts both alike
        plain.append(epoch_seconds(data, dp=False))
        private.append(epoch_seconds(data, dp=True))
        enc_plain.append(epoch_seconds(data, dp=False, encoded=True))
        enc_private.append(epoch_seconds(data, dp=True, encoded=True))
    p, d = min(plain), min(private)
    ep, ed = min(enc_plain), min(enc_private)
    op_plain, op_dp = opacus_batch_seconds()
    print(f"shapes: B={B} W={W} H={H} I={I}, 1 thread, {len(data):,} windows, best of {args.repeats}")
    print(f"plain epoch            : {p:7.2f} s")
    print(f"DP-SGD epoch (fedlstm) : {d:7.2f} s")
    print(f"ratio DP/plain         : {d / p:.2f}  (target <= 3)")
    print(f"with a private encoder : plain {ep:.2f} s, DP-SGD {ed:.2f} s, ratio {ed / ep:.2f} "
          "(target <= 3)")
    print(f"Opacus DPLSTM per batch: {op_dp * 1000:.0f} ms vs nn.LSTM {op_plain * 1000:.0f} ms "
          f"-> ratio {op_dp / op_plain:.2f}")


if __name__ == "__main__":
    main()
