"""Preprocessing statistics: the histogram sketch, the layout a server accepts, and the agreed
and DP forms that keep sites' extremes from their peers."""

import json

import numpy as np
import pandas as pd
import pytest

from fedlstm.features import FlowPreprocessor, PreprocessingStats
from fedlstm.features.stats import (
    DP_BIN_FACTOR,
    DP_BINS,
    N_BINS,
    _bin_index,
    agreed_file_of,
    bin_upper_edge,
    dp_histogram_from_bytes,
    dp_histogram_to_bytes,
    merge_all,
    read_agreed,
)

NUM, CAT = ["a", "b"], ["c"]


def _frame(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.exponential(100, n), "b": rng.random(n) * 2,
                         "c": rng.choice(["x", "y"], n)})


def test_bins_cover_signed_log_space_and_edges_bound_their_values():
    values = np.array([-1e9, -5.0, 0.0, 0.5, 1.0, 99.0, 1e6, 1e12, 1e15])
    idx = _bin_index(values)
    assert idx[0] < idx[1] < idx[2] < idx[3] < idx[4] < idx[5] < idx[6] < idx[7]
    assert idx[-1] == N_BINS - 1 and idx[2] == N_BINS // 2  # 0 is the first non-negative bin
    inside = values[1:-2]
    assert (bin_upper_edge(idx[1:-2]) >= inside).all()
    assert (bin_upper_edge(idx[1:-2] - 1) <= inside).all()
    assert _bin_index(np.array([-1e15]))[0] == 0


def test_statistics_of_a_frame():
    df = pd.DataFrame({"a": [1.0, 5.0, -2.0], "b": [0.0, 0.0, 3.0], "c": ["y", "x", "y"]})
    s = PreprocessingStats.of(df, NUM, CAT)
    assert s.count == 3 and s.minimum.tolist() == [-2.0, 0.0] and s.maximum.tolist() == [5.0, 3.0]
    assert s.histogram.sum(axis=1).tolist() == [3, 3] and s.categories == {"c": ["x", "y"]}
    empty = PreprocessingStats.of(df.iloc[:0], NUM, CAT)
    assert empty.count == 0 and np.isinf(empty.minimum).all() and empty.categories == {"c": []}
    assert empty.merge(s).equals(s) and merge_all([s]) is s
    with pytest.raises(ValueError, match="no statistics"):
        merge_all([])
    with pytest.raises(ValueError, match="different column sets"):
        s.merge(PreprocessingStats.of(df, ["a"], CAT))


def test_quantile_reads_the_sketch_inside_the_range():
    s = PreprocessingStats.of(pd.DataFrame({"a": np.arange(1, 1001.0), "b": np.ones(1000),
                                            "c": ["x"] * 1000}), NUM, CAT)
    q = s.quantile(0.5)
    assert 480 <= q[0] <= 530 and q[1] == 1.0
    assert s.quantile(1.0)[0] == 1000.0 and s.quantile(0.0)[0] <= 2.0


def test_equality_needs_every_field():
    s = PreprocessingStats.of(_frame(), NUM, CAT)
    for change in ("count", "minimum", "maximum", "histogram", "categories", "numeric_columns"):
        other = PreprocessingStats.from_bytes(s.to_bytes())
        if change == "count":
            other.count += 1
        elif change in ("minimum", "maximum"):
            getattr(other, change)[0] += 1
        elif change == "histogram":
            other.histogram[0, 0] += 1
        elif change == "categories":
            other.categories = {"c": ["x"]}
        else:
            other.numeric_columns = ["b", "a"]
        assert not s.equals(other), change
    assert s.equals(PreprocessingStats.from_bytes(s.to_bytes()))


def test_layout_errors_name_what_is_wrong():
    s = PreprocessingStats.of(_frame(), NUM, CAT)
    assert s.layout_error(NUM, CAT) is None
    assert "numeric columns" in s.layout_error(["a"], CAT)
    assert "categorical columns" in s.layout_error(NUM, ["d"])
    for name in ("minimum", "maximum", "histogram"):
        bad = PreprocessingStats.from_bytes(s.to_bytes())
        setattr(bad, name, getattr(bad, name)[..., :1])
        assert bad.layout_error(NUM, CAT).startswith(name)
    text = PreprocessingStats.from_bytes(s.to_bytes())
    text.histogram = text.histogram.astype(np.float64)
    assert "histogram" in text.layout_error(NUM, CAT)
    negative = PreprocessingStats.from_bytes(s.to_bytes())
    negative.count = -1
    assert "count" in negative.layout_error(NUM, CAT)
    assert "categories of 'c'" in s.layout_error(NUM, CAT, max_categories=1)
    assert "categories of 'c'" in s.layout_error(NUM, CAT, max_chars=0)
    assert s.layout_error(NUM, CAT, max_categories=2, max_chars=1) is None


def test_agreed_statistics_fit_the_agreed_ranges_and_categories(tmp_path):
    stats = PreprocessingStats.of(_frame(), NUM, CAT)
    content = agreed_file_of(stats)
    path = tmp_path / "agreed.json"
    path.write_text(json.dumps(content))
    toml = tmp_path / "agreed.toml"
    toml.write_text('[ranges]\na = [0, 10]\nb = [0, 1]\n[categories]\nc = ["y", "x"]\n')
    assert read_agreed(toml)["categories"] == {"c": ["y", "x"]}
    agreed = read_agreed(path)
    fixed = PreprocessingStats.agreed(NUM, CAT, agreed["ranges"], agreed["categories"])
    assert fixed.minimum.tolist() == stats.minimum.tolist() and fixed.categories == stats.categories
    assert fixed.histogram.sum() == 0 and fixed.count == 1
    pre = FlowPreprocessor(NUM, CAT, outliers="none").fit_stats(fixed)
    ref = FlowPreprocessor(NUM, CAT, outliers="none").fit_stats(stats)
    np.testing.assert_array_equal(pre.transform(_frame()), ref.transform(_frame()))
    clipped = FlowPreprocessor(NUM, CAT, outliers="clip").fit_stats(fixed)
    assert clipped.clip_max_.tolist() == stats.maximum.tolist()  # no sketch: the agreed maximum
    (tmp_path / "bad.json").write_text(json.dumps({"ranges": {}}))
    with pytest.raises(ValueError, match="needs `ranges`"):
        read_agreed(tmp_path / "bad.json")


def test_dp_histogram_adds_noise_of_the_given_size_on_the_coarse_grid():
    stats = PreprocessingStats.of(_frame(5000), NUM, CAT)
    exact = stats.histogram.reshape(2, DP_BINS, DP_BIN_FACTOR).sum(axis=2)
    quiet = stats.dp_histogram(0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(quiet, exact)
    noisy = stats.dp_histogram(5.0, np.random.default_rng(0))
    assert noisy.shape == (2, DP_BINS) and (noisy - exact).std() == pytest.approx(5.0, rel=0.2)
    histogram, sigma = dp_histogram_from_bytes(dp_histogram_to_bytes(noisy, 5.0))
    np.testing.assert_array_equal(histogram, noisy)
    assert sigma == 5.0


def test_ranges_from_a_noisy_histogram_cover_the_bulk_and_hide_lone_extremes():
    df = _frame(5000)
    df.loc[0, "a"] = 1e9  # one record far out
    stats = PreprocessingStats.of(df, NUM, CAT)
    noisy = stats.dp_histogram(3.0, np.random.default_rng(1))
    dp = PreprocessingStats.from_dp_histogram(NUM, noisy, 12.0, {"c": ["y", "x"]})
    assert dp.categories == {"c": ["x", "y"]}
    assert dp.maximum[0] < 1e6 and dp.maximum[0] >= np.quantile(df["a"], 0.99)
    assert dp.minimum[0] <= np.quantile(df["a"], 0.01) and dp.minimum[1] <= 0.01
    assert dp.maximum[1] >= 1.9 and dp.minimum[0] >= 0
    assert abs(dp.count - 5000) < 400 and dp.histogram.sum() > 0
    nothing = PreprocessingStats.from_dp_histogram(NUM, np.zeros((2, DP_BINS)), 1.0, {"c": []})
    assert (nothing.minimum <= nothing.maximum).all() and nothing.count == 1
    lonely = np.zeros((2, DP_BINS))
    lonely[:, 40] = 0.5  # below the threshold everywhere: the fullest bin
    one = PreprocessingStats.from_dp_histogram(NUM, lonely, 1.0, {"c": []})
    assert one.minimum[0] == bin_upper_edge(40 * DP_BIN_FACTOR - 1)
    assert one.maximum[0] == bin_upper_edge(41 * DP_BIN_FACTOR - 1)


def test_statistics_of_the_agreed_file_are_checked():
    with pytest.raises(ValueError, match=r"no range or category list for \['c'\]"):
        PreprocessingStats.agreed(["a"], ["c"], {"a": [0, 1]}, {})
    with pytest.raises(ValueError, match=r"no range or category list for \['a'\]"):
        PreprocessingStats.agreed(["a"], [], {}, {})
    with pytest.raises(ValueError, match="minimum <= maximum"):
        PreprocessingStats.agreed(["a", "b"], [], {"a": [0, 1], "b": [2, 1]}, {})
    with pytest.raises(ValueError, match="minimum <= maximum"):
        PreprocessingStats.agreed(["a"], [], {"a": [0, 1, 2]}, {})
    constant = PreprocessingStats.agreed(["a"], ["c"], {"a": ["2", 2]}, {"c": [3, "1"]})
    assert constant.minimum.tolist() == constant.maximum.tolist() == [2.0]
    assert constant.categories == {"c": ["1", "3"]} and constant.histogram.dtype.kind == "i"


def test_merging_many_parts_adds_every_part():
    parts = [PreprocessingStats.of(_frame(100, seed=i), NUM, CAT) for i in range(4)]
    merged = merge_all(parts)
    assert merged.count == 400 and merged.histogram.sum() == 800
    assert merged.equals(PreprocessingStats.of(pd.concat([_frame(100, seed=i) for i in range(4)]),
                                               NUM, CAT))
    with pytest.raises(ValueError, match="different column sets"):
        parts[0].merge(PreprocessingStats.of(_frame(), NUM, []))


def test_layout_limits_and_kinds():
    s = PreprocessingStats.of(pd.DataFrame({"a": [1.0], "b": [2.0], "c": ["x" * 256]}), NUM, CAT)
    assert s.layout_error(NUM, CAT) is None  # 256 characters are allowed
    s.categories = {"c": ["x" * 257]}
    assert "categories of 'c'" in s.layout_error(NUM, CAT)
    empty = PreprocessingStats.empty(NUM, CAT)
    assert empty.layout_error(NUM, CAT) is None  # a site with no records answers too
    for name in ("minimum", "maximum"):
        ints = PreprocessingStats.from_bytes(s.to_bytes())
        setattr(ints, name, np.zeros(2, np.int64))
        assert ints.layout_error(NUM, CAT) == f"{name} is not a (2,) array of kind 'f'"
    floats = PreprocessingStats.from_bytes(s.to_bytes())
    floats.histogram = floats.histogram.astype(float)
    assert floats.layout_error(NUM, CAT) == f"histogram is not a (2, {N_BINS}) array of kind 'iu'"
    assert s.layout_error(["b", "a"], CAT) == "numeric columns differ from the declared ones"
    assert s.layout_error(NUM, []) == "categorical columns differ from the declared ones"
    s.count = 1.0
    assert s.layout_error(NUM, CAT) == "count is not a non-negative integer"


def test_dp_statistics_keep_their_columns_and_clip_inside_each_coarse_bin():
    noisy = np.full((2, DP_BINS), -5.0)
    noisy[:, 40] = 300.0
    noisy[:, 41] = 100.0
    dp = PreprocessingStats.from_dp_histogram(NUM, noisy, 20.0, {"c": ["x"]})
    assert dp.numeric_columns == NUM and dp.count == 400  # negative noise counts as nothing
    assert dp.histogram.sum(axis=1).tolist() == [400, 400]
    assert dp.histogram[0, 41 * DP_BIN_FACTOR - 1] == 300  # at the top of its coarse bin
    assert dp.quantile(0.5)[0] == bin_upper_edge(41 * DP_BIN_FACTOR - 1)
    assert dp.quantile(1.0)[0] == dp.maximum[0] == bin_upper_edge(42 * DP_BIN_FACTOR - 1)
