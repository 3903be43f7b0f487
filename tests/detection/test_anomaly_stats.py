"""Mergeable statistics behind μ, Σ and ζ: merge laws, and agreement with numpy/sklearn/scipy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from fedlstm.detection.anomaly import ErrorStats, ScoreHistogram, score_bin_edges
from fedlstm.detection.site_checks import outlying_sites, outlying_tails
from fedlstm.features import merge_all

errors = st.integers(1, 40).flatmap(lambda n: arrays(
    np.float64, (n, 3), elements=st.floats(0, 1, allow_nan=False, width=32)))


@settings(max_examples=60, deadline=None)
@given(errors, errors)
def test_error_stats_merge_equals_stats_of_union(a, b):
    merged, union = ErrorStats.of(a).merge(ErrorStats.of(b)), ErrorStats.of(np.vstack([a, b]))
    assert merged.count == union.count
    for x, y in ((merged.total, union.total), (merged.outer, union.outer),
                 (merged.norm2_total, union.norm2_total), (merged.norm4, union.norm4)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)
    back = ErrorStats.from_bytes(merged.to_bytes())
    np.testing.assert_array_equal(back.outer, merged.outer)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 60), elements=st.floats(0, 1e6, allow_nan=False)),
       st.integers(0, 2**32 - 1))
def test_histogram_merge_equals_histogram_of_union(scores, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(len(scores)) < 0.3
    cut = rng.integers(0, len(scores) + 1)
    edges = score_bin_edges(5, 200)
    parts = [ScoreHistogram.of(scores[:cut], labels[:cut], edges),
             ScoreHistogram.of(scores[cut:], labels[cut:], edges)]
    whole = ScoreHistogram.of(scores, labels, edges)
    merged = merge_all(parts)
    np.testing.assert_array_equal(merged.normal, whole.normal)
    np.testing.assert_array_equal(merged.anomalous, whole.anomalous)
    assert merged.normal.sum() + merged.anomalous.sum() == len(scores)


def test_mean_covariance_and_ledoit_wolf_match_references():
    rng = np.random.default_rng(0)
    x = rng.random((300, 6)) * [1, 0.1, 0.01, 1, 2, 0.5] + 0.2
    parts = [ErrorStats.of(x[:70]), ErrorStats.of(x[70:200]), ErrorStats.of(x[200:])]
    stats = merge_all(parts)
    np.testing.assert_allclose(stats.mean(), x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False, bias=True), atol=1e-12)
    lw = LedoitWolf().fit(x)
    assert stats.ledoit_wolf_shrinkage() == pytest.approx(lw.shrinkage_, rel=1e-6)
    cov, s = stats.regularised_covariance(min_shrinkage=0.0)
    np.testing.assert_allclose(cov, lw.covariance_, rtol=1e-6, atol=1e-12)


def test_regularised_covariance_is_invertible_with_constant_features_and_few_windows():
    x = np.zeros((3, 10))
    x[:, 0] = [0.1, 0.2, 0.3]  # one varying feature, nine constant, fewer windows than features
    cov, s = ErrorStats.of(x).regularised_covariance()
    assert s > 0 and np.all(np.linalg.eigvalsh(cov) > 0)


def test_mahalanobis_score_matches_scipy():
    from fedlstm.detection.anomaly import MahalanobisDetector

    rng = np.random.default_rng(1)
    train, new = rng.random((200, 4)), rng.random((5, 4))
    det = MahalanobisDetector.__new__(MahalanobisDetector)
    det.min_shrinkage, det.calibration_ = 1e-3, {}
    det.fit_error_stats(ErrorStats.of(train))
    det.error_vectors = lambda data: data  # score error vectors directly
    vi = np.linalg.inv(det.covariance_)
    expected = [mahalanobis(e, det.mean_, vi) ** 2 for e in new]
    np.testing.assert_allclose(det.decision_function(new), expected, rtol=1e-10)
    np.testing.assert_allclose(det.decomposition(new).sum(1), expected, rtol=1e-10)


def test_thresholds_from_histogram():
    rng = np.random.default_rng(2)
    normal, attack = rng.lognormal(0, 0.5, 5000), rng.lognormal(3, 0.5, 500)
    scores = np.concatenate([normal, attack])
    labels = np.r_[np.zeros(5000, bool), np.ones(500, bool)]
    hist = ScoreHistogram.of(scores, labels, score_bin_edges(1, 3000))
    # F-β: as good as the best threshold on the raw scores, to within a bin
    t = hist.threshold_f_beta(0.5)
    f = hist.f_beta(0.5).max()
    best = max(_f_beta(scores, labels, c, 0.5) for c in np.unique(scores))
    assert _f_beta(scores, labels, t, 0.5) == pytest.approx(f) and f >= best - 0.01
    # target FPR: the share of normal windows at or above the threshold stays within the target
    t1 = hist.threshold_for_fpr(0.01)
    assert (normal >= t1).mean() <= 0.01 < (normal >= t1 / 1.02).mean()
    with pytest.raises(ValueError, match="no labelled anomalies"):
        ScoreHistogram.of(normal, np.zeros(5000, bool), hist.edges).threshold_f_beta(1.0)


def _f_beta(scores, labels, t, beta):
    flagged = scores >= t
    tp, fp, fn = (flagged & labels).sum(), (flagged & ~labels).sum(), (~flagged & labels).sum()
    return (1 + beta**2) * tp / ((1 + beta**2) * tp + beta**2 * fn + fp)


def _site_stats(rng, n_sites, poisoned=(), n=400, d=6, attack_share=0.45):
    """Error vectors of normal traffic per site; a poisoned site's "normal" traffic also holds
    attacks (its labels flipped), whose errors sit elsewhere."""
    normal_mean, attack_mean = np.full(d, 0.2), np.full(d, 0.6)
    parts = []
    for i in range(n_sites):
        x = normal_mean + 0.1 * rng.standard_normal((n, d))
        if i in poisoned:
            k = int(attack_share * n)
            x[:k] = attack_mean + 0.1 * rng.standard_normal((k, d))
        parts.append(ErrorStats.of(x))
    return parts


def test_outlying_sites_finds_sites_whose_normal_traffic_holds_attacks():
    rng = np.random.default_rng(0)
    assert outlying_sites(_site_stats(rng, 10, poisoned={2, 5, 9})) == [2, 5, 9]
    assert outlying_sites(_site_stats(rng, 10)) == []  # honest sites: no one left out
    assert outlying_sites(_site_stats(rng, 2, poisoned={1})) == []  # no majority to compare with
    # never more than a minority, the most outlying first
    assert len(outlying_sites(_site_stats(rng, 5, poisoned={0, 1, 2}))) <= 2
    with_empty = _site_stats(rng, 6, poisoned={4}) + [ErrorStats.empty(6)]
    assert outlying_sites(with_empty) == [4]  # a site without normal windows is not judged


def test_outlying_sites_rarely_leaves_out_an_honest_site_and_catches_small_poisoning():
    rng = np.random.default_rng(1)
    honest = [len(outlying_sites(_site_stats(rng, 10))) for _ in range(100)]
    assert np.mean(honest) < 0.2  # sampling noise alone: one honest site in some runs
    caught = [outlying_sites(_site_stats(rng, 10, poisoned={1, 4, 7}, attack_share=0.2))
              for _ in range(30)]
    assert all(c == [1, 4, 7] for c in caught)


def test_outlying_tails_needs_a_significant_excess_of_normal_windows_above_the_threshold():
    edges = np.array([0.0, 1.0, 2.0])  # one bin at or above the threshold 2.0

    def site(normal: int, above: int) -> ScoreHistogram:
        return ScoreHistogram(edges, np.array([normal - above, 0, above]), np.zeros(3, np.int64))

    honest = [site(1000, 30), site(1000, 25), site(1000, 35), site(1000, 28)]
    assert outlying_tails([*honest, site(1000, 400)], 2.0) == [4]  # attacks labelled normal
    assert outlying_tails(honest, 2.0) == []
    assert outlying_tails([*honest, site(10, 1)], 2.0) == []  # 10% of 10 windows: chance
