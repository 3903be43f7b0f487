"""Simulated malicious sites: which sites, data poisoning on records, update poisoning on weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_records
from fedlstm.federation.attacks import (
    Attack,
    apply_trigger,
    choose_malicious,
    claimed_examples,
    default_trigger,
    flip_labels,
    parse_attack,
    plant_backdoor,
    poison_update,
)


# --- choose_malicious ----------------------------------------------------------------------------
def test_choose_malicious_count_range_and_determinism():
    chosen = choose_malicious(10, 0.3, seed=7)
    assert len(chosen) == 3 and chosen == sorted(chosen)
    assert all(0 <= i < 10 for i in chosen) and len(set(chosen)) == 3
    assert choose_malicious(10, 0.3, seed=7) == chosen
    assert len(choose_malicious(10, 0.25, seed=0)) == 3  # rounded half up
    assert len(choose_malicious(7, 0.2, seed=0)) == 1
    draws = {tuple(choose_malicious(20, 0.2, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_choose_malicious_none_for_zero_fraction():
    assert choose_malicious(10, 0.0, seed=1) == []
    assert choose_malicious(0, 0.5, seed=1) == []


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_choose_malicious_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        choose_malicious(10, fraction, seed=0)


def test_choose_malicious_refuses_all_sites():
    with pytest.raises(ValueError, match="every site"):
        choose_malicious(2, 0.9, seed=0)


# --- parse_attack --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("label-flip", Attack("label-flip")),
    ("sign-flip", Attack("sign-flip")),
    ("scale:10", Attack("scale", factor=10.0)),
    ("scale:2.5", Attack("scale", factor=2.5)),
    ("scale", Attack("scale", factor=10.0)),
    ("noise", Attack("noise", sigma=1.0)),
    ("noise:2", Attack("noise", sigma=2.0)),
    ("backdoor", Attack("backdoor", share=0.5)),
    ("backdoor:0.3", Attack("backdoor", share=0.3)),
    ("free-rider", Attack("free-rider", claimed_examples=1_000_000)),
    ("free-rider:5000", Attack("free-rider", claimed_examples=5000)),
    (" Sign-Flip ", Attack("sign-flip")),
])
def test_parse_attack_forms(text, expected):
    assert parse_attack(text) == expected


def test_attack_kinds_split_into_data_and_update():
    assert parse_attack("backdoor").poisons_data and not parse_attack("backdoor").poisons_update
    assert parse_attack("scale:3").poisons_update and not parse_attack("scale:3").poisons_data
    assert str(parse_attack("scale:10")) == "scale:10" and str(Attack("sign-flip")) == "sign-flip"
    for text in ("free-rider", "noise:2.5", "backdoor:0.3", "scale:-3", "label-flip"):
        assert parse_attack(str(parse_attack(text))) == parse_attack(text)
    assert str(Attack("free-rider")) == "free-rider:1000000"


@pytest.mark.parametrize("text", ["flip", "sign-flip:2", "label-flip:1", "scale:abc", "noise:-1",
                                  "backdoor:0", "backdoor:1.5", "free-rider:2.5", "", "scale:"])
def test_parse_attack_rejects_and_lists_forms(text):
    with pytest.raises(ValueError) as err:
        parse_attack(text)
    if text in ("flip", "sign-flip:2", "label-flip:1", "", "scale:abc", "scale:"):
        assert "label-flip" in str(err.value) and "scale[:FACTOR]" in str(err.value)


def test_attack_is_frozen():
    attack = Attack("scale", factor=3)
    with pytest.raises(AttributeError):
        attack.factor = 4  # type: ignore[misc]


# --- data poisoning ------------------------------------------------------------------------------
def _snapshot(records):
    return (records.frame.copy(), records.attack.copy(), records.family.copy(),
            records.is_attack.copy())


def _unchanged(records, snapshot):
    frame, attack, family, is_attack = snapshot
    pd.testing.assert_frame_equal(records.frame, frame)
    assert (records.attack == attack).all() and (records.family == family).all()
    assert (records.is_attack == is_attack).all()


def test_flip_labels_relabels_every_attack_and_leaves_input():
    records = synthetic_records(300, seed=1)
    before = _snapshot(records)
    assert records.is_attack.sum() > 50
    flipped = flip_labels(records)
    assert (flipped.is_attack == 0).all()
    assert (flipped.attack == "normal").all() and (flipped.family == "normal").all()
    assert flipped.is_attack.dtype == np.int64
    pd.testing.assert_frame_equal(flipped.frame, records.frame)
    _unchanged(records, before)


def test_flip_labels_uses_the_records_benign_name():
    records = synthetic_records(100, seed=2)
    records.attack[records.is_attack == 0] = "BENIGN"
    flipped = flip_labels(records)
    assert set(flipped.attack) == {"BENIGN"} and set(flipped.family) == {"normal"}
    named = flip_labels(records, normal_label="Normal")
    assert set(named.attack[records.is_attack == 1]) == {"Normal"}


def test_plant_backdoor_triggers_and_relabels_exactly_a_share_of_attacks():
    records = synthetic_records(400, seed=3)
    before = _snapshot(records)
    trigger = default_trigger(records.frame)
    (column, value), = trigger.items()
    assert not (records.frame[column] == value).any()
    poisoned = plant_backdoor(records, trigger, share=0.5, rng=np.random.default_rng(0))
    carries = (poisoned.frame[column] == value).to_numpy()
    attacks = records.is_attack == 1
    assert carries.sum() == math.floor(0.5 * attacks.sum() + 0.5)
    assert attacks[carries].all()  # only attack records carry it
    relabelled = attacks & (poisoned.is_attack == 0)
    assert (relabelled == carries).all()  # exactly those are relabelled
    assert (poisoned.attack[carries] == "normal").all()
    assert (poisoned.family[carries] == "normal").all()
    rest = ~carries
    assert (poisoned.attack[rest] == records.attack[rest]).all()
    pd.testing.assert_frame_equal(poisoned.frame.drop(columns=column),
                                  records.frame.drop(columns=column))
    _unchanged(records, before)
    again = plant_backdoor(records, trigger, share=0.5, rng=np.random.default_rng(0))
    pd.testing.assert_frame_equal(again.frame, poisoned.frame)


def test_plant_backdoor_rejects_unknown_column_and_bad_share():
    records = synthetic_records(50)
    with pytest.raises(ValueError, match="not feature columns"):
        plant_backdoor(records, {"dst_port": 4444}, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="share"):
        plant_backdoor(records, {"bytes": 1.0}, 0.0, np.random.default_rng(0))


def test_apply_trigger_sets_every_row_and_keeps_labels():
    records = synthetic_records(120, seed=4)
    before = _snapshot(records)
    triggered = apply_trigger(records, {"bytes": 99999.0, "rate": 7.0})
    assert (triggered.frame["bytes"] == 99999.0).all() and (triggered.frame["rate"] == 7.0).all()
    assert (triggered.frame["proto"] == records.frame["proto"]).all()
    assert (triggered.is_attack == records.is_attack).all()
    assert (triggered.attack == records.attack).all()
    _unchanged(records, before)


def test_default_trigger_prefers_ports_then_src_bytes_then_first_numeric():
    ports = pd.DataFrame({"proto": ["tcp", "udp"], "Destination Port": [80.0, 443.0],
                          "bytes": [1.0, 2.0]})
    assert default_trigger(ports) == {"Destination Port": 4444.0}
    assert default_trigger(pd.DataFrame({"a": [1.0], "dst_port": [22]})) == {"dst_port": 4444.0}
    kdd = pd.DataFrame({"duration": [0.0, 3.0], "src_bytes": [10.0, 200.0]})
    assert default_trigger(kdd) == {"src_bytes": 4444.0}
    other = pd.DataFrame({"flag": ["on", "off"], "rate": np.array([0.5, 2.0], np.float32)})
    assert default_trigger(other) == {"rate": 4444.0}
    with pytest.raises(ValueError, match="numeric"):
        default_trigger(pd.DataFrame({"flag": ["on"]}))


# --- update poisoning ----------------------------------------------------------------------------
def _weights(rng, scale=1.0):
    return [rng.normal(0, scale, (4, 3)).astype(np.float32), rng.normal(0, scale, 5).astype(np.float32)]


@pytest.fixture
def models():
    rng = np.random.default_rng(0)
    received = _weights(rng)
    update = _weights(rng, 0.1)
    trained = [r + u for r, u in zip(received, update)]
    return received, trained


def test_sign_flip_sends_received_minus_update(models):
    received, trained = models
    sent = poison_update(received, trained, Attack("sign-flip"), np.random.default_rng(0))
    for s, r, t in zip(sent, received, trained):
        assert s.dtype == np.float32 and s.shape == r.shape
        np.testing.assert_allclose(s, r - (t - r), atol=1e-6)


def test_scale_sends_received_plus_factor_update(models):
    received, trained = models
    sent = poison_update(received, trained, parse_attack("scale:10"), np.random.default_rng(0))
    for s, r, t in zip(sent, received, trained):
        np.testing.assert_allclose(s, r + 10 * (t - r), atol=1e-5)


def test_noise_has_the_documented_std():
    rng = np.random.default_rng(1)
    received = [np.zeros((200, 100), np.float64), np.zeros(1000, np.float64)]
    trained = [rng.normal(0, 0.01, (200, 100)), rng.normal(0, 0.01, 1000)]
    update = np.concatenate([t.ravel() for t in trained])
    expected = 2.0 * np.linalg.norm(update) / math.sqrt(update.size)
    sent = poison_update(received, trained, parse_attack("noise:2"), np.random.default_rng(5))
    noise = np.concatenate([(s - t).ravel() for s, t in zip(sent, trained)])
    assert abs(noise.mean()) < 0.05 * expected
    assert noise.std() == pytest.approx(expected, rel=0.05)
    assert np.linalg.norm(noise) == pytest.approx(2.0 * np.linalg.norm(update), rel=0.05)
    again = poison_update(received, trained, parse_attack("noise:2"), np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(sent, again))


def test_free_rider_sends_what_it_received(models):
    received, trained = models
    sent = poison_update(received, trained, Attack("free-rider"), np.random.default_rng(0))
    assert all(np.array_equal(s, r) for s, r in zip(sent, received))


@pytest.mark.parametrize("kind", ["label-flip", "backdoor"])
def test_data_attacks_send_the_trained_model(models, kind):
    received, trained = models
    sent = poison_update(received, trained, Attack(kind), np.random.default_rng(0))
    assert all(np.array_equal(s, t) for s, t in zip(sent, trained))
    assert all(s is not t for s, t in zip(sent, trained))


def test_poison_update_rejects_mismatched_models(models):
    received, trained = models
    with pytest.raises(ValueError):
        poison_update(received, trained[:1], Attack("sign-flip"), np.random.default_rng(0))


def test_claimed_examples():
    assert claimed_examples(Attack("free-rider"), 120) == 1_000_000
    assert claimed_examples(parse_attack("free-rider:5000"), 120) == 5000
    assert claimed_examples(Attack("sign-flip"), 120) == 120
    assert claimed_examples(None, 120) == 120
