"""The one training loop: local, centralised and federated training all call `fit`.

Batches are gathered straight from the WindowSet tensors instead of a DataLoader: with windows
of ~1 KB, DataLoader's per-sample collation costs more than the LSTM step itself.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedlstm.config import TrainConfig
from fedlstm.windows import WindowSet

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


class Objective:
    """What a batch's loss is. Classification (cross-entropy over window labels) by default;
    other tasks (e.g. reconstructing normal traffic) subclass `step` and `evaluate`."""

    def __init__(self, loss_fn: nn.Module | None = None):
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss of the batch and, where it means something, the number of correct outputs."""
        logits = model(x)
        return self.loss_fn(logits, y), (logits.detach().argmax(1) == y).sum()

    def evaluate(self, model: nn.Module, data: WindowSet, device: torch.device | None = None) -> dict:
        return evaluate_loss(model, data, self.loss_fn, device)


def fit(model: nn.Module, train: WindowSet, val: WindowSet | None, cfg: TrainConfig,
        n_classes: int, seed: int = 0, reporter: Reporter | None = None,
        epochs: int | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        objective: Objective | None = None,
        dp_steps: tuple[int, int] | None = None) -> History:
    """Train in place with Adam; early-stops on validation loss and restores the best weights.

    With `cfg.dp`, every step is DP-SGD over a Poisson-sampled batch; `dp_steps` = (steps already
    spent, steps planned in all) lets federated rounds share one privacy budget (default: this
    call's steps only).
    """
    reporter = reporter or Reporter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = resolve_device(cfg.device)
    model.to(device)
    train_d = train.to(device)
    window_labels = train_d.window_labels
    if objective is None:
        weight = class_weights(window_labels.cpu(), n_classes).to(device) \
            if cfg.class_weights == "balanced" else None
        objective = Objective(nn.CrossEntropyLoss(weight=weight))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # FedProx: keep the starting (global) weights to pull local training towards them.
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None

    n_epochs = epochs or cfg.epochs
    n = len(train_d)
    if n == 0:
        raise ValueError("no training windows (fewer records than the window length?)")
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    history = History()
    dp = _DPState(cfg, n, n_batches, n_epochs, dp_steps, model, objective, generator) \
        if cfg.dp else None
    best_loss, best_state, bad_epochs = float("inf"), None, 0
    reporter.start(n_epochs, n_batches)
    t0 = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for start in range(0, n, cfg.batch_size):
            if dp is not None:
                x, y = train_d.batch(dp.next_batch(device))
                loss = dp.step(model, optimiser, x, y, anchor, cfg.proximal_mu)
                total_loss += loss * len(y)
                reporter.advance()
                continue
            x, y = train_d.batch(order[start:start + cfg.batch_size])
            loss, n_correct = objective.step(model, x, y)
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total_loss += loss.detach() * len(y)
            if n_correct is not None:
                correct += n_correct
            reporter.advance()
        record = {"epoch": epoch, "train_loss": float(total_loss) / n}
        if dp is not None:
            record["epsilon"] = dp.epsilon()
        elif n_correct is not None:
            record["train_accuracy"] = float(correct) / n
        if val is not None and len(val):
            val_metrics = objective.evaluate(model, val, device)
            record.update({f"val_{k}": v for k, v in val_metrics.items()})
        history.epochs.append(record)
        reporter.epoch_end(record)
        if on_epoch:
            on_epoch(record)
        monitored = record.get("val_loss", record["train_loss"])
        if monitored < best_loss - 1e-6:
            best_loss, bad_epochs, history.best_epoch = monitored, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if cfg.patience is not None and val is not None and bad_epochs > cfg.patience:
                history.stopped_early = True
                break
    if best_state is not None and val is not None:
        model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - t0
    if dp is not None:
        history.privacy = dp.summary()
    reporter.finish()
    return history


class _DPState:
    """Sampling, noise calibration and accounting of one DP-SGD training call."""

    def __init__(self, cfg: TrainConfig, n: int, steps_per_epoch: int, epochs: int,
                 dp_steps: tuple[int, int] | None, model: nn.Module, objective: Objective,
                 generator: torch.Generator):
        from fedlstm.models.lstm import LSTMClassifier
        from fedlstm.training import privacy

        if not isinstance(model, LSTMClassifier) or type(objective) is not Objective:
            raise ValueError("DP-SGD is implemented for the LSTM classifier's objective only")
        self.privacy, self.cfg, self.n, self.generator = privacy, cfg, n, generator
        self.loss_fn = objective.loss_fn
        self.sample_rate = min(cfg.batch_size / n, 1.0)
        self.done, planned = dp_steps or (0, epochs * steps_per_epoch)
        self.delta = cfg.dp_delta or 1.0 / n
        self.noise = cfg.dp_noise_multiplier if cfg.dp_target_epsilon is None else \
            privacy.noise_for_epsilon(cfg.dp_target_epsilon, self.delta, self.sample_rate, planned)
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
        return self.privacy.epsilon(self.sample_rate, self.noise, self.done, self.delta)

    def summary(self) -> dict:
        return {"epsilon": self.epsilon(), "delta": self.delta, "noise_multiplier": self.noise,
                "max_grad_norm": self.cfg.dp_max_grad_norm, "sample_rate": self.sample_rate,
                "steps": self.done, "planned_steps": self.planned}


@torch.no_grad()
def predict_logits(model: nn.Module, data: WindowSet, batch_size: int = 2048,
                   device: torch.device | None = None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    model.eval()
    if device.type == "cpu" and hasattr(model, "forward_sliding"):  # shares overlapping windows
        return model.forward_sliding(data.features, data.ends, data.window)
    data = data.to(device)
    outs = [model(data.batch(torch.arange(s, min(s + batch_size, len(data)), device=device))[0])
            for s in range(0, len(data), batch_size)]
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def predict_proba(model: nn.Module, data: WindowSet, batch_size: int = 2048) -> np.ndarray:
    return torch.softmax(predict_logits(model, data, batch_size), dim=1).numpy()


def evaluate_loss(model: nn.Module, data: WindowSet, loss_fn: nn.Module,
                  device: torch.device | None = None) -> dict:
    logits = predict_logits(model, data, device=device)
    y = data.window_labels.cpu()
    weight = getattr(loss_fn, "weight", None)
    loss = nn.functional.cross_entropy(logits, y, weight=None if weight is None else weight.cpu())
    return {"loss": float(loss), "accuracy": float((logits.argmax(1) == y).float().mean())}
