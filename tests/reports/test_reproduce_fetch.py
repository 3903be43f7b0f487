"""On a fresh machine the main command gets what is missing by itself, or fails naming it."""

import dataclasses
import shutil

from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.reports import reproduce as rep


def _tiny(monkeypatch):
    tiny = rep.Profile("tiny", 400, 200, clients=2, seeds=(0,), epochs=1, rounds=1,
                       hidden_size=8, window=2, note="TINY PROFILE")
    monkeypatch.setitem(rep.PROFILES, "tiny", tiny)


def test_an_absent_dataset_is_fetched_from_the_mirror_then_reproduced(id_dataset, tmp_path,
                                                                     monkeypatch):
    _tiny(monkeypatch)
    mirror = tmp_path / "mirror"
    shutil.move(id_dataset / "ids", mirror / "ids")  # the publisher's copy; the data folder is empty
    data = tmp_path / "data"
    data.mkdir()
    path = rep.reproduce(tmp_path / "report", "tiny", str(data), datasets=["ids"],
                         methods=["logreg"], mirror=str(mirror), jobs=1)
    assert sorted(p.name for p in (data / "ids").iterdir()) == ["test.csv", "train.csv"]
    assert (mirror / "ids" / "train.csv").read_bytes() == (data / "ids" / "train.csv").read_bytes()
    assert "Logistic regression" in path.read_text()


def test_a_dataset_it_cannot_get_exits_non_zero_naming_it(id_dataset, tmp_path, monkeypatch):
    _tiny(monkeypatch)
    shutil.rmtree(id_dataset / "ids")
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    result = CliRunner().invoke(app, ["reproduce", "--profile", "tiny", "--out",
                                      str(tmp_path / "report"), "--data-dir", str(id_dataset),
                                      "--dataset", "ids", "--method", "logreg",
                                      "--mirror", str(empty_mirror), "--jobs", "1"])
    assert result.exit_code == 2, result.output
    assert "ids: not in" in result.output
    assert not (tmp_path / "report" / "report.md").exists()  # no empty report, no exit 0


def test_a_profile_left_unset_uses_the_dataset_defaults():
    full = rep.PROFILES["full"]
    cfg = rep.step_config(rep.Step("nsl-kdd", "official", "fed-lstm", 1), full, rep.Path("/d"))
    assert cfg.detector == "hybrid" and cfg.data.max_train_rows is None
    from fedlstm.config import DATASET_DEFAULTS
    nsl = DATASET_DEFAULTS["nsl-kdd"]
    assert cfg.windows.window == nsl["windows"]["window"]
    assert cfg.model.hidden_size == nsl["model"]["hidden_size"]
    assert cfg.federation.rounds == nsl["federation"]["rounds"]
    quick = dataclasses.replace(full, epochs=1, rounds=2)
    cfg = rep.step_config(rep.Step("unsw-nb15", "random-split", "hgb", 0), quick, rep.Path("/d"))
    assert cfg.detector == "supervised" and cfg.train.epochs == 1 and cfg.federation.rounds == 2
    assert cfg.windows.window == DATASET_DEFAULTS["unsw-nb15"]["windows"]["window"]


def test_every_extra_study_trains_on_every_row_of_the_profile():
    """At a row limit the novelty part's μ, Σ rest on too few normal windows for the robust
    calibration to leave sites out, and a study's ranking can differ from the full data's
    (reproduce.study_profile); the studies keep their own rounds."""
    the_plan = rep.Plan(steps=[rep.Step("nsl-kdd", "official", "fed-lstm", 0)])
    full, quick = rep.PROFILES["full"], rep.PROFILES["quick"]
    keys = ["robust--label-flip--robust--s0", "noniid--fedprox--s0", "privacy--eps1--s0",
            "anomaly--nsl-kdd--s0"]
    studies = {key: rep.extra_config(key, the_plan, full, rep.Path("/d")) for key in keys}
    assert {cfg.data.max_train_rows for cfg in studies.values()} == {full.max_train_rows} == {None}
    robust, noniid = studies[keys[0]], studies[keys[1]]
    assert (robust.federation.rounds, robust.federation.local_epochs) == \
        (noniid.federation.rounds, noniid.federation.local_epochs) == (rep.STUDY_ROUNDS, 1)
    assert robust.federation.attack == "label-flip" and robust.federation.malicious == 0.3
    assert studies[keys[2]].train.dp and studies[keys[2]].train.dp_target_epsilon == 1.0
    small = rep.extra_config("noniid--fedprox--s0", the_plan, quick, rep.Path("/d"))
    assert small.data.max_train_rows == quick.max_train_rows
