"""The one training loop: local, centralised and federated training all call `fit`.

Batches are gathered straight from the WindowSet tensors instead of a DataLoader: with windows
of ~1 KB, DataLoader's per-sample collation costs more than the LSTM step itself.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fedlstm.config import TrainConfig
from fedlstm.features.windows import WindowSet
from fedlstm.models.encoded import EncodedLSTM
from fedlstm.models.lstm import LSTMClassifier
from fedlstm.training import privacy
from fedlstm.training.objectives import Objective

log = logging.getLogger(__name__)


class Reporter:
    """Progress hooks; the CLI plugs in a rich progress bar, library use stays silent."""

    def start(self, epochs: int, batches_per_epoch: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def epoch_end(self, record: dict) -> None: ...
    def finish(self) -> None: ...


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    privacy: dict | None = None  # DP-SGD: epsilon, delta, noise multiplier, sample rate, steps

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "seconds": self.seconds,
                "privacy": self.privacy}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=n_classes).float()
    weights = counts.sum() / (n_classes * counts.clamp(min=1))
    return weights * (counts > 0)


def batches_per_epoch(n_windows: int, cfg: TrainConfig) -> int:
    return math.ceil(n_windows / cfg.batch_size)


def epochs_for(cfg: TrainConfig, epochs: int, n_windows: int, rounds: int = 1) -> int:
    """`epochs` per call, more where `rounds` calls of them would take fewer than
    `cfg.min_steps` batches in all (centralised training: one call; a federated site: one a
    round)."""
    steps_per_epoch = max(1, rounds * batches_per_epoch(n_windows, cfg))
    return max(epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def fit(model: nn.Module, train: WindowSet, val: WindowSet | None, cfg: TrainConfig,
        n_classes: int, seed: int = 0, reporter: Reporter | None = None,
        epochs: int | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        objective: Objective | None = None,
        dp_steps: tuple[int, int] | None = None,
        dp_released: tuple[float, ...] = ()) -> History:
    """Train in place with Adam; early-stops on validation loss and restores the best weights.

    With `cfg.dp`, every step is DP-SGD over a Poisson-sampled batch, and ε is counted per flow
    record; `dp_steps` = (steps already spent, steps planned in all) lets federated rounds share
    one privacy budget (default: this call's steps only); `dp_released` are the noise multipliers
    of Gaussian releases already made from the same records (DP preprocessing statistics),
    which the budget includes.
    """
    reporter = reporter or Reporter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = resolve_device(cfg.device)
    model.to(device)
    train_d = train.to(device)
    objective = objective or Objective()
    if cfg.class_weights == "balanced" and isinstance(objective.loss_fn, nn.CrossEntropyLoss):
        # Every classifying objective (the hybrid's too), not only the default one: the option
        # used to be ignored by the hybrid, the default detector.
        objective.loss_fn = nn.CrossEntropyLoss(
            weight=class_weights(train_d.window_labels.cpu(), n_classes).to(device))
    n = len(train_d)
    if n == 0:
        raise ValueError("no training windows (fewer records than the window length?)")
    n_batches = batches_per_epoch(n, cfg)
    n_epochs = epochs or epochs_for(cfg, cfg.epochs, n)
    step = _Step(model, objective, cfg,
                 _DPState(cfg, train_d, n_batches, n_epochs, dp_steps, model, objective,
                          generator, dp_released)
                 if cfg.dp else None)
    history = History()
    stopping = _EarlyStopping(cfg.patience if val is not None else None)
    reporter.start(n_epochs, n_batches)
    t0 = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        record = {"epoch": epoch, **step.epoch(train_d, generator, reporter, device)}
        if val is not None and len(val):
            record.update({f"val_{k}": v for k, v in objective.evaluate(model, val, device).items()})
        history.epochs.append(record)
        reporter.epoch_end(record)
        if on_epoch:
            on_epoch(record)
        if stopping.update(record.get("val_loss", record["train_loss"]), epoch, model, history):
            break
    if stopping.best_state is not None and val is not None:
        model.load_state_dict(stopping.best_state)
    history.seconds = time.perf_counter() - t0
    if step.dp is not None:
        history.privacy = step.dp.summary()
    reporter.finish()
    return history


class _Step:
    """One optimiser step per batch: the objective's loss (+ FedProx's proximal term), or a
    DP-SGD step; and an epoch of them over a fresh permutation."""

    def __init__(self, model: nn.Module, objective: Objective, cfg: TrainConfig,
                 dp: _DPState | None):
        self.model, self.objective, self.cfg, self.dp = model, objective, cfg, dp
        self.optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        # FedProx: keep the starting (global) weights to pull local training towards them.
        self.anchor = [p.detach().clone() for p in model.parameters()] \
            if cfg.proximal_mu > 0 else None

    def epoch(self, train: WindowSet, generator: torch.Generator, reporter: Reporter,
              device: torch.device) -> dict:
        """Train on every window once; the epoch's mean loss (and accuracy or ε)."""
        self.model.train()
        n, batch_size = len(train), self.cfg.batch_size
        order = torch.randperm(n, generator=generator).to(device)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        counted = False
        for start in range(0, n, batch_size):
            if self.dp is not None:
                x, y = train.batch(self.dp.next_batch(device))
                loss = self.dp.step(self.model, self.optimiser, x, y, self.anchor,
                                    self.cfg.proximal_mu)
            else:
                x, y = train.batch(order[start:start + batch_size])
                loss, n_correct = self.batch(x, y)
                if n_correct is not None:
                    correct += n_correct
                    counted = True
            total_loss += loss * len(y)
            reporter.advance()
        record = {"train_loss": float(total_loss) / n}
        if self.dp is not None:
            record["epsilon"] = self.dp.epsilon()
        elif counted:
            record["train_accuracy"] = float(correct) / n
        return record

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss, n_correct = self.objective.step(self.model, x, y)
        if self.anchor is not None:
            prox = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), self.anchor))
            loss = loss + 0.5 * self.cfg.proximal_mu * prox
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return loss.detach(), n_correct


class _EarlyStopping:
    """Keeps the weights of the best monitored loss; says when `patience` epochs did not beat it
    (never, with patience None)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best_loss, self.best_state, self.bad_epochs = float("inf"), None, 0

    def update(self, monitored: float, epoch: int, model: nn.Module, history: History) -> bool:
        if monitored < self.best_loss - 1e-6:
            self.best_loss, self.bad_epochs, history.best_epoch = monitored, 0, epoch
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_epochs += 1
        history.stopped_early = self.patience is not None and self.bad_epochs > self.patience
        return history.stopped_early


class _DPState:
    """Sampling, noise calibration and accounting of one DP-SGD training call, per flow record:
    a record inside k training windows is a group of k (`privacy.sgd_rdp`), and Gaussian
    releases of the same records made before training (`released`) count in the same budget."""

    def __init__(self, cfg: TrainConfig, train: WindowSet, steps_per_epoch: int, epochs: int,
                 dp_steps: tuple[int, int] | None, model: nn.Module, objective: Objective,
                 generator: torch.Generator, released: tuple[float, ...] = ()):
        if not isinstance(model, (LSTMClassifier, EncodedLSTM)) or type(objective) is not Objective:
            raise ValueError("DP-SGD is implemented for the LSTM classifier's objective only "
                             "(a plain LSTM, or one behind a site's private encoder)")
        if not all(p.requires_grad for p in model.parameters()):
            raise ValueError("DP-SGD clips and noises every weight; this model has frozen ones")
        self.privacy, self.cfg, self.n = privacy, cfg, len(train)
        # Whoever knows the run seed (the server sends it) could replay seeded sampling and
        # noise and subtract the noise: both come from the OS unless asked to be reproducible.
        self.generator = generator if cfg.dp_seeded_noise else \
            torch.Generator().manual_seed(secrets.randbits(63))
        self.loss_fn = objective.loss_fn
        self.sample_rate = min(cfg.batch_size / self.n, 1.0)
        self.windows_per_flow = max(train.max_windows_per_record(), 1)
        self.n_records = len(train.features)
        self.released = tuple(released)
        self.done, planned = dp_steps or (0, epochs * steps_per_epoch)
        self.delta = cfg.dp_delta or privacy.default_delta(self.n_records)
        self.noise = cfg.dp_noise_multiplier if cfg.dp_target_epsilon is None else \
            privacy.noise_for_epsilon(cfg.dp_target_epsilon, self.delta, self.sample_rate, planned,
                                      self.windows_per_flow, self.released)
        self.planned = planned

    def next_batch(self, device: torch.device) -> torch.Tensor:
        mask = torch.rand(self.n, generator=self.generator) < self.sample_rate
        return torch.nonzero(mask).flatten().to(device)

    def step(self, model, optimiser, x, y, anchor, proximal_mu) -> torch.Tensor:
        self.done += 1
        return self.privacy.dp_sgd_step(model, optimiser, x, y, self.loss_fn,
                                        self.cfg.dp_max_grad_norm, self.noise,
                                        self.sample_rate * self.n, self.generator, anchor,
                                        proximal_mu)

    def epsilon(self) -> float:
        """ε per flow record so far."""
        return self.privacy.epsilon(self.sample_rate, self.noise, self.done, self.delta,
                                    self.windows_per_flow, self.released)

    def summary(self) -> dict:
        return {"epsilon": self.epsilon(), "delta": self.delta, "unit": "flow",
                "windows_per_flow": self.windows_per_flow, "n_records": self.n_records,
                "window_epsilon": self.privacy.epsilon(self.sample_rate, self.noise, self.done,
                                                       self.delta),
                "released_noise": list(self.released), "noise_multiplier": self.noise,
                "max_grad_norm": self.cfg.dp_max_grad_norm, "sample_rate": self.sample_rate,
                "steps": self.done, "planned_steps": self.planned}
