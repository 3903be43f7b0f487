"""`fedlstm deploy` as an operator runs it by hand: what is checked before any process starts,
and what is never replaced without being asked."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlstm.cli.main import app
from fedlstm.federation.deploy.site import site_environment

runner = CliRunner()


@pytest.fixture
def creds(tmp_path, monkeypatch, wide_consoles):
    monkeypatch.setenv("FEDLSTM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "creds"
    r = runner.invoke(app, ["deploy", "certs", str(folder), "-n", "1"])
    assert r.exit_code == 0, r.output
    return folder


def test_certs_never_replace_a_federations_credentials_unasked(creds):
    """A rerun (to add a site) made a new CA and new keys: every site was cut off."""
    ca = (creds / "ca.crt").read_bytes()
    r = runner.invoke(app, ["deploy", "certs", str(creds), "-n", "2"])
    assert r.exit_code == 2 and "pass --overwrite to replace them" in r.output
    assert (creds / "ca.crt").read_bytes() == ca
    r = runner.invoke(app, ["deploy", "certs", str(creds), "-n", "2", "--overwrite"])
    assert r.exit_code == 0 and (creds / "ca.crt").read_bytes() != ca


def test_superlink_on_a_taken_port_fails_before_it_starts(creds, tmp_path):
    """It printed its start banner, then 'a process stopped' with the SuperLink's log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["deploy", "superlink", "--creds", str(creds), "--host",
                                "127.0.0.1", "--port", str(port), "--control-port", "0",
                                "--work-dir", str(tmp_path / "work"),
                                "--database", str(tmp_path / "s.db")])
    assert r.exit_code == 2, r.output
    assert f"127.0.0.1:{port} (--port) is in use" in r.output and "SuperLink on" not in r.output


def test_supernode_names_a_missing_key_or_data_file(creds, tmp_path):
    """A missing --auth-key was a traceback; missing --data-path a site that failed later."""
    base = ["deploy", "supernode", "--superlink", "127.0.0.1:1", "--root-certificates",
            str(creds / "ca.crt"), "--trusted-app-key", str(creds / "coordinator.pub"),
            "--name", "site"]
    r = runner.invoke(app, [*base, "--auth-key", str(tmp_path / "nokey"),
                            "--data-path", str(creds / "ca.crt")])
    assert r.exit_code == 2 and "(--auth-key) not found" in r.output, r.output
    r = runner.invoke(app, [*base, "--auth-key", str(creds / "keys" / "supernode-0"),
                            "--data-path", str(tmp_path / "none.csv")])
    assert r.exit_code == 2 and "(--data-path) not found" in r.output, r.output


def test_a_site_finds_flowers_commands_without_an_activated_environment(creds):
    """Flower starts `flower-superexec` by name: without the venv on PATH the SuperNode failed
    and then hung."""
    env = site_environment({"PATH": "/usr/bin"}, Path("/shim"), [creds / "coordinator.pub"])
    assert env["PATH"].split(":")[:2] == ["/shim", str(Path(sys.executable).parent)]


def test_run_refuses_an_out_dir_that_holds_a_run(tmp_path, wide_consoles):
    """Two runs into one --out-dir both ran, and the last one's results replaced the first's."""
    out = tmp_path / "runs" / "r1"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    r = runner.invoke(app, ["deploy", "run", "--config", str(tmp_path / "c.json"),
                            "--out-dir", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output, r.output


def test_app_folder_is_not_replaced_unasked(creds, tmp_path):
    """`deploy app` rewrote an app folder's pyproject.toml without a word, edits and all."""
    folder = tmp_path / "apps"
    r = runner.invoke(app, ["deploy", "app", str(folder)])
    assert r.exit_code == 0, r.output
    pyproject = folder / "fedlstm-app" / "pyproject.toml"
    signature = (folder / "fedlstm-app.signature").read_text()
    r = runner.invoke(app, ["deploy", "app", str(folder)])  # the same app again: nothing to ask
    assert r.exit_code == 0, r.output
    assert (folder / "fedlstm-app.signature").read_text() == signature
    edited = pyproject.read_text().replace('publisher = "fedlstm"', 'publisher = "ours"')
    pyproject.write_text(edited)
    r = runner.invoke(app, ["deploy", "app", str(folder)])
    assert r.exit_code == 2 and "pass --overwrite to replace it" in r.output
    assert pyproject.read_text() == edited
    r = runner.invoke(app, ["deploy", "app", str(folder), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert pyproject.read_text() != edited
    assert (folder / "fedlstm-app.signature").read_text() == signature
