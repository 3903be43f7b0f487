"""Ctrl-C or SIGTERM on `fedlstm federate`: it stops within seconds, keeps the checkpoint to
resume from, and leaves no copy of any site's records behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


# SIGTERM (a service manager, CI cancelling a job) went to Ray's handlers: a raw native stack
# dump and exit 134, or Ray's workers killed and the run left hanging.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_federation_ends_within_seconds_and_keeps_its_checkpoint(datasets_dir, tmp_path,
                                                                          sig):
    temp = Path(tempfile.gettempdir())  # where the sites' shares go (not a test folder: Ray's
    before = set(temp.glob("fedlstm-shares-*"))  # sockets under a long TMPDIR would not bind)
    out = tmp_path / "run"
    partial = tmp_path / ".run.partial"
    env = {**os.environ, "FEDLSTM_DATA": str(datasets_dir)}
    cmd = [sys.executable, "-m", "fedlstm.cli", "federate", "--dataset", "nsl-kdd", "--clients", "2",
           "--rounds", "200", "--set", "data.max_train_rows=4000", "--set", "model.hidden_size=16",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (partial / "checkpoints" / "last.pt").exists():  # round 1 is done
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no round finished within 180 s"
            time.sleep(0.5)
        shares = list(set(temp.glob("fedlstm-shares-*")) - before)
        assert shares and all(p.stat().st_mode & 0o077 == 0 for p in shares)  # owner-only
        assert all(f.stat().st_mode & 0o077 == 0 for p in shares for f in p.glob("*.parquet"))
        proc.send_signal(sig)
        start = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output
    assert "stopping the federation" in output and "received at time" not in output, output
    assert stopped_after < 45, f"took {stopped_after:.1f} s to stop"
    assert "--resume" in output
    assert not out.exists()
    assert (partial / "checkpoints" / "last.pt").exists()  # resumable
    assert not set(temp.glob("fedlstm-shares-*")) - before  # no raw-data copies left
    assert not [p for p in partial.rglob("*.parquet")]


RAY_THEN_SIGTERM = """
import os, signal, time
import ray
from fedlstm.cli.common import stop_signals_interrupt
from fedlstm.federation.simulation import one_ray_runtime

with stop_signals_interrupt():
    ours = signal.getsignal(signal.SIGTERM)
    with one_ray_runtime():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        signal.signal(signal.SIGTERM, ours)  # over Ray's, as a simulation does (interruptible)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    except KeyboardInterrupt:
        print("interrupted as by Ctrl-C")
"""


def test_sigterm_after_ray_shut_down_reaches_the_handler(tmp_path):
    """Ray's native clean-up at its shutdown reset SIGTERM to its default action behind
    Python's back: `reproduce` died on the spot once its Flower steps were done (exit 143),
    leaving its workers running. Run in a child process: without the fix, SIGTERM kills it."""
    env = {**os.environ, "TMPDIR": tempfile.gettempdir()}  # Ray's sockets need a short path
    done = subprocess.run([sys.executable, "-c", RAY_THEN_SIGTERM], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "interrupted as by Ctrl-C" in done.stdout, done.stderr[-2000:]
