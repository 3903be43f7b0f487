"""How a training set is spread over simulated clients, and the per-client data files.

`iid` deals contiguous blocks of rows (this module: a site's records stay in order);
`iid-rows`, Dirichlet label skew and natural ids come from flwr-datasets' partitioners;
`networks` makes each dataset (NSL-KDD, KDD99, UNSW-NB15: one schema or several) a client of its
own: the paper's networks;
`files` makes each of the user's training files (or folders) a client: one site's logs each.
A client's share keeps file order, so its windows see records in their original sequence.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedlstm.data.flows import read_flow_file
from fedlstm.data.readers import ReadReport, Records, read_records
from fedlstm.data.schemas import DATASETS
from fedlstm.data.spec import DatasetSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionScheme:
    kind: str  # iid | iid-rows | dirichlet | by | networks | files
    alpha: float | None = None
    column: str | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionScheme:
        kind, _, arg = text.partition(":")
        if kind == "iid" and not arg:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                raise ValueError(f"dirichlet needs a concentration, e.g. dirichlet:0.1 (got {text!r})")
            if alpha <= 0:
                raise ValueError("dirichlet alpha must be > 0")
            return cls("dirichlet", alpha=alpha)
        if kind == "by" and arg:
            return cls("by", column=arg)
        if kind in ("networks", "files", "iid-rows") and not arg:
            return cls(kind)
        raise ValueError(f"unknown partition {text!r}; use iid, iid-rows, dirichlet:ALPHA, "
                         "by:COLUMN, networks or files")


def partition_indices(records: Records, scheme: PartitionScheme, n_clients: int,
                      seed: int) -> list[np.ndarray]:
    """Row positions of each client's share, each sorted (file order)."""
    from datasets import Dataset

    if scheme.kind == "iid":
        return block_shares(len(records), n_clients, seed)
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

    if scheme.kind == "by":
        if scheme.column not in records.frame.columns:
            raise ValueError(f"cannot partition by {scheme.column!r}: not a column "
                             f"({', '.join(records.frame.columns[:8])}, ...)")
        key = records.frame[scheme.column].astype(str).to_numpy()
        partitioner = NaturalIdPartitioner(partition_by="key")
    elif scheme.kind == "dirichlet":
        key = records.family.astype(str)
        partitioner = DirichletPartitioner(num_partitions=n_clients, partition_by="key",
                                           alpha=scheme.alpha, min_partition_size=10,
                                           self_balancing=False, seed=seed)
    elif scheme.kind == "iid-rows":
        key = np.zeros(len(records), np.int64)
        partitioner = IidPartitioner(num_partitions=n_clients)
    else:
        raise ValueError(f"`{scheme.kind}` partitions by dataset or file, not by rows of one dataset")
    rows = np.arange(len(records))
    if scheme.kind == "iid-rows":  # IidPartitioner cuts contiguous blocks: shuffle rows first
        rows = np.random.default_rng(seed).permutation(len(records))
    partitioner.dataset = Dataset.from_dict({"row": rows, "key": key})
    return [np.sort(np.asarray(partitioner.load_partition(i)["row"]))
            for i in range(partitioner.num_partitions)]


# `iid` shares: blocks of this many consecutive records, dealt to sites at random. Each site's
# windows are then windows of records that really followed each other (a site sees its traffic
# in order), while every site gets a mixture of the whole. (`iid-rows` deals single rows:
# identically distributed, but its windows join records that were never consecutive.)
BLOCK = 256


def block_shares(n: int, n_clients: int, seed: int, block: int = BLOCK) -> list[np.ndarray]:
    """Row positions of each site's blocks (equal numbers of blocks, random which), sorted."""
    starts = np.arange(0, n, block)
    dealt = np.array_split(np.random.default_rng(seed).permutation(len(starts)), n_clients)
    return [np.sort(np.concatenate([np.arange(starts[b], min(starts[b] + block, n)) for b in part]
                                   or [np.array([], np.int64)])) for part in dealt]


def block_segments(rows: np.ndarray, segment: np.ndarray | None,
                   block: int = BLOCK) -> np.ndarray:
    """Segment ids that keep windows inside one block (and inside the segments already there)."""
    ids = np.asarray(rows) // block
    if segment is not None:
        ids = np.unique(np.stack([np.asarray(segment, np.int64), ids]), axis=1,
                        return_inverse=True)[1].ravel()
    return ids.astype(np.int64)


def describe(parts: list[Records], names: list[str]) -> list[dict]:
    out = []
    for name, recs in zip(names, parts):
        mix = Counter(recs.family)
        out.append({"client": name, "rows": len(recs), "attack_share": float(recs.is_attack.mean()),
                    "families": {k: int(v) for k, v in sorted(mix.items())}})
    return out


_SPEC_KEY = b"fedlstm.spec"


def save_records(records: Records, path: Path, spec: DatasetSpec | None = None) -> Path:
    """Internal per-client file (parquet): features, the derived labels, the window segments
    (entities, source files) and, in the file's metadata, the resolved schema, so a client of a
    user's own logs needs nothing else to read its share."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = records.frame.copy()
    frame["__attack"] = records.attack.astype(str)
    frame["__family"] = records.family.astype(str)
    frame["__is_attack"] = records.is_attack
    if records.segment is not None:
        frame["__segment"] = np.asarray(records.segment, np.int64)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if spec is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               _SPEC_KEY: spec.model_dump_json().encode()})
    # Owner-only from the first byte: these are raw records of a site.
    path = Path(path)
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    pq.write_table(table, path)
    return path


def load_client_records(path: str | Path, spec: DatasetSpec, lenient: bool = False,
                        max_bad_share: float | None = None) -> tuple[Records, DatasetSpec]:
    """A client's data and its schema: our parquet share (whose own schema, when it carries one,
    wins over `spec`), or a raw file in the schema's own format (`max_bad_share`: as
    `read_flow_file`)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix != ".parquet":
        if spec.name in DATASETS:
            return read_records(path, spec, lenient=lenient), spec
        return read_flow_file(path, spec, lenient=lenient, max_bad_share=max_bad_share)
    table = pq.read_table(path)
    stored = (table.schema.metadata or {}).get(_SPEC_KEY)
    if stored:
        spec = DatasetSpec.model_validate_json(stored)
    frame = table.to_pandas()
    segment = frame.pop("__segment").to_numpy(np.int64) if "__segment" in frame else None
    missing = set(spec.feature_columns) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing feature columns {sorted(missing)}")
    return Records(frame[spec.feature_columns].reset_index(drop=True),
                   frame["__attack"].to_numpy(object), frame["__family"].to_numpy(object),
                   frame["__is_attack"].to_numpy(np.int64), ReadReport(path, rows=len(frame)),
                   segment), spec
