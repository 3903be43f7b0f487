"""A reproduction cannot go stale: a cached step is reused only under the same profile,
configuration, code and data; anything else is computed again, never relabelled."""

import dataclasses
import json

from report_cells import check_report

from fedlstm.reports import reproduce as rep

STEP = "ids--official--logreg--s0"


def _profiles(monkeypatch):
    tiny = rep.Profile("tiny", 400, 200, epochs=1, rounds=1, clients=2, seeds=(0,),
                       hidden_size=8, window=2, note="TINY PROFILE A")
    other = dataclasses.replace(tiny, name="tiny-b", max_train_rows=300, note="TINY PROFILE B")
    monkeypatch.setitem(rep.PROFILES, "tiny", tiny)
    monkeypatch.setitem(rep.PROFILES, "tiny-b", other)


def _run(out, root, profile="tiny"):
    rep.reproduce(out, profile, str(root), datasets=["ids"], methods=["logreg"], jobs=1)
    return json.loads((out / "steps" / f"{STEP}.json").read_text())


def test_a_changed_profile_recomputes_the_steps(id_dataset, tmp_path, monkeypatch):
    _profiles(monkeypatch)
    out = tmp_path / "report"
    first = _run(out, id_dataset)
    assert first["fingerprint"]["profile"] == "tiny" and first["config"]["data"]["max_train_rows"] == 400
    assert set(first["fingerprint"]["data_sha256"]) == {"ids/train", "ids/test"}
    files = sorted((out / "steps").glob("*.json"))
    assert [p.stem for p in files] == ["ids--official--logreg--s0", "ids--random-split--logreg--s0",
                                       "overlap--ids--official", "overlap--ids--random-split"]
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    assert _run(out, id_dataset) == first  # same profile, code and data: reused as it is
    assert {p.name: p.stat().st_mtime_ns for p in files} == stamps
    second = _run(out, id_dataset, "tiny-b")
    assert second["fingerprint"]["profile"] == "tiny-b"  # computed again, not relabelled
    assert second["config"]["data"]["max_train_rows"] == 300
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in files)
    report = (out / "report.md").read_text()
    assert "TINY PROFILE B" in report and "TINY PROFILE A" not in report
    assert check_report(out) > 20


def test_other_data_or_code_make_a_step_stale(id_dataset, tmp_path, monkeypatch):
    _profiles(monkeypatch)
    out = tmp_path / "report"
    first = _run(out, id_dataset)
    path = out / "steps" / f"{STEP}.json"
    with open(id_dataset / "ids" / "test.csv", "a") as fh:  # the data changed
        fh.write("1201,0.5,tcp,normal\n")
    assert _run(out, id_dataset)["fingerprint"]["data_sha256"] != first["fingerprint"]["data_sha256"]
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(rep, "source_sha256", lambda: "other code")
    assert _run(out, id_dataset)["fingerprint"]["source_sha256"] == "other code"
    assert path.stat().st_mtime_ns != stamp
    tampered = json.loads(path.read_text())
    tampered["fingerprint"]["config_sha256"] = "0" * 64  # e.g. written by another configuration
    tampered["evaluations"]["test"]["accuracy"] = 2.0
    path.write_text(json.dumps(tampered))
    assert _run(out, id_dataset)["evaluations"]["test"]["accuracy"] <= 1
