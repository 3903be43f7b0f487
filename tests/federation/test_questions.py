"""The final model reaches each site once for all of a detector's calibration questions."""

from __future__ import annotations

import pytest
from flwr.app import RecordDict

from fedlstm.federation.questions import (
    HELD,
    NOT_HELD,
    WEIGHTS,
    HeldModels,
    ModelNotHeld,
    with_held_weights,
)


def test_a_site_is_sent_the_model_once_and_then_its_digest():
    held, state = HeldModels(), RecordDict()
    first = {"phase": "error-stats", WEIGHTS: b"model-bytes"}
    sent = held.question_for(7, first)
    assert sent[WEIGHTS] == b"model-bytes" and HELD not in sent  # the site holds nothing yet
    assert with_held_weights(sent, state) == first
    held.answered(7, first)
    second = {"phase": "score-histogram", WEIGHTS: b"model-bytes", "bins": 3}
    sent = held.question_for(7, second)
    assert WEIGHTS not in sent and sent["bins"] == 3
    assert with_held_weights(sent, state) == second  # the site puts its copy back
    assert held.question_for(8, second)[WEIGHTS] == b"model-bytes"  # another site: in full
    other = {"phase": "x", WEIGHTS: b"another model"}
    assert held.question_for(7, other)[WEIGHTS] == b"another model"


def test_a_site_that_lost_the_model_says_so():
    held = HeldModels()
    config = {"phase": "q", WEIGHTS: b"model-bytes"}
    held.answered(1, config)
    named = held.question_for(1, config)
    with pytest.raises(ModelNotHeld, match=NOT_HELD):
        with_held_weights(named, RecordDict())  # a restarted SuperNode: empty node state
    state = RecordDict()
    with_held_weights({"phase": "q", WEIGHTS: b"older model"}, state)
    with pytest.raises(ModelNotHeld):
        with_held_weights(named, state)  # a model, but not the one named
    held.forget(1)
    assert held.question_for(1, config)[WEIGHTS] == b"model-bytes"
