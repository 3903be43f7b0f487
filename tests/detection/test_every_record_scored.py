"""Every flow is scored from its first record: a host with fewer than W flows is scored too, in
the batch path (evaluation) and the stream path (`detect`, the service) alike, with equal scores."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
from _detect_helpers import HEADER, flow_lines, tiny, tiny_model  # noqa: F401

from fedlstm.data.flows import read_flow_file
from fedlstm.detection.stream import AlertWriter, detect
from fedlstm.tasks.base import evaluate_detector


def _short_lived_hosts(path, flows_per_host=(1, 2, 1, 2, 1, 12, 2, 1, 9)):
    """A per-host flow file where most hosts make fewer than W = 3 flows, interleaved."""
    hosts = [f"10.1.0.{h}" for h, k in enumerate(flows_per_host) for _ in range(k)]
    order = np.random.default_rng(0).permutation(len(hosts))
    lines = [line.split(",") for line in flow_lines(len(hosts), seed=5)]
    for line, i in zip(lines, order):
        line[2] = hosts[i]
    path.write_text("\n".join([HEADER, *(",".join(line) for line in lines)]) + "\n")
    return path, len(hosts)


def test_no_record_of_a_short_lived_host_is_dropped(tiny_model, tmp_path):
    path, n = _short_lived_hosts(tmp_path / "short.csv")
    assert tiny_model.window == 3
    records, _ = read_flow_file(path, tiny_model.spec)
    ev = evaluate_detector(tiny_model, records)  # the batch path: `train`/`evaluate` metrics
    assert len(ev["_curve"]["score"]) == len(records) == n
    assert sum(map(sum, ev["binary"]["confusion_matrix"])) == n
    sink = io.StringIO()
    summary = detect(tiny_model, [path], AlertWriter(sink, "jsonl", tiny_model.class_names),
                     all_records=True)  # the stream path: `detect` and `serve`
    out = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert summary.records == summary.scored == len(out) == n
    assert "warming_up" not in summary.to_dict()
    # Both paths pad a host's first windows alike: the same score for every record.
    hosts = pd.read_csv(path)["src"].to_numpy()
    codes, _ = pd.factorize(pd.Series(hosts, dtype=object))
    batch_line = np.argsort(codes, kind="stable") + 2  # records are grouped by host
    stream = {o["line"]: o["score"] for o in out}
    np.testing.assert_allclose([stream[line] for line in batch_line], ev["_curve"]["score"],
                               rtol=1e-4, atol=1e-5)
