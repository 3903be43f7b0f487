"""Which sites a federated run has and what each holds: shares of one dataset (partitions), the
paper's networks (one dataset each), or the user's files (one file or folder each); and the
held-out test sets the server reports on. Used alike by simulation and deployment."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedlstm.config import RunConfig
from fedlstm.data.readers import Records, concat_records
from fedlstm.data.registry import DatasetNotFound
from fedlstm.data.schemas import get_spec
from fedlstm.data.spec import DatasetSpec
from fedlstm.data.splits import Split, build_split, carve_validation, run_protocol
from fedlstm.federation.partitions import (
    BLOCK,
    PartitionScheme,
    block_segments,
    partition_indices,
)

log = logging.getLogger(__name__)
_FELL_BACK: set[str] = set()  # networks already said to be scored on their random split


@dataclass
class FederatedData:
    spec: DatasetSpec
    clients: list[Records]
    names: list[str]
    tests: dict[str, Records]
    notes: dict
    # Sites of different schemas (`federation.networks`): each site's schema. Their test sets
    # are in `tests`, each named after its site (`site_tests`).
    specs: list[DatasetSpec] | None = None

    def site_tests(self, i: int) -> dict[str, Records]:
        """Site `i`'s own test sets: those of `tests` named `SITE/...`."""
        return {k: v for k, v in self.tests.items() if k.startswith(f"{self.names[i]}/")}


def site_shares(cfg: RunConfig, data: FederatedData) -> list[tuple[Records, Records]]:
    """Each site's (training, validation) records, carved as the site carves them (`ClientTask`)."""
    return [carve_validation(c, cfg.data.val_fraction, cfg.seed) for c in data.clients]


def pooled_split(cfg: RunConfig, data: FederatedData,
                 shares: list[tuple[Records, Records]] | None = None,
                 notes: dict | None = None) -> Split:
    """Sites' shares pooled, as a centralised model would see them (simulation only: no real
    federation can pool), with the federation's test sets: every site's (`site_shares`), or the
    `shares` given (one site's: its local-only model)."""
    shares = site_shares(cfg, data) if shares is None else shares
    return Split(data.spec, run_protocol(cfg.data), concat_records([t for t, _ in shares]),
                 concat_records([v for _, v in shares]), data.tests, notes=notes or {})


def dataset_cfg(cfg: RunConfig, dataset: str) -> RunConfig:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})


def load_tests(cfg: RunConfig) -> tuple[DatasetSpec, dict[str, Records]]:
    """The schema and the held-out test sets (per dataset under `networks`), for reporting only."""
    kind = PartitionScheme.parse(cfg.federation.partition).kind
    if kind == "files":
        sites = file_sites(cfg)
        return sites.spec, sites.tests
    if kind == "networks":
        tests = {}
        for ds in cfg.federation.networks:
            split = build_split(dataset_cfg(cfg, ds).data, seed=cfg.seed, carve_val=False)
            tests.update({f"{ds}/{k}": v for k, v in split.tests.items()})
        return get_spec(cfg.federation.networks[0]), tests
    split = build_split(cfg.data, seed=cfg.seed, carve_val=False)
    return split.spec, split.tests


def file_sites(cfg: RunConfig) -> FederatedData:
    """Partition `files`: each training file or folder is one site's data, split on its own.

    With a test file, every site is scored on it; without, each site's seeded random split keeps
    its test share and the shares are pooled into one test set (no site trains on any of it)."""
    files = cfg.data.train_files
    if len(files) < 2:
        raise ValueError("partition `files` makes each --train-file (a file or a folder) one client; "
                         f"give at least two (got {len(files)})")
    schemas = cfg.data.site_schemas or [cfg.data.schema_] * len(files)
    if len(schemas) != len(files):
        raise ValueError(f"{len(schemas)} site schemas for {len(files)} training files: give one "
                         "schema per file")
    if cfg.data.test_file and len(set(schemas)) > 1:
        raise ValueError("sites of different schemas are each scored on their own random split; "
                         "one --test-file cannot be read in every schema")
    splits = [build_split(cfg.data.model_copy(update={"train_files": [f], "schema_": schema,
                                                      "site_schemas": []}),
                          seed=cfg.seed, carve_val=False) for f, schema in zip(files, schemas)]
    names = [f"site-{i}-{Path(f).name}" for i, f in enumerate(files)]
    columns = {tuple(s.spec.feature_columns) for s in splits}
    if len(columns) != 1 or cfg.federation.inputs in ("encoders", "harmonised"):
        if cfg.federation.inputs == "shared":
            raise ValueError(f"the sites' files do not share one set of feature columns: {files} "
                             "(federation.inputs=encoders federates them through private encoders)")
        return FederatedData(splits[0].spec, [s.train for s in splits], names,
                             {f"{n}/{k}": v for n, s in zip(names, splits)
                              for k, v in s.tests.items()},
                             {name: s.notes for name, s in zip(names, splits)},
                             specs=[s.spec for s in splits])
    order = list(splits[0].spec.family_order)  # every site must encode families alike
    order += sorted({f for s in splits for f in s.spec.family_order} - set(order))
    spec = splits[0].spec.model_copy(update={"family_order": order})
    if splits[0].protocol == "files":
        tests = splits[0].tests
    else:
        tests = {"test": concat_records([s.tests["test"] for s in splits])}
    return FederatedData(spec, [s.train for s in splits], names, tests,
                         {name: s.notes for name, s in zip(names, splits)})


def network_split(cfg: RunConfig, dataset: str, carve_val: bool = False):
    """One network's split: its official test set, or (official asked for, but only one of its
    files present, as UNSW-NB15 often is) its seeded random split, said in the log and notes."""
    data = dataset_cfg(cfg, dataset).data
    try:
        return build_split(data, seed=cfg.seed, carve_val=carve_val)
    except DatasetNotFound as exc:
        if data.protocol != "official":
            raise
        try:
            split = build_split(data.model_copy(update={"protocol": "random-split"}),
                                seed=cfg.seed, carve_val=carve_val)
        except DatasetNotFound:
            raise exc from None
        if dataset not in _FELL_BACK:  # once per process: a study splits a network many times
            _FELL_BACK.add(dataset)
            log.warning("%s: official split unavailable (%s); scored on its random split",
                        dataset, exc)
        split.notes = {**split.notes, "protocol": "random-split, official files missing"}
        return split


def federated_data(cfg: RunConfig) -> FederatedData:
    fed = cfg.federation
    scheme = PartitionScheme.parse(fed.partition)
    if scheme.kind == "files":
        return file_sites(cfg)
    if scheme.kind == "networks":
        specs = [get_spec(ds) for ds in fed.networks]
        same = len({tuple(s.feature_columns) for s in specs}) == 1
        if not same and fed.inputs == "shared":
            raise ValueError(f"networks {fed.networks} do not share one feature schema, so they "
                             "cannot share one plain model (federation.inputs=shared); use "
                             "inputs=encoders or harmonised (private input encoders)")
        splits = [network_split(cfg, s.name) for s in specs]
        tests = {f"{s.spec.name}/{k}": v for s in splits for k, v in s.tests.items()}
        hetero = not same or fed.inputs in ("encoders", "harmonised")
        return FederatedData(specs[0], [s.train for s in splits], [s.name for s in specs], tests,
                             {s.spec.name: s.notes for s in splits},
                             specs=[s.spec for s in splits] if hetero else None)
    split = build_split(cfg.data, seed=cfg.seed, carve_val=False)
    shares = partition_indices(split.train, scheme, fed.clients, cfg.seed)
    empty = [i for i, idx in enumerate(shares) if not len(idx)]
    if empty:  # such a site failed every round (and said so in a Ray traceback), and exit 0
        why = (f"{len(split.train):,} training records in blocks of {BLOCK} make "
               f"{-(-len(split.train) // BLOCK)} blocks" if scheme.kind == "iid" else
               f"partition {fed.partition} leaves {len(empty)} of {len(shares)} sites without "
               "records")
        raise ValueError(f"client-{empty[0]} gets no training records: {why}; use fewer "
                         f"clients (--clients) than {fed.clients}")
    clients = [split.train.take(idx) for idx in shares]
    if scheme.kind == "iid":  # windows stay inside the blocks a site was dealt
        for recs, idx in zip(clients, shares):
            recs.segment = block_segments(idx, recs.segment)
    return FederatedData(split.spec, clients, [f"client-{i}" for i in range(len(clients))],
                         split.tests, split.notes)
