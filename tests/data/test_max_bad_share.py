"""`data.max_bad_share`: how many malformed lines a flow file that `train`/`federate` read may
have, as `detect --max-bad-share` says for detection."""

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.config import DataConfig, RunConfig
from fedlstm.data.flows import TooManyBadLines
from fedlstm.data.flowschemas import load_schema
from fedlstm.data.splits import build_split
from fedlstm.federation.partitions import load_client_records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
from _detect_helpers import HEADER, SCHEMA_TOML, flow_lines  # noqa: E402


@pytest.fixture
def mixed(tmp_path):
    """A schema and a file of 100 lines, 40 of them malformed (share 0.4)."""
    schema = tmp_path / "schema.toml"
    schema.write_text(SCHEMA_TOML)
    path = tmp_path / "mixed.csv"
    lines = flow_lines(60)
    for i in range(0, 100, 5):  # malformed lines spread through the file
        lines.insert(i, "garbage")
    for i in range(2, 100, 5):
        lines.insert(i, "f,1,10.0.0.9,not-a-number,1,tcp,SF,benign")
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return schema, path


def _data(schema, path, **data) -> DataConfig:
    return DataConfig(schema=str(schema), train_files=[str(path)], lenient=True, **data)


def test_the_default_allows_half_and_the_key_sets_the_share(mixed):
    schema, path = mixed
    assert DataConfig().max_bad_share is None  # unset: the schema's, else 0.5
    assert len(build_split(_data(schema, path), carve_val=False).train) == 48  # 0.4 <= 0.5
    with pytest.raises(TooManyBadLines, match=r"40 of 100 lines malformed.*data.max_bad_share"):
        build_split(_data(schema, path, max_bad_share=0.3))
    clean = path.with_name("clean.csv")
    clean.write_text("\n".join([HEADER, *flow_lines(60)]) + "\n")
    held_out = DataConfig(schema=str(schema), train_files=[str(clean)], test_file=str(path),
                          lenient=True, max_bad_share=0.3)
    with pytest.raises(TooManyBadLines, match="mixed.csv"):  # the test file: same allowance
        build_split(held_out)
    with pytest.raises(TooManyBadLines):  # and so is a federated site's own file
        load_client_records(path, load_schema(schema), lenient=True, max_bad_share=0.3)
    with pytest.raises(ValueError):
        DataConfig(max_bad_share=1.5)


def test_the_key_wins_over_the_schema_files(mixed):
    schema, path = mixed
    schema.write_text(SCHEMA_TOML.replace("[schema]", "[schema]\nmax_bad_share = 0.3"))
    with pytest.raises(TooManyBadLines):  # the schema's allowance, when the key is unset
        build_split(_data(schema, path))
    assert len(build_split(_data(schema, path, max_bad_share=0.45), carve_val=False).train) == 48


def test_train_honours_the_key_and_names_it(mixed, tmp_path):
    schema, path = mixed
    run = ["train", "--schema", str(schema), "--train-file", str(path), "--set",
           "data.lenient=true", "--set", "model.hidden_size=4", "--set", "train.epochs=1",
           "--window", "2"]
    r = CliRunner().invoke(app, [*run, "--set", "data.max_bad_share=0.3",
                                 "--out", str(tmp_path / "strict")])
    assert r.exit_code == 2 and "--set data.max_bad_share=" in r.output, r.output
    assert not (tmp_path / "strict").exists()
    cfg = RunConfig.model_validate({"data": {"max_bad_share": 0.3}})
    assert cfg.data.max_bad_share == 0.3
