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
