"""`reproduce`'s scheduler: Flower steps run from the start with half the workers beside them,
and a finished step is written whatever runs beside it. No timing is measured: a centralised step
waits for a file that only a Flower step writes, so it sees the file only if the two overlap."""

import contextlib
import json
import time
from functools import partial
from pathlib import Path

import pytest

from fedlstm.reports import reproduce


def wait_for_file(flag: str, seconds: float = 60.0) -> dict:
    """A centralised step (run in a spawned worker): did `flag` appear while it ran?"""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if Path(flag).exists():
            return {"saw_flag": True}
        time.sleep(0.05)
    return {"saw_flag": False}


def write_file(flag: Path) -> dict:
    """A Flower step (run in this process)."""
    flag.write_text("flower ran")
    return {"wrote_flag": True}


def _job(path: Path, compute, flower: bool = False):
    return reproduce._Job(path, {"key": path.stem}, compute, flower)


def _counter(steps: int):
    return reproduce._Counter(0, steps, lambda done, total, text: None)


def _run(side, flower, workers=2, counter=None):
    """`counter`: one made before the jobs, for steps that watch what runs beside them."""
    results = {job.path: None for job in [*side, *flower]}
    counter = counter or _counter(len(results))
    reproduce._run_steps(side, flower, workers, results, counter)
    return results, counter


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    monkeypatch.setattr(reproduce, "one_ray_runtime", contextlib.nullcontext)


def test_flower_steps_start_while_the_last_centralised_step_runs(tmp_path):
    flag = tmp_path / "flag"
    long = _job(tmp_path / "networks.json", partial(wait_for_file, str(flag)))
    short = [_job(tmp_path / f"short{i}.json", partial(json.loads, f'{{"i": {i}}}'))
             for i in range(3)]
    fed = _job(tmp_path / "fed.json", partial(write_file, flag), flower=True)
    results, counter = _run([long, *short], [fed])
    assert results[long.path]["saw_flag"] is True  # it was still running when Flower started
    assert results[fed.path]["wrote_flag"] is True
    for job in [long, *short, fed]:  # every step written, with its fingerprint
        assert json.loads(job.path.read_text())["fingerprint"] == {"key": job.path.stem}
    assert counter.done == 5 and counter.running == []


def running_side_steps(counter, flag: Path, flower_name: str) -> dict:
    """A Flower step: which centralised steps run beside it (after the feeder had time to start
    more, were it allowed to)? Then it releases the step that waits for `flag`."""
    time.sleep(0.5)
    beside = [name for name in counter.running if name != flower_name]
    flag.write_text("flower ran")
    return {"beside": beside}


def test_a_flower_step_gets_half_the_workers_and_the_rest_follow_it(tmp_path):
    flag = tmp_path / "flag"
    long = _job(tmp_path / "long.json", partial(wait_for_file, str(flag)))
    after = _job(tmp_path / "after.json", partial(wait_for_file, str(flag)))
    counter = _counter(3)
    fed = _job(tmp_path / "fed.json", partial(running_side_steps, counter, flag, "fed"),
               flower=True)
    results, _ = _run([long, after], [fed], counter=counter)
    assert results[fed.path]["beside"] == ["long"]  # one of the two workers: `after` waited
    assert results[long.path]["saw_flag"] is True and results[after.path]["saw_flag"] is True
    assert counter.done == 3 and counter.running == []


def wait_until_finished(counter, steps: int) -> dict:
    """A Flower step that ends once `steps` steps have finished (failed ones included)."""
    end = time.monotonic() + 60
    while counter.done < steps and time.monotonic() < end:
        time.sleep(0.05)
    return {"finished_before_me": counter.done}


def test_a_failed_centralised_step_stops_every_step_not_yet_started(tmp_path):
    good = _job(tmp_path / "good.json", partial(json.loads, '{"ok": 1}'))
    bad = _job(tmp_path / "bad.json", partial(json.loads, "not json"))
    later = _job(tmp_path / "later.json", partial(json.loads, '{"later": 1}'))
    counter = _counter(5)
    # The first Flower step outlasts the failure: it ends and is kept; the second never starts.
    first = _job(tmp_path / "first.json", partial(wait_until_finished, counter, 2), flower=True)
    second = _job(tmp_path / "second.json", partial(write_file, tmp_path / "flag"), flower=True)
    with pytest.raises(json.JSONDecodeError):
        _run([good, bad, later], [first, second], counter=counter)
    assert json.loads(good.path.read_text())["ok"] == 1
    assert json.loads(first.path.read_text())["finished_before_me"] == 2  # ended, and written
    assert not bad.path.exists() and not later.path.exists()
    assert not second.path.exists() and not (tmp_path / "flag").exists()


def test_one_worker_runs_the_centralised_steps_first(tmp_path):
    flag = tmp_path / "flag"
    waits = _job(tmp_path / "waits.json", partial(wait_for_file, str(flag), 0.2))
    fed = _job(tmp_path / "fed.json", partial(write_file, flag), flower=True)
    results, _ = _run([waits], [fed], workers=1)
    assert results[waits.path]["saw_flag"] is False and results[fed.path]["wrote_flag"]


def worker_setup() -> dict:
    """A centralised step (run in a spawned worker): how its worker was set up."""
    from threadpoolctl import threadpool_info

    from fedlstm.data import readers

    return {"openmp": sorted({lib["num_threads"] for lib in threadpool_info()
                              if lib["user_api"] == "openmp"}),
            "remembers_reads": readers._remembered is not None}


def test_workers_remember_reads_and_keep_openmp_to_their_share_of_cores(tmp_path):
    steps = [_job(tmp_path / f"setup{i}.json", worker_setup) for i in range(2)]
    results, _ = _run(steps, [], workers=2)
    share = reproduce.worker_threads(2)
    assert 2 * share <= max(2, reproduce.os.cpu_count() or 1)  # together, no more than the cores
    for job in steps:
        assert results[job.path]["openmp"] == [share]  # torch's and scikit-learn's runtimes
        assert results[job.path]["remembers_reads"]


def sleep_then_say(seconds: float) -> dict:
    """A centralised step that runs long (in a spawned worker)."""
    time.sleep(seconds)
    return {"slept": seconds}


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_running_steps_and_their_workers(tmp_path, sig):
    """SIGTERM reached only this process: the default action killed it at once and its workers
    ran on as orphans (their results written by nobody), or, with a handler, the pool's shutdown
    waited for their steps. Now the signal interrupts this process as Ctrl-C does, the workers
    are ended at once, and what finished is kept."""
    import multiprocessing
    import os
    import signal
    import threading

    from fedlstm.cli.common import stop_signals_interrupt

    short = _job(tmp_path / "short.json", partial(json.loads, '{"i": 0}'))
    long = [_job(tmp_path / f"long{i}.json", partial(sleep_then_say, 600)) for i in range(2)]
    counter = _counter(3)
    # signalled once both long steps run, and only then (the short one is written by then)
    timer = threading.Thread(target=lambda: (
        _until(lambda: sorted(counter.running) == ["long0", "long1"]),
        time.sleep(1), os.kill(os.getpid(), getattr(signal, sig))))
    with stop_signals_interrupt():
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            _run([short, *long], [], counter=counter)
    timer.join()
    assert not multiprocessing.active_children()  # no worker left running its step
    assert json.loads(short.path.read_text())["i"] == 0  # the finished step is kept
    assert not any(job.path.exists() for job in long)


def _until(condition, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)
