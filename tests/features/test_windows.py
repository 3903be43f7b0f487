import numpy as np
import pytest
import torch

from fedlstm.config import RunConfig
from fedlstm.data.splits import build_split
from fedlstm.features.windows import make_windows, segment_starts, window_ends
from fedlstm.tasks import task_for
from fedlstm.tasks.base import windows_of


def test_window_holds_consecutive_records_and_last_label():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    ws = make_windows(x, y, window=3, stride=2)
    assert ws.ends.tolist() == [1, 3, 5, 7, 9]  # counted back from the last record
    xb, yb = ws.batch(torch.tensor([0, 3]))
    np.testing.assert_array_equal(xb[1].numpy(), x[5:8])
    np.testing.assert_array_equal(xb[0].numpy(), x[[0, 0, 1]])  # padded with record 0
    assert yb.tolist() == [1, 7]


def test_window_of_one_is_a_record():
    ws = make_windows(np.ones((5, 3)), np.zeros(5), window=1)
    assert len(ws) == 5 and ws.batch(torch.arange(5))[0].shape == (5, 1, 3)


def test_windows_never_cross_segments():
    segments = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    assert segment_starts(10, segments).tolist() == [0, 0, 0, 3, 3, 3, 3, 7, 7, 7]
    ws = make_windows(np.arange(10, dtype=np.float32)[:, None], np.arange(10), 3, segments=segments)
    assert ws.ends.tolist() == list(range(10))  # every record ends one window
    x = ws.batch(torch.arange(10))[0][..., 0].long()
    for end, records in enumerate(x.tolist()):
        assert len(set(segments[records])) == 1 and records[-1] == end
    # A segment's first W-1 records are left-padded with its first record.
    assert x[3].tolist() == [3, 3, 3] and x[4].tolist() == [3, 3, 4] and x[8].tolist() == [7, 7, 8]


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_windows_end_each_segment_and_cover_it(stride):
    segments = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 2])
    ends = window_ends(len(segments), 3, stride, segments=segments)
    assert {2, 6, 9, 10} <= set(ends.tolist())  # every segment's last record
    if stride == 3:  # stride W: each record in exactly one window, short segments included
        assert ends.tolist() == [2, 3, 6, 9, 10]
        ws = make_windows(np.zeros((11, 1)), np.zeros(11), 3, stride, segments=segments)
        assert ws.max_windows_per_record() == 1


def test_a_window_of_one_ignores_segments():
    segments = np.array([0, 1, 1, 2])
    ws = make_windows(np.arange(4, dtype=np.float32)[:, None], np.arange(4), 1, segments=segments)
    assert ws.ends.tolist() == [0, 1, 2, 3]
    assert ws.batch(torch.arange(4))[0][:, :, 0].tolist() == [[0], [1], [2], [3]]


def test_invalid_window_is_rejected():
    with pytest.raises(ValueError):
        window_ends(10, 0)


def _ids_in(windows, preprocessor) -> set[int]:
    """The record ids inside every window, read back from the scaled `id` feature."""
    if not len(windows):
        return set()
    col = preprocessor.feature_names_out_.index("id")
    lo, hi = preprocessor.data_min_[col], preprocessor.data_max_[col]
    x, _ = windows.batch(torch.arange(len(windows)))
    return set(np.rint(x[..., col].double().numpy() * (hi - lo) + lo).astype(int).ravel().tolist())


@pytest.mark.parametrize("protocol", ["official", "random-split"])
def test_no_window_mixes_records_of_two_splits(id_dataset, protocol):
    """Through the production path (build_split, the task's preprocessing and windows): every
    window a site trains, early-stops or is evaluated on holds records of one split only, and no
    test record reaches training. Each record's id travels as a feature, so a window shows which
    records it holds."""
    cfg = RunConfig.model_validate({
        "data": {"dataset": "ids", "protocol": protocol, "data_dir": str(id_dataset)},
        "windows": {"window": 4}, "preprocess": {"outliers": "none"}})
    split = build_split(cfg.data, seed=cfg.seed)
    task = task_for(cfg)
    classes = task.class_names(split.spec)
    pre = task.fit_preprocessor(split.spec, split.train)
    site = task.site_windows(split.train, split.val, pre, classes)
    ids = {name: set(recs.frame["id"].astype(int)) for name, recs in
           {"train": split.train, "val": split.val, **split.tests}.items()}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    windows = {"train": site.train, "val": site.val,
               **{name: windows_of(recs, pre, cfg, classes) for name, recs in split.tests.items()}}
    for name, ws in windows.items():
        assert len(ws) > 0 and _ids_in(ws, pre) <= ids[name], name
    everything = set(range(0, 1200, 2))
    if protocol == "official":
        assert ids["train"] | ids["val"] == everything and ids["test"] == set(range(1, 600, 2))
    else:  # a split of the training file: every record in exactly one part
        assert ids["train"] | ids["val"] | ids["test"] == everything


def test_a_subset_keeps_the_records_and_picks_windows():
    ws = make_windows(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10), window=3)
    part = ws.subset(np.array([2, 6]))
    assert part.ends.tolist() == [2, 6] and part.window == 3 and part.features is ws.features
    assert part.window_labels.tolist() == [2, 6]
    moved = ws.to("cpu")
    assert torch.equal(moved.features, ws.features) and torch.equal(moved.ends, ws.ends)
    assert torch.equal(moved.labels, ws.labels) and moved.window == 3 and len(moved) == 10


def test_windows_per_record_counts_the_deepest_overlap():
    ws = make_windows(np.zeros((10, 1)), np.zeros(10), window=3)
    assert ws.max_windows_per_record() == 3
    assert ws.subset(np.array([2])).max_windows_per_record() == 1  # records 0..2 once each
    assert ws.subset(np.array([2, 3])).max_windows_per_record() == 2
    assert ws.subset(np.array([9])).max_windows_per_record() == 1  # the last window
    assert ws.subset(np.array([2, 9])).max_windows_per_record() == 1
    assert ws.subset(np.array([0, 1, 2])).max_windows_per_record() == 3  # record 0, padded


def test_windows_of_a_pooled_split_stay_inside_their_segment():
    segments = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    ws = make_windows(np.zeros((10, 1)), np.arange(10), 3, segments=segments)
    assert ws.ends.tolist() == list(range(10)) and ws.window_labels.tolist() == list(range(10))
    assert ws.features.dtype == torch.float32 and ws.labels.dtype == torch.int64
    with pytest.raises(ValueError, match="features and labels differ in length"):
        make_windows(np.zeros((3, 1)), np.zeros(2), 1)
    with pytest.raises(ValueError, match=r"window and stride must be >= 1 \(got window=2, stride=0\)"):
        window_ends(10, 2, stride=0)
    ws = make_windows(np.zeros((10, 1)), np.zeros(10), window=3)
    assert ws.subset(np.array([2, 7, 8, 9])).max_windows_per_record() == 3  # deepest after a gap
