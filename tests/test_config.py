import pytest
from pydantic import ValidationError

from fedlstm.config import load_config


def test_overrides_and_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 3\n[train]\nepochs = 4\n[data]\ndataset = "kdd99"\n')
    cfg = load_config(path, ["train.lr=0.01", "model.task=family"], windows__window=2)
    assert (cfg.seed, cfg.train.epochs, cfg.train.lr, cfg.model.task, cfg.windows.window,
            cfg.data.dataset) == (3, 4, 0.01, "family", 2, "kdd99")


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError):
        load_config(None, ["train.epoch=3"])


def test_own_flow_logs_get_enough_batches_and_benchmarks_their_tuned_epochs():
    own = load_config(None, ["data.schema=cicflowmeter", 'data.train_files=["flows.csv"]'])
    assert own.train.min_steps == 1000 and own.train.epochs == 10
    mine = load_config(None, ["data.schema=cicflowmeter", "train.min_steps=0"])
    assert mine.train.min_steps == 0  # the user's setting wins
    counted = load_config(None, ["data.schema=cicflowmeter", "train.epochs=1"])
    assert counted.train.min_steps == 0 and counted.train.epochs == 1  # and so do their epochs
    local = load_config(None, ["data.schema=cicflowmeter", "federation.local_epochs=3"])
    assert local.train.min_steps == 0 and local.federation.local_epochs == 3  # federations' too
    nsl = load_config(None, ["data.dataset=nsl-kdd"])
    assert nsl.train.min_steps == 0 and nsl.train.epochs == 5
