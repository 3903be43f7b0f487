"""The final model travels to each site once, whatever the number of calibration questions.

A detector is calibrated after the last round by questions that each need the final model
(the hybrid asks three: its classifier's score histogram, the error statistics, the anomaly
score histogram). Each used to carry the weights: the whole model three times per site (6.3 MB
of 8.2 MB calibration downlink on NSL-KDD over 5 sites). Now the first question to a site carries
them, the site keeps them in its node state (Flower's `Context.state`, kept between messages in
simulation and deployment alike), and later questions name them by digest. A site that no
longer holds them (its SuperNode restarted) says so, and gets the weights again.
"""

from __future__ import annotations

import hashlib

from flwr.app import ConfigRecord

WEIGHTS = "weights"  # a question's model, as bytes (`codec.arrays_to_bytes`)
HELD = "weights_sha256"  # ... or its digest, when the site holds it already
_STATE_KEY = "fedlstm.question-model"
NOT_HELD = "fedlstm: the question's model is not held here"  # in the site's error reply


class ModelNotHeld(LookupError):
    """A question named a model by digest that this site does not hold."""


def digest(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()


class HeldModels:
    """Server side, one per run: the digest of the model each site (node id) holds."""

    def __init__(self):
        self.held: dict[int, str] = {}

    def question_for(self, node_id: int, config: dict) -> dict:
        """`config` for this site: the weights replaced by their digest when it holds them."""
        if WEIGHTS not in config:
            return config
        key = digest(bytes(config[WEIGHTS]))
        if self.held.get(node_id) != key:
            return config
        return {**{k: v for k, v in config.items() if k != WEIGHTS}, HELD: key}

    def answered(self, node_id: int, config: dict) -> None:
        """The site answered `config` (the full one): it holds that question's model now."""
        if WEIGHTS in config:
            self.held[node_id] = digest(bytes(config[WEIGHTS]))

    def forget(self, node_id: int) -> None:
        self.held.pop(node_id, None)


def with_held_weights(config: dict, state) -> dict:
    """Site side: keep a question's weights in the node state, or put back those it names."""
    if WEIGHTS in config:
        weights = bytes(config[WEIGHTS])
        state[_STATE_KEY] = ConfigRecord({"sha256": digest(weights), WEIGHTS: weights})
        return config
    if HELD not in config:
        return config
    record = state[_STATE_KEY] if _STATE_KEY in state else None
    if record is None or record["sha256"] != config[HELD]:
        raise ModelNotHeld(f"{NOT_HELD} ({str(config[HELD])[:12]}); send it again")
    return {**{k: v for k, v in config.items() if k != HELD}, WEIGHTS: bytes(record[WEIGHTS])}
