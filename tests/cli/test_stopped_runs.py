"""What a stopped (Ctrl-C) federation or study says: whether a round was kept to --resume from,
with exit code 130 as for `train`, never an error with exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedlstm.cli import anomaly as anomaly_cli
from fedlstm.cli.main import app
from fedlstm.federation import simulation
from fedlstm.federation.audit import RunInterrupted
from fedlstm.federation.server import CHECKPOINT
from fedlstm.runs.rundir import partial_dir

runner = CliRunner()


def _stop(round_done: bool):
    def run(cfg, out, **_):
        if round_done:
            checkpoint = partial_dir(out) / CHECKPOINT
            checkpoint.parent.mkdir(parents=True)
            checkpoint.write_bytes(b"round 1")
        raise RunInterrupted("the federation was stopped (Ctrl-C)")
    return run


@pytest.mark.parametrize("command", [["federate"], ["anomaly", "federate"]])
@pytest.mark.parametrize("round_done", [True, False])
def test_a_stopped_federation_says_whether_a_round_was_kept(tmp_path, monkeypatch, wide_consoles,
                                                            command, round_done):
    """It always said 'the last completed round is checkpointed; ... --resume', and --resume
    then found nothing; `anomaly federate` said so without having --resume."""
    monkeypatch.setattr(simulation, "run_federated", _stop(round_done))
    monkeypatch.setattr(anomaly_cli, "run_federated", _stop(round_done))
    out = tmp_path / "run"
    r = runner.invoke(app, [*command, "--clients", "2", "--out", str(out)])
    assert r.exit_code == 130, r.output
    if round_done:
        assert "the last completed round is checkpointed; continue with the same command and " \
               "--resume" in r.output
        assert r.exit_code == 130
    else:
        assert "no round had completed, so nothing is kept" in r.output and "--resume" not in \
            r.output


def test_compare_cannot_resume_and_says_it_keeps_nothing(tmp_path, monkeypatch, wide_consoles):
    """--resume was ignored (the comparison started over), and a stopped comparison promised a
    checkpoint it had deleted."""
    from fedlstm.federation import compare

    r = runner.invoke(app, ["federate", "--compare", "--resume", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--resume continues a single federation" in r.output

    def stopped(*_, **__):
        raise RunInterrupted("the federation was stopped (Ctrl-C)")
    monkeypatch.setattr(compare, "run_comparison", stopped)
    r = runner.invoke(app, ["federate", "--compare", "--clients", "2", "--out", str(tmp_path / "c")])
    assert r.exit_code == 130 and "keeps nothing of an unfinished run" in r.output, r.output


def test_a_stopped_study_exits_130_and_says_what_it_reuses(tmp_path, monkeypatch, wide_consoles):
    """It printed 'error: the federation was stopped (Ctrl-C)' with exit code 2."""
    from fedlstm.reports import privacy

    def stopped(*_, **__):
        raise RunInterrupted("the federation was stopped (Ctrl-C)")
    monkeypatch.setattr(privacy, "sweep", stopped)
    r = runner.invoke(app, ["privacy-utility", "--epsilons", "8", "--out", str(tmp_path / "p")])
    assert r.exit_code == 130, r.output
    assert "error" not in r.output and "the runs it finished are kept" in r.output


@pytest.mark.parametrize("command", [["federate"], ["anomaly", "federate"]])
def test_leftovers_to_resume_are_named_before_any_work(tmp_path, monkeypatch, wide_consoles,
                                                       command):
    """The refusal came after the run's banner and the data loading."""
    out = tmp_path / "run"
    checkpoint = partial_dir(out) / CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"round 1")
    monkeypatch.setattr(simulation, "run_federated", _stop(True))  # must not be reached
    monkeypatch.setattr(anomaly_cli, "run_federated", _stop(True))
    r = runner.invoke(app, [*command, "--clients", "2", "--out", str(out)])
    assert r.exit_code == 2 and "pass --resume to continue it" in r.output, r.output
    assert "Fed-LSTM" not in r.output and "stopped" not in r.output


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt(), 130), (SystemExit(143), 143)])
@pytest.mark.parametrize("round_done", [True, False])
def test_a_stopped_deployment_says_whether_a_round_was_kept(tmp_path, monkeypatch, wide_consoles,
                                                            stop, code, round_done):
    """Ctrl-C or SIGTERM on `deploy local` said nothing of the checkpoint --resume continues."""
    from fedlstm.federation.deploy import launch

    out = tmp_path / "run"
    work = tmp_path / ".run.deploy"

    def stopped(*_, **__):
        if round_done:
            (launch.server_dir(work) / CHECKPOINT).parent.mkdir(parents=True)
            (launch.server_dir(work) / CHECKPOINT).write_bytes(b"round 1")
        raise stop
    monkeypatch.setattr(launch, "run_local_deployment", stopped)
    r = runner.invoke(app, ["deploy", "local", "--clients", "2", "--out", str(out)])
    assert r.exit_code == code, r.output
    expected = f"checkpointed in {work}; continue with the same command and --resume" \
        if round_done else "no round had completed, so nothing is kept"
    assert expected in " ".join(r.output.split())
