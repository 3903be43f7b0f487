"""A site's SuperNode, which runs only apps signed by a key the site trusts.

A Flower SuperNode runs whatever ClientApp a run's FAB names, on the site, next to its data.
Whoever can start a run could therefore run code at every site. Flower's SuperNode starts each
ClientApp as the `flwr-clientapp` command found on its PATH. A site started by fedlstm finds ours
first: it runs `python -m fedlstm.federation.deploy.site`, which verifies the FAB against the
site's trusted keys before Flower installs or imports anything from it. A refused FAB gets an
error reply and none of its code runs.

The trusted keys are public key files named in FEDLSTM_TRUSTED_APP_KEYS (the coordinator's
`fedlstm keys` public key, handed out with the site's credentials).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path

from fedlstm.detection.signing import KeyFileError, PublicKey, read_public_key
from fedlstm.federation.deploy.app import SIGNATURE_KEY
from fedlstm.federation.deploy.credentials import UntrustedApp, verify_app

TRUSTED_KEYS_ENV = "FEDLSTM_TRUSTED_APP_KEYS"  # public key files, separated by os.pathsep
_SHIM = "flwr-clientapp"


def trusted_keys(env: Mapping[str, str] = os.environ) -> list[PublicKey]:
    """The keys this site trusts to sign apps (none: every app is refused)."""
    keys = []
    for path in filter(None, env.get(TRUSTED_KEYS_ENV, "").split(os.pathsep)):
        try:
            keys.append(read_public_key(path))
        except KeyFileError as exc:
            raise UntrustedApp(f"cannot read a trusted app key: {exc}") from exc
    return keys


def write_clientapp_shim(folder: str | Path) -> Path:
    """`folder/flwr-clientapp`: the command Flower's SuperExec starts for every ClientApp."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / _SHIM
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedlstm.federation.deploy.site "$@"\n')
    shim.chmod(0o755)
    return folder


def site_environment(env: Mapping[str, str], shim_dir: Path,
                     trusted_key_files: list[str | Path]) -> dict[str, str]:
    """The SuperNode's environment: our `flwr-clientapp` first on PATH, then this environment's
    own commands (Flower starts `flower-superexec` by name: without an activated venv the
    SuperNode failed and hung), and the trusted keys."""
    if not trusted_key_files:
        raise ValueError("a site needs at least one trusted app key (the coordinator's public key)")
    for path in trusted_key_files:
        read_public_key(path)  # fail at start-up, not at the first run
    path = os.pathsep.join([str(shim_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, "PATH": path,
            TRUSTED_KEYS_ENV: os.pathsep.join(str(Path(p).resolve()) for p in trusted_key_files)}


def run_trusted_clientapp() -> None:
    """Flower's `flwr-clientapp`, with the FAB verified between pulling and installing it.

    Flower pulls the task (message, context with the run config, FAB) and then installs the FAB;
    we remember the run config's signature at the first step and check it at the second, so
    that a refusal still answers the message with an error (the run fails instead of waiting).
    """
    from flwr.common.logger import log
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runner

    keys = trusted_keys()
    pulled: dict[str, object] = {}
    pull, install = runner.pull_task_input, runner.install_from_fab

    def pull_and_remember(client):
        message, context, run, fab = pull(client)
        pulled["signature"] = context.run_config.get(SIGNATURE_KEY)
        return message, context, run, fab

    def install_if_trusted(content: bytes, *args, **kwargs):
        try:
            signer = verify_app(content, pulled.get("signature"), keys)
        except UntrustedApp as exc:
            log(ERROR, "refused to run the app: %s", exc)
            raise
        log(INFO, "app verified: signed by %s", signer)
        return install(content, *args, **kwargs)

    runner.pull_task_input, runner.install_from_fab = pull_and_remember, install_if_trusted
    sys.argv[0] = _SHIM  # Flower's exit handling recognises the command by this name
    flwr_clientapp()


if __name__ == "__main__":
    run_trusted_clientapp()
