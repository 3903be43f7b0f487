"""Explanations that explain: a classifier's alerts are attributed with integrated gradients
(Captum) of the attack logit, so an alert whose probability has saturated at 1.0 still names the
features that drove it (gradients of the saturated probability are ~0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _detect_helpers import tiny  # noqa: F401

from fedlstm.data.flows import FlowReader
from fedlstm.detection import ModelBundle
from fedlstm.detection.stream import StreamScorer


@pytest.fixture
def saturated(tiny) -> tuple[ModelBundle, list]:
    """The tiny classifier made very confident: its head scaled, so most alerts score 1.0."""
    bundle = ModelBundle.load(tiny[2])
    with torch.no_grad():
        bundle.model.head.weight.mul_(40.0)
        bundle.model.head.bias.mul_(40.0)
    return bundle, list(FlowReader(tiny[1], bundle.spec))


def attack_logit(bundle: ModelBundle, windows: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits = bundle.model(windows)
    return (torch.logsumexp(logits[:, 1:], 1) - logits[:, 0]).numpy()


def test_attributions_of_saturated_alerts_are_not_all_zero(saturated):
    bundle, chunks = saturated
    scorer = StreamScorer(bundle, explain_top=3)
    scores = scorer.score(chunks[0].frame, chunks[0].entity)
    pinned = np.flatnonzero(scores.alert & (scores.score >= 1.0 - 1e-6))
    assert len(pinned) > 20  # saturated: 1 - P(normal) == 1 in float32
    for r in pinned:
        top = scores.top_features[r]
        assert len(top) == 3 and max(abs(v) for _, v in top) > 0.5, top
        assert abs(top[0][1]) >= abs(top[1][1]) >= abs(top[2][1])


def test_attributions_add_up_to_the_logit_difference(saturated):
    """Completeness of integrated gradients: all contributions of the alerted record together are
    the attack logit of its window minus that of the window ending in the baseline record."""
    bundle, chunks = saturated
    w = bundle.window
    frame = chunks[0].frame.iloc[:60]  # no entity: windows over consecutive rows
    scorer = StreamScorer(bundle, explain_top=10_000)
    scores = scorer.score(frame)
    features = torch.from_numpy(bundle.preprocessor.transform(frame).astype(np.float32))
    alerts = np.flatnonzero(scores.alert)
    assert len(alerts) > 5
    for r in alerts[:10]:
        window = features[r - w + 1:r + 1].unsqueeze(0)
        baseline = window.clone()
        baseline[0, -1] = 0
        expected = attack_logit(bundle, window)[0] - attack_logit(bundle, baseline)[0]
        total = sum(v for _, v in scores.top_features[r])
        assert total == pytest.approx(expected, rel=0.05, abs=0.05)


def test_only_alerts_are_explained(saturated):
    bundle, chunks = saturated
    scores = StreamScorer(bundle, explain_top=2).score(chunks[0].frame, chunks[0].entity)
    assert set(scores.top_features) == set(np.flatnonzero(scores.alert))
    assert StreamScorer(bundle, explain_top=0).score(chunks[0].frame).top_features == {}
