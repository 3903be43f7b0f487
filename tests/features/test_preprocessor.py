import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.pandas import column, data_frames

from fedlstm.features import FlowPreprocessor, PreprocessingStats, merge_all

NUM, CAT = ["a", "b"], ["c"]
frames = data_frames([
    column("a", elements=st.floats(-1e6, 1e9, allow_nan=False, width=32)),
    column("b", elements=st.floats(0, 1e4, allow_nan=False, width=32)),
    column("c", elements=st.sampled_from(["x", "y", "z", "w"])),
])


@settings(max_examples=60, deadline=None)
@given(frames, frames, st.sampled_from(["none", "log", "clip", "log+clip"]))
def test_merged_statistics_equal_statistics_of_the_union(a, b, outliers):
    if len(a) == 0 or len(b) == 0:
        return
    merged = PreprocessingStats.of(a, NUM, CAT).merge(PreprocessingStats.of(b, NUM, CAT))
    union = pd.concat([a, b], ignore_index=True)
    assert merged.equals(PreprocessingStats.of(union, NUM, CAT))
    from_parts = FlowPreprocessor(NUM, CAT, outliers=outliers).fit_stats(merged)
    pooled = FlowPreprocessor(NUM, CAT, outliers=outliers).fit(union)
    np.testing.assert_array_equal(from_parts.transform(union), pooled.transform(union))


def test_merge_is_associative_and_order_free():
    rng = np.random.default_rng(1)
    parts = [pd.DataFrame({"a": rng.normal(size=50) * 10 ** k, "b": rng.random(50),
                           "c": rng.choice(list("pqr"[: k + 1]), 50)}) for k in range(3)]
    stats = [PreprocessingStats.of(p, NUM, CAT) for p in parts]
    assert merge_all(stats).equals(merge_all(stats[::-1]))


def test_min_max_scaling_follows_eq_1_and_2():
    df = pd.DataFrame({"a": [2.0, 4.0, 6.0], "b": [5.0, 5.0, 5.0], "c": ["x", "y", "x"]})
    pre = FlowPreprocessor(NUM, CAT, feature_range=(-1.0, 1.0), outliers="none").fit(df)
    out = pre.transform(df)
    np.testing.assert_allclose(out[:, 0], [-1.0, 0.0, 1.0])  # (Y-Ymin)/(Ymax-Ymin)*(max-min)+min
    np.testing.assert_allclose(out[:, 1], [-1.0, -1.0, -1.0])  # constant column: no NaN
    assert pre.feature_names_out_ == ["a", "b", "c=x", "c=y", "c=__unseen__"]


def test_unseen_categories_and_out_of_range_values():
    train = pd.DataFrame({"a": [0.0, 10.0], "b": [0.0, 1.0], "c": ["x", "y"]})
    pre = FlowPreprocessor(NUM, CAT, outliers="none").fit(train)
    out = pre.transform(pd.DataFrame({"a": [-5.0, 50.0], "b": [0.5, 0.5], "c": ["new", "x"]}))
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0])  # clipped to the trained range
    np.testing.assert_array_equal(out[:, 2:], [[0, 0, 1], [1, 0, 0]])


def test_log_scaling_applies_only_to_heavy_tailed_nonnegative_columns():
    df = pd.DataFrame({"a": [0.0, 1.0, 1e6], "b": [0.0, 0.5, 1.0], "c": ["x"] * 3})
    pre = FlowPreprocessor(NUM, CAT, outliers="log").fit(df)
    assert pre.log_columns_.tolist() == [True, False]
    mid = pre.transform(df)[1, 0]
    assert mid == pytest.approx(np.log1p(1.0) / np.log1p(1e6), rel=1e-6)


def test_quantile_clipping_bounds_outliers():
    values = np.concatenate([np.linspace(0, 100, 9990), np.full(10, 1e9)])
    df = pd.DataFrame({"a": values, "b": values, "c": ["x"] * len(values)})
    pre = FlowPreprocessor(NUM, CAT, outliers="clip", clip_quantile=0.99).fit(df)
    assert 99 <= pre.clip_max_[0] <= 110  # the sketch's resolution is a few percent
    assert (pre.transform(df)[:5000, 0] > 0.01).mean() > 0.9  # outliers no longer squash the rest


def test_round_trip_through_dict():
    df = pd.DataFrame({"a": [1.0, 300.0, 7.0], "b": [0.1, 0.2, 0.3], "c": ["x", "y", "z"]})
    pre = FlowPreprocessor(NUM, CAT).fit(df)
    again = FlowPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(pre.transform(df), again.transform(df))


def test_fit_on_nothing_is_an_error():
    with pytest.raises(ValueError, match="zero records"):
        FlowPreprocessor(NUM, CAT).fit(pd.DataFrame({"a": [], "b": [], "c": []}))


def test_statistics_survive_byte_transport():
    df = pd.DataFrame({"a": [1.0, -3.0, 1e7], "b": [0.0, 2.0, 2.0], "c": ["x", "y", "x"]})
    stats = PreprocessingStats.of(df, NUM, CAT)
    assert PreprocessingStats.from_bytes(stats.to_bytes()).equals(stats)


def test_round_trip_keeps_every_parameter_and_learned_value():
    df = pd.DataFrame({"a": [1.0, 300.0, 7.0, 2e5], "b": [0.1, 0.2, 0.3, 0.4],
                       "c": ["x", "y", "z", "x"]})
    pre = FlowPreprocessor(NUM, CAT, feature_range=(-1.0, 2.0), outliers="log+clip",
                           log_threshold=50.0, clip_quantile=0.75).fit(df)
    again = FlowPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.get_params() == pre.get_params() and again.n_records_ == 4
    for name in ("log_columns_", "clip_max_", "data_min_", "data_max_"):
        np.testing.assert_array_equal(getattr(again, name), getattr(pre, name))
        assert getattr(again, name).dtype == getattr(pre, name).dtype
    assert again.categories_ == pre.categories_ and again.feature_names_out_ == pre.feature_names_out_
    np.testing.assert_array_equal(again.transform(df), pre.transform(df))


def test_single_records_and_frames_transform_alike():
    train = pd.DataFrame({"a": np.arange(100.0), "b": np.ones(100), "c": ["x", "y"] * 50})
    pre = FlowPreprocessor(NUM, CAT).fit(train)
    many = pd.DataFrame({"a": np.arange(100.0), "b": np.ones(100), "c": ["y", "new"] * 50})
    whole = pre.transform(many)
    one_by_one = np.vstack([pre.transform(many.iloc[[i]]) for i in range(0, 100, 7)])
    np.testing.assert_array_equal(whole[::7], one_by_one)
    assert whole[1, -1] == 1 and whole[0, 3] == 1  # "new" in the unseen bucket, "y" its own
    with pytest.raises(RuntimeError, match="not fitted"):
        FlowPreprocessor(NUM, CAT).transform(many)
    with pytest.raises(ValueError, match="other numeric columns"):
        FlowPreprocessor(["a"], CAT).fit_stats(PreprocessingStats.of(train, NUM, CAT))
    np.testing.assert_array_equal(FlowPreprocessor(NUM, CAT).fit_transform(train),
                                  pre.transform(train))


def test_refitting_forgets_the_previous_categories():
    pre = FlowPreprocessor(NUM, CAT)
    first = pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 1.0], "c": ["x", "y"]})
    second = pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 1.0], "c": ["p", "q"]})
    pre.fit(first).transform(first.iloc[[0]])  # fills the lookup caches
    pre.transform(pd.concat([first] * 40))
    pre.fit(second)
    out = pre.transform(second.iloc[[0]])
    assert out[0, 2] == 1  # "p" is the first category now
    assert pre.transform(pd.concat([second] * 40))[0, 2] == 1


def test_default_parameters():
    assert FlowPreprocessor(NUM, CAT).get_params() == {
        "numeric_columns": NUM, "categorical_columns": CAT, "feature_range": [0.0, 1.0],
        "outliers": "log", "log_threshold": 100.0, "clip_quantile": 0.999}


def test_log_and_clip_together_and_the_log_threshold_boundary():
    values = np.concatenate([np.linspace(0, 100, 999), [1e9]])
    df = pd.DataFrame({"a": values, "b": np.linspace(0, 99, 1000), "c": ["x"] * 1000})
    both = FlowPreprocessor(NUM, CAT, outliers="log+clip", clip_quantile=0.99).fit(df)
    assert both.log_columns_.tolist() == [True, False]  # max of b is 99 < 100: linear
    assert both.clip_max_[0] < 200  # the 1e9 outlier is clipped before log scaling
    at = pd.DataFrame({"a": [0.0, 100.0], "b": [0.0, 1.0], "c": ["x", "x"]})
    assert FlowPreprocessor(NUM, CAT).fit(at).log_columns_.tolist() == [True, False]


def test_narrow_ranges_scale_to_the_full_feature_range():
    df = pd.DataFrame({"a": [0.0, 0.25, 0.5], "b": [3.0, 3.0, 3.0], "c": ["x", "y", "x"]})
    out = FlowPreprocessor(NUM, CAT, outliers="none").fit_transform(df)
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.0])
