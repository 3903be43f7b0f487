"""`reproduce` runs its centralised steps in worker processes while the Flower steps run in the
main process: every step is written once, and a failure anywhere is raised at the end with
every finished step kept on disk."""

import json
from functools import partial

import pytest

from fedlstm.reports import reproduce as rep


def _job(tmp_path, name: str, compute, flower: bool = False) -> rep._Job:
    return rep._Job(tmp_path / f"{name}.json", {"step": name}, compute, flower)


def _jobs(tmp_path, names, flower=False):  # dict(key=...) pickles into a spawned worker
    return [_job(tmp_path, n, partial(dict, key=n), flower) for n in names]


def test_centralised_and_flower_steps_run_side_by_side_and_are_all_written(tmp_path):
    side, flower = _jobs(tmp_path, ["a", "b", "c"]), _jobs(tmp_path, ["f1", "f2"], flower=True)
    seen = []
    counter = rep._Counter(0, 5, lambda done, total, text: seen.append(done))
    results: dict = {}
    rep._run_all(side, flower, 2, results, counter)
    for job in side + flower:
        written = json.loads(job.path.read_text())
        assert written == {"key": job.path.stem, "fingerprint": {"step": job.path.stem}}
        assert results[job.path] == written
    assert counter.done == 5 and counter.running == [] and max(seen) == 5


def test_a_failed_centralised_step_is_raised_after_the_others_are_kept(tmp_path):
    side = _jobs(tmp_path, ["a"]) + [_job(tmp_path, "bad", partial(int, "not a number"))]
    flower = _jobs(tmp_path, ["f1"], flower=True)
    with pytest.raises(ValueError, match="not a number"):
        rep._run_all(side, flower, 2, {}, rep._Counter(0, 3, lambda *a: None))
    assert json.loads((tmp_path / "a.json").read_text())["key"] == "a"
    assert not (tmp_path / "bad.json").exists()


def test_a_failed_flower_step_is_raised_and_the_running_steps_finish(tmp_path):
    side = _jobs(tmp_path, ["a", "b"])
    flower = [_job(tmp_path, "f1", partial(int, "broken"), flower=True)]
    with pytest.raises(ValueError, match="broken"):
        rep._run_all(side, flower, 2, {}, rep._Counter(0, 3, lambda *a: None))
    assert not (tmp_path / "f1.json").exists()
    for path in tmp_path.glob("*.json"):  # whatever finished is complete on disk
        assert json.loads(path.read_text())["fingerprint"] == {"step": path.stem}
