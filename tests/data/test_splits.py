"""Evaluation protocols: which record lands in training, validation and test, on the production
path (`build_split`), with records that carry their identity (conftest's `id_dataset`)."""

import numpy as np
import pytest

from conftest import ID_SPEC
from fedlstm.config import DataConfig, RunConfig
from fedlstm.data.readers import read_records
from fedlstm.data.registry import DatasetNotFound
from fedlstm.data.splits import (
    build_split,
    build_split_from_files,
    carve_validation,
    drop_duplicates,
    overlap_share,
    run_protocol,
    stratified_indices,
)
from fedlstm.tasks.base import split_metadata


def _ids(records) -> list[int]:
    return records.frame["id"].astype(int).tolist()


def _cfg(root, **data) -> DataConfig:
    return DataConfig(dataset="ids", data_dir=str(root), **data)


def test_stratified_indices_take_the_fraction_of_every_stratum_in_file_order():
    strata = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    rest, taken = stratified_indices(strata, 0.2, seed=0)
    assert sorted([*rest, *taken]) == list(range(100)) and not set(rest) & set(taken)
    assert list(rest) == sorted(rest) and list(taken) == sorted(taken)
    assert [int((strata[taken] == s).sum()) for s in "abc"] == [12, 6, 2]
    again, other = stratified_indices(strata, 0.2, seed=0), stratified_indices(strata, 0.2, seed=1)
    assert np.array_equal(again[1], taken) and not np.array_equal(other[1], taken)


def test_a_subsample_of_m_rows_has_m_rows(id_dataset):
    """data.max_test_rows=1000 gave NSL-KDD's Test+ (22,544 rows) 1,001: 1000/22544*22544 rounds
    up in floating point."""
    strata = np.array(["a", "b", "c", "d"] * 5636)
    assert len(stratified_indices(strata, 1000 / len(strata), seed=0)[1]) == 1001  # the cause
    assert len(stratified_indices(strata, 1000, seed=0)[1]) == 1000
    split = build_split(_cfg(id_dataset, max_train_rows=102, max_test_rows=102), seed=0,
                        carve_val=False)  # 102/600*600 and 102/300*300 round up, too
    assert len(split.train) == len(split.tests["test"]) == 102


def test_strata_of_one_record_are_pooled_not_dropped():
    strata = np.array(["a"] * 20 + ["b"] * 20 + ["x", "y"])  # two single records: pooled
    rest, taken = stratified_indices(strata, 0.5, seed=0)
    assert len(rest) + len(taken) == 42 and len(taken) == 21
    lone = np.array(["a"] * 20 + ["b"] * 19 + ["x"])  # one single record joins the largest
    rest, taken = stratified_indices(lone, 0.5, seed=0)
    assert len(rest) + len(taken) == 40


def test_duplicates_are_records_equal_in_features_and_attack(id_dataset):
    recs = read_records(id_dataset / "ids" / "train.csv", ID_SPEC)
    twice = recs.take(np.r_[np.arange(len(recs)), [0, 1, 1]])
    kept, removed = drop_duplicates(twice)
    assert removed == 3 and _ids(kept) == _ids(recs)
    relabelled = recs.take(np.array([0, 0]))
    relabelled.attack = np.array(["normal", "dos_x"], object)
    assert drop_duplicates(relabelled)[1] == 0  # same features, another attack: two records


def test_overlap_share_counts_test_records_seen_in_training(id_dataset):
    recs = read_records(id_dataset / "ids" / "train.csv", ID_SPEC)
    train, test = recs.take(np.arange(0, 100)), recs.take(np.arange(75, 125))
    assert overlap_share(train, test) == 0.5
    assert overlap_share(train, recs.take(np.arange(200, 210))) == 0.0


def test_validation_is_carved_from_training_only(id_dataset):
    recs = read_records(id_dataset / "ids" / "train.csv", ID_SPEC)
    fit, val = carve_validation(recs, 0.1, seed=0)
    assert len(val) == 60 and sorted(_ids(fit) + _ids(val)) == _ids(recs)
    assert _ids(carve_validation(recs, 0.1, seed=0)[1]) == _ids(val)


def test_official_protocol_trains_on_the_training_file_and_tests_on_the_test_file(id_dataset):
    split = build_split(_cfg(id_dataset, val_fraction=0.2), seed=0)
    assert split.protocol == "official" and set(split.tests) == {"test"}
    assert sorted(_ids(split.train) + _ids(split.val)) == list(range(0, 1200, 2))
    assert len(split.val) == 120 and _ids(split.tests["test"]) == list(range(1, 600, 2))
    assert split.notes["rows"] == {"train": 480, "val": 120, "test": 300}
    assert split.notes["test_overlap_with_train"] == {"test": 0.0}
    assert split.files["train"].endswith("train.csv") and split.files["test"].endswith("test.csv")
    alone = build_split(_cfg(id_dataset), seed=0, carve_val=False)
    assert len(alone.val) == 0 and len(alone.train) == 600
    # a federation's sites set their validation apart: its notes said "val: 0"
    assert "val" not in alone.notes["rows"]
    assert alone.notes["val"] == "each site sets 10% of its training rows apart"


def test_random_split_splits_one_file(id_dataset):
    split = build_split(_cfg(id_dataset, protocol="random-split", test_fraction=0.25), seed=3)
    test = _ids(split.tests["test"])
    assert len(test) == 150 and split.notes["split_file"] == "train"
    assert sorted(_ids(split.train) + _ids(split.val) + test) == list(range(0, 1200, 2))
    assert split.notes["rows"]["test"] == 150 and split.notes["rows"]["train"] == len(split.train)
    other = build_split(_cfg(id_dataset, protocol="random-split", test_fraction=0.25), seed=4)
    assert _ids(other.tests["test"]) != test  # the seed decides the split
    by_test_file = build_split(_cfg(id_dataset, protocol="random-split", split_file="test"))
    assert set(_ids(by_test_file.tests["test"])) <= set(range(1, 600, 2))


def test_dedup_drops_copies_before_splitting(id_dataset):
    path = id_dataset / "ids" / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[:50]) + "\n")  # 50 records twice
    split = build_split(_cfg(id_dataset, protocol="random-split", dedup=True), seed=0)
    assert split.notes["duplicates_removed"] == 50
    assert sorted(_ids(split.train) + _ids(split.val) + _ids(split.tests["test"])) == \
        list(range(0, 1200, 2))
    official = build_split(_cfg(id_dataset, dedup=True), seed=0)
    assert official.notes["duplicates_removed_from_train"] == 50
    assert len(official.train) + len(official.val) == 600
    kept = build_split(_cfg(id_dataset, protocol="random-split"), seed=0)
    assert len(kept.train) + len(kept.val) + len(kept.tests["test"]) == 650


def test_subsampling_is_stratified_and_stays_inside_each_part(id_dataset):
    split = build_split(_cfg(id_dataset, max_train_rows=200, max_test_rows=100), seed=0)
    assert len(split.train) + len(split.val) == 200 and split.notes["train_subsampled_to"] == 200
    assert len(split.tests["test"]) == 100 and split.notes["tests_subsampled_to"] == 100
    assert set(_ids(split.tests["test"])) <= set(range(1, 600, 2))
    assert set(_ids(split.train) + _ids(split.val)) <= set(range(0, 1200, 2))
    roomy = build_split(_cfg(id_dataset, max_train_rows=10_000, max_test_rows=10_000), seed=0)
    assert len(roomy.tests["test"]) == 300 and "train_subsampled_to" not in roomy.notes


def test_official_protocol_needs_both_files(id_dataset):
    (id_dataset / "ids" / "test.csv").unlink()
    with pytest.raises(DatasetNotFound, match=r"needs a test file \(test.csv\)"):
        build_split(_cfg(id_dataset))
    (id_dataset / "ids" / "train.csv").rename(id_dataset / "ids" / "test.csv")
    # the missing file is named, as published
    with pytest.raises(DatasetNotFound, match="needs the training file train.csv, found test.csv"):
        build_split(_cfg(id_dataset))
    (id_dataset / "ids" / "test.csv").unlink()
    with pytest.raises(DatasetNotFound, match="no files"):
        build_split(_cfg(id_dataset, protocol="random-split"))


def test_own_files_follow_the_same_rules(id_dataset):
    folder = id_dataset / "ids"
    held_out = build_split_from_files(ID_SPEC, [folder / "train.csv"], folder / "test.csv",
                                      _cfg(id_dataset, max_train_rows=300), seed=0)
    assert held_out.protocol == "files" and len(held_out.train) + len(held_out.val) == 300
    assert len(held_out.val) == 30 and held_out.notes["train_subsampled_to"] == 300
    assert held_out.train.segment is None  # one file: nothing to keep apart
    default = build_split_from_files(ID_SPEC, [folder / "train.csv"], None, _cfg(id_dataset))
    again = build_split_from_files(ID_SPEC, [folder / "train.csv"], None, _cfg(id_dataset),
                                   seed=0, carve_val=True)
    assert len(default.val) > 0 and _ids(default.tests["test"]) == _ids(again.tests["test"])
    assert _ids(held_out.tests["test"]) == list(range(1, 600, 2))
    assert set(_ids(held_out.train)) <= set(range(0, 1200, 2))
    pooled = build_split_from_files(ID_SPEC, [folder / "train.csv", folder / "test.csv"], None,
                                    _cfg(id_dataset), seed=0)
    assert pooled.protocol == "random-split"
    everything = _ids(pooled.train) + _ids(pooled.val) + _ids(pooled.tests["test"])
    assert sorted(everything) == sorted([*range(0, 1200, 2), *range(1, 600, 2)])
    assert pooled.train.segment is not None  # windows never run from one file into the next
    with pytest.raises(ValueError, match="no training file"):
        build_split_from_files(ID_SPEC, [], None, _cfg(id_dataset))


@pytest.mark.parametrize("protocol", ["official", "random-split"])
def test_real_split_keeps_test_records_out_of_training(datasets_dir, protocol):
    """NSL-KDD as published: the parts add up to the files, and test records occur in training
    no more often than the files' own overlap (duplicates across the published files)."""
    from fedlstm.data.schemas import NSL_KDD

    split = build_split(DataConfig(dataset="nsl-kdd", protocol=protocol,
                                   data_dir=str(datasets_dir)))
    raw_train = read_records(datasets_dir / "nsl-kdd" / "KDDTrain+.txt", NSL_KDD)
    n_train = len(split.train) + len(split.val)
    if protocol == "official":
        raw_test = read_records(datasets_dir / "nsl-kdd" / "KDDTest+.txt", NSL_KDD)
        assert n_train == 125_973 and len(split.tests["test"]) == 22_544
        assert overlap_share(split.train, split.tests["test"]) <= overlap_share(raw_train, raw_test)
    else:
        assert n_train + len(split.tests["test"]) == 125_973
        assert split.notes["test_overlap_with_train"]["test"] < 0.001


def test_own_files_through_the_configuration(id_dataset):
    folder = id_dataset / "ids"
    with open(folder / "train.csv", "a") as fh:
        fh.write("9999,not-a-number,tcp,normal\n")
    cfg = _cfg(id_dataset, train_files=[str(folder / "train.csv")],
               test_file=str(folder / "test.csv"), lenient=True)
    split = build_split(cfg, seed=0)
    assert split.protocol == "files" and split.spec.name == "ids"
    assert split.notes["train_files"] == [str(folder / "train.csv")]
    assert split.notes["test_file"] == str(folder / "test.csv")
    assert split.files == {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}
    assert split.notes["rows"] == {"train": len(split.train), "val": len(split.val), "test": 300}
    assert len(split.train) + len(split.val) == 600  # the malformed line was skipped
    assert split.notes["test_overlap_with_train"] == {"test": 0.0}
    alone = build_split(cfg, seed=0, carve_val=False)
    assert len(alone.val) == 0 and len(alone.train) == 600
    with pytest.raises(Exception, match="not-a-number|rate"):
        build_split(cfg.model_copy(update={"lenient": False}), seed=0)
    random = build_split(cfg.model_copy(update={"test_file": None, "dedup": True}), seed=1)
    assert random.protocol == "random-split" and "test" not in random.files
    assert random.notes["duplicates_removed"] == 0 and len(random.tests["test"]) == 120
    assert set(_ids(random.tests["test"])) <= set(range(0, 1200, 2))


def test_subsampling_to_exactly_the_size_keeps_everything(id_dataset):
    split = build_split(_cfg(id_dataset, max_train_rows=600, max_test_rows=300), seed=0)
    assert len(split.train) + len(split.val) == 600 and len(split.tests["test"]) == 300
    folder = id_dataset / "ids"
    own = build_split_from_files(ID_SPEC, [folder / "train.csv"], folder / "test.csv",
                                 _cfg(id_dataset, max_train_rows=600), seed=0)
    assert len(own.train) + len(own.val) == 600 and "train_subsampled_to" not in own.notes


def test_the_protocol_a_run_names_is_the_one_its_split_ran(id_dataset):
    """`run_protocol` (what metadata, metrics.json and summaries name, centralised or
    federated) equals the protocol `build_split` ran, whatever `data.protocol` says."""
    folder = id_dataset / "ids"
    own = _cfg(id_dataset, train_files=[str(folder / "train.csv")],
               test_file=str(folder / "test.csv"))
    for cfg, expected in ((own, "files"),
                          (own.model_copy(update={"test_file": None}), "random-split"),
                          (own.model_copy(update={"test_file": None, "protocol": "time-split"}),
                           "time-split"),
                          (_cfg(id_dataset), "official"),
                          (_cfg(id_dataset, protocol="random-split"), "random-split")):
        assert run_protocol(cfg) == build_split(cfg, seed=0).protocol == expected
        assert split_metadata(RunConfig(data=cfg))["protocol"] == expected


def _host_flows(path, hosts: list[str]) -> None:
    """One flow per line in arrival order: its `id` is its line, `host` its entity."""
    rng = np.random.default_rng(0)
    rows = [f"{i},{h},{rng.random():.4f},{'dos_x' if i % 5 == 0 else 'normal'}"
            for i, h in enumerate(hosts)]
    path.write_text("\n".join(rows) + "\n")


def test_time_split_tests_on_the_latest_records_even_when_windows_group_them_by_host(tmp_path):
    """Per-host windows regroup records by entity; the time split still cuts in arrival order:
    every test record arrived after every training and validation record."""
    spec = ID_SPEC.model_copy(update={"columns": ["id", "host", "rate", "label"],
                                      "categorical": [], "ignore": ["host"],
                                      "entity_column": "host", "files": []})
    first, second = tmp_path / "monday.csv", tmp_path / "tuesday.csv"
    _host_flows(first, [f"h{i % 7}" for i in range(300)])
    _host_flows(second, [f"h{i % 3}" for i in range(100)])
    cfg = DataConfig(train_files=[str(first)], protocol="time-split", test_fraction=0.25)
    split = build_split_from_files(spec, [first], None, cfg, seed=0)
    assert split.protocol == "time-split" == run_protocol(cfg)
    assert _ids(split.tests["test"]) == sorted(_ids(split.tests["test"]), key=lambda i: (i % 7, i))
    assert set(_ids(split.tests["test"])) == set(range(225, 300))  # the latest quarter
    assert sorted(_ids(split.train) + _ids(split.val)) == list(range(225))
    assert split.notes["test_from_record"] == 226
    assert split.train.segment is not None  # windows stay per host inside each part
    again = build_split_from_files(spec, [first], None, cfg, seed=1)
    assert _ids(again.tests["test"]) == _ids(split.tests["test"])  # no seed in time order
    # Several files: the first file's records arrived before the second's.
    both = build_split_from_files(spec, [first, second], None, cfg, seed=0)
    tested = both.tests["test"]
    assert len(tested) == 100 and set(tested.segment >> 32) == {1}  # all of tuesday
    assert sorted(_ids(tested)) == list(range(100))


def test_time_split_is_refused_where_it_cannot_mean_arrival_order(id_dataset):
    folder = id_dataset / "ids"
    with pytest.raises(ValueError, match="time-split is for your own flow logs"):
        build_split(_cfg(id_dataset, protocol="time-split"))
    with pytest.raises(ValueError, match="give one of them"):
        build_split(_cfg(id_dataset, protocol="time-split", train_files=[str(folder / "train.csv")],
                         test_file=str(folder / "test.csv")))
    with pytest.raises(ValueError, match="no records to test"):
        build_split(_cfg(id_dataset, protocol="time-split", test_fraction=0.0001,
                         train_files=[str(folder / "train.csv")]))
