"""Streaming scorer: same scores whatever the chunking, windows per entity, alerts, follow mode."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from _detect_helpers import HEADER, flow_lines, tiny, tiny_model  # noqa: F401

from fedlstm.data.flows import FlowReader
from fedlstm.detection import BundleError, ModelBundle
from fedlstm.detection.bundle import FORMAT_VERSION
from fedlstm.detection.stream import AlertWriter, StreamScorer, detect


def _reference_scores(model: ModelBundle, frame: pd.DataFrame, entity: np.ndarray) -> np.ndarray:
    """Per entity, in arrival order: W consecutive records of that entity, scored at once; an
    entity's first W-1 records in windows left-padded with its first record."""
    x = model.preprocessor.transform(frame)
    out = np.full(len(frame), np.nan)
    w = model.window
    for host in pd.unique(entity):
        rows = np.flatnonzero(entity == host)
        padded = np.r_[np.repeat(rows[:1], w - 1), rows]
        windows = np.stack([x[padded[i:i + w]] for i in range(len(rows))])
        with torch.no_grad():
            p = torch.softmax(model.model(torch.from_numpy(windows)), 1).numpy()
        out[rows] = 1 - p[:, 0]
    return out


def test_scores_do_not_depend_on_chunking_and_follow_entities(tiny, tiny_model):
    _, flows, _ = tiny
    whole = next(iter(FlowReader(flows, tiny_model.spec)))
    expected = _reference_scores(tiny_model, whole.frame, whole.entity)
    for chunk_bytes in (1 << 20, 700, 97):
        scorer = StreamScorer(tiny_model, explain_top=0)
        got = np.concatenate([scorer.score(c.frame, c.entity).score
                              for c in FlowReader(flows, tiny_model.spec, chunk_bytes=chunk_bytes)])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert tiny_model.window > 1 and not np.isnan(expected).any()  # every record scored


def test_without_entity_matches_bundle_windows(tiny_model):
    model = tiny_model
    model.spec = model.spec.model_copy(update={"entity_column": None})
    frame = pd.DataFrame([dict(zip(HEADER.split(","), l.split(","))) for l in flow_lines(50)])
    frame = frame.astype({"bytes": np.float32, "rate": np.float32})
    scores = StreamScorer(model, explain_top=0).score(frame)
    expected = model.decision_function(model.windows(type("R", (), {"frame": frame, "__len__": lambda s: 50})()))
    np.testing.assert_allclose(scores.score, expected, rtol=1e-4, atol=1e-5)


def test_entity_table_is_bounded(tiny_model):
    scorer = StreamScorer(tiny_model, explain_top=0, max_entities=10)
    frame = pd.DataFrame({"bytes": np.ones(100, np.float32), "rate": np.ones(100, np.float32),
                          "proto": ["tcp"] * 100, "flag": ["SF"] * 100})
    scorer.score(frame, np.array([f"h{i}" for i in range(100)], object))
    assert len(scorer._tails) == 10 and scorer.evicted == 90


def test_alerts_jsonl_and_csv_carry_location_score_and_top_features(tiny, tiny_model):
    _, flows, _ = tiny
    buf = io.StringIO()
    summary = detect(tiny_model, [flows], AlertWriter(buf, "jsonl", tiny_model.class_names))
    alerts = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert summary.records == 800 and summary.alerts == len(alerts) > 0
    a = alerts[0]
    assert {"file", "line", "entity", "score", "threshold", "predicted", "top_features"} <= set(a)
    assert a["score"] >= a["threshold"] and a["predicted"] == "attack"
    assert {f["feature"] for f in a["top_features"]} <= {"bytes", "rate", "proto", "flag"}
    lines = flows.read_text().splitlines()
    assert lines[a["line"] - 1].split(",")[2] == a["entity"]  # file:line points at the record
    lab = summary.to_dict()["labelled"]
    assert lab["accuracy"] > 0.8  # the tiny model learned its easy task
    buf = io.StringIO()
    detect(tiny_model, [flows], AlertWriter(buf, "csv", tiny_model.class_names), all_records=True)
    table = pd.read_csv(io.StringIO(buf.getvalue()))
    assert len(table) == 800  # every record, the first of each host's included
    assert {"file", "line", "score", "top_features", "fired", "reason"} <= set(table.columns)
    assert not any(c.startswith("p_") for c in table.columns)  # binary: they were always empty


def test_unknown_categories_are_counted_and_scored(tiny, tiny_model, tmp_path):
    path = tmp_path / "new.csv"
    lines = flow_lines(30)
    lines[20] = lines[20].replace(",tcp,", ",sctp,").replace(",udp,", ",sctp,").replace(",icmp,", ",sctp,")
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    s = detect(tiny_model, [path], None)
    assert s.unseen_categories["proto"] == 1 and ":22: column 'proto'" in s.unseen_examples[0]
    assert s.records == 30


def _detect_while(model, path, write, writer=None, poll_seconds=0.01, **kwargs):
    """`detect --follow` on `path` while `write()` runs in a thread; stops once it returned."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (write(), done.set()))
    thread.start()
    summary = detect(model, [path], writer, follow=True, poll_seconds=poll_seconds,
                     stop=done.is_set, **kwargs)
    thread.join()
    return summary


def test_follow_scores_lines_appended_while_running(tiny_model, tmp_path):
    path = tmp_path / "live.csv"
    lines = flow_lines(60)
    path.write_text("\n".join([HEADER, *lines[:20]]) + "\n")

    def writer():
        with open(path, "a") as fh:
            for line in lines[20:]:
                fh.write(line[:5])
                fh.flush()  # a half-written line must wait for its end
                fh.write(line[5:] + "\n")
                fh.flush()
            time.sleep(0.2)

    summary = _detect_while(tiny_model, path, writer)
    assert summary.records == 60 and summary.bad_lines == 0
    # the rate is over the time spent reading and scoring: it counted the waits for the writer
    d = summary.to_dict()
    assert 0 < d["waiting_seconds"] < d["seconds"]
    assert d["records_per_second"] == round(60 / (summary.seconds - summary.waited))


def test_incompatible_bundle_version_is_refused(tiny, tmp_path):
    import hashlib
    import zipfile
    src = zipfile.ZipFile(tiny[2])
    manifest = json.loads(src.read("manifest.json"))
    manifest["format_version"] = FORMAT_VERSION + 1
    body = json.dumps(manifest).encode()
    bad = tmp_path / "future.fedlstm"
    with zipfile.ZipFile(bad, "w") as dst:
        dst.writestr("manifest.json", body)
        dst.writestr("weights.pt", src.read("weights.pt"))
        dst.writestr("manifest.sha256", hashlib.sha256(body).hexdigest())
    with pytest.raises(BundleError, match=f"v{FORMAT_VERSION + 1} is not supported"):
        ModelBundle.load(bad)


def test_follow_reads_across_log_rotation(tiny_model, tmp_path):
    path = tmp_path / "live.csv"
    lines = flow_lines(90)
    path.write_text("\n".join([HEADER, *lines[:30]]) + "\n")

    def rotate():
        time.sleep(0.2)
        with open(path, "a") as fh:
            fh.write("\n".join(lines[30:50]) + "\n")
        time.sleep(0.2)
        path.rename(tmp_path / "live.csv.1")  # rotated away; a new file takes the name
        time.sleep(0.1)
        path.write_text("")  # created empty first, as log writers do
        time.sleep(0.1)
        path.write_text("\n".join([HEADER, *lines[50:]]) + "\n")
        time.sleep(0.2)

    sink = io.StringIO()
    summary = _detect_while(tiny_model, path, rotate, all_records=True,
                            writer=AlertWriter(sink, "jsonl", tiny_model.class_names))
    assert summary.records == 90 and summary.bad_lines == 0
    assert summary.files[0]["rotations"] == 1
    out = [json.loads(line) for line in sink.getvalue().splitlines()]
    # Windows run on across the rotation (one stream); line numbers restart in the new file.
    assert summary.scored == 90 == len(out)
    assert [o["line"] for o in out][-40:] == list(range(2, 42))
    # ... so each record says which file it was in: line 2 named two records, one per file
    assert [o.get("rotation", 0) for o in out] == [0] * 50 + [1] * 40
    sink = io.StringIO()  # the CSV alerts of a followed log: a rotation column
    AlertWriter(sink, "csv", tiny_model.class_names, follow=True).write(out[-1])
    header, row = sink.getvalue().splitlines()
    assert header.startswith("file,line,rotation,") and row.split(",")[1:3] == ["41", "1"]


def test_follow_sees_a_copytruncate_that_regrew_within_one_poll(tiny_model, tmp_path):
    """copytruncate rotation (the file truncated in place, then written again) was seen only
    when the reader found the file shorter than its position: a file that had grown past it
    again by the next poll was read on from the old position, mid-way into the new records."""
    path = tmp_path / "live.csv"
    lines = flow_lines(90)
    path.write_text("\n".join([HEADER, *lines[:30]]) + "\n")

    def copytruncate():
        time.sleep(0.5)  # the reader has read the 30 lines and waits (polls every 0.3 s)
        with open(path, "r+") as fh:  # truncated and rewritten at once: longer than before
            fh.truncate(0)
            fh.write("\n".join([HEADER, *lines[30:]]) + "\n")
        time.sleep(0.8)

    summary = _detect_while(tiny_model, path, copytruncate, poll_seconds=0.3)
    assert summary.files[0]["rotations"] == 1
    assert summary.records == 90 and summary.bad_lines == 0


def test_follow_reads_a_pipe_and_ends_when_its_writer_closes_it(tiny_model, tmp_path):
    """`tail -F log | fedlstm detect BUNDLE - --follow` read nothing: a pipe has no size, so
    the reader waited for ever for its log to hold bytes (and a stop said no record arrived)."""
    import os

    fifo = tmp_path / "flows.fifo"
    os.mkfifo(fifo)
    lines = flow_lines(60)

    def write():
        with open(fifo, "w") as fh:
            fh.write("\n".join([HEADER, *lines[:30]]) + "\n")
            fh.flush()
            time.sleep(0.3)  # the reader waits for more, then gets it
            fh.write("\n".join(lines[30:]))  # the last line without its line end: whole
    thread = threading.Thread(target=write)
    thread.start()
    deadline = time.monotonic() + 20  # only if it never ends by itself
    summary = detect(tiny_model, [fifo], None, follow=True, poll_seconds=0.01,
                     stop=lambda: time.monotonic() > deadline)
    thread.join(timeout=5)
    if thread.is_alive():  # the reader never opened the pipe: let the writer's open return
        with open(fifo) as drain:
            drain.read()
    thread.join()
    assert time.monotonic() < deadline, "it ended only at the stop, not at the pipe's end"
    assert summary.records == 60 and summary.bad_lines == 0


def test_follow_scores_a_quiet_pipe_at_once_and_stops_while_it_is_open(tiny_model, tmp_path):
    """A blocking read of the pipe waited for a whole chunk (1 MB) or its end: the records that
    came were not scored, and SIGTERM went unheeded while the pipe stayed open and quiet."""
    import os

    fifo = tmp_path / "flows.fifo"
    os.mkfifo(fifo)
    release = threading.Event()

    def write():  # 30 records, then the pipe stays open until the reader has returned
        with open(fifo, "w") as fh:
            fh.write("\n".join([HEADER, *flow_lines(30)]) + "\n")
            fh.flush()
            release.wait(30)
    thread = threading.Thread(target=write)
    thread.start()
    start = time.monotonic()
    try:
        summary = detect(tiny_model, [fifo], None, follow=True, poll_seconds=0.01,
                         stop=lambda: time.monotonic() > start + 1.0)
        still_open = thread.is_alive()
    finally:
        release.set()
        thread.join()
    assert still_open and summary.records == 30


def test_follow_stops_while_its_log_keeps_growing(tiny_model, tmp_path):
    """The stop was checked only when a read found nothing new: under a busy writer, Ctrl-C and
    SIGTERM went unheeded until the writer paused. The writer here pauses only once detect has
    returned (or after 60 s), so the check needs no clock: detect must return while it writes."""
    path = tmp_path / "busy.csv"
    path.write_text("\n".join([HEADER, *flow_lines(50)]) + "\n")
    block = "\n".join(flow_lines(20, seed=7)) + "\n"
    stop, returned = threading.Event(), threading.Event()

    def writer():  # never pauses while detect runs
        deadline = time.monotonic() + 60
        with open(path, "a") as fh:
            while not returned.is_set() and time.monotonic() < deadline:
                fh.write(block)
                fh.flush()
    thread = threading.Thread(target=writer)
    thread.start()
    threading.Timer(0.5, stop.set).start()
    try:
        detect(tiny_model, [path], None, follow=True, poll_seconds=0.01, stop=stop.is_set)
        still_writing = thread.is_alive()
    finally:
        returned.set()
        thread.join()
    assert still_writing, "follow stopped only when the writer paused"


def test_follow_leaves_a_half_written_last_line_unscored_at_the_stop(tiny_model, tmp_path):
    """It was scored as a whole record: '987' of '9876543210', with no word."""
    path = tmp_path / "cut.csv"
    lines = flow_lines(30)
    path.write_text("\n".join([HEADER, *lines]) + "\n" + flow_lines(31)[30][:12])
    summary = detect(tiny_model, [path], None, follow=True, poll_seconds=0.01,
                     stop=lambda: True)
    assert summary.records == 30 and summary.bad_lines == 0
    assert any("stopped while a line was being written" in n
               for n in summary.files[0].get("notes", []))


def test_follow_waits_for_its_log_and_for_a_whole_header(tiny_model, tmp_path):
    """It stopped at once when the log did not exist yet ('no record parsed ... are they in its
    format?'), and read a half-written header as the whole one."""
    path = tmp_path / "later.csv"
    lines = flow_lines(20)

    def write():
        time.sleep(0.2)
        with open(path, "w") as fh:
            fh.write(HEADER[:10])
            fh.flush()
            time.sleep(0.2)
            fh.write(HEADER[10:] + "\n" + "\n".join(lines) + "\n")
        time.sleep(0.2)
    summary = _detect_while(tiny_model, path, write)
    assert summary.records == 20 and summary.bad_lines == 0
