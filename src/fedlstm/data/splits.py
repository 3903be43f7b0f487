"""Evaluation protocols. Validation data is carved from training data only, under every protocol.

- `official`: the publishers' train and test files (NSL-KDD Train+ -> Test+ and Test-21,
  KDD99 10% -> corrected, UNSW-NB15 training -> testing partition).
- `random-split`: a seeded, stratified split of one file: the protocol behind the ~98-99% figures
  in the literature, since train and test then share attack types and near-duplicate records.
- `time-split` (the user's own files): the latest `test_fraction` of the records, in arrival
  order, is the test set and everything earlier trains, as a deployed detector meets traffic:
  attacks that first appear late are unseen in training.

Every part keeps file order, so windows formed later see records in their original sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedlstm.config import DataConfig
from fedlstm.data.flows import expand_inputs, read_flow_file, with_families
from fedlstm.data.flowschemas import SchemaError
from fedlstm.data.readers import Records, concat_records, read_records
from fedlstm.data.registry import DatasetNotFound, available_roles, data_dir, locate
from fedlstm.data.schemas import get_spec
from fedlstm.data.spec import DatasetSpec

log = logging.getLogger(__name__)
TRAIN_ROLES = ("train", "train-20")


@dataclass
class Split:
    spec: DatasetSpec
    protocol: str
    train: Records
    val: Records
    tests: dict[str, Records]
    files: dict[str, str] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def stratified_indices(strata: np.ndarray, fraction: float | int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (rest, taken) with `fraction` taken per stratum, both in file order.
    An int `fraction` is the number to take: a share m/n rounds up to m + 1 in floating point."""
    strata = np.asarray(strata).astype(str)
    n = len(strata)
    n_taken = fraction if isinstance(fraction, int) else int(np.ceil(fraction * n))
    if n < 2:
        share = f"{fraction:,}" if isinstance(fraction, int) else f"{fraction:.0%}"
        raise ValueError(f"{n} record(s): too few to set {share} of them apart "
                         "(validation or test)")
    values, counts = np.unique(strata, return_counts=True)
    rare = set(values[counts < 2])
    if rare:  # a stratum of one record cannot be split: pool the rare ones
        strata = np.where(np.isin(strata, list(rare)), "__rare__", strata)
        if (strata == "__rare__").sum() < 2:
            strata = np.where(strata == "__rare__", values[np.argmax(counts)], strata)
    # Imported at first use: scikit-learn takes about a second to import (`training.metrics`).
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(strata))
    kinds = len(np.unique(strata))
    # Too few records for one of each kind on both sides (a small site): a plain random split,
    # where scikit-learn refused ("test_size = 2 should be greater or equal to ... classes").
    stratify = strata if min(n_taken, n - n_taken) >= kinds else None
    rest, taken = train_test_split(positions, test_size=fraction, random_state=seed,
                                   stratify=stratify)
    return np.sort(rest), np.sort(taken)


def drop_duplicates(records: Records) -> tuple[Records, int]:
    key = records.frame.assign(__attack=records.attack)
    keep = ~key.duplicated().to_numpy()
    return records.take(np.flatnonzero(keep)), int((~keep).sum())


def _row_hashes(records: Records) -> np.ndarray:
    return pd.util.hash_pandas_object(records.frame, index=False).to_numpy()


def overlap_share(train: Records, test: Records) -> float:
    """Share of test records whose feature vector also occurs in the training data."""
    return float(np.isin(_row_hashes(test), _row_hashes(train)).mean())


def carve_validation(records: Records, fraction: float, seed: int) -> tuple[Records, Records]:
    fit_idx, val_idx = stratified_indices(records.family, fraction, seed + 2)
    return records.take(fit_idx), records.take(val_idx)


def time_split_indices(records: Records, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (earlier, latest) by arrival order, the latest `fraction` of the
    records taken; both in the records' own (e.g. per-entity) order."""
    n_test = int(round(fraction * len(records)))
    if not 0 < n_test < len(records):
        raise ValueError(f"time-split of {len(records)} records leaves no records to "
                         f"{'test' if n_test == 0 else 'train'} on (test_fraction {fraction})")
    by_arrival = np.argsort(records.arrival_order(), kind="stable")
    return np.sort(by_arrival[:-n_test]), np.sort(by_arrival[-n_test:])


def run_protocol(cfg: DataConfig) -> str:
    """The protocol a run's data configuration means, which every output names: `files` (the
    user's training files, tested on their test file), `random-split` (of the user's files
    without one, or of a benchmark file), `time-split` (of the user's files, when asked), or
    `official`."""
    if cfg.train_files:
        return "files" if cfg.test_file else \
            "time-split" if cfg.protocol == "time-split" else "random-split"
    return cfg.protocol


def build_split(cfg: DataConfig, seed: int = 0, carve_val: bool = True) -> Split:
    """`carve_val=False` leaves validation to the caller (federated clients carve their own)."""
    if cfg.train_files:
        return build_split_from_files(get_spec(cfg.spec_name), cfg.train_files,
                                      cfg.test_file, cfg, seed, carve_val)
    spec = get_spec(cfg.dataset)
    root = data_dir(cfg.data_dir)
    notes: dict = {}
    files: dict[str, str] = {}

    def read(role: str) -> Records:
        path = locate(spec, role, root)
        files[role] = str(path)
        return read_records(path, spec, lenient=cfg.lenient)

    if cfg.protocol == "time-split":
        raise ValueError(f"{spec.name}: time-split is for your own flow logs (--train-file), "
                         "whose line order is their arrival order; the benchmark files are not "
                         "in capture order (UNSW-NB15's are sorted by class): use --protocol "
                         "official or random-split")
    if cfg.protocol == "official":
        present = available_roles(spec, root)
        if "train" not in present:
            tests = [r for r in present if r not in TRAIN_ROLES]
            wanted = spec.file("train").name
            raise DatasetNotFound(
                f"{spec.name}: the official protocol needs the training file {wanted}, found "
                f"{', '.join(spec.file(r).name for r in tests) or 'no file of this dataset'} in "
                f"{root / spec.folder}; fetch it with `fedlstm data fetch {spec.name} "
                f"--data-dir {root}`" + (" or use --protocol random-split" if tests else ""))
        train = read("train")
        tests = {role: read(role) for role in present if role not in TRAIN_ROLES}
        if not tests:
            names = ", ".join(f.name for f in spec.files if f.role not in TRAIN_ROLES)
            raise DatasetNotFound(f"{spec.name}: the official protocol needs a test file "
                                  f"({names}) in {root / spec.folder}")
        if cfg.dedup:
            train, removed = drop_duplicates(train)
            notes["duplicates_removed_from_train"] = removed
    else:
        role = cfg.split_file or _first_present(spec, root)
        whole = read(role)
        if cfg.dedup:  # before splitting, or copies of one record land on both sides
            whole, removed = drop_duplicates(whole)
            notes["duplicates_removed"] = removed
        rest, test_idx = stratified_indices(whole.family, cfg.test_fraction, seed)
        train, tests = whole.take(rest), {"test": whole.take(test_idx)}
        notes["split_file"] = role

    if cfg.max_train_rows and len(train) > cfg.max_train_rows:
        _, keep = stratified_indices(train.family, cfg.max_train_rows, seed + 1)
        train = train.take(keep)
        notes["train_subsampled_to"] = len(train)
    if cfg.max_test_rows:
        for name, recs in list(tests.items()):
            if len(recs) > cfg.max_test_rows:
                _, keep = stratified_indices(recs.family, cfg.max_test_rows, seed + 3)
                tests[name] = recs.take(keep)
        notes["tests_subsampled_to"] = cfg.max_test_rows
    if carve_val:
        train, val = carve_validation(train, cfg.val_fraction, seed)
    else:
        val = train.take(np.array([], np.int64))
    notes.update(_row_notes(train, val, tests, None if carve_val else cfg.val_fraction))
    notes["test_overlap_with_train"] = {k: overlap_share(train, v) for k, v in tests.items()}
    return Split(spec, cfg.protocol, train, val, tests, files, notes)


def _row_notes(train, val, tests: dict, site_val: float | None) -> dict:
    """Rows per part; `site_val`: each site sets that share of its training rows apart for
    validation later (a "val: 0" here read as federating without validation)."""
    tests = {k: len(v) for k, v in tests.items()}
    if site_val is None:
        return {"rows": {"train": len(train), "val": len(val), **tests}}
    return {"rows": {"train": len(train), **tests},
            "val": f"each site sets {site_val:.0%} of its training rows apart"}


def _first_present(spec: DatasetSpec, root: Path) -> str:
    present = available_roles(spec, root)
    if not present:
        raise DatasetNotFound(f"{spec.name}: no files in {root / spec.folder}; run "
                              f"`fedlstm data fetch {spec.name} --data-dir {root}`")
    return present[0]


def read_labelled_files(entries: list, spec: DatasetSpec, lenient: bool = False,
                        max_bad_share: float | None = None) -> tuple[Records, DatasetSpec]:
    """Labelled flow files (and the files of folders) in one schema, pooled in the order given
    (windows never run from one file into the next), with the schema as the files resolve it."""
    files = expand_inputs(entries)
    if not files:
        raise ValueError("no flow file given")
    parts = []
    for f in files:
        recs, resolved = read_flow_file(f, spec, lenient=lenient, max_bad_share=max_bad_share)
        if parts and resolved.feature_columns != parts[0][1].feature_columns:
            raise SchemaError(f"{f}: its columns differ from {files[0]}")
        parts.append((recs, resolved))
    records = parts[0][0] if len(parts) == 1 else concat_records([p[0] for p in parts])
    return records, parts[0][1]


def build_split_from_files(spec: DatasetSpec, train_files: str | Path | list,
                           test_file: str | Path | None, cfg: DataConfig, seed: int = 0,
                           carve_val: bool = True) -> Split:
    """A Split of the user's own labelled files, with the same rules as the benchmark protocols.

    With `test_file` the protocol is "files" (train on the training file(s), test on the test
    file); without, a seeded stratified `random-split` of the training file(s), or with
    `protocol = "time-split"` the latest records (in the files' order, then line order) for
    testing. Validation is always carved from training data only (stratified, so that it holds
    the normal traffic the alert budget is set on). Several training files (or the files of a
    folder) are pooled and windows never cross from one to the next.
    """
    if test_file is not None and cfg.protocol == "time-split":
        raise ValueError("--protocol time-split splits your training files, and --test-file is a "
                         "held-out test set already: give one of them")
    files = expand_inputs(train_files)
    if not files:
        raise ValueError("no training file given")
    whole, spec = read_labelled_files(files, spec, cfg.lenient, cfg.max_bad_share)
    notes: dict = {"train_files": [str(f) for f in files]}
    if cfg.dedup:
        whole, notes["duplicates_removed"] = drop_duplicates(whole)
    if test_file is not None:
        test, _ = read_flow_file(test_file, spec, lenient=cfg.lenient,
                                 max_bad_share=cfg.max_bad_share)
        train, tests, protocol = whole, {"test": test}, "files"  # = run_protocol's
        notes["test_file"] = str(test_file)
    elif cfg.protocol == "time-split":
        rest, test_idx = time_split_indices(whole, cfg.test_fraction)
        train, tests, protocol = whole.take(rest), {"test": whole.take(test_idx)}, "time-split"
        notes["test_from_record"] = len(rest) + 1  # in arrival order, 1-based
    else:
        rest, test_idx = stratified_indices(whole.family, cfg.test_fraction, seed)
        train, tests, protocol = whole.take(rest), {"test": whole.take(test_idx)}, "random-split"
    if cfg.max_train_rows and len(train) > cfg.max_train_rows:
        _, keep = stratified_indices(train.family, cfg.max_train_rows, seed + 1)
        train = train.take(keep)
        notes["train_subsampled_to"] = len(train)
    if carve_val:
        train, val = carve_validation(train, cfg.val_fraction, seed)
    else:
        val = train.take(np.array([], np.int64))
    spec = with_families(spec, train, *tests.values())
    notes.update(_row_notes(train, val, tests, None if carve_val else cfg.val_fraction))
    notes["test_overlap_with_train"] = {k: overlap_share(train, v) for k, v in tests.items()}
    file_map = {"train": str(files[0]), **({"test": str(test_file)} if test_file else {})}
    return Split(spec, protocol, train, val, tests, file_map, notes)
