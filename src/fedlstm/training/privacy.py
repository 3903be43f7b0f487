"""Record-level DP-SGD for the LSTM detector (plain, or behind a site's private encoder in a
federation across schemas): per-sample clipping, Gaussian noise, RDP accounting.

Privacy accounting is Opacus's (RDP of the Poisson-subsampled Gaussian mechanism). Per-sample
gradients are computed here because Opacus's route for recurrent models (its `DPLSTM` with
per-step hooks) measured ~8x slower than plain training for our LSTM; DP-SGD needs, per sample,
only (a) the gradient norm, to clip, and (b) the clipped sum. For every weight of an LSTM layer
the per-sample gradient is a sum over time of outer products, g_t x_t^T, so both come from small
Gram matrices and one weighted matmul ("ghost clipping", Li et al. 2022; Bu et al. 2023),
without materialising B per-sample gradient copies. Tests check the result against Opacus's own
per-sample gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedlstm.models.encoded import EncodedLSTM

# _opacus_lazily: importing Opacus pulls in its privacy engine, scipy and torch.distributed
# (about 1 s). Flower starts a ClientApp process per message, so its accountant is imported
# where accounting happens, not by every process that trains without DP.
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
# Group privacy divides the orders by up to 2^c; higher orders keep the converted curve fine.
_GROUP_ORDERS = _ORDERS + [64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024]


def default_delta(n_records: int) -> float:
    """δ well below 1/n: a mechanism that publishes one record outright is (0, 1/n)-DP, so δ
    must be much smaller than 1/n to mean anything. Records, not windows, are counted."""
    return 1.0 / (10 * max(n_records, 1))


def sgd_rdp(sample_rate: float, noise_multiplier: float, steps: int,
            windows_per_flow: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(orders, RDP) of `steps` Poisson-subsampled Gaussian steps, for one flow (record).

    Opacus's analysis bounds what one training *window* reveals. A flow inside k windows is
    a group of k windows: RDP group privacy (Mironov 2017, Prop. 11) turns (α, ε)-RDP per
    window into (α/2^c, 3^c·ε)-RDP per group of up to 2^c windows (α >= 2^(c+1)).
    """
    c = math.ceil(math.log2(windows_per_flow)) if windows_per_flow > 1 else 0
    orders = [a for a in _GROUP_ORDERS if a >= 2 ** (c + 1)] if c else _ORDERS
    if steps == 0:
        return np.array(orders) / 2 ** c, np.zeros(len(orders))
    from opacus.accountants.analysis.rdp import compute_rdp  # see _opacus_lazily

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                      orders=orders)
    return np.array(orders) / 2 ** c, 3 ** c * np.asarray(rdp, np.float64)


def gaussian_rdp(orders: np.ndarray, noise_multiplier: float) -> np.ndarray:
    """RDP of one Gaussian release with noise `noise_multiplier` x its L2 sensitivity
    (the DP preprocessing histogram): α / (2 z²)."""
    return np.asarray(orders, np.float64) / (2 * noise_multiplier ** 2)


def epsilon_of(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent  # see _opacus_lazily

    eps, _ = get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(eps)


def epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float,
            windows_per_flow: int = 1, released: tuple[float, ...] = ()) -> float:
    """ε(δ) after `steps` Poisson-subsampled Gaussian steps (Opacus RDP analysis), for a record
    inside `windows_per_flow` windows, composed with earlier Gaussian releases of the same
    records (`released`: their noise multipliers)."""
    if steps == 0 and not released:
        return 0.0
    if noise_multiplier <= 0 and steps:
        return math.inf
    orders, rdp = sgd_rdp(sample_rate, noise_multiplier, steps, windows_per_flow)
    for z in released:
        rdp = rdp + gaussian_rdp(orders, z)
    return epsilon_of(orders, rdp, delta)


def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      windows_per_flow: int = 1, released: tuple[float, ...] = ()) -> float:
    """The noise multiplier that spends `target_epsilon` over `steps` (Opacus's calibration for
    one window per record; else the same bisection over our per-flow accounting)."""
    if windows_per_flow <= 1 and not released:
        from opacus.accountants.utils import get_noise_multiplier  # see _opacus_lazily

        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant="rdp"))
    if released and epsilon(sample_rate, 1e6, 0, delta, 1, released) >= target_epsilon:
        raise ValueError(f"the preprocessing release alone spends ε >= {target_epsilon:g}; "
                         "give DP-SGD a larger target or the preprocessing a smaller ε")
    return _bisect(lambda z: epsilon(sample_rate, z, steps, delta, windows_per_flow, released),
                   target_epsilon)


def gaussian_noise_for_epsilon(target_epsilon: float, delta: float) -> float:
    """Noise multiplier of one Gaussian release that spends `target_epsilon` at `delta`."""
    orders = np.array(_ORDERS)
    return _bisect(lambda z: epsilon_of(orders, gaussian_rdp(orders, z), delta), target_epsilon)


def _bisect(spent, target: float, tolerance: float = 0.005) -> float:
    """The smallest noise multiplier z (within `tolerance` of ε) with spent(z) <= target;
    spent decreases with z."""
    low, high = 0.0, 1.0
    while spent(high) > target:
        low, high = high, high * 2
        if high > 1e7:
            raise ValueError(f"no noise multiplier reaches ε = {target:g}")
    while spent(high) < target - tolerance and high - low > 1e-4:
        middle = (low + high) / 2
        if spent(middle) > target:
            low = middle
        else:
            high = middle
    return high


def _forward_exposed(model: nn.Module, x: torch.Tensor):
    """The model's forward pass, written out so the gate pre-activations (and, before an
    `EncodedLSTM`'s body, the encoder's pre-activations) can be differentiated. Returns the
    logits, the gates, h_{t-1} per step, the head's input, the LSTM's input and the encoder's
    pre-activation (None for a plain LSTM)."""
    encoded = None
    if isinstance(model, EncodedLSTM):
        encoded = model.encoder(x[..., model.n_common:])
        if model.common is not None:
            encoded = encoded + model.common(x[..., :model.n_common])
        inputs, model = torch.tanh(encoded), model.body
    else:
        inputs = x
    lstm = model.lstm
    if lstm.num_layers != 1 or lstm.bidirectional:
        raise NotImplementedError("DP-SGD supports single-layer unidirectional LSTMs")
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    batch, steps, _ = inputs.shape
    h = inputs.new_zeros(batch, lstm.hidden_size)
    c = torch.zeros_like(h)
    projected = inputs @ w_ih.T  # all time steps at once
    gates, previous = [], []
    for t in range(steps):
        g = projected[:, t] + h @ w_hh.T + bias
        gates.append(g)
        previous.append(h)
        i, f, cell, o = g.chunk(4, dim=1)  # nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
        h = torch.sigmoid(o) * torch.tanh(c)
    features = model.dropout(h)
    return model.head(features), gates, previous, features, inputs, encoded


def per_sample_clipped_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                 loss_fn: nn.Module, max_grad_norm: float
                                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Sum over the batch of per-sample gradients clipped to `max_grad_norm`, for an
    `LSTMClassifier` or an `EncodedLSTM` (its encoder is a per-record linear map, so its
    per-sample gradient is a sum over time of outer products too, and its norm joins the clip).

    Returns (summed clipped gradient per parameter name, per-sample norms, mean loss).
    """
    logits, gates, previous, features, lstm_in, encoded = _forward_exposed(model, x)
    losses = loss_fn(logits, y) if getattr(loss_fn, "reduction", "mean") == "none" else \
        nn.functional.cross_entropy(logits, y, weight=getattr(loss_fn, "weight", None),
                                    reduction="none")
    # Each sample's loss depends only on its own activations: one backward of the sum gives
    # every sample's gradient with respect to its own gates and logits (and encoder outputs).
    wrt = [logits, *gates] + ([encoded] if encoded is not None else [])
    grads = torch.autograd.grad(losses.sum(), wrt)
    d_logits, d_gates = grads[0], torch.stack(grads[1:1 + len(gates)], dim=1)  # (B,C), (B,T,4H)
    inputs = lstm_in.detach()
    hidden = torch.stack(previous, dim=1).detach()  # h_{t-1}, (B,T,H)
    feats = features.detach()

    def gram_norm2(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # ||sum_t g_t a_t^T||_F^2 = sum_{t,s} (g_t.g_s)(a_t.a_s)
        return ((g @ g.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum(dim=(1, 2))

    bias_sum = d_gates.sum(dim=1)  # (B,4H): gradient of each of the two LSTM biases
    norm2 = (gram_norm2(d_gates, inputs) + gram_norm2(d_gates, hidden)
             + 2 * (bias_sum ** 2).sum(1)
             + (d_logits ** 2).sum(1) * ((feats ** 2).sum(1) + 1))
    if encoded is not None:
        d_enc = grads[-1]  # (B,T,D)
        site_x, common_x = x[..., model.n_common:], x[..., :model.n_common]
        norm2 = norm2 + gram_norm2(d_enc, site_x) + (d_enc.sum(1) ** 2).sum(1)
        if model.common is not None:
            norm2 = norm2 + gram_norm2(d_enc, common_x)
    norms = norm2.clamp(min=0).sqrt()
    scale = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    dg = d_gates * scale[:, None, None]
    dl = d_logits * scale[:, None]
    prefix = "body." if encoded is not None else ""
    summed = {
        f"{prefix}lstm.weight_ih_l0": torch.einsum("btk,bti->ki", dg, inputs),
        f"{prefix}lstm.weight_hh_l0": torch.einsum("btk,btj->kj", dg, hidden),
        f"{prefix}lstm.bias_ih_l0": dg.sum(dim=(0, 1)),
        f"{prefix}lstm.bias_hh_l0": dg.sum(dim=(0, 1)),
        f"{prefix}head.weight": dl.T @ feats,
        f"{prefix}head.bias": dl.sum(0),
    }
    if encoded is not None:
        de = d_enc * scale[:, None, None]
        summed["encoder.weight"] = torch.einsum("btd,bti->di", de, site_x)
        summed["encoder.bias"] = de.sum(dim=(0, 1))
        if model.common is not None:
            summed["common.weight"] = torch.einsum("btd,bti->di", de, common_x)
    return summed, norms, losses.mean().detach()


def dp_sgd_step(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, loss_fn: nn.Module, max_grad_norm: float, noise_multiplier: float,
                expected_batch: float, generator: torch.Generator,
                anchor: list[torch.Tensor] | None = None, proximal_mu: float = 0.0) -> torch.Tensor:
    """One DP-SGD step: clip per sample, sum, add N(0, (zC)^2), divide by the expected batch."""
    names = dict(model.named_parameters())
    if len(x):
        summed, _, loss = per_sample_clipped_gradients(model, x, y, loss_fn, max_grad_norm)
    else:  # an empty Poisson batch still releases noise
        summed = {k: torch.zeros_like(p) for k, p in names.items()}
        loss = torch.zeros(())
    optimiser.zero_grad(set_to_none=True)
    for (name, p), a in zip(names.items(), anchor or [None] * len(names)):
        noise = torch.randn(p.shape, generator=generator) * (noise_multiplier * max_grad_norm)
        p.grad = (summed[name] + noise.to(p.device)) / expected_batch
        if a is not None and proximal_mu > 0:  # data-independent: no privacy cost
            p.grad = p.grad + proximal_mu * (p.detach() - a)
    optimiser.step()
    return loss
