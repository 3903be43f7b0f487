"""Shared fixtures: real benchmark files from ../shared/datasets, tiny synthetic records otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlstm.data.readers import ReadReport, Records, remembered_reads
from fedlstm.data.spec import DatasetSpec, FileSpec

SYNTHETIC_SPEC = DatasetSpec(
    name="synthetic", folder="synthetic", title="synthetic flows",
    columns=["bytes", "rate", "flag", "proto", "label"], categorical=["flag", "proto"],
    label="label", families={"dos_x": "dos", "probe_x": "probe"},
    family_order=["normal", "dos", "probe"])

ROOT = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    for candidate in (os.environ.get("FEDLSTM_DATA"), ROOT.parent / "shared" / "datasets"):
        if candidate and Path(candidate, "nsl-kdd").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session", autouse=True)
def signing_key_home(tmp_path_factory):
    """Bundles written by tests are signed with a throwaway key home, never the machine's
    ~/.fedlstm/keys; processes the tests start (deployment) inherit it."""
    home = tmp_path_factory.mktemp("fedlstm-keys")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDLSTM_KEYS", str(home))
        mp.delenv("FEDLSTM_HOME", raising=False)
        yield home


@pytest.fixture(scope="session", autouse=True)
def remembered_benchmark_reads():
    """The suite reads the same benchmark files in dozens of tests: each is parsed once and later
    reads get a copy, as in `reproduce` (`readers.remembered_reads`; its test parses again)."""
    with remembered_reads():
        yield


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = shared_datasets()
    if path is None:
        pytest.skip("benchmark files not found: set FEDLSTM_DATA (CI points it at ../shared/datasets)")
    return path


def synthetic_records(n: int = 400, seed: int = 0) -> Records:
    """Flow-like records whose label depends on the features, so models can learn it."""
    rng = np.random.default_rng(seed)
    is_attack = rng.random(n) < 0.4
    frame = pd.DataFrame({
        "bytes": np.where(is_attack, rng.exponential(5000, n), rng.exponential(300, n)).astype(np.float32),
        "rate": rng.random(n).astype(np.float32) + is_attack,
        "flag": rng.choice(["on", "off"], n),
        "proto": np.where(is_attack, rng.choice(["tcp", "icmp"], n), rng.choice(["tcp", "udp"], n)),
    })
    family = np.where(is_attack, rng.choice(["dos", "probe"], n), "normal").astype(object)
    attack = np.where(is_attack, family + "_x", "normal").astype(object)
    return Records(frame, attack, family, is_attack.astype(np.int64), ReadReport(Path("synthetic")))


# A dataset whose records carry their identity in a numeric column: even ids in the training
# file, odd ids in the test file, all inside the training file's range, so that an id survives
# min-max scaling and can be read back from any window the production code builds.
ID_SPEC = DatasetSpec(
    name="ids", folder="ids", title="records with ids",
    columns=["id", "rate", "proto", "label"], categorical=["proto"], label="label",
    families={"dos_x": "dos", "probe_x": "probe"}, family_order=["normal", "dos", "probe"],
    files=[FileSpec(role="train", name="train.csv"), FileSpec(role="test", name="test.csv")])


def _id_lines(ids: np.ndarray, rng: np.random.Generator) -> str:
    labels = rng.choice(["normal", "normal", "dos_x", "probe_x"], len(ids))
    protos = rng.choice(["tcp", "udp", "icmp"], len(ids))
    return "".join(f"{i},{rng.random():.4f},{p},{lab}\n" for i, p, lab in zip(ids, protos, labels))


@pytest.fixture
def id_dataset(tmp_path, monkeypatch) -> Path:
    """The data directory of ID_SPEC (600 training, 300 test records), registered as `ids`."""
    from fedlstm.data import schemas

    rng = np.random.default_rng(0)
    folder = tmp_path / "ids"
    folder.mkdir()
    (folder / "train.csv").write_text(_id_lines(np.arange(0, 1200, 2), rng))
    (folder / "test.csv").write_text(_id_lines(np.arange(1, 600, 2), rng))
    monkeypatch.setitem(schemas.DATASETS, "ids", ID_SPEC)
    return tmp_path


@pytest.fixture
def wide_consoles(monkeypatch):
    """fedlstm's consoles 1000 columns wide, so that tables and messages print unwrapped."""
    from fedlstm.cli import common

    monkeypatch.setattr(common.console, "_width", 1000)
    monkeypatch.setattr(common.out_console, "_width", 1000)


@pytest.fixture(scope="session", autouse=True)
def one_simulation_runtime():
    """Flower simulations in this session share one Ray runtime and its client actors, as
    `reproduce` does (`one_ray_runtime`): each simulation would otherwise pay about 9 s to
    start Ray and import torch in fresh actors."""
    from fedlstm.federation.simulation import one_ray_runtime

    with one_ray_runtime():
        yield
