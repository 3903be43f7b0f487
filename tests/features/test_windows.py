import numpy as np
import pytest
import torch

from fedlstm.config import DataConfig
from fedlstm.data.splits import build_split
from fedlstm.features.windows import make_windows, window_ends


def test_window_holds_consecutive_records_and_last_label():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    ws = make_windows(x, y, window=3, stride=2)
    assert ws.ends.tolist() == [2, 4, 6, 8]
    xb, yb = ws.batch(torch.tensor([0, 3]))
    np.testing.assert_array_equal(xb[1].numpy(), x[6:9])
    assert yb.tolist() == [2, 8]


def test_window_of_one_is_a_record():
    ws = make_windows(np.ones((5, 3)), np.zeros(5), window=1)
    assert len(ws) == 5 and ws.batch(torch.arange(5))[0].shape == (5, 1, 3)


def test_windows_never_cross_segments():
    segments = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    ends = window_ends(len(segments), 3, segments=segments)
    for end in ends:
        assert len(set(segments[end - 2:end + 1])) == 1
    assert ends.tolist() == [2, 5, 6, 9]


def test_invalid_window_is_rejected():
    with pytest.raises(ValueError):
        window_ends(10, 0)


@pytest.mark.parametrize("protocol", ["official", "random-split"])
def test_no_window_mixes_records_of_two_splits(datasets_dir, protocol):
    """Windows are built per split; record ids prove every window stays inside its split."""
    split = build_split(DataConfig(dataset="nsl-kdd", protocol=protocol,
                                   data_dir=str(datasets_dir)))
    parts = {"train": split.train, "val": split.val, **split.tests}
    owner = {}
    for name, recs in parts.items():
        ids = np.arange(len(recs)) + sum(len(r) for r in list(parts.values())[: list(parts).index(name)])
        owner.update({int(i): name for i in ids})
        ws = make_windows(ids[:, None].astype(np.float32), np.zeros(len(ids)), window=8)
        xb, _ = ws.batch(torch.arange(len(ws)))
        assert {owner[int(i)] for i in xb.flatten().tolist()} == {name}
    # Under random-split, test rows are a disjoint subset of the same file.
    if protocol == "random-split":
        assert len(split.train) + len(split.val) + len(split.tests["test"]) == 125_973
