"""Shared helpers of the detection tests: a small flow log, its schema, and a bundle trained on it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fedlstm.config import RunConfig
from fedlstm.data.flowschemas import load_schema
from fedlstm.data.splits import build_split_from_files
from fedlstm.detection import ModelBundle
from fedlstm.tasks import task_for
from fedlstm.tasks.centralised import train

SCHEMA_TOML = """
[schema]
name = "tiny-flows"
format = "csv"
label = "label"
normal = ["benign"]
categorical = ["proto", "flag"]
time = "ts"
entity = "src"
ignore = ["flow_id"]
"""
HEADER = "flow_id,ts,src,bytes,rate,proto,flag,label"
HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def flow_lines(n: int, seed: int = 0) -> list[str]:
    """Flow records whose label depends on bytes/rate/proto, interleaved across four hosts."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        attack = rng.random() < 0.4
        size = rng.exponential(5000) if attack else rng.exponential(300)
        rate = rng.random() + attack
        proto = rng.choice(["tcp", "icmp"]) if attack else rng.choice(["tcp", "udp"])
        flag = rng.choice(["SF", "S0"])
        label = rng.choice(["dos", "scan"]) if attack else "benign"
        lines.append(f"f{i},{1000 + i},{HOSTS[i % 4]},{size:.1f},{rate:.4f},{proto},{flag},{label}")
    return lines


def write_flows(path: Path, n: int = 600, seed: int = 0, extra: list[str] | None = None,
                gz: bool = False) -> Path:
    text = "\n".join([HEADER, *flow_lines(n, seed), *(extra or [])]) + "\n"
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


_CACHE: dict = {}


def tiny_bundle(tmp_root: Path, task: str = "binary") -> tuple[Path, Path, Path]:
    """(schema.toml, flows.csv, model.fedlstm): trained once per session in a second or two."""
    if task in _CACHE:
        return _CACHE[task]
    root = tmp_root / f"tiny-{task}"
    root.mkdir(parents=True, exist_ok=True)
    schema = root / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    flows = write_flows(root / "flows.csv", 800)
    cfg = RunConfig.model_validate({"data": {"dataset": str(schema)}, "windows": {"window": 3},
                                    "model": {"hidden_size": 16, "task": task},
                                    "train": {"epochs": 6, "batch_size": 32, "lr": 0.01}})
    split = build_split_from_files(load_schema(schema), flows, None, cfg.data, seed=0)
    result = train(task_for(cfg), split)
    path = result.bundle.save(root / "model.fedlstm")
    _CACHE[task] = (schema, flows, path)
    return _CACHE[task]


@pytest.fixture
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    return tiny_bundle(tmp_path_factory.getbasetemp())


@pytest.fixture
def tiny_model(tiny) -> ModelBundle:
    return ModelBundle.load(tiny[2])
